"""The THUDM side of check_chatglm_conversion.py: runs in a separate venv with an old transformers (4.40.2).

Not run by hand: check_chatglm_conversion.py starts it once per case with the reference venv's python.

    python benchmarks/chatglm_reference.py CASE_DIR --eos 2,64795,64797 [--save bin|safetensors] [--dtype float16]

CASE_DIR holds THUDM's remote code, tokenizer.model and a tiny config.json. This script builds the model with
the remote code (trust_remote_code), gives it seeded random weights (norms and biases too, so a misplaced one
shows), saves it as THUDM's save_pretrained does (`.bin` or safetensors shards, with an index), and records
what the remote code computes: logits for fixed inputs (one prompt, a left-padded batch with ChatGLM's own
attention mask and position ids, a long random sequence), greedy generation, and the ids ChatGLM's tokenizer
gives for fixed texts and chat prompts (ChatGLM2's build_prompt, ChatGLM3's build_chat_input).
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "你好，请介绍一下你自己。",
    "类型#裙*版型#宽松*风格#性感*图案#线条*裙型#阔腿裤",
    "Hello world, 1234567890!\n\n  indented  ",
    "😀 emoji 𠀀 rare",
]
HISTORY = [("你好", "你好！有什么可以帮你？"), ("天气怎么样？", "今天晴。")]
QUERY = "写一句关于春天的诗。"
SYSTEM = "你是一个乐于助人的助手。"


def randomize(model, seed: int) -> None:
    """Seeded random weights: matrices N(0, 0.1), norm weights N(1, 0.1), biases N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            mean = 1.0 if "layernorm" in name and param.dim() == 1 else 0.0
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1 + mean)


def chat_prompts(tokenizer, family: str) -> list[list[int]]:
    """The prompt ids THUDM's own tokenizer builds for a conversation (what chat() feeds the model)."""
    if family == "chatglm2":
        prompts = [tokenizer.build_prompt(QUERY, []), tokenizer.build_prompt(QUERY, HISTORY)]
        return [tokenizer(p)["input_ids"] for p in prompts]
    history = [{"role": "system", "content": SYSTEM}]
    for question, answer in HISTORY:
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return [
        tokenizer.build_chat_input(QUERY, history=[])["input_ids"][0].tolist(),
        tokenizer.build_chat_input(QUERY, history=history)["input_ids"][0].tolist(),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case_dir")
    parser.add_argument("--family", choices=["chatglm2", "chatglm3"], required=True)
    parser.add_argument("--eos", required=True, help="comma-separated stop ids for generation")
    parser.add_argument("--save", choices=["bin", "safetensors"], default="safetensors")
    parser.add_argument("--max_shard_size", default="10MB")
    parser.add_argument(
        "--dtype", choices=["float32", "float16"], default="float32", help="dtype of the saved weights"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    case = Path(args.case_dir)
    eos = [int(i) for i in args.eos.split(",")]

    config = AutoConfig.from_pretrained(case, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, empty_init=False).eval()
    randomize(model, args.seed)
    if args.dtype == "float16":
        # Save float16 weights, and compute the reference in float32 with exactly those (rounded) values.
        model = model.half()
        model.save_pretrained(case, safe_serialization=args.save == "safetensors", max_shard_size=args.max_shard_size)
        model = model.float()
    else:
        model.save_pretrained(case, safe_serialization=args.save == "safetensors", max_shard_size=args.max_shard_size)

    tokenizer = AutoTokenizer.from_pretrained(case, trust_remote_code=True)
    single = tokenizer(TEXTS[0], return_tensors="pt")
    batch = tokenizer(TEXTS[:2], return_tensors="pt", padding=True)  # left padding, ChatGLM's position ids
    long_ids = torch.randint(0, 64789, (1, 96), generator=torch.Generator().manual_seed(args.seed + 1))
    logits = {}
    with torch.no_grad():
        logits["single"] = model(input_ids=single["input_ids"]).logits
        logits["batch"] = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
        logits["long"] = model(input_ids=long_ids).logits
        greedy_kwargs = {"max_new_tokens": 12, "do_sample": False, "eos_token_id": eos, "pad_token_id": 0}
        generated_single = model.generate(input_ids=single["input_ids"], **greedy_kwargs)
        generated_batch = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            **greedy_kwargs,
        )
    save_file({k: v.float().contiguous() for k, v in logits.items()}, str(case / "reference_logits.safetensors"))
    record = {
        "inputs": {
            "single": {"input_ids": single["input_ids"].tolist()},
            "batch": {k: batch[k].tolist() for k in ("input_ids", "attention_mask", "position_ids")},
            "long": {"input_ids": long_ids.tolist()},
        },
        "generated": {"single": generated_single.tolist(), "batch": generated_batch.tolist()},
        "tokenizer": {
            "texts": TEXTS,
            "ids": [tokenizer(t)["input_ids"] for t in TEXTS],
            "plain_ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS],
            "chat": {
                "history": HISTORY,
                "query": QUERY,
                "system": SYSTEM,
                "ids": chat_prompts(tokenizer, args.family),
            },
        },
    }
    (case / "reference.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
