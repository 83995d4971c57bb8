"""Benchmark run_seq2seq_ptuning.py's batching: static (ChatGLM), dynamic, padding-free; sorted generation eval.

    python benchmarks/bench_seq2seq.py                                  # CPU: about 10 minutes on 2 quiet cores
    python benchmarks/bench_seq2seq.py --rows 32 --prompts 16 --sets adgen chat   # a smoke run
    python benchmarks/bench_seq2seq.py --device cuda --hidden_size 1024 --layers 12 --batch 32 --steps 200

Real data from ../shared/data with the bert-base-chinese vocabulary, and a Llama built from a config (4 layers x
256 on CPU): nothing is downloaded. Three data sets: ADGEN (ChatGLM's train.sh lengths, 64/128), the multi-turn
rows of oaast_sft_zh (train_chat.sh's 256/256), and its rows without history as single-turn instructions (there
is no Alpaca-zh file in ../shared/data; these rows are in Alpaca's format).

1. Training, one subprocess per data set and batching (so peak memory is that run's): the script as users run
   it with --pad_to_max_length (static), group_by_length (dynamic), --padding_free (same rows per batch), and
   --padding_free --max_tokens_per_batch (batches of about the dynamic batches' mean tokens); on request also
   `padding_free_sdpa`, --padding_free with transformers' own packed mask for sdpa instead. Each first trains
   untimed over the same rows and batches (static: 2 steps, its one shape), so that every batch shape has been
   seen; then the timed run. Every run trains the same rows. Effective tokens/s = real (non-pad) tokens / the
   trainer's train_runtime. The collator and a step timer record each step's real and padded tokens, and the
   untimed run's step times for shapes seen for the first time and again (what a new shape costs).
2. Generation eval (--do_predict, batch 16, greedy, 32 new tokens): prompts in file order against longest first
   (what the trainer does now), alternating, twice each: padded prompt tokens and the faster predict_runtime.
"""

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback  # noqa: E402

import run_seq2seq_ptuning as s2s  # noqa: E402
from zhtrain.training import FileOrderEvaluation  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
# name: (file in the work dir, lengths, column arguments)
SETS = {
    "adgen": ("adgen.jsonl", (64, 128), ["--prompt_column", "content", "--response_column", "summary"]),
    "chat": ("chat.jsonl", (256, 256), []),
    "single": ("single.jsonl", (256, 256), []),
}
SET_NAMES = {
    "adgen": "ADGEN (64/128)",
    "chat": "multi-turn chat (256/256)",
    "single": "single-turn instructions (256/256)",
}
BATCHINGS = {
    "static": ["--pad_to_max_length"],
    "dynamic": ["--train_sampling_strategy", "group_by_length"],
    "padding_free": ["--padding_free"],
    "budget": ["--padding_free"],  # + --max_tokens_per_batch
    "padding_free_sdpa": ["--padding_free"],  # with transformers' own packed mask for sdpa (not in the default run)
}
DEFAULT_BATCHINGS = ["static", "dynamic", "padding_free", "budget"]
H200_BF16_TFLOPS = 989  # dense, without sparsity


def write_data(data_dir: Path, work: Path) -> None:
    """ADGEN as it is; oaast_sft_zh split into its multi-turn rows and its rows without history."""
    (work / "adgen.jsonl").write_text((data_dir / "adgen" / "train_1000.json").read_text(encoding="utf-8"), "utf-8")
    rows = json.loads((data_dir / "instruct" / "oaast_sft_zh.json").read_text(encoding="utf-8"))
    for name, keep in (("chat", lambda r: bool(r.get("history"))), ("single", lambda r: not r.get("history"))):
        lines = [json.dumps(r, ensure_ascii=False) for r in rows if keep(r)]
        (work / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_model(out_dir: Path, data_dir: Path, hidden_size: int, layers: int) -> None:
    """A Llama with the bert-base-chinese vocabulary ([SEP] ends answers), 64-wide attention heads."""
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


# ---- inside a worker process ------------------------------------------------------------------------------------


class BatchRecorder:
    """Wraps the script's collator: each training batch's padded tokens and example lengths; each generation
    batch's padded and real prompt tokens."""

    def __init__(self, collator):
        self.collator, self.train, self.prompts = collator, [], []

    def __call__(self, features):
        batch = self.collator(features)
        if "prompt_ids" in batch:
            self.prompts.append((batch["prompt_ids"].numel(), int(batch["prompt_attention_mask"].sum())))
        elif "row" not in batch:
            self.train.append((batch["input_ids"].numel(), [len(f["input_ids"]) for f in features]))
        return batch


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (synchronized on CUDA when `synced`)."""

    def __init__(self, synced: bool):
        self.synced, self.times, self.start = synced, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.synced and torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)


class InstrumentedTrainer(s2s.GenerationTrainer):
    """The script's trainer with a BatchRecorder and a StepTimer; `file_order` evaluates in file order."""

    synced, file_order, last = False, False, None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = self.recorder = BatchRecorder(self.data_collator)
        self.timer = StepTimer(self.synced)
        self.add_callback(self.timer)
        InstrumentedTrainer.last = self

    def _get_eval_sampler(self, eval_dataset):
        if self.file_order:
            return FileOrderEvaluation._get_eval_sampler(self, eval_dataset)
        return super()._get_eval_sampler(eval_dataset)


def rss_mb() -> float:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def script_args(job: dict, output_dir: str, extra: list[str]) -> list[str]:
    device = ["--use_cpu"] if job["device"] == "cpu" else ["--bf16"]
    source, target = SETS[job["set"]][1]
    return [
        "--model_name_or_path", job["model"], "--output_dir", output_dir, "--max_source_length", str(source),
        "--max_target_length", str(target), *SETS[job["set"]][2], "--report_to", "none", "--seed", "0",
        "--save_strategy", "no", "--logging_steps", "100000", *device, *extra,
    ]  # fmt: skip


def shape_timings(trainer) -> dict:
    """Synchronized step times of the untimed run: steps whose batch shape is new, and the others."""
    seen, new, again = set(), [], []
    for (padded, lengths), seconds in zip(trainer.recorder.train, trainer.timer.times):
        shape = (padded, len(lengths)) if padded != sum(lengths) else (padded,)
        (again if shape in seen else new).append(seconds)
        seen.add(shape)
    mean = lambda xs: round(1000 * sum(xs) / len(xs), 2) if xs else None  # noqa: E731
    return {"new_shape_steps": len(new), "new_shape_ms": mean(new), "seen_shape_ms": mean(again)}


def train_job(job: dict) -> dict:
    """Warm-up run, then the timed run, of one batching on one data set."""
    data, work = str(Path(job["work"]) / SETS[job["set"]][0]), Path(job["work"])
    extra = ["--do_train", "--train_file", data, "--max_train_samples", str(job["rows"]), *BATCHINGS[job["batching"]]]
    extra += ["--per_device_train_batch_size", str(job["batch"]), "--learning_rate", "1e-4"]
    if job["batching"] == "budget":
        extra += ["--max_tokens_per_batch", str(job["budget"])]
    warm = ["--max_steps", "2"] if job["batching"] == "static" else ["--num_train_epochs", "1"]
    InstrumentedTrainer.synced = True
    s2s.main(script_args(job, str(work / f"warm_{job['set']}_{job['batching']}"), [*extra, *warm]))
    cold = shape_timings(InstrumentedTrainer.last)
    InstrumentedTrainer.synced = False
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_mb()
    out = str(work / f"{job['set']}_{job['batching']}")
    results = s2s.main(script_args(job, out, [*extra, "--num_train_epochs", str(job["epochs"])]))
    trainer = InstrumentedTrainer.last
    padded = sum(p for p, _ in trainer.recorder.train)
    lengths = [n for _, ls in trainer.recorder.train for n in ls]
    shares = [sum(ls) / p for p, ls in trainer.recorder.train]
    row = {
        "set": job["set"], "batching": job["batching"], "steps": len(trainer.recorder.train),
        "real_tokens": sum(lengths), "padded_tokens": padded, "squared_lengths": sum(n * n for n in lengths),
        "train_runtime": results["train_runtime"], "min_real_share": min(shares),
        "mean_real_share": sum(shares) / len(shares), "warm_step_ms": round(1000 * sum(trainer.timer.times) /
        len(trainer.timer.times), 2), **cold,
    }  # fmt: skip
    if torch.cuda.is_available():
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:  # the warm-up ran the same batches: this process's peak is this batching's
        row["peak_rss_mb"], row["rss_before_timed_run_mb"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            baseline,
        )
    return row


def generate_job(job: dict) -> dict:
    """Predict the first `prompts` rows in file order and longest prompt first, twice each, alternating (the
    first round warms up; each order's faster round counts)."""
    data, work = str(Path(job["work"]) / SETS[job["set"]][0]), Path(job["work"])
    extra = ["--do_predict", "--test_file", data, "--per_device_eval_batch_size", "16", "--max_new_tokens", "32"]
    extra += ["--max_predict_samples", str(job["prompts"])]
    rows = {}
    for name, file_order in [("file order", True), ("longest first", False)] * 2:
        InstrumentedTrainer.file_order = file_order
        out = work / f"gen_{job['set']}_{name.replace(' ', '_')}"
        results = s2s.main(script_args(job, str(out), extra))
        recorder = InstrumentedTrainer.last.recorder
        seconds = min(results["predict_runtime"], rows.get(name, {}).get("predict_runtime", math.inf))
        rows[name] = {
            "prompts": job["prompts"], "padded_prompt_tokens": sum(p for p, _ in recorder.prompts),
            "prompt_tokens": sum(r for _, r in recorder.prompts), "predict_runtime": seconds,
            "predictions": (out / "generated_predictions.jsonl").read_text(encoding="utf-8"),
        }  # fmt: skip
    same = rows["file order"].pop("predictions") == rows["longest first"].pop("predictions")
    return {"set": job["set"], "same_predictions": same, **rows}


def worker(job: dict) -> None:
    s2s.GenerationTrainer = InstrumentedTrainer  # main() builds its trainer from this module attribute
    if job.get("batching") == "padding_free_sdpa":  # the same batches; one dense mask over the flattened batch
        s2s.PACKED_SDPA = "sdpa"
    result = train_job(job) if job["kind"] == "train" else generate_job(job)
    Path(job["result"]).write_text(json.dumps(result), encoding="utf-8")


# ---- the parent: jobs, table, JSON -------------------------------------------------------------------------------


def run_job(job: dict) -> dict:
    """One job in a fresh process, so its memory and caches are its own."""
    job["result"] = str(Path(job["work"]) / f"result_{job['kind']}_{job['set']}_{job.get('batching', '')}.json")
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(
            f"{job['kind']} {job['set']} {job.get('batching', '')} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return json.loads(Path(job["result"]).read_text(encoding="utf-8"))


def token_budget(args, name: str, rows: int, epochs: int, done: list[dict]) -> int:
    """--max_tokens_per_batch, else the mean tokens of a batch of `--batch` rows (measured by an earlier batching
    of this set: about as many steps), at least one longest possible example."""
    if args.max_tokens_per_batch:
        return args.max_tokens_per_batch
    measured = next((r for r in done if r["set"] == name), None)
    if measured is None:
        sys.exit("--batchings budget alone needs --max_tokens_per_batch (or another batching first to measure rows).")
    return max(round(args.batch * measured["real_tokens"] / (rows * epochs)), sum(SETS[name][1]))


def model_flops(row: dict, config: LlamaConfig) -> float:
    """Useful model FLOPs of a run (PaLM's count: 6 x matmul parameters per real token, attention 12 x layers x
    width x length^2 per example, forward and backward, padding excluded)."""
    d, layers, ffn, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    matmul_parameters = layers * (4 * d * d + 3 * d * ffn) + d * vocab
    return 6 * matmul_parameters * row["real_tokens"] + 12 * layers * d * row["squared_lengths"]


def summarize(training: list[dict], config: LlamaConfig, device: str, peak_tflops: float | None) -> None:
    """Ratios against static padding on the same set, and the targets."""
    for row in training:
        static = next(r for r in training if r["set"] == row["set"] and r["batching"] == "static")
        row["effective_tokens_per_s"] = row["real_tokens"] / row["train_runtime"]
        row["speedup_vs_static"] = (
            static["train_runtime"] / row["train_runtime"] * row["real_tokens"] / static["real_tokens"]
        )
        row["ideal_vs_static"] = static["padded_tokens"] / static["real_tokens"]
        row["share_of_ideal"] = row["speedup_vs_static"] / row["ideal_vs_static"]
        if peak_tflops:
            row["mfu"] = model_flops(row, config) / row["train_runtime"] / (peak_tflops * 1e12)


def targets(training: list[dict]) -> list[str]:
    lines = []
    for name in dict.fromkeys(r["set"] for r in training):
        rows = {r["batching"]: r for r in training if r["set"] == name}
        if not {"dynamic", "padding_free"} <= rows.keys():
            continue
        for free in [b for b in ("padding_free", "budget", "padding_free_sdpa") if b in rows]:
            r = rows[free]
            checks = [
                ("≥ dynamic", r["effective_tokens_per_s"] >= rows["dynamic"]["effective_tokens_per_s"]),
                ("≥ 0.9x ideal", r["share_of_ideal"] >= 0.9),
                ("≥ 98% real tokens", r["min_real_share"] >= 0.98),
            ]
            lines.append(f"{name:7} {free:17} " + "  ".join(f"{t}: {'met' if ok else 'NOT met'}" for t, ok in checks))
    return lines


def milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_tables(report: dict) -> None:
    header = (
        f"{'set':7} {'batching':17} {'steps':>5} {'real tok':>9} {'padded':>9} {'real %':>7} {'tok/s':>8} "
        f"{'vs static':>9} {'ideal':>6} {'of ideal':>8} {'new-shape ms':>12} {'seen ms':>8} {'peak MB':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in report["training"]:
        peak = r.get("peak_memory_mb", r.get("peak_rss_mb", 0))
        print(
            f"{r['set']:7} {r['batching']:17} {r['steps']:5d} {r['real_tokens']:9d} {r['padded_tokens']:9d} "
            f"{100 * r['mean_real_share']:6.1f}% {r['effective_tokens_per_s']:8.0f} {r['speedup_vs_static']:8.2f}x "
            f"{r['ideal_vs_static']:5.2f}x {r['share_of_ideal']:8.2f} {milliseconds(r['new_shape_ms']):>12} "
            f"{milliseconds(r['seen_shape_ms']):>8} {peak:8.0f}"
            + (f"  MFU {100 * r['mfu']:.1f}%" if "mfu" in r else "")
        )
    if report["training"]:
        print("\ntargets (CPU): padding-free >= dynamic, >= 0.9x the ideal over static, >= 98% real tokens per step")
        print("\n".join(targets(report["training"])))
    for g in report["generation"]:
        before, after = g["file order"], g["longest first"]
        print(
            f"\ngeneration {g['set']}: {before['prompts']} prompts, {before['prompt_tokens']} prompt tokens; padded "
            f"{before['padded_prompt_tokens']} in file order -> {after['padded_prompt_tokens']} longest first; "
            f"{before['predict_runtime']:.2f} s -> {after['predict_runtime']:.2f} s "
            f"({before['predict_runtime'] / after['predict_runtime']:.2f}x); same predictions: {g['same_predictions']}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--batchings", nargs="+", choices=list(BATCHINGS), default=DEFAULT_BATCHINGS)
    parser.add_argument("--rows", type=int, default=160, help="Training rows per data set (each trained once).")
    parser.add_argument(
        "--batch", type=int, default=8, help="Rows per training batch (static, dynamic, padding-free)."
    )
    parser.add_argument("--steps", type=int, default=0, help="Train enough epochs for at least this many steps.")
    parser.add_argument("--max_tokens_per_batch", type=int, default=None, help="Default: batch x mean row tokens.")
    parser.add_argument("--prompts", type=int, default=64, help="Prompts per generation measurement (0: none).")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda runs in bf16.")
    parser.add_argument("--hidden_size", type=int, default=256, help="Model width (4 layers x 256 on CPU).")
    parser.add_argument("--layers", type=int, default=4, help="Model depth.")
    parser.add_argument("--peak_tflops", type=float, default=None, help=f"For MFU (cuda default {H200_BF16_TFLOPS}).")
    parser.add_argument("--data_dir", type=Path, default=SHARED, help="A copy of ../shared/data.")
    parser.add_argument("--output", type=Path, default=None, help="Results JSON (default benchmarks/results_*).")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if not args.data_dir.is_dir():
        sys.exit(f"The benchmark needs the shared real data at {args.data_dir} (see ../shared/data/README.md).")
    started, work = time.time(), Path(tempfile.mkdtemp(prefix="bench_seq2seq_"))
    write_data(args.data_dir, work)
    build_model(work / "model", args.data_dir, args.hidden_size, args.layers)
    config = LlamaConfig.from_pretrained(work / "model")
    peak = args.peak_tflops or (H200_BF16_TFLOPS if args.device == "cuda" else None)
    base = {"work": str(work), "model": str(work / "model"), "device": args.device}
    report = {"device": args.device, "model": f"llama {args.layers} x {args.hidden_size}", "rows": args.rows,
              "batch": args.batch, "torch_threads": torch.get_num_threads(), "training": [], "generation": []}  # fmt: skip
    for name in args.sets:
        available = len((work / SETS[name][0]).read_text(encoding="utf-8").splitlines())
        rows = min(args.rows, available)
        epochs = max(1, math.ceil(args.steps / max(rows // args.batch, 1))) if args.steps else 1
        for batching in args.batchings:
            job = dict(base, kind="train", set=name, batching=batching, rows=rows, batch=args.batch, epochs=epochs)
            if batching == "budget":
                job["budget"] = token_budget(args, name, rows, epochs, report["training"])
            report["training"].append(run_job(job))
            print(json.dumps(report["training"][-1]), flush=True)
        if args.prompts and name in ("adgen", "chat"):
            report["generation"].append(run_job(dict(base, kind="generate", set=name, prompts=args.prompts)))
    summarize(report["training"], config, args.device, peak)
    report["seconds"] = round(time.time() - started)
    print_tables(report)
    suffix = "" if args.device == "cpu" else "_" + args.device
    out = args.output or ROOT / "benchmarks" / f"results_seq2seq{suffix}.json"
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"\n{report['seconds']} s; written to {out}")


if __name__ == "__main__":
    main()
