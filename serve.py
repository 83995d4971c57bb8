"""Serve what you trained: an OpenAI-compatible API, a web page and a terminal chat, for every task's output.

    python serve.py outputs/seq2seq_demo                     # API + web page on http://127.0.0.1:8000
    python serve.py outputs/adgen-lora                       # a LoRA / P-Tuning adapter, served unmerged
    python serve.py outputs/adgen-lora --model_name_or_path /models/Qwen2.5-1.5B-Instruct   # its base elsewhere
    python serve.py outputs/classification_demo --port 8001 --api_key "$KEY"
    python serve.py outputs/seq2seq_demo --chat              # chat in the terminal (clear, exit)

The folder tells what it holds (zhtrain/serve/model.py): chat and causal-LM models get /v1/chat/completions,
/v1/completions and /v1/models; a classifier /v1/classify; a CLIP model /v1/embeddings and /v1/similarity; a
captioner /v1/caption; every server /health, /metrics and a web page at / (zhtrain/serve/routes.py names them
all). Generation requests are batched (zhtrain/serve/batching.py). It binds 127.0.0.1 unless --host says
otherwise; --api_key (or SERVE_API_KEY) guards /v1/* and /metrics; requests over a limit get a 400 or 429 in
OpenAI's error shape. Exit status: 0, 1 for a folder it cannot serve, 2 for bad arguments.
"""

import argparse
import logging
import os
import queue
import sys
import threading

from zhtrain.chat.format import TEMPLATE_NAMES
from zhtrain.errors import ArgumentError, run_main
from zhtrain.serve.api import build_app
from zhtrain.serve.batching import ContinuousEngine, GenerationRequest, WaveEngine
from zhtrain.serve.model import Served, ServeError, TextStream, default_device, describe_folder, load_served, pad_id_of
from zhtrain.serve.routes import Task

logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="A folder written by one of the run_*.py scripts (or a checkpoint-N).")
    parser.add_argument(
        "--model_name_or_path", help="Base model of an adapter, if not the one its adapter_config.json names."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind; 0.0.0.0 opens it to the network.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api_key", default=os.environ.get("SERVE_API_KEY"), help="Require `Authorization: Bearer KEY` on /v1/* "
        "and /metrics (default: $SERVE_API_KEY; none: open)."
    )  # fmt: skip
    parser.add_argument("--chat", action="store_true", help="Chat in the terminal instead of serving HTTP.")
    parser.add_argument("--served_model_name", help="The model id clients send (default: the folder's name).")
    parser.add_argument("--template", choices=TEMPLATE_NAMES, help="Prompt format for a tokenizer without one.")
    parser.add_argument("--chat_template", help="A Jinja chat template file to use instead of the tokenizer's.")
    parser.add_argument("--system_prompt", help="System prompt for conversations that bring none (as in training).")
    parser.add_argument("--device", default=default_device(), help="cpu, cuda, cuda:1... (default: cuda if any).")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument(
        "--batching", default="auto", choices=["auto", "continuous", "waves"],
        help="auto: transformers' continuous batching for decoder-only models (full or LoRA) on a GPU, our waves "
        "on CPU and for P-Tuning and encoder-decoder models (zhtrain/serve/batching.py says why). continuous / "
        "waves: force one.",
    )  # fmt: skip
    parser.add_argument("--max_batch_size", type=int, default=16, help="Requests generated together, at most.")
    parser.add_argument(
        "--max_concurrent_requests", type=int, default=64, help="Requests in flight at once; more get a 429."
    )
    parser.add_argument("--max_tokens", type=int, default=512, help="Most tokens one answer may ask for (default).")
    parser.add_argument("--max_prompt_tokens", type=int, default=2048, help="Longest prompt, in tokens.")
    parser.add_argument("--max_request_bytes", type=int, default=8 << 20, help="Largest request body.")
    parser.add_argument("--max_inputs", type=int, default=64, help="Most texts or images in one request.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the server's sampling generator.")
    args = parser.parse_args(argv)
    for name in ("max_batch_size", "max_concurrent_requests", "max_tokens", "max_prompt_tokens", "max_inputs"):
        if getattr(args, name) < 1:
            raise ArgumentError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    return args


def start_engine(served: Served, args):
    """The batching engine for this model: transformers' continuous batching where it fits, our waves elsewhere."""
    prefix = served.kind.adapter_type == "PREFIX_TUNING"
    cannot = "P-Tuning adapters" if prefix else "encoder-decoder models" if served.encoder_decoder else None
    if args.batching == "continuous" and cannot:
        raise ServeError(
            f"--batching continuous cannot serve {cannot} (see zhtrain/serve/batching.py); use --batching auto"
        )
    if args.batching == "waves" or cannot or (args.batching == "auto" and not args.device.startswith("cuda")):
        return WaveEngine(served.model, pad_id_of(served), args.max_batch_size)
    model = served.model.get_base_model() if served.kind.adapter else served.model  # LoRA layers stay injected
    context = min(served.context or 1 << 30, args.max_prompt_tokens + args.max_tokens)
    return ContinuousEngine(model, served.stop_ids, pad_id_of(served), args.max_batch_size, context, args.seed)


def warm_up(served: Served, engine) -> None:
    """One short generation at start, so the first user does not pay for the first call's set-up."""
    done = threading.Event()
    prompt = served.completion_prompt_ids("你好") or [pad_id_of(served)]
    engine.submit(GenerationRequest(prompt, 4, served.stop_ids, lambda ids, finished, error: finished and done.set()))
    if not done.wait(timeout=300):
        raise ServeError("the warm-up generation did not finish in 5 minutes")


def load(args):
    """(served model, engine or None) for the folder in `args`; ServeError when it cannot be served."""
    kind = describe_folder(args.output_dir, args.model_name_or_path)
    logger.info("%s holds a %s: serving it for %s", args.output_dir, kind.description, kind.task)
    served = load_served(kind, args)
    engine = None
    if served.task == Task.GENERATE:
        engine = start_engine(served, args)
        warm_up(served, engine)
        logger.info("Generation: %s batching, up to %d requests at once", engine.name, args.max_batch_size)
    return served, engine


def terminal_chat(served: Served, engine, args, lines, write) -> list[dict]:
    """ChatGLM's cli_demo for our models: each line is a message, `clear` forgets the history, `exit` quits.

    Answers are written piece by piece as they are generated. Returns the history (for tests).
    """
    history: list[dict] = []
    write(f"Chatting with {served.name} ({served.kind.description}). `clear` empties the history, `exit` quits.\n")
    for line in lines:
        text = line.strip()
        if text == "exit":
            break
        if text == "clear":
            history = []
            write("(history cleared)\n")
            continue
        if not text:
            continue
        messages = [*history, {"role": "user", "content": text}]
        try:
            answer = stream_answer(served, engine, args, served.chat_prompt_ids(messages), write)
        except ServeError as exc:
            write(f"error: {exc}\n")
            continue
        history = [*messages, {"role": "assistant", "content": answer}]
    return history


def stream_answer(served: Served, engine, args, prompt_ids: list[int], write) -> str:
    """Generate one answer through the engine, writing its text as it arrives."""
    if len(prompt_ids) + args.max_tokens > (served.context or 1 << 30):
        raise ServeError("the conversation is too long for the model: type `clear` to start again")
    events = queue.Queue()
    stream = TextStream(served, [])
    engine.submit(
        GenerationRequest(
            prompt_ids, args.max_tokens, served.stop_ids, lambda *event: events.put(event),
            **served.generation_defaults,
        )
    )  # fmt: skip
    write("> ")
    while stream.finish_reason is None:
        ids, finished, error = events.get()
        if error:
            raise ServeError(error)
        write(stream.add(ids, finished, args.max_tokens))
    write("\n")
    return stream.sent


def write_flushed(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    served, engine = load(args)
    try:
        if args.chat:
            if not served.can_chat:
                raise ServeError(f"--chat needs a chat model; {args.output_dir} holds a {served.kind.description}.")
            terminal_chat(served, engine, args, iter(sys.stdin.readline, ""), write_flushed)
            return 0
        import uvicorn

        app = build_app(served, engine, args)
        print(f"Serving {served.name} ({served.kind.description}) on http://{args.host}:{args.port}", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0
    finally:
        if engine is not None:
            engine.close()


if __name__ == "__main__":
    sys.exit(run_main(main))
