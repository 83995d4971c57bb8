"""Tiny folders like the run scripts' outputs, and a live server on a free loopback port, for the serve.py tests.

Nothing is trained: random weights with the demo tokenizers are enough to test the server's mechanics, because
every answer is compared with what `generate` gives for the same prompt ids.
"""

import contextlib
import threading
import time

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
)
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

import serve
from zhtrain.chat.format import choose_chat_template
from zhtrain.launch import free_port
from zhtrain.serve.api import build_app


def chat_folder(demo_dir, out):
    """What run_seq2seq_ptuning.py saves for the demo Llama: weights, the tokenizer with its [Round i] chat
    template, and a generation config listing the stop ids."""
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "models" / "llama-tiny-sft-zh")
    tokenizer.eos_token = tokenizer.sep_token
    choose_chat_template(tokenizer, "default")
    model = AutoModelForCausalLM.from_pretrained(demo_dir / "models" / "llama-tiny-sft-zh")
    model.generation_config.eos_token_id = [tokenizer.sep_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def adapter_folder(base, out, kind: str):
    """A LoRA (random, so it changes the answers) or P-Tuning adapter on `base`, saved as the script saves it."""
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(base)
    if kind == "lora":
        config = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    else:
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    model.generation_config.save_pretrained(out)
    return out


def classifier_folder(demo_dir, out):
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "models" / "bert-tiny-zh")
    config = BertConfig.from_pretrained(demo_dir / "models" / "bert-tiny-zh")
    config.id2label, config.label2id = {0: "负面", 1: "正面"}, {"负面": 0, "正面": 1}
    config.problem_type = "single_label_classification"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def captioner_folder(demo_dir, out):
    """A ViT + Chinese GPT-2 captioner as run_image_captioning.py builds one (random weights)."""
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "models" / "gpt2-tiny-zh")
    decoder = GPT2Config.from_pretrained(
        demo_dir / "models" / "gpt2-tiny-zh", is_decoder=True, add_cross_attention=True
    )
    encoder = ViTConfig.from_pretrained(demo_dir / "models" / "vit-tiny")
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VisionEncoderDecoderModel(config=config)
    for target in (model.config, model.generation_config):
        target.decoder_start_token_id, target.pad_token_id = tokenizer.cls_token_id, tokenizer.pad_token_id
        target.eos_token_id = tokenizer.sep_token_id
    model.generation_config.max_new_tokens = 8
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


@contextlib.contextmanager
def live_server(folder, *flags):
    """serve.py's app for `folder` on a free loopback port in a background thread: yields (base URL, state)."""
    args = serve.parse_args([str(folder), "--device", "cpu", "--port", str(free_port()), *flags])
    served, engine = serve.load(args)
    app = build_app(served, engine, args)
    server = uvicorn_server(app, args.port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{args.port}", app.state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if engine is not None:
            engine.close()


def uvicorn_server(app, port: int):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))


def greedy_ids(model, prompt_ids: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
    """What `generate` gives for the prompt, greedy, up to the first stop id (included)."""
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=0,
        )
    ids = out[0].tolist() if getattr(model.config, "is_encoder_decoder", False) else out[0, len(prompt_ids) :].tolist()
    ids = ids[1:] if getattr(model.config, "is_encoder_decoder", False) else ids  # the decoder start
    for i, token in enumerate(ids):
        if token in stop_ids:
            return ids[: i + 1]
    return ids
