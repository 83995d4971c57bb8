"""Numerical proof that scripts/convert_chatglm.py turns ChatGLM2/ChatGLM3 into a native GLM that computes the same.

    python benchmarks/check_chatglm_conversion.py
    python benchmarks/check_chatglm_conversion.py --venv /tmp/chatglm-reference-venv --transformers 4.40.2
    python benchmarks/check_chatglm_conversion.py --workdir /tmp/chatglm-check --keep

THUDM's remote code does not run on transformers 5, so the reference runs in a separate virtual environment
(`--venv`, created on the first run: python -m venv, then `pip install torch==2.13.0 transformers==4.40.2
sentencepiece safetensors "numpy<2"`; torch is pinned so pip takes the local CPU wheel). For each case,
benchmarks/chatglm_reference.py builds a tiny random ChatGLM there from the real config_tiny.json (2 layers,
64 wide, the real vocabulary) with THUDM's code, saves it and records its logits, greedy generations and
tokenizer ids. This script then converts the checkpoint in this project's venv and compares, in float32:
logits (max abs difference <= 1e-5 over every real position; padded positions are not compared), argmax
agreement, greedy generation (one prompt and a left-padded batch), the tokenizer's ids against ChatGLM's own
tokenizer (plain texts, and chat prompts against ChatGLM2's build_prompt / ChatGLM3's build_chat_input), and
the generation config's stop ids. It prints a table and exits 1 if any check fails.

Needs ../shared/models (THUDM's files) next to the repository, about 1.5 GB of disk for the venv, and a few
minutes the first time (seconds per case after).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GlmForCausalLM
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from convert_chatglm import convert  # noqa: E402
from zhtrain.chat.format import ChatFormat  # noqa: E402

MODELS = ROOT.parent / "shared" / "models"
REFERENCE_SCRIPT = Path(__file__).resolve().parent / "chatglm_reference.py"
REMOTE_FILES = ["configuration_chatglm.py", "modeling_chatglm.py", "quantization.py", "tokenization_chatglm.py",
                "tokenizer.model", "tokenizer_config.json"]  # fmt: skip
STOP_IDS = {"chatglm2": [2], "chatglm3": [2, 64795, 64797]}
TOLERANCE = 1e-5

# (name, family, config changes, how THUDM's save_pretrained writes it, saved dtype, convert_chatglm --dtype)
CASES = [
    ("chatglm2", "chatglm2", {}, "safetensors", "float32", None),
    ("chatglm3", "chatglm3", {}, "bin", "float32", None),
    ("chatglm2 no-MQA", "chatglm2", {"multi_query_attention": False}, "bin", "float32", None),
    ("chatglm3 fp16->fp32", "chatglm3", {}, "safetensors", "float16", "float32"),
]


def ensure_venv(venv: Path, transformers_version: str) -> Path:
    """The reference venv's python, creating the venv (or installing into it) unless it already fits."""
    python = venv / "bin" / "python"
    probe = "import transformers, sentencepiece, safetensors, torch; print(transformers.__version__)"
    if python.is_file():
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == transformers_version:
            return python
    else:
        print(f"Creating the reference venv {venv} (transformers {transformers_version}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # torch pinned to the tested version: an unpinned torch would be a multi-GB CUDA build from PyPI.
    packages = ["torch==2.13.0", f"transformers=={transformers_version}", "sentencepiece", "safetensors", "numpy<2"]
    subprocess.run([python, "-m", "pip", "install", "-q", *packages], check=True)
    return python


def make_case_dir(path: Path, family: str, changes: dict) -> None:
    """THUDM's code and tokenizer with the tiny config (plus `changes`), as a remote-code checkpoint folder."""
    path.mkdir(parents=True)
    for name in REMOTE_FILES:
        shutil.copy(MODELS / family / name, path / name)
    config = json.loads((MODELS / family / "config_tiny.json").read_text(encoding="utf-8"))
    # config_tiny.json was written by transformers 5, which leaves out use_cache; THUDM's code reads it.
    config.update({"use_cache": True, **changes})
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def run_reference(python: Path, case_dir: Path, family: str, save: str, dtype: str, seed: int, hf_home: Path) -> None:
    """Build, save and run the case's model with THUDM's code in the reference venv (HF_HOME keeps its module cache)."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [python, REFERENCE_SCRIPT, case_dir, "--family", family, "--save", save, "--dtype", dtype]
    command += ["--seed", str(seed)]
    command += ["--eos", ",".join(map(str, STOP_IDS[family]))]
    done = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the reference side failed for {case_dir}:\n{done.stdout}\n{done.stderr}")


def chat_prompt_ids(tokenizer, family: str, chat: dict) -> list[list[int]]:
    """Our template's prompt ids for the reference's two conversations (without and with history)."""
    fmt = ChatFormat(tokenizer)
    system = [{"role": "system", "content": chat["system"]}] if family == "chatglm3" else []
    history = []
    for question, answer in chat["history"]:
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    out = []
    for messages in (
        [{"role": "user", "content": chat["query"]}],
        [*system, *history, {"role": "user", "content": chat["query"]}],
    ):
        out.append(fmt.encode(messages, False, 10**6, 10**6).input_ids)
    return out


def compare(case_dir: Path, native_dir: Path, family: str) -> dict:
    """Every check of one case: {name: value} with 'ok' telling whether all passed."""
    record = json.loads((case_dir / "reference.json").read_text(encoding="utf-8"))
    reference = load_file(str(case_dir / "reference_logits.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(native_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(native_dir)
    inputs = {k: {n: torch.tensor(v) for n, v in x.items()} for k, x in record["inputs"].items()}
    diffs, agree, total = [], 0, 0
    with torch.no_grad():
        for name, feed in inputs.items():
            logits = model(**feed).logits
            real = (
                feed["attention_mask"].bool()
                if "attention_mask" in feed
                else torch.ones(logits.shape[:2], dtype=torch.bool)
            )
            diffs.append((logits - reference[name]).abs()[real].max().item())
            agree += (logits.argmax(-1) == reference[name].argmax(-1))[real].sum().item()
            total += real.sum().item()
        greedy = {"max_new_tokens": 12, "do_sample": False}
        single = model.generate(inputs["single"]["input_ids"], **greedy).tolist()
        batch = inputs["batch"]
        batched = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], **greedy).tolist()
    tok = record["tokenizer"]
    ids_ok = [tokenizer(t)["input_ids"] for t in tok["texts"]] == tok["ids"]
    ids_ok &= [tokenizer(t, add_special_tokens=False)["input_ids"] for t in tok["texts"]] == tok["plain_ids"]
    chat_ok = chat_prompt_ids(tokenizer, family, tok["chat"]) == tok["chat"]["ids"]
    stops = GenerationConfig.from_pretrained(native_dir).eos_token_id
    result = {
        "max_abs_diff": max(diffs),
        "argmax": f"{agree}/{total}",
        "greedy": single == record["generated"]["single"] and batched == record["generated"]["batch"],
        "tokenizer": ids_ok,
        "chat_prompt": chat_ok,
        "stop_ids": stops == STOP_IDS[family],
        "native": isinstance(model, GlmForCausalLM),
    }
    result["ok"] = (
        result["max_abs_diff"] <= TOLERANCE
        and agree == total
        and all(result[k] for k in ("greedy", "tokenizer", "chat_prompt", "stop_ids", "native"))
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--venv", default="/tmp/chatglm-reference-venv", help="The reference venv (created if absent)."
    )
    parser.add_argument("--transformers", default="4.40.2", help="transformers version that runs THUDM's code.")
    parser.add_argument("--workdir", help="Where the checkpoints go (default: a temp dir, removed unless --keep).")
    parser.add_argument("--keep", action="store_true", help="Keep the work dir.")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    if not (MODELS / "chatglm2" / "modeling_chatglm.py").is_file():
        sys.exit(f"error: {MODELS} (THUDM's ChatGLM files) is not there; it sits next to the repository in CI.")
    python = ensure_venv(Path(args.venv), args.transformers)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="chatglm-check-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for index, (name, family, changes, save, saved_dtype, convert_dtype) in enumerate(CASES):
            case_dir, native_dir = work / f"case{index}-remote", work / f"case{index}-native"
            for path in (case_dir, native_dir):
                shutil.rmtree(path, ignore_errors=True)
            make_case_dir(case_dir, family, changes)
            run_reference(python, case_dir, family, save, saved_dtype, index, work / "hf_home")
            convert(case_dir, native_dir, dtype=convert_dtype)
            rows.append((name, f"{save} {saved_dtype}", compare(case_dir, native_dir, family)))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nTHUDM remote code on transformers {args.transformers} vs native GlmForCausalLM on the installed one")
    header = f"{'case':<22}{'checkpoint':<20}{'max |diff|':>11}  {'argmax':>9}  greedy  tokenizer  chat  stops  ok"
    print(header + "\n" + "-" * len(header))
    for name, saved, r in rows:
        flags = "  ".join(
            f"{'yes' if r[k] else 'NO':<{w}}"
            for k, w in (("greedy", 6), ("tokenizer", 9), ("chat_prompt", 4), ("stop_ids", 5))
        )
        print(
            f"{name:<22}{saved:<20}{r['max_abs_diff']:>11.2e}  {r['argmax']:>9}  {flags}  {'PASS' if r['ok'] else 'FAIL'}"
        )
    failed = [name for name, _, r in rows if not r["ok"]]
    print(
        f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all cases pass'} (logit tolerance {TOLERANCE:g}, float32)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
