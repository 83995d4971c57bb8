"""run_seq2seq_ptuning.py on chat data as users have it, and on the real model families' formats (end to end).

Tiny random models are built from the real configs and tokenizers in ../shared/models (skipped without it);
the learning checks use the demo's tiny Llama and its chat data rewritten as OpenAI messages and ShareGPT.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import run_seq2seq_ptuning as s2s
from convert_chatglm import convert
from helpers import MODELS, make_checkpoint, tiny_run
from score_predictions import score_file
from zhtrain.chat.format import ChatFormat

needs_models = pytest.mark.skipif(not MODELS.is_dir(), reason=f"the real tokenizers are not here: {MODELS} is missing")
pytestmark = pytest.mark.slow


def chatglm_history_to_messages(row: dict) -> list[dict]:
    messages = [{"role": "system", "content": "你是一个电商客服。"}]
    for question, answer in row.get("history") or []:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


def write_messages(source: Path, target: Path, sharegpt: bool = False, limit: int | None = None) -> Path:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()][:limit]
    with open(target, "w", encoding="utf-8") as f:
        for row in rows:
            messages = chatglm_history_to_messages(row)
            if sharegpt:
                names = {"system": "system", "user": "human", "assistant": "gpt"}
                line = {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]}
            else:
                line = {"messages": messages}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return target


def run(demo_dir: Path, model_dir: Path, train: Path, validation: Path, output_dir: Path, **extra) -> dict:
    """Train, evaluate and predict (on the validation file) with generation; the script's defaults otherwise."""
    args = {
        "model_name_or_path": model_dir, "train_file": train, "validation_file": validation, "test_file": validation,
        "do_train": True, "do_eval": True, "do_predict": True, "predict_with_generate": True,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "max_source_length": 128,
        "max_target_length": 32, "use_cpu": True, "seed": 0, "learning_rate": None, "num_train_epochs": None,
        "max_train_samples": None, "max_eval_samples": None, **extra,
    }  # fmt: skip
    return s2s.main(tiny_run("seq2seq", demo_dir, output_dir, **args))


def test_messages_data_learns_every_answer_and_keeps_the_conversation(demo_dir, tmp_path):
    chat = demo_dir / "data" / "chat"
    train = write_messages(chat / "train.jsonl", tmp_path / "train.jsonl", limit=160)
    validation = write_messages(chat / "validation.jsonl", tmp_path / "validation.jsonl", limit=16)
    results = run(
        demo_dir, demo_dir / "models" / "llama-tiny-sft-zh", train, validation, tmp_path / "out",
        num_train_epochs=12, learning_rate=5e-3, max_new_tokens=32, per_device_train_batch_size=16,
    )  # fmt: skip
    assert results["eval_rouge-l"] > 70  # the answers are learned (86.8 here; 0 untrained)
    lines = [json.loads(line) for line in (tmp_path / "out" / "generated_predictions.jsonl").open(encoding="utf-8")]
    assert [m["role"] for m in lines[0]["messages"]][:2] == ["system", "user"] and "label" in lines[0]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    lengths = [len(tokenizer(line["predict"], add_special_tokens=False)["input_ids"]) for line in lines]
    assert max(lengths) < 32  # every answer stopped at the end token, none ran to --max_new_tokens
    # the scores are those of the file: score_predictions.py recomputes them exactly
    scored = score_file(str(tmp_path / "out" / "generated_predictions.jsonl"))
    assert scored["rouge-l"] == results["predict_rouge-l"] and scored["bleu-4"] == results["predict_bleu-4"]


def test_sharegpt_data_trains_with_loss_on_every_answer(demo_dir, tmp_path):
    chat = demo_dir / "data" / "chat"
    train = write_messages(chat / "train.jsonl", tmp_path / "train.jsonl", sharegpt=True, limit=32)
    validation = write_messages(chat / "validation.jsonl", tmp_path / "validation.jsonl", sharegpt=True, limit=4)
    results = run(
        demo_dir, demo_dir / "models" / "llama-tiny-sft-zh", train, validation, tmp_path / "out", max_steps=2
    )
    assert results["train_samples"] == 32 and "eval_rouge-l" in results and results["eval_loss"] > 0


FAMILIES = {
    # folder: the learned answer of a one-turn conversation, as the family's own format renders it
    "qwen2.5-instruct": "答：259元。<|im_end|>",
    "qwen3": "<think>\n\n</think>\n\n答：259元。<|im_end|>",
    "qwen3-thinking-2507": "\n</think>\n\n答：259元。<|im_end|>",
    "chatglm2": "答：259元。</s>",  # the ids start with "▁" (ChatGLM encodes the answer on its own); decode drops it
    "chatglm3": "\n 答：259元。</s>",
}


def tiny_model_of(family: str, out: Path) -> Path:
    """A random model from the family's tiny config, saved next to its real tokenizer and generation config.

    ChatGLM checkpoints are built with ChatGLM's weight names and converted, as a user converts THUDM's.
    """
    if family.startswith("chatglm"):
        make_checkpoint(out.with_name(family), family)
        return convert(out.with_name(family), out)
    source = MODELS / family
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)).save_pretrained(out)
    for file in source.iterdir():  # after the weights: the real generation_config.json, with all its stop ids
        if file.suffix in (".json", ".jinja", ".txt") and file.name != "SOURCES.txt":
            shutil.copy(file, out / file.name)
    return out


@needs_models
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("finetuning_type", ["full", "lora", "ptuning"])
def test_every_family_trains_evaluates_by_generation_and_reloads(family, finetuning_type, tmp_path, demo_dir):
    model_dir = tiny_model_of(family, tmp_path / "model")
    data = tmp_path / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "问：多少钱？"}, {"role": "assistant", "content": "答：259元。"}]}
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows * 8) + "\n", encoding="utf-8")
    extra = {"pre_seq_len": 4} if finetuning_type == "ptuning" else {}
    results = run(
        demo_dir, model_dir, data, data, tmp_path / "out", finetuning_type=finetuning_type, max_steps=2, max_eval_samples=2,
        max_predict_samples=2, max_new_tokens=4, **extra,
    )  # fmt: skip
    assert "eval_rouge-l" in results and results["train_loss"] > 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    expected_stops = GenerationConfig.from_pretrained(model_dir).eos_token_id
    saved = GenerationConfig.from_pretrained(tmp_path / "out")  # full: the model's; adapters: written next to them
    assert set(expected_stops) <= set(saved.eos_token_id)  # Qwen's [151645, 151643], not only one of them
    if finetuning_type == "full":
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    else:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "out")
    prompt = tokenizer.apply_chat_template(rows[0]["messages"][:1], add_generation_prompt=True, return_dict=True)
    generated = model.generate(**{k: torch.tensor([v]) for k, v in prompt.items()}, max_new_tokens=3)
    assert generated.shape[1] > len(prompt["input_ids"])  # the reloaded model (and adapter) generates
    # the data's answer, learned with the family's own end-of-turn text
    learned = ChatFormat(tokenizer, {}, expected_stops).encode(rows[0]["messages"], True, 64, 32)
    assert tokenizer.decode([i for i in learned.labels if i != -100]) == FAMILIES[family]


@needs_models
@pytest.mark.parametrize("family", ["chatglm2", "chatglm3"])
def test_the_seeds_ptuning_argument_file_runs_on_a_converted_chatglm(family, tmp_path, demo_dir):
    """ChatGLM's P-Tuning walkthrough: its argument file as written, model and data pointed at local files."""
    seed = MODELS.parent / "seeds" / "ptuning_args.json"
    if not seed.is_file():
        pytest.skip(f"{seed} is missing")
    model_dir = tiny_model_of(family, tmp_path / "native")
    adgen = demo_dir / "data" / "adgen"
    results = s2s.main(
        [
            str(seed), "--model_name_or_path", str(model_dir), "--train_file", str(adgen / "train.jsonl"),
            "--validation_file", str(adgen / "validation.jsonl"), "--output_dir", str(tmp_path / "out"),
            "--finetuning_type", "ptuning", "--pre_seq_len", "8", "--max_steps", "2", "--max_train_samples", "32",
            "--do_eval", "--max_eval_samples", "2", "--max_new_tokens", "4", "--report_to", "none", "--use_cpu",
        ]
    )  # fmt: skip
    assert results["train_samples"] == 32 and "eval_rouge-l" in results
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text(encoding="utf-8"))
    assert saved["peft_type"] == "PREFIX_TUNING" and saved["num_virtual_tokens"] == 8
    stops = {"chatglm2": [2], "chatglm3": [2, 64795, 64797]}[family]  # </s>; ChatGLM3 also <|user|>, <|observation|>
    assert GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == stops
