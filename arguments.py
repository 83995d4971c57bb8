"""The arguments several scripts share, declared once, and the checks that run before anything is loaded.

Each dataclass is one group of `--flags` (ModelArguments, DataTrainingArguments, FinetuningArguments,
GenerationArguments, ImageDataArguments); a script adds a dataclass of its own for the rest. Each `*_problems`
function returns every problem with its group as a list, so a user fixes them all in one go
(`raise_if_problems`). Reading them from the command line or a file is `zhtrain.parsing.parse_args`.
"""

import codecs
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from zhtrain.checkpoints import checkpoint_problem, newest_complete_checkpoint
from zhtrain.data.files import resolve_data_files
from zhtrain.errors import ArgumentError, UserError

DEFAULT_PRE_SEQ_LEN = 128  # P-Tuning v2 prefix length when --pre_seq_len is not given (ChatGLM's example)


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
    """How much of the model is trained: every weight, LoRA adapters, or P-Tuning v2 prefixes.

    Used by run_clm.py (full, lora) and run_seq2seq_ptuning.py (full, lora, ptuning).
    """

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
    pre_seq_len: int | None = field(
        default=None,
        metadata={
            "help": f"P-Tuning v2: number of trained prefix tokens at every layer (default {DEFAULT_PRE_SEQ_LEN})."
        },
    )
    prefix_projection: bool = field(
        default=False, metadata={"help": "P-Tuning v2: produce the prefixes through a 2-layer MLP (more parameters)."}
    )
    prefix_hidden_size: int | None = field(
        default=None, metadata={"help": "P-Tuning v2: hidden size of that MLP (default: the model's hidden size)."}
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
    if args.pre_seq_len is not None and args.pre_seq_len < 1:
        problems.append(f"--pre_seq_len must be at least 1, got {args.pre_seq_len}.")
    given = [f"--{n}" for n in ("pre_seq_len", "prefix_projection", "prefix_hidden_size") if getattr(args, n)]
    if "ptuning" not in allowed and given:
        problems.append(f"{', '.join(given)} set P-Tuning v2, which this script does not train; drop them.")
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


def common_problems(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> list[str]:
    """Everything wrong with the shared arguments, found before any model or data is loaded."""
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
                resolve_data_files(spec, name)
            except UserError as exc:
                problems.append(str(exc))
    path = model_args.model_name_or_path
    if path and path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
        problems.append(f"--model_name_or_path '{path}' does not exist.")
    for name in ("model_name_or_path", "tokenizer_name"):
        problem = chatglm_remote_code_problem(getattr(model_args, name), name)
        if problem:
            problems.append(problem)
    problems += output_dir_problems(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume and str(resume).lower() not in ("true", "false"):
        problem = checkpoint_problem(resume)
        if problem:
            problems.append(f"--resume_from_checkpoint '{resume}' {problem}.")
    elif (
        resume
        and str(resume).lower() == "true"
        and (
            not Path(training_args.output_dir).is_dir() or newest_complete_checkpoint(training_args.output_dir) is None
        )
    ):
        problems.append(
            f"--resume_from_checkpoint True, but output_dir '{training_args.output_dir}' has no complete checkpoint-* "
            "folder to resume from. Drop the flag to start afresh, or point it at a checkpoint directory."
        )
    return problems


def output_dir_problems(output_dir: str) -> list[str]:
    """An --output_dir that is a file, or that cannot be created or written, found before anything is loaded.

    Writing is tried (a temporary file in the nearest existing folder, removed at once): permission bits say
    nothing for root or on a read-only mount.
    """
    path = Path(output_dir).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if path.exists() and not path.is_dir():
        return [f"--output_dir '{output_dir}' is a file, not a folder. Pass a folder path (it is created if needed)."]
    if existing is not None and not existing.is_dir():
        return [f"--output_dir '{output_dir}' cannot be created: '{existing}' is a file. Pass another path."]
    if existing is not None:
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            what = "cannot be written" if existing == path else f"cannot be created in '{existing}'"
            return [f"--output_dir '{output_dir}' {what} ({exc.strerror or exc}). Pass a folder you can write to."]
    return []


def chatglm_remote_code_problem(path: str | None, arg_name: str) -> str | None:
    """ChatGLM2/3 checkpoints whose remote code does not run on transformers 5: say to convert them first.

    Found from the folder's config (model_type chatglm) or the tokenizer's class, before any weight is read;
    hub ids of THUDM's remote-code repositories are recognised by name.
    """
    if not path:
        return None
    folder = Path(path).expanduser()
    if folder.is_dir():
        config = _read_json(folder / "config.json")
        tokenizer_config = _read_json(folder / "tokenizer_config.json")
        remote = config.get("model_type") == "chatglm" or tokenizer_config.get("tokenizer_class") == "ChatGLMTokenizer"
    else:
        remote = bool(re.fullmatch(r"(THUDM|zai-org)/chatglm[23]?-6b(-\w+)*", path)) and not path.endswith("-hf")
    if not remote:
        return None
    name = folder.name or "chatglm"
    fetch = "" if folder.is_dir() else f"hf download {path} --local-dir {name} && "
    source = path if folder.is_dir() else name
    return (
        f"--{arg_name} '{path}' is a ChatGLM checkpoint with THUDM's remote code, which does not run on transformers "
        "5 (it fails in generation and P-Tuning). Convert it once to the native GLM architecture and pass the "
        f"converted folder instead: {fetch}python scripts/convert_chatglm.py {source} {name}-native"
    )


def _read_json(path: Path) -> dict:
    """A JSON file's object, or {} when the file is missing or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def raise_if_problems(problems: list[str], parsed=None) -> None:
    """Raise one ArgumentError listing every problem, so a user fixes them all in one go.

    With `parsed` (what zhtrain.parsing.parse_args returned), a problem whose flags were set in the argument file
    says so.
    """
    if problems:
        lines = [f"  - {p}{argument_file_note(p, parsed)}" for p in problems]
        raise ArgumentError("Invalid arguments:\n" + "\n".join(lines))


def argument_file_note(problem: str, parsed) -> str:
    """` (set in args.yaml: learning_rate)` when a flag the problem names got its value from the argument file.

    >>> class Parsed:
    ...     argument_file, file_keys = "args.yaml", {"do_train", "max_seq_length"}
    >>> argument_file_note("--max_seq_length must be at least 1, got 0.", Parsed())
    ' (set in args.yaml: max_seq_length)'
    """
    source, keys = getattr(parsed, "argument_file", None), getattr(parsed, "file_keys", ())
    named = [name for name in dict.fromkeys(re.findall(r"--(\w+)", problem)) if name in keys]
    return f" (set in {source}: {', '.join(named)})" if source and named else ""


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
