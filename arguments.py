"""Arguments shared by every script, and the parser that reads them.

`parse_args` accepts, like the transformers examples, plain command-line flags, or one
`.json` / `.yaml` / `.yml` file followed by `--key value` overrides, or a dict (tests). Argument
files pasted from transformers-4 era projects (ChatGLM `ptuning/`, older tutorials) keep working:
keys that transformers 5 renamed are mapped with a warning naming the new key, keys it removed
are dropped with a warning saying what happens now, and anything else unknown is one error that
lists every unknown key.
"""

import codecs
import difflib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

logger = logging.getLogger(__name__)

ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class ModelArguments:
    """Which model, config and tokenizer to load, and how."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub model id (e.g. bert-base-chinese) or local directory to start from."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config name or path, when it differs from model_name_or_path."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer name or path, when it differs from model_name_or_path."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded models and processed datasets are cached."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Hub revision of the model: a branch name, tag or commit id."}
    )
    token: str | None = field(
        default=None, metadata={"help": "Hub token for private models; by default the one from `hf auth login`."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run modelling code shipped with the checkpoint. Only enable for repositories you trust."},
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Dtype to load the weights in: auto (as stored in the checkpoint), float32, bfloat16 or float16. "
            "Use float32 with --fp16 mixed precision.",
            "choices": ["auto", "float32", "bfloat16", "float16"],
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={
            "help": "Re-initialise checkpoint weights whose shape differs, e.g. a head with another label count."
        },
    )

    def hub_kwargs(self) -> dict:
        """The keyword arguments every `from_pretrained` call of the scripts shares."""
        return {
            "cache_dir": self.cache_dir,
            "revision": self.model_revision,
            "token": self.token,
            "trust_remote_code": self.trust_remote_code,
        }


@dataclass
class DataTrainingArguments:
    """Which data to read and how to prepare it."""

    train_file: list[str] | None = field(
        default=None,
        metadata={
            "help": "Training data: one or more files, globs or directories (csv, tsv, json, jsonl, txt, parquet)."
        },
    )
    validation_file: list[str] | None = field(
        default=None, metadata={"help": "Evaluation data; same forms as --train_file."}
    )
    test_file: list[str] | None = field(
        default=None, metadata={"help": "Prediction data (labels optional); same forms as --train_file."}
    )
    text_column: str | None = field(
        default=None,
        metadata={"help": "Column holding the text; found among common names (text, content, sentence...) if unset."},
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={
            "help": "Percentage of the training rows held out for evaluation when no --validation_file is given "
            "(0 disables)."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (for quick runs and debugging)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation rows."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep only the first N test rows."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used to tokenize the data (default: one)."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Re-read and re-tokenize the data instead of reusing the cached result."}
    )
    file_encoding: str = field(
        default="utf-8",
        metadata={"help": "Text encoding of the data files, e.g. gbk or gb18030. A UTF-8 BOM is always accepted."},
    )


@dataclass
class FinetuningArguments:
    """How much of the model is trained: every weight, or LoRA adapters (run_clm.py, run_seq2seq_ptuning.py)."""

    finetuning_type: str = field(
        default="full",
        metadata={
            "help": "full: train every weight; lora: train low-rank adapters only; ptuning: P-Tuning v2 "
            "prefixes (run_seq2seq_ptuning.py only).",
            "choices": ["full", "lora", "ptuning"],
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r.", "aliases": ["--lora_r"]})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha (the update is scaled by alpha/r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, between 0 and 1."})
    lora_target: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={
            "help": "Module names to adapt (e.g. q_proj v_proj), 'all' for every linear layer but the output "
            "head, or 'default' for peft's choice for the architecture."
        },
    )


def finetuning_problems(args: FinetuningArguments, allowed: tuple[str, ...]) -> list[str]:
    """Problems with the fine-tuning arguments, for a script that supports the `allowed` types."""
    problems = []
    if args.finetuning_type not in allowed:
        problems.append(
            f"--finetuning_type {args.finetuning_type} is not supported here; use one of {', '.join(allowed)}."
        )
    if args.lora_rank < 1:
        problems.append(f"--lora_rank must be at least 1, got {args.lora_rank}.")
    if not 0 <= args.lora_dropout < 1:
        problems.append(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}.")
    return problems


@dataclass
class GenerationArguments:
    """How evaluation and prediction generate text (run_seq2seq_ptuning.py, run_image_captioning.py).

    Greedy by default, so evaluation scores are reproducible; sampling is opt-in.
    """

    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Most tokens generated per answer (default: --max_target_length)."}
    )
    num_beams: int = field(default=1, metadata={"help": "Beam search width; 1 is greedy decoding."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy/beam decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --do_sample)."})
    top_p: float = field(
        default=1.0,
        metadata={
            "help": "Nucleus sampling: keep the smallest set of tokens with this "
            "probability mass (with --do_sample), e.g. 0.7 as in ChatGLM."
        },
    )
    top_k: int = field(default=50, metadata={"help": "Sample only among the k most likely tokens (with --do_sample)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Above 1.0 discourages repeating tokens."})


def generation_problems(args: GenerationArguments) -> list[str]:
    """Problems with the generation arguments."""
    problems = []
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        problems.append(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}.")
    if args.num_beams < 1:
        problems.append(f"--num_beams must be at least 1, got {args.num_beams}.")
    if args.temperature <= 0:
        problems.append(f"--temperature must be above 0, got {args.temperature}.")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top_p must be in (0, 1], got {args.top_p}.")
    if args.repetition_penalty <= 0:
        problems.append(f"--repetition_penalty must be above 0, got {args.repetition_penalty}.")
    return problems


# transformers-4 era keys: old key -> (new key or None to drop it, value converter or None, what to tell the user).
# A converter returning _DROP removes the key (e.g. `group_by_length: false` has no v5 equivalent to set).
_DROP = object()


def _is_true(value) -> bool:
    """True for True, 'true'/'1'/'yes', or a bare command-line flag (given as an empty value list)."""
    if isinstance(value, list):
        return not value or _is_true(value[0])
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y")
    return bool(value)


def _set_tensorboard_dir(value):
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", value[0] if isinstance(value, list) else str(value))
    return _DROP


V4_KEYS = {
    "evaluation_strategy": ("eval_strategy", None, "was renamed to `eval_strategy` in transformers 5"),
    "per_gpu_train_batch_size": ("per_device_train_batch_size", None, "was renamed to `per_device_train_batch_size`"),
    "per_gpu_eval_batch_size": ("per_device_eval_batch_size", None, "was renamed to `per_device_eval_batch_size`"),
    "no_cuda": ("use_cpu", None, "was renamed to `use_cpu` in transformers 5"),
    "torch_dtype": ("dtype", None, "was renamed to `dtype` in transformers 5"),
    "use_auth_token": (
        "token",
        lambda v: _DROP if _is_true(v) or str(v).lower() in ("false", "0", "[]") else v,
        "was renamed to `token`; `True` is no longer needed (the login token is used automatically)",
    ),
    "warmup_ratio": (
        "warmup_steps",
        None,
        "was removed in transformers 5; its value is passed as `warmup_steps`, where a value below 1 is a ratio",
    ),
    "group_by_length": (
        "train_sampling_strategy",
        lambda v: "group_by_length" if _is_true(v) else _DROP,
        "was removed in transformers 5; use `train_sampling_strategy: group_by_length`",
    ),
    "include_inputs_for_metrics": (
        "include_for_metrics",
        lambda v: ["inputs"] if _is_true(v) else _DROP,
        "was removed in transformers 5; use `include_for_metrics: [inputs]`",
    ),
    "include_tokens_per_second": (
        "include_num_input_tokens_seen",
        None,
        "was removed in transformers 5; mapped to `include_num_input_tokens_seen`",
    ),
    "overwrite_output_dir": (
        None,
        None,
        "was removed in transformers 5 and is ignored: an existing output_dir is always written into (files "
        "with the same names are replaced). To continue a stopped run pass `--resume_from_checkpoint True`",
    ),
    "save_safetensors": (None, None, "was removed in transformers 5 and is ignored: weights are always safetensors"),
    "logging_dir": (
        None,
        _set_tensorboard_dir,
        "was removed in transformers 5; it is passed on as the TENSORBOARD_LOGGING_DIR environment variable",
    ),
    "low_cpu_mem_usage": (None, None, "was removed in transformers 5 and is ignored (loading is always lazy)"),
    "use_fast_tokenizer": (None, None, "is ignored by transformers 5, which always uses the fast tokenizer"),
}


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser without prefix matching (`--learning` must not silently mean `--learning_rate`)."""

    def __init__(self, dataclass_types, prog: str | None = None):
        super().__init__(dataclass_types, prog=prog, allow_abbrev=False)
        # every spelling a user may write (`--lora_r`, `--lora-rank`) -> the field it sets
        # (the `--no_X` complements HfArgumentParser adds for boolean fields are not keys of their own)
        self.dest_of = {
            option.lstrip("-"): action.dest
            for action in self._actions
            for option in action.option_strings
            if option.startswith("--")
            and option not in (f"--no_{action.dest}", f"--no-{action.dest.replace('_', '-')}")
        }


def parse_args(dataclass_types: Sequence[type], args: Sequence[str] | Mapping | None = None) -> tuple:
    """Parse CLI flags, or an argument file (+ CLI overrides), or a dict, into the given dataclasses.

    >>> model_args, data_args = parse_args([ModelArguments, DataTrainingArguments],
    ...                                    {"model_name_or_path": "m", "train_file": "a.csv"})
    >>> data_args.train_file
    ['a.csv']
    """
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else None
    parser = ArgumentParser(dataclass_types, prog=prog)
    if args is None:
        args = sys.argv[1:]

    file_values, source = {}, "the command line"
    if isinstance(args, Mapping):
        file_values, source, cli = dict(args), "the argument dict", []
    else:
        args = [str(a) for a in args]
        # the deepspeed launcher puts `--local_rank=N` before the user's own arguments (the argument file too)
        launcher = []
        while args and args[0].startswith(("--local_rank", "--local-rank")):
            launcher.append(args.pop(0))
            if "=" not in launcher[-1] and args:
                launcher.append(args.pop(0))
        if args and args[0].lower().endswith(ARGUMENT_FILE_SUFFIXES) and not args[0].startswith("-"):
            source = args[0]
            file_values, cli = read_argument_file(args[0]), launcher + args[1:]
        else:
            cli = launcher + args

    unknown, conflicts = [], []
    file_values = _translate_v4_keys(file_values, source, conflicts)
    cli = _translate_v4_flags(cli, conflicts)
    for key in list(file_values):
        if key not in parser.dest_of:
            unknown.append(f"`{key}` (in {source})")
            continue
        dest = parser.dest_of[key]
        if dest != key:
            file_values[dest] = file_values.pop(key)
    for action in parser._actions:
        if action.dest not in file_values:
            continue
        action.required = False  # the file supplies it
        value = file_values[action.dest]
        if action.nargs == "+" and isinstance(value, str):
            file_values[action.dest] = [value]  # `train_file: a.csv` means a list of one file
        if action.choices is not None and value is not None and str(value) not in {str(c) for c in action.choices}:
            conflicts.append(
                f"`{action.dest}` (in {source}) is {value!r}; choose one of: {', '.join(map(str, action.choices))}."
            )
    if "ddp_timeout" in parser.dest_of.values():  # ranks wait at main_process_first while rank 0 tokenizes
        parser.set_defaults(ddp_timeout=DEFAULT_DDP_TIMEOUT)
    # argparse runs string defaults through each option's type, so YAML's `learning_rate: 2e-5` (a string
    # to PyYAML) becomes a float, exactly as if it had been typed on the command line.
    parser.set_defaults(**{k: v for k, v in file_values.items() if k in parser.dest_of.values()})
    try:
        if "use_cpu" in parser.dest_of.values():  # TrainingArguments set up the devices when built: prepare first
            known, _ = parser.parse_known_args(cli)
            cli = cli + prepare_launch(known.use_cpu, known.deepspeed)
        *parsed, remaining = parser.parse_args_into_dataclasses(
            args=cli, return_remaining_strings=True, look_for_args_file=False
        )
    except SystemExit as exc:
        if exc.code not in (0, None):  # argparse already printed the reason (e.g. a bad choice)
            raise ValueError("Invalid command-line arguments; see the message above.") from None
        raise
    unknown += [f"`{token}`" for token in remaining]
    problems = conflicts
    if unknown:
        known = sorted(set(parser.dest_of))
        hints = []
        for item in unknown:
            name = item.split("`")[1].lstrip("-").split("=")[0]
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{item}" + (f" (did you mean `{close[0]}`?)" if close else ""))
        problems.append(
            "Unknown arguments: " + ", ".join(hints) + f". `python {prog or 'run_x.py'} --help` lists the valid ones."
        )
    if problems:
        raise ValueError("\n".join(problems))
    if dry_run_requested():
        print_arguments(parsed)
    return tuple(parsed)


def read_argument_file(path: str) -> dict:
    """Read a JSON or YAML argument file, warning about keys that appear twice (the last one wins)."""
    if not Path(path).is_file():
        raise ValueError(f"Argument file '{path}' does not exist.")
    text = Path(path).read_text(encoding="utf-8-sig")
    if path.endswith(".json"):

        def keep_last_and_warn(pairs):
            seen = {}
            for key, value in pairs:
                if key in seen:
                    logger.warning("Key `%s` appears twice in %s; using the last value %r.", key, path, value)
                seen[key] = value
            return seen

        try:
            values = json.loads(text, object_pairs_hook=keep_last_and_warn)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Argument file '{path}' is not valid JSON: {exc}") from None
    else:
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"Argument file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"Argument file '{path}' must hold one mapping of argument names to values.")
    return values


def _translate_v4_keys(values: dict, source: str, conflicts: list) -> dict:
    """Map transformers-4 keys of an argument file to their transformers-5 form, with a warning each."""
    out = dict(values)
    for old, (new, convert, why) in V4_KEYS.items():
        if old not in out:
            continue
        value = out.pop(old)
        if convert is not None:
            value = convert(value)
        logger.warning("`%s` (in %s) %s.", old, source, why)
        if new is None or value is _DROP:
            continue
        if new in out:
            conflicts.append(f"{source} sets both `{old}` and its replacement `{new}`; keep only `{new}`.")
            continue
        out[new] = value
    return out


def _translate_v4_flags(argv: list[str], conflicts: list) -> list[str]:
    """The same mapping for command-line flags (`--evaluation_strategy steps` -> `--eval_strategy steps`)."""
    groups, current = [], None
    for token in argv:
        if token.startswith("--"):
            name, _, inline = token[2:].partition("=")
            current = [name.replace("-", "_") if name.replace("-", "_") in V4_KEYS else name, token, []]
            if inline:
                current[2].append(inline)
            groups.append(current)
        elif current is not None:
            current[2].append(token)
        else:
            groups.append([None, token, []])
    flags = {name for name, _, _ in groups}
    out = []
    for name, token, values in groups:
        if name not in V4_KEYS:
            out.append(token)
            out.extend(values[1:] if "=" in token else values)  # an inline `--key=value` already holds values[0]
            continue
        new, convert, why = V4_KEYS[name]
        logger.warning("`--%s` %s.", name, why)
        value = convert(values) if convert is not None else values
        if new is None or value is _DROP:
            continue
        if new in flags:
            conflicts.append(f"Both `--{name}` and its replacement `--{new}` were given; keep only `--{new}`.")
            continue
        out.append(f"--{new}")
        out.extend(value if isinstance(value, list) else [str(value)])
    return out


def common_problems(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> list[str]:
    """Everything wrong with the shared arguments, found before any model or data is loaded."""
    from mechanics import DATA_FORMATS, resolve_data_files

    problems = []
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        problems.append("Nothing to do: pass at least one of --do_train, --do_eval, --do_predict.")
    if training_args.do_train and not data_args.train_file:
        problems.append("--do_train needs --train_file.")
    if training_args.do_eval and not data_args.validation_file:
        if not data_args.train_file:
            problems.append("--do_eval needs --validation_file (or --train_file to hold part of it out).")
        elif data_args.validation_split_percentage <= 0:
            problems.append(
                "--do_eval without --validation_file needs --validation_split_percentage > 0 "
                f"(got {data_args.validation_split_percentage})."
            )
    if training_args.do_predict and not data_args.test_file:
        problems.append("--do_predict needs --test_file.")
    if not 0 <= data_args.validation_split_percentage < 100:
        problems.append(
            f"--validation_split_percentage must be in [0, 100), got {data_args.validation_split_percentage}."
        )
    for name in ("max_train_samples", "max_eval_samples", "max_predict_samples", "preprocessing_num_workers"):
        value = getattr(data_args, name)
        if value is not None and value < 1:
            problems.append(f"--{name} must be at least 1, got {value}.")
    try:
        codecs.lookup(data_args.file_encoding)
    except LookupError:
        problems.append(f"--file_encoding '{data_args.file_encoding}' is not a known encoding (try utf-8, gbk).")
    for name in ("train_file", "validation_file", "test_file"):
        spec = getattr(data_args, name)
        if spec:
            try:
                resolve_data_files(spec, name, formats=DATA_FORMATS)
            except ValueError as exc:
                problems.append(str(exc))
    path = model_args.model_name_or_path
    if path and path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
        problems.append(f"--model_name_or_path '{path}' does not exist.")
    resume = training_args.resume_from_checkpoint
    if resume and str(resume).lower() not in ("true", "false"):
        if not Path(resume).is_dir():
            problems.append(f"--resume_from_checkpoint '{resume}' is not a directory.")
    elif resume and str(resume).lower() == "true":
        from transformers.trainer_utils import get_last_checkpoint

        if not Path(training_args.output_dir).is_dir() or get_last_checkpoint(training_args.output_dir) is None:
            problems.append(
                f"--resume_from_checkpoint True, but output_dir '{training_args.output_dir}' has no checkpoint-* "
                "folder to resume from. Drop the flag to start afresh, or point it at a checkpoint directory."
            )
    return problems


def raise_if_problems(problems: list[str]) -> None:
    """Raise one ValueError listing every problem, so a user fixes them all in one go."""
    if problems:
        raise ValueError("Invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class ImageDataArguments:
    """Where the images of image-text data are, and how they are loaded (run_clip.py, run_image_captioning.py)."""

    image_column: str = field(
        default="image_path",
        metadata={"help": "Column holding each row's image file path (absolute, or relative: see --image_root)."},
    )
    caption_column: str = field(
        default="text",
        metadata={
            "help": "Column holding the caption: a string, or a list of captions of the same image (JSON). An image "
            "may also appear on several rows with different captions."
        },
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder that relative image paths start from; default: the folder of each data file."},
    )
    image_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder for copies of the images resized to the model's resolution (written during the image "
            "check), so every epoch and later run decodes small files. Off when unset."
        },
    )


def image_data_problems(image_args: ImageDataArguments) -> list[str]:
    """Problems with the image arguments, found before anything is loaded."""
    problems = []
    for name in ("image_column", "caption_column"):
        if not getattr(image_args, name).strip():
            problems.append(f"--{name} must name a column, got an empty string.")
    if image_args.image_root and not Path(image_args.image_root).expanduser().is_dir():
        problems.append(f"--image_root '{image_args.image_root}' is not a directory.")
    if image_args.image_cache_dir:
        cache = Path(image_args.image_cache_dir).expanduser()
        existing = next((p for p in (cache, *cache.parents) if p.exists()), None)
        if cache.exists() and not cache.is_dir():
            problems.append(f"--image_cache_dir '{image_args.image_cache_dir}' exists and is not a directory.")
        elif existing is not None and not os.access(existing, os.W_OK):
            problems.append(
                f"--image_cache_dir '{image_args.image_cache_dir}' cannot be created or written ('{existing}' is read-only)."
            )
    return problems


# Multi-process launches and the dry run. torchrun / deepspeed set WORLD_SIZE, RANK and LOCAL_RANK for each process.
DEFAULT_DDP_TIMEOUT = 3 * 60 * 60  # seconds; torch's 30 minutes is too short for rank 0 tokenizing a big corpus


def launch_flags(use_cpu: bool, deepspeed, environ: Mapping[str, str], has_accelerator: bool) -> list[str]:
    """Flags a launch needs added: `--use_cpu` for torchrun / deepspeed on a machine without GPUs.

    Without it accelerate builds no process group on a CPU-only machine and every rank silently trains
    alone (world size 1, all writing the same output_dir); DeepSpeed fails its batch-size check.
    """
    launched = int(environ.get("WORLD_SIZE", "1")) > 1
    if use_cpu or has_accelerator or not (launched or deepspeed):
        return []
    logger.warning("No GPU found: adding --use_cpu so the processes train together over gloo.")
    return ["--use_cpu"]


def prepare_launch(use_cpu: bool, deepspeed) -> list[str]:
    """Get the process ready for multi-process / DeepSpeed training before TrainingArguments set up the devices.

    Returns flags to add to the command line (see `launch_flags`). With --deepspeed in a plain `python run_x.py`
    (no launcher) DeepSpeed would look for MPI, so the variables of a one-process world are set. ZeRO-3 on CPU
    also needs DeepSpeed's own gloo process group before `from_pretrained` partitions the weights (zero.Init).
    """
    import torch

    has_accelerator = torch.accelerator.is_available()
    flags = launch_flags(use_cpu, deepspeed, os.environ, has_accelerator)
    if not deepspeed:
        return flags
    if not any(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
        defaults["MASTER_PORT"] = os.environ.get("MASTER_PORT") or str(free_port())
        os.environ.update(defaults)
        logger.info("--deepspeed without a launcher: running as a world of one process (%s).", defaults)
    if not has_accelerator and not dry_run_requested():
        import deepspeed as ds

        ds.init_distributed(dist_backend="gloo")
    return flags


def free_port() -> int:
    """A TCP port no process listens on right now (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dry_run_requested() -> bool:
    """DRY_RUN=1 in the environment: parse and validate the arguments, print them, and stop before any data."""
    return os.environ.get("DRY_RUN", "").strip().lower() not in ("", "0", "false", "no")


def print_arguments(parsed: Sequence) -> None:
    """Print, per argument class, the values that differ from the defaults (what a dry run resolved to)."""
    from dataclasses import MISSING, fields, is_dataclass

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
