"""User mistakes: the exception every check raises for one, and the one way out of a script that reports it.

A mistake in the arguments, an argument file, a data file, a column, an image or a checkpoint raises `UserError`
(`ArgumentError` for the arguments and argument files), whose message says what is wrong, where (the flag, the
file and row, the argument file the value came from) and the fix. Every script ends with

    if __name__ == "__main__":
        run_main(main)

which prints that message as one short block on stderr and exits with status 1 (2 for the arguments), with no
traceback unless `--debug` or DEBUG=1 asks for it. Any other exception is a bug and keeps its traceback. Both
classes are ValueErrors, so tests that call `main(argv)` directly keep `pytest.raises(ValueError, match=...)`.
"""

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "DEBUG"
# TrainingArguments has a `--debug OPTION` of its own; a bare `--debug` (no option after it) is ours
TRAINER_DEBUG_OPTIONS = ("underflow_overflow", "tpu_metrics_debug")


class UserError(ValueError):
    """A mistake the user can fix: bad data, a missing file, a wrong column. Exit status 1."""

    exit_status = 1


class ArgumentError(UserError):
    """A mistake in the arguments or an argument file. Exit status 2, as argparse uses."""

    exit_status = 2


def split_debug_flag(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """(whether a bare --debug was given, the arguments without it); `--debug underflow_overflow` is left alone.

    >>> split_debug_flag(["args.yaml", "--debug", "--do_train"])
    (True, ['args.yaml', '--do_train'])
    >>> split_debug_flag(["--debug", "underflow_overflow"])
    (False, ['--debug', 'underflow_overflow'])
    """
    argv, kept, found = list(argv), [], False
    for i, token in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if token == DEBUG_FLAG and not any(option in following for option in TRAINER_DEBUG_OPTIONS):
            found = True
        else:
            kept.append(token)
    return found, kept


def debug_requested(flag_given: bool = False) -> bool:
    """--debug on the command line, or DEBUG=1 (true, yes) in the environment."""
    return flag_given or os.environ.get(DEBUG_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def error_block(exc: UserError, prog: str) -> str:
    """The message a user sees: the script, what is wrong (where, the fix), and how to see the traceback."""
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    message = str(exc)
    if "\nOriginal Traceback" in message:  # raised in a DataLoader worker: torch put its traceback in the message
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return (
        f"{prefix}{prog}: error: {message}\n"
        f"{prefix}(exit status {exc.exit_status}; add {DEBUG_FLAG} or set {DEBUG_VARIABLE}=1 to see the traceback)"
    )


def loading_error(exc: BaseException) -> UserError | None:
    """A failure to load a model, tokenizer or config, as a UserError with its message; None for anything else.

    That is an OSError raised inside transformers / huggingface_hub (a wrong path or hub id, no network, a missing
    file), or a ValueError of transformers' Auto classes (a folder that holds no model).
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1].filename.replace("\\", "/") if frames else ""
    if isinstance(exc, OSError) and any(part in where for part in ("/transformers/", "/huggingface_hub/")):
        pass
    elif not (isinstance(exc, ValueError) and "/transformers/models/auto/" in where):
        return None
    return UserError(
        f"{exc} Check --model_name_or_path / --tokenizer_name (and the script's other model paths): a local "
        "folder, or a hub id with network access."
    )


def run_main(main: Callable, argv: Sequence[str] | None = None):
    """Run a script's `main(argv)`: a UserError becomes its message on stderr and exit status 1 (2), nothing more.

    So does an OSError of transformers while loading a model (see `loading_error`). Only the
    `if __name__ == "__main__":` line of a script calls this; tests call `main` and see the exception.
    """
    flag_given, argv = split_debug_flag(sys.argv[1:] if argv is None else argv)
    try:
        try:
            return main(argv)
        except (OSError, ValueError) as exc:
            user_error = None if isinstance(exc, UserError) else loading_error(exc)
            if user_error is None:
                raise
            raise user_error from exc
    except UserError as exc:
        if debug_requested(flag_given):
            traceback.print_exc()
        else:
            prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "run_x.py"
            print(error_block(exc, prog), file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(exc.exit_status) from None
