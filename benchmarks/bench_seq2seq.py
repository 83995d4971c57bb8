"""Benchmark run_seq2seq_ptuning.py: dynamic vs static padding, and batched vs one-at-a-time generation.

    python benchmarks/bench_seq2seq.py                 # about 5 minutes on 2 CPU cores
    python benchmarks/bench_seq2seq.py --steps 40      # longer, steadier numbers

Uses the real data in ../shared/data (ADGEN and a multi-turn chat set) with the bert-base-chinese
vocabulary, and a small Llama (4 layers, 256 wide) built from a config: nothing is downloaded.

1. Training throughput in effective (non-pad) tokens/s: the script as it is (dynamic padding,
   length-grouped batches) against the same script with --pad_to_max_length (ChatGLM's static
   padding), on ADGEN with ChatGLM's train.sh lengths (64/128) and on chat with train_chat.sh's
   (256/256). Both consume the same rows, so the ratio of their runtimes is the speed-up. The ideal
   speed-up is the baseline's padded tokens divided by its real tokens.
2. Generation eval: prompts/s with a batch of 16 left-padded prompts against batch size 1.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def build_model(out_dir: Path) -> None:
    """A small Llama with the bert-base-chinese vocabulary ([SEP] ends responses)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(SHARED / "tokenizers" / "bert-base-chinese")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def real_tokens(model_dir: Path, data: Path, prompt_column, response_column, source: int, target: int, rows: int):
    """Non-pad tokens of the first `rows` training rows, built exactly as the script builds them."""
    from transformers import AutoTokenizer

    import run_seq2seq_ptuning as s2s

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.eos_token = tokenizer.sep_token
    builder = s2s.PromptBuilder(tokenizer, "", source, target, encoder_decoder=False)
    text = data.read_text(encoding="utf-8")
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()]
    total = 0
    for row in records[:rows]:
        query = (
            row[prompt_column]
            if prompt_column
            else (row["instruction"] + ("\n" + row["input"] if row.get("input") else ""))
        )
        prompt, _, _ = builder.prompt_ids(query, s2s.read_history(row.get("history")) or [])
        response, _ = builder.response_ids(row[response_column])
        total += len(prompt) + len(response)
    return total


def train_seconds(model_dir, data, workdir, extra: list[str], steps: int, batch: int) -> float:
    import run_seq2seq_ptuning as s2s

    results = s2s.main(
        [
            "--model_name_or_path", str(model_dir), "--train_file", str(data), "--output_dir", str(workdir),
            "--do_train", "--max_steps", str(steps), "--max_train_samples", str(steps * batch),
            "--per_device_train_batch_size", str(batch), "--learning_rate", "1e-4", "--save_strategy", "no",
            "--logging_steps", "1000", "--report_to", "none", "--seed", "0", "--use_cpu", *extra,
        ]
    )  # fmt: skip
    return results["train_runtime"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="Training steps per measurement.")
    parser.add_argument("--batch", type=int, default=8, help="Training batch size.")
    parser.add_argument("--prompts", type=int, default=64, help="Prompts generated per generation measurement.")
    parser.add_argument("--skip_training", action="store_true", help="Measure generation only.")
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        sys.exit(f"The benchmark needs the shared real data at {SHARED} (see ../shared/data/README.md).")

    import run_seq2seq_ptuning as s2s

    work = Path(tempfile.mkdtemp(prefix="bench_seq2seq_"))
    model_dir = work / "model"
    build_model(model_dir)
    rows = args.steps * args.batch
    cases = [
        ("ADGEN (64/128)", SHARED / "adgen" / "train_1000.json", "content", "summary", 64, 128, []),
        (
            "chat (256/256)",
            SHARED / "instruct" / "oaast_sft_zh.json",
            None,
            "output",
            256,
            256,
            ["--history_column", "history"],
        ),
    ]
    report = {
        "machine": "see BENCHMARKS.md",
        "steps": args.steps,
        "batch": args.batch,
        "training": [],
        "generation": {},
    }
    for name, data, prompt_column, response_column, source, target, extra in [] if args.skip_training else cases:
        columns = (["--prompt_column", prompt_column] if prompt_column else []) + [
            "--response_column",
            response_column,
        ]
        lengths = ["--max_source_length", str(source), "--max_target_length", str(target), *columns, *extra]
        real = real_tokens(model_dir, data, prompt_column, response_column, source, target, rows)
        padded = rows * (source + target)
        static = train_seconds(
            model_dir, data, work / "static", [*lengths, "--pad_to_max_length"], args.steps, args.batch
        )
        dynamic = train_seconds(
            model_dir,
            data,
            work / "dynamic",
            [*lengths, "--train_sampling_strategy", "group_by_length"],
            args.steps,
            args.batch,
        )
        row = {
            "data": name,
            "real_tokens": real,
            "static_padded_tokens": padded,
            "ideal_speedup": round(padded / real, 2),
            "static_effective_tokens_per_s": round(real / static, 1),
            "dynamic_effective_tokens_per_s": round(real / dynamic, 1),
            "speedup": round(static / dynamic, 2),
        }
        row["speedup_vs_ideal"] = round(row["speedup"] / row["ideal_speedup"], 2)
        report["training"].append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)

    adgen = SHARED / "adgen" / "train_1000.json"
    timings = {}
    for batch in (1, 16):
        results = s2s.main(
            [
                "--model_name_or_path", str(model_dir), "--test_file", str(adgen), "--output_dir", str(work / f"gen{batch}"),
                "--do_predict", "--max_predict_samples", str(args.prompts), "--per_device_eval_batch_size", str(batch),
                "--max_source_length", "64", "--max_target_length", "128", "--max_new_tokens", "32",
                "--prompt_column", "content", "--response_column", "summary", "--report_to", "none", "--use_cpu",
            ]
        )  # fmt: skip
        timings[batch] = results["predict_runtime"]  # the generation loop itself, not model loading
    report["generation"] = {
        "prompts": args.prompts,
        "max_new_tokens": 32,
        "batch_1_prompts_per_s": round(args.prompts / timings[1], 2),
        "batch_16_prompts_per_s": round(args.prompts / timings[16], 2),
        "speedup": round(timings[1] / timings[16], 2),
    }
    print(json.dumps(report["generation"]), flush=True)
    out = ROOT / "benchmarks" / "results_seq2seq.json"
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    print("written to", out)


if __name__ == "__main__":
    main()
