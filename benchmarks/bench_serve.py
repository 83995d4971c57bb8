"""Benchmark serve.py: aggregate generated tokens/s and time to first token under 1, 4, 8, 16 concurrent clients.

    python benchmarks/bench_serve.py                          # a few minutes on 2 CPU cores
    python benchmarks/bench_serve.py --clients 1,4 --requests_per_client 1 --max_tokens 8     # a smoke run
    python benchmarks/bench_serve.py --device cuda --hidden_size 1024 --layers 12             # a GPU

Each mode is `python serve.py` in its own process on a free loopback port; every client streams chat
completions one after another (closed loop) and times each answer's first piece (TTFT) and its tokens
(`usage`). Modes, measured in the same run on the same model:
- continuous: transformers' continuous batching (serve.py's choice on a GPU);
- waves: our scheduler (serve.py's choice on CPU, and for P-Tuning and encoder-decoder models);
- one-at-a-time: our scheduler with --max_batch_size 1, requests served one after another (the baseline: what a
  server that calls `generate` per request does).
The model is a random Llama on the demo's character vocabulary (default 2 layers of width 64, like the demo's)
with the project's chat template, built into a temp dir, unless --model names a folder (answers then stop at
their stop tokens, and tokens/s counts what was generated). Results: a table, and --output (JSON).
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import httpx  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import demo_models  # noqa: E402
from zhtrain.chat.format import choose_chat_template  # noqa: E402
from zhtrain.launch import free_port  # noqa: E402

MODES = {
    "continuous": ["--batching", "auto"],
    "waves": ["--batching", "waves"],
    "one-at-a-time": ["--batching", "waves", "--max_batch_size", "1"],
}


def build_model(out: Path, hidden_size: int, layers: int) -> Path:
    """A random Llama on the demo's character vocabulary, saved as run_seq2seq_ptuning.py saves a chat model."""
    tokenizer = demo_models.build_tokenizer(out / "tokenizer")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden_size // 16),
        num_key_value_heads=max(1, hidden_size // 32),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out / "model")
    tokenizer.eos_token = tokenizer.sep_token
    choose_chat_template(tokenizer, "default")
    tokenizer.save_pretrained(out / "model")
    return out / "model"


async def one_request(http: httpx.AsyncClient, index: int, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first piece, seconds in all, tokens generated) for one streamed chat completion."""
    body = {"messages": [{"role": "user", "content": f"类型#裙*颜色#红色*编号#{index}"}], "stream": True}
    body |= {"max_tokens": max_tokens, "stream_options": {"include_usage": True}, "temperature": 0}
    start, first, tokens = time.perf_counter(), None, 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start, time.perf_counter() - start, tokens


async def load(url: str, clients: int, requests_per_client: int, max_tokens: int) -> dict:
    """`clients` closed-loop clients, each sending `requests_per_client` requests in turn."""

    async def client(http, c):
        return [await one_request(http, c * 1000 + r, max_tokens) for r in range(requests_per_client)]

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client(http, c) for c in range(clients))) for r in rs]
        seconds = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2),
        "ttft_p50_s": round(statistics.median(ttft), 4),
        "ttft_p95_s": round(ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))], 4),
    }


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve.py exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("serve.py did not come up")


def run_mode(model: Path, mode: str, args) -> list[dict]:
    port = free_port()
    command = [sys.executable, str(ROOT / "serve.py"), str(model), "--port", str(port), "--device", args.device]
    command += [*MODES[mode], "--max_tokens", str(args.max_tokens)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, process)
        rows = []
        for clients in args.clients:
            row = {"mode": mode, **asyncio.run(load(url, clients, args.requests_per_client, args.max_tokens))}
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows
    finally:
        process.terminate()
        process.wait(timeout=30)


def print_table(rows: list[dict]) -> None:
    baseline = {r["clients"]: r["tokens_per_s"] for r in rows if r["mode"] == "one-at-a-time"}
    header = ("mode", "clients", "requests", "tokens/s", "vs one-at-a-time", "TTFT p50 s", "TTFT p95 s")
    table = [header]
    for r in rows:
        ratio = f"{r['tokens_per_s'] / baseline[r['clients']]:.2f}x" if r["clients"] in baseline else ""
        table.append(
            (r["mode"], r["clients"], r["requests"], r["tokens_per_s"], ratio, r["ttft_p50_s"], r["ttft_p95_s"])
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).rjust(w) for cell, w in zip(row, widths)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A folder serve.py serves (default: a tiny random chat Llama).")
    parser.add_argument("--clients", default="1,4,8,16", help="Concurrent clients, comma-separated.")
    parser.add_argument("--requests_per_client", type=int, default=3)
    parser.add_argument("--max_tokens", type=int, default=32, help="Tokens per answer (the random model never stops).")
    parser.add_argument("--modes", default=",".join(MODES), help=f"Comma-separated, of: {', '.join(MODES)}.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden_size", type=int, default=64, help="Width of the random model (GPU: try 1024).")
    parser.add_argument("--layers", type=int, default=2, help="Layers of the random model (GPU: try 12).")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the server.")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results_serve.json"))
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else build_model(Path(tmp), args.hidden_size, args.layers)
        rows = [row for mode in args.modes.split(",") for row in run_mode(model, mode, args)]
    print_table(rows)
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    Path(args.output).write_text(json.dumps({"settings": settings, "results": rows}, indent=2), encoding="utf-8")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
