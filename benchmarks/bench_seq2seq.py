"""Benchmark run_seq2seq_ptuning.py: dynamic vs static padding, and batched vs one-at-a-time generation.

    python benchmarks/bench_seq2seq.py                 # about 5 minutes on 2 CPU cores
    python benchmarks/bench_seq2seq.py --steps 40      # longer, steadier numbers
    python benchmarks/bench_seq2seq.py --device cuda --hidden_size 1024 --layers 12 --batch 32   # a GPU, bf16

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

import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

import run_seq2seq_ptuning as s2s  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def build_model(out_dir: Path, data_dir: Path, hidden_size: int, layers: int) -> None:
    """A Llama with the bert-base-chinese vocabulary ([SEP] ends responses), 64-wide attention heads."""
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizers" / "bert-base-chinese")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 43 // 16,  # 688 at 256 wide
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=hidden_size // 64,
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


def train_seconds(model_dir, data, workdir, extra: list[str], steps: int, batch: int, device: list[str]) -> float:
    results = s2s.main(
        [
            "--model_name_or_path", str(model_dir), "--train_file", str(data), "--output_dir", str(workdir),
            "--do_train", "--max_steps", str(steps), "--max_train_samples", str(steps * batch),
            "--per_device_train_batch_size", str(batch), "--learning_rate", "1e-4", "--save_strategy", "no",
            "--logging_steps", "1000", "--report_to", "none", "--seed", "0", *device, *extra,
        ]
    )  # fmt: skip
    return results["train_runtime"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="Training steps per measurement.")
    parser.add_argument("--batch", type=int, default=8, help="Training batch size.")
    parser.add_argument("--prompts", type=int, default=64, help="Prompts generated per generation measurement.")
    parser.add_argument("--skip_training", action="store_true", help="Measure generation only.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda runs in bf16.")
    parser.add_argument("--hidden_size", type=int, default=256, help="Model width (4 layers x 256 on CPU).")
    parser.add_argument("--layers", type=int, default=4, help="Model depth.")
    parser.add_argument("--data_dir", type=Path, default=SHARED, help="A copy of ../shared/data.")
    parser.add_argument("--output", type=Path, default=None, help="Results JSON (default benchmarks/results_*).")
    args = parser.parse_args(argv)
    data_dir = args.data_dir
    if not data_dir.is_dir():
        sys.exit(f"The benchmark needs the shared real data at {data_dir} (see ../shared/data/README.md).")
    device = ["--use_cpu"] if args.device == "cpu" else ["--bf16"]

    work = Path(tempfile.mkdtemp(prefix="bench_seq2seq_"))
    model_dir = work / "model"
    build_model(model_dir, data_dir, args.hidden_size, args.layers)
    rows = args.steps * args.batch
    cases = [
        ("ADGEN (64/128)", data_dir / "adgen" / "train_1000.json", "content", "summary", 64, 128, []),
        (
            "chat (256/256)",
            data_dir / "instruct" / "oaast_sft_zh.json",
            None,
            "output",
            256,
            256,
            ["--history_column", "history"],
        ),
    ]
    report = {
        "machine": "see BENCHMARKS.md",
        "device": args.device,
        "model": f"llama {args.layers} layers x {args.hidden_size}",
        "steps": args.steps,
        "batch": args.batch,
        "training": [],
        "generation": {},
    }
    if args.device == "cuda":  # CUDA context, cuBLAS handles and kernel choice: paid once, outside the timings
        warm = ["--prompt_column", "content", "--response_column", "summary", "--max_source_length", "64"]
        train_seconds(model_dir, cases[0][1], work / "warmup", warm, 5, args.batch, device)
    for name, data, prompt_column, response_column, source, target, extra in [] if args.skip_training else cases:
        columns = (["--prompt_column", prompt_column] if prompt_column else []) + [
            "--response_column",
            response_column,
        ]
        lengths = ["--max_source_length", str(source), "--max_target_length", str(target), *columns, *extra]
        real = real_tokens(model_dir, data, prompt_column, response_column, source, target, rows)
        padded = rows * (source + target)
        static = train_seconds(
            model_dir, data, work / "static", [*lengths, "--pad_to_max_length"], args.steps, args.batch, device
        )
        dynamic = train_seconds(
            model_dir,
            data,
            work / "dynamic",
            [*lengths, "--train_sampling_strategy", "group_by_length"],
            args.steps,
            args.batch,
            device,
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

    adgen = data_dir / "adgen" / "train_1000.json"
    timings = {}
    for batch in (1, 16):
        results = s2s.main(
            [
                "--model_name_or_path", str(model_dir), "--test_file", str(adgen), "--output_dir", str(work / f"gen{batch}"),
                "--do_predict", "--max_predict_samples", str(args.prompts), "--per_device_eval_batch_size", str(batch),
                "--max_source_length", "64", "--max_target_length", "128", "--max_new_tokens", "32",
                "--prompt_column", "content", "--response_column", "summary", "--report_to", "none", *device,
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
    suffix = "" if args.device == "cpu" else "_" + args.device
    out = args.output or ROOT / "benchmarks" / f"results_seq2seq{suffix}.json"
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    print("written to", out)


if __name__ == "__main__":
    main()
