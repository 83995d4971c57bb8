"""How a run is launched: torchrun / deepspeed preparation, the dry run, the DataParallel refusal, DeepSpeed fills.

torchrun and deepspeed set WORLD_SIZE, RANK and LOCAL_RANK for each process. `prepare_launch` is the one step
that must come before the arguments are parsed, because TrainingArguments set up the devices (and DeepSpeed's
configuration) in their constructor.
"""

import argparse
import base64
import binascii
import importlib.util
import json
import logging
import os
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import torch
from transformers.utils import strtobool

from zhtrain.errors import ArgumentError, UserError
from zhtrain.parsing import read_argument_file, split_argument_file

logger = logging.getLogger(__name__)


def prepare_launch(argv: Sequence[str] | Mapping | None = None) -> list[str] | dict:
    """Get this process ready for multi-process / DeepSpeed training; returns the arguments to parse.

    Adds `--use_cpu` where a launch needs it (see `launch_flags`). With --deepspeed in a plain `python run_x.py`
    (no launcher) DeepSpeed would look for MPI, so the variables of a one-process world are set. ZeRO-3 on CPU
    also needs DeepSpeed's own gloo process group before `from_pretrained` partitions the weights (zero.Init).
    """
    args = sys.argv[1:] if argv is None else argv
    use_cpu, deepspeed = launch_settings(args)
    problem = deepspeed_problem(deepspeed)
    if problem:
        path = None if isinstance(args, Mapping) else split_argument_file(args)[0]
        from_file = path and "--deepspeed" not in args and not any(str(a).startswith("--deepspeed=") for a in args)
        raise ArgumentError(problem + (f" (`deepspeed` is set in {path})" if from_file else ""))
    has_accelerator = torch.accelerator.is_available()
    flags = launch_flags(use_cpu, deepspeed, os.environ, has_accelerator)
    if deepspeed and not any(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
        defaults["MASTER_PORT"] = os.environ.get("MASTER_PORT") or str(free_port())
        os.environ.update(defaults)
        logger.info("--deepspeed without a launcher: running as a world of one process (%s).", defaults)
    if deepspeed and not has_accelerator and not dry_run_requested():
        import deepspeed as ds  # optional: only runs given --deepspeed need it

        ds.init_distributed(dist_backend="gloo")
    if isinstance(args, Mapping):
        return {**args, "use_cpu": True} if flags else dict(args)
    return [*args, *flags]


def launch_settings(args: Sequence[str] | Mapping) -> tuple[bool, str | None]:
    """(--use_cpu, --deepspeed) as given on the command line, in the argument file, or in an argument dict."""
    if isinstance(args, Mapping):
        values, cli = dict(args), []
    else:
        path, cli = split_argument_file(args)
        values = read_argument_file(path, warn=False) if path else {}
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in ("use_cpu", "no_cuda"):  # no_cuda: the transformers-4 name, mapped by parse_args
        parser.add_argument(f"--{name}", f"--{name.replace('_', '-')}", nargs="?", const="true", default=None)
    parser.add_argument("--deepspeed", default=None)
    known, _ = parser.parse_known_args(cli)
    use_cpu = next((v for v in (known.use_cpu, known.no_cuda) if v is not None), None)
    if use_cpu is None:
        use_cpu = values.get("use_cpu", values.get("no_cuda", False))
    deepspeed = known.deepspeed if known.deepspeed is not None else values.get("deepspeed")
    try:
        use_cpu = bool(strtobool(str(use_cpu)))
    except ValueError:
        use_cpu = False  # not a boolean: parse_args reports it
    return use_cpu, deepspeed or None


def deepspeed_problem(deepspeed) -> str | None:
    """What stops --deepspeed before TrainingArguments try it: DeepSpeed not installed, or a config that is no file."""
    if not deepspeed:
        return None
    if importlib.util.find_spec("deepspeed") is None:
        return (
            "--deepspeed needs DeepSpeed, which is not installed. Install it after torch, against that torch: "
            "pip install --no-build-isolation deepspeed==0.19.8 (its ops compile on first use: g++ and ninja)."
        )
    if isinstance(deepspeed, str) and not Path(deepspeed).is_file() and not _is_inline_config(deepspeed):
        shipped = ", ".join(
            sorted(p.name for p in (Path(__file__).resolve().parent.parent / "ds_configs").glob("*.json"))
        )
        return f"--deepspeed '{deepspeed}' is not a file. Pass a DeepSpeed config JSON; this project ships ds_configs/ {shipped}."
    return None


def _is_inline_config(value: str) -> bool:
    """A config given as JSON text or base64-encoded JSON, which transformers accepts instead of a path."""
    try:
        json.loads(value if value.lstrip().startswith("{") else base64.urlsafe_b64decode(value))
    except (ValueError, binascii.Error):
        return False
    return True


def launch_flags(use_cpu: bool, deepspeed, environ: Mapping[str, str], has_accelerator: bool) -> list[str]:
    """Flags a launch needs added: `--use_cpu` for torchrun / deepspeed on a machine without GPUs.

    Without it accelerate builds no process group on a CPU-only machine and every rank silently trains
    alone (world size 1, all writing the same output_dir); DeepSpeed fails its batch-size check.

    >>> launch_flags(False, None, {"WORLD_SIZE": "2"}, has_accelerator=False)
    ['--use_cpu']
    """
    launched = int(environ.get("WORLD_SIZE", "1")) > 1
    if use_cpu or has_accelerator or not (launched or deepspeed):
        return []
    logger.warning("No GPU found: adding --use_cpu so the processes train together over gloo.")
    return ["--use_cpu"]


def free_port() -> int:
    """A TCP port no process listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dry_run_requested() -> bool:
    """DRY_RUN=1 in the environment: parse and validate the arguments, print them, and stop before any data."""
    return os.environ.get("DRY_RUN", "").strip().lower() not in ("", "0", "false", "no")


def end_dry_run(parsed: Sequence) -> None:
    """DRY_RUN=1: the arguments were parsed and validated; print what they resolved to and stop before any data."""
    if dry_run_requested():
        print_arguments(parsed)
        print("DRY_RUN: the arguments are valid; exiting before loading data or models.")
        raise SystemExit(0)


def print_arguments(parsed: Sequence) -> None:
    """Print, per argument class, the values that differ from the defaults (what a dry run resolved to)."""
    for obj in parsed:
        values = {}
        for f in fields(obj):
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            value = getattr(obj, f.name)
            # TrainingArguments normalise some defaults when built ("none" -> [], None -> a default config)
            unchanged = value == default or (not value and not default)
            if is_dataclass(value) and default is None:
                unchanged = value == type(value)()
            if f.init and not unchanged:
                values[f.name] = value
        print(f"{type(obj).__name__}: {json.dumps(values, ensure_ascii=False, default=str, indent=2)}")


def refuse_data_parallel(training_args, model_parallel: bool = False) -> None:
    """Refuse a plain `python run_x.py` that sees several GPUs, and print the torchrun command instead.

    The Trainer would wrap the model in torch DataParallel: slower than DDP, every batch gathered on GPU 0
    (a common OOM). `model_parallel` (run_seq2seq_ptuning.py --model_parallel_mode) is the one intended
    single-process use of several GPUs.
    """
    gpus = torch.cuda.device_count()
    launched = any(name in os.environ for name in ("WORLD_SIZE", "LOCAL_RANK"))
    if gpus < 2 or launched or model_parallel or training_args.use_cpu or training_args.deepspeed:
        return
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "run_x.py"
    torchrun = shlex.join(["torchrun", "--nproc_per_node", str(gpus), script, *sys.argv[1:]])
    raise UserError(
        f"{gpus} GPUs are visible to this single process, which would train them with DataParallel (slow, and "
        f"GPU 0 runs out of memory first). Start one process per GPU:\n  {torchrun}\n"
        f"or train on one GPU: CUDA_VISIBLE_DEVICES=0 python {shlex.join([script, *sys.argv[1:]])}\n"
        "(run_seq2seq_ptuning.py can also spread one large model over the GPUs: --model_parallel_mode)."
    )


def fill_deepspeed_hidden_size(trainer) -> None:
    """Fill DeepSpeed's hidden-size based "auto" values for models whose config has no top-level hidden_size.

    transformers sizes ZeRO buckets from `config.hidden_size` (or text_config's) and raises for a
    vision-encoder-decoder (encoder / decoder sub-configs); this uses the largest sub-config hidden size,
    with transformers' own formulas, before `deepspeed_init` asks.
    """
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    hf_config = getattr(plugin, "hf_ds_config", None)
    config = getattr(trainer.model, "config", None)
    if hf_config is None or config is None or hasattr(config, "hidden_size") or hasattr(config, "hidden_sizes"):
        return
    sizes = []
    for name in ("text_config", "vision_config", "encoder", "decoder"):
        sub = getattr(config, name, None)
        size = getattr(sub, "hidden_size", None) or max(getattr(sub, "hidden_sizes", None) or [0])
        if size:
            sizes.append(size)
    if not sizes:
        return  # transformers raises its own error naming the keys to set
    hidden = max(sizes)
    hf_config.fill_only("zero_optimization.reduce_bucket_size", hidden * hidden)
    if hf_config.is_zero3():
        hf_config.fill_only("zero_optimization.stage3_prefetch_bucket_size", int(0.9 * hidden * hidden))
        hf_config.fill_only("zero_optimization.stage3_param_persistence_threshold", 10 * hidden)
