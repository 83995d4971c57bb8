"""Reading the command line and argument files into the argument dataclasses: `parse_args`.

Like the transformers examples, a script accepts plain command-line flags, or one `.json` / `.yaml` / `.yml`
file followed by `--key value` overrides, or a dict (tests). Argument files pasted from transformers-4 era
projects (ChatGLM `ptuning/`, older tutorials) keep working: keys that transformers 5 renamed (and this
project's `ptuning_checkpoint`, now `adapter_name_or_path`) are mapped with a warning naming the new key, keys
it removed are dropped with a warning saying what happens now, and anything else unknown is one error that
lists every unknown key. Parsing has no side effects on the process: getting it ready for torchrun / deepspeed
is `zhtrain.launch.prepare_launch`.
"""

import difflib
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from zhtrain.errors import ArgumentError

logger = logging.getLogger(__name__)

ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")
DEFAULT_DDP_TIMEOUT = 3 * 60 * 60  # seconds; torch's 30 minutes is too short for rank 0 tokenizing a big corpus

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


# keys this project renamed: old key -> (new key, None, what to tell the user), mapped like V4_KEYS
PROJECT_KEYS = {
    "ptuning_checkpoint": (
        "adapter_name_or_path",
        None,
        "is now called `adapter_name_or_path` (it loads LoRA and P-Tuning adapters alike); the old name still works",
    ),
}
RENAMED_KEYS = V4_KEYS | PROJECT_KEYS


class ParsedArguments(tuple):
    """The parsed argument objects, in the order of the dataclasses, and which values came from the argument file."""

    def __new__(cls, parsed, argument_file: str | None = None, file_keys=()):
        obj = super().__new__(cls, parsed)
        obj.argument_file, obj.file_keys = argument_file, frozenset(file_keys)
        return obj


class _ArgparseError(Exception):
    """argparse's complaint about one value, caught by parse_args (which knows whether it came from the file)."""


class StrictArgumentParser(HfArgumentParser):
    """HfArgumentParser without prefix matching (`--learning` must not silently mean `--learning_rate`).

    A bad value raises instead of printing the ~150-line usage: parse_args names the flag or file it came from.
    """

    def error(self, message):
        raise _ArgparseError(message)

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


def split_argument_file(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the argument file, the command-line flags); the file is None when the first argument is a flag.

    The deepspeed launcher puts `--local_rank=N` before the user's own arguments, argument file included.

    >>> split_argument_file(["--local_rank=0", "args.yaml", "--learning_rate", "1e-4"])
    ('args.yaml', ['--local_rank=0', '--learning_rate', '1e-4'])
    """
    args = [str(a) for a in args]
    launcher = []
    while args and args[0].startswith(("--local_rank", "--local-rank")):
        launcher.append(args.pop(0))
        if "=" not in launcher[-1] and args:
            launcher.append(args.pop(0))
    if args and args[0].lower().endswith(ARGUMENT_FILE_SUFFIXES) and not args[0].startswith("-"):
        return args[0], launcher + args[1:]
    return None, launcher + args


def parse_args(dataclass_types: Sequence[type], args: Sequence[str] | Mapping | None = None) -> tuple:
    """Parse CLI flags, or an argument file (+ CLI overrides), or a dict, into the given dataclasses.

    >>> from arguments import DataTrainingArguments, ModelArguments
    >>> model_args, data_args = parse_args([ModelArguments, DataTrainingArguments],
    ...                                    {"model_name_or_path": "m", "train_file": "a.csv"})
    >>> data_args.train_file
    ['a.csv']
    """
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else None
    parser = StrictArgumentParser(dataclass_types, prog=prog)
    if isinstance(args, Mapping):
        file_values, source, cli = dict(args), "the argument dict", []
    else:
        path, cli = split_argument_file(sys.argv[1:] if args is None else args)
        file_values, source = (read_argument_file(path), path) if path else ({}, "the command line")

    unknown, problems = [], []
    file_values = _translate_v4_keys(file_values, source, problems)
    given_on_command_line = {parser.dest_of.get(t[2:].split("=")[0], t) for t in cli if t.startswith("--")}
    cli = _translate_v4_flags(cli, problems)
    for key in list(file_values):
        if key not in parser.dest_of:
            unknown.append(f"`{key}` (in {source})")
        elif parser.dest_of[key] != key:
            file_values[parser.dest_of[key]] = file_values.pop(key)
    problems += _apply_file_values(parser, file_values, source)
    from_file = {k for k in file_values if k in parser.dest_of.values()} - given_on_command_line
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(
            args=cli, return_remaining_strings=True, look_for_args_file=False
        )
    except _ArgparseError as exc:
        raise ArgumentError("\n".join([*problems, _argparse_problem(str(exc), parser, from_file, source)])) from None
    except (
        ValueError
    ) as exc:  # TrainingArguments' own checks (e.g. --load_best_model_at_end without matching strategies)
        raise ArgumentError("\n".join([*problems, f"Invalid arguments: {exc}"])) from exc
    unknown += [f"`{token}`" for token in remaining]
    if unknown:
        problems.append(_unknown_arguments_problem(unknown, parser, prog))
    if problems:
        raise ArgumentError("\n".join(problems))
    return ParsedArguments(parsed, source if source.lower().endswith(ARGUMENT_FILE_SUFFIXES) else None, from_file)


def _argparse_problem(message: str, parser: StrictArgumentParser, from_file: set[str], source: str) -> str:
    """argparse's `argument --learning_rate: invalid float value: 'abc'`, naming the argument file it came from."""
    match = re.match(r"argument --([\w-]+)", message)
    dest = parser.dest_of.get(match.group(1)) if match else None
    if dest in from_file:
        return f"`{dest}` (in {source}): {message.split(': ', 1)[-1]}. Fix the value in {source}."
    return f"{message}. `python {parser.prog} --help` describes every argument."


def _apply_file_values(parser: StrictArgumentParser, file_values: dict, source: str) -> list[str]:
    """Make the file's values the parser's defaults (the command line still wins); returns bad choices."""
    problems = []
    for action in parser._actions:
        if action.dest not in file_values:
            continue
        action.required = False  # the file supplies it
        value = file_values[action.dest]
        if action.nargs == "+" and isinstance(value, str):
            file_values[action.dest] = [value]  # `train_file: a.csv` means a list of one file
        if action.choices is not None and value is not None and str(value) not in {str(c) for c in action.choices}:
            problems.append(
                f"`{action.dest}` (in {source}) is {value!r}; choose one of: {', '.join(map(str, action.choices))}."
            )
    if "ddp_timeout" in parser.dest_of.values():  # ranks wait at main_process_first while rank 0 tokenizes
        parser.set_defaults(ddp_timeout=DEFAULT_DDP_TIMEOUT)
    # argparse runs string defaults through each option's type, so YAML's `learning_rate: 2e-5` (a string
    # to PyYAML) becomes a float, exactly as if it had been typed on the command line.
    parser.set_defaults(**{k: v for k, v in file_values.items() if k in parser.dest_of.values()})
    return problems


def _unknown_arguments_problem(unknown: list[str], parser: StrictArgumentParser, prog: str | None) -> str:
    """One line naming every unknown argument, each with the closest valid name."""
    known = sorted(set(parser.dest_of))
    hints = []
    for item in unknown:
        name = item.split("`")[1].lstrip("-").split("=")[0]
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{item}" + (f" (did you mean `{close[0]}`?)" if close else ""))
    return "Unknown arguments: " + ", ".join(hints) + f". `python {prog or 'run_x.py'} --help` lists the valid ones."


def read_argument_file(path: str, warn: bool = True) -> dict:
    """Read a JSON or YAML argument file, warning about keys that appear twice (the last one wins)."""
    if not Path(path).is_file():
        raise ArgumentError(f"Argument file '{path}' does not exist.")
    text = Path(path).read_text(encoding="utf-8-sig")
    if path.endswith(".json"):

        def keep_last_and_warn(pairs):
            seen = {}
            for key, value in pairs:
                if key in seen and warn:
                    logger.warning("Key `%s` appears twice in %s; using the last value %r.", key, path, value)
                seen[key] = value
            return seen

        try:
            values = json.loads(text, object_pairs_hook=keep_last_and_warn)
        except json.JSONDecodeError as exc:
            raise ArgumentError(
                f"Argument file '{path}' is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}. "
                "JSON has no comments and no comma after the last item."
            ) from None
    else:
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ArgumentError(yaml_error_message(path, text, exc)) from None
    if not isinstance(values, dict):
        raise ArgumentError(
            f"Argument file '{path}' must hold one mapping of argument names to values (`learning_rate: 2.0e-5`, "
            f"one per line), not a {type(values).__name__}."
        )
    return values


def yaml_error_message(path: str, text: str, exc: yaml.YAMLError) -> str:
    """Where a YAML file is broken (line, column), what the parser says, and the usual cause."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    line = text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else ""
    hint = " YAML indents with spaces, never tabs." if "\t" in line or "'\\t'" in problem else ""
    return f"Argument file '{path}' is not valid YAML{where}: {problem}.{hint}"


def _translate_v4_keys(values: dict, source: str, conflicts: list) -> dict:
    """Map transformers-4 (and this project's old) keys of an argument file to their new form, with a warning each."""
    out = dict(values)
    for old, (new, convert, why) in RENAMED_KEYS.items():
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
            current = [name.replace("-", "_") if name.replace("-", "_") in RENAMED_KEYS else name, token, []]
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
        if name not in RENAMED_KEYS:
            out.append(token)
            out.extend(values[1:] if "=" in token else values)  # an inline `--key=value` already holds values[0]
            continue
        new, convert, why = RENAMED_KEYS[name]
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
