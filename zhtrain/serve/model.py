"""A training output folder as a served model: what it holds, how it loads, prompts in, text out.

`describe_folder` tells from the files what a folder holds: a causal-LM or seq2seq model, a LoRA or P-Tuning
adapter (its base model from adapter_config.json or --model_name_or_path), a classifier, a CLIP model or a
captioner; anything else is refused with what was found. `load_served` loads it with safetensors only (nothing
is unpickled) and no remote code. Chat prompts are built by zhtrain.chat.format, the code that built the training
prompts; `TextStream` turns generated ids into text pieces, with stop strings and the finish reason.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zhtrain.chat.data import conversation_problem
from zhtrain.chat.format import ChatFormat, ChatFormatError, choose_chat_template, encoder_decoder_prompt
from zhtrain.errors import UserError
from zhtrain.metrics import strip_tokenizer_spaces
from zhtrain.modeling import context_length, document_start_token, padding_id, repair_special_tokens
from zhtrain.serve.routes import Task

logger = logging.getLogger(__name__)

CLIP_TYPES = ("chinese_clip", "clip", "vision-text-dual-encoder", "siglip")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SCRIPTS = "run_seq2seq_ptuning.py, run_clm.py, run_classification.py, run_clip.py or run_image_captioning.py"


class ServeError(UserError):
    """A folder or request serve.py cannot serve; the message says what was found and what to do (exit status 1)."""


@dataclass
class FolderKind:
    """What a folder holds: the task that serves it, the model path, an adapter on it."""

    task: Task
    model_path: str
    adapter: str | None = None  # the folder, when it holds a LoRA / P-Tuning adapter
    adapter_type: str | None = None  # LORA | PREFIX_TUNING
    description: str = ""

    def __post_init__(self):
        self.task = Task(self.task)  # a word that names no task is a ValueError here, not a 404 later


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ServeError(f"{path} cannot be read as JSON: {exc}") from None


def require_safetensors(folder: Path, files: list[str], what: str) -> None:
    if not any(name.endswith(".safetensors") for name in files):
        pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
        raise ServeError(
            f"{folder} has no safetensors {what} (it holds: {', '.join(files) or 'nothing'}). serve.py loads "
            "safetensors only, so nothing is unpickled"
            + (f"; re-save the {', '.join(pickles)} weights with save_pretrained" if pickles else "")
        )


def describe_folder(folder: str | Path, base_model: str | None = None) -> FolderKind:
    """What `folder` holds and which task serves it; a ServeError that lists what it found otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ServeError(f"{folder} is not a folder: give the output_dir of {SCRIPTS}.")
    files = sorted(p.name for p in folder.iterdir())
    if "adapter_config.json" in files:
        saved = read_json(folder / "adapter_config.json")
        kind = saved.get("peft_type")
        if kind not in ("LORA", "PREFIX_TUNING"):
            raise ServeError(f"{folder} holds a {kind} adapter; serve.py serves LoRA and P-Tuning (prefix) adapters.")
        require_safetensors(folder, files, "adapter weights")
        base = base_model or saved.get("base_model_name_or_path")
        if not base:
            raise ServeError(f"{folder}/adapter_config.json names no base model: pass --model_name_or_path.")
        name = "P-Tuning" if kind == "PREFIX_TUNING" else "LoRA"
        return FolderKind(Task.GENERATE, str(base), str(folder), kind, f"{name} adapter on {base}, unmerged")
    if "config.json" not in files:
        raise ServeError(
            f"{folder} holds no model: no config.json or adapter_config.json (it holds: {', '.join(files) or 'nothing'})."
            f" Give the output_dir of {SCRIPTS}."
        )
    config = read_json(folder / "config.json")
    if config.get("auto_map"):
        raise ServeError(
            f"{folder} needs the model's own Python code (auto_map in config.json), which serve.py never runs "
            "(trust_remote_code is off). ChatGLM checkpoints: convert them with scripts/convert_chatglm.py."
        )
    require_safetensors(folder, files, "weights")
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    found = f"{', '.join(architectures) or 'a model'} (model_type {model_type})"
    if model_type == "vision-encoder-decoder":
        return FolderKind(Task.CAPTION, str(folder), description=f"captioner {found}")
    if model_type in CLIP_TYPES:
        return FolderKind(Task.CLIP, str(folder), description=f"image-text model {found}")
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return FolderKind(Task.CLASSIFY, str(folder), description=f"classifier {found}")
    generators = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    if config.get("is_encoder_decoder") or any(a.endswith(generators) for a in architectures):
        return FolderKind(Task.GENERATE, str(folder), description=found)
    raise ServeError(
        f"{folder} holds {found}, which serve.py cannot serve: it serves causal-LM and seq2seq models (chat and "
        "completions), sequence classifiers, CLIP models and image captioners."
    )


def stop_ids_of(generation_config, tokenizer) -> list[int]:
    """The end ids the saved generation config lists, and the tokenizer's eos."""
    eos = getattr(generation_config, "eos_token_id", None)
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return list(dict.fromkeys(i for i in [*ids, tokenizer.eos_token_id] if i is not None))


def adds_spaces_between_characters(tokenizer) -> bool:
    """BERT-style decoders write '今 天': those spaces are stripped from answers, as evaluation strips them."""
    return " " in tokenizer.decode(tokenizer("你好", add_special_tokens=False)["input_ids"])


@dataclass
class Served:
    """A loaded model with what serving needs: task, tokenizer / processor, prompt format, stop ids, limits."""

    task: Task
    name: str
    model: object
    tokenizer: object = None
    processor: object = None
    kind: FolderKind | None = None
    chat_format: ChatFormat | None = None
    stop_ids: list[int] = field(default_factory=list)
    context: int | None = None
    system_prompt: str | None = None
    strip_spaces: bool = False
    generation_defaults: dict = field(default_factory=lambda: {"temperature": 0.0, "top_p": 1.0})

    @property
    def encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False)) and self.task == Task.GENERATE

    @property
    def can_chat(self) -> bool:
        return self.task == Task.GENERATE and (self.encoder_decoder or self.chat_format is not None)

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """The prompt ids of a conversation ending with the user's message, as training built them."""
        if not self.can_chat:
            raise ServeError(
                "this model has no chat template, so /v1/chat/completions cannot build its prompt: use "
                "/v1/completions, or start serve.py with --template NAME / --chat_template FILE"
            )
        if self.system_prompt and messages and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        problem = conversation_problem(messages, needs_answer=False)
        if problem is None and messages[-1]["role"] != "user":
            problem = "the last message must be the user's (the answer to it is generated)"
        if problem:
            raise ServeError(f"`messages`: {problem}")
        if self.encoder_decoder:
            return self.tokenizer(encoder_decoder_prompt(self.tokenizer, messages))["input_ids"]
        try:
            return self.chat_format.encode(messages, learn_all=False, max_source=1 << 30, max_target=1).prompt_ids
        except ChatFormatError as exc:
            raise ServeError(f"`messages`: {exc}") from None

    def completion_prompt_ids(self, prompt: str) -> list[int]:
        """A raw text prompt as the model saw documents in training: bos first where the tokenizer adds one."""
        if self.encoder_decoder:
            return self.tokenizer(prompt)["input_ids"]
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        bos = document_start_token(self.tokenizer)
        return ids if bos is None else [bos, *ids]

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return strip_tokenizer_spaces(text) if self.strip_spaces else text


class TextStream:
    """Generated ids in, text pieces out: never part of a stop string, nor a half-decoded character."""

    def __init__(self, served: Served, stop: list[str]):
        self.served, self.stop = served, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = ""
        self.finish_reason: str | None = None

    def add(self, new_ids: list[int], finished: bool, max_new_tokens: int) -> str:
        """The text to send after `new_ids`; sets `finish_reason` (stop | length) once the answer is over."""
        self.ids += new_ids
        text = self.served.decode(self.ids)
        for stop in self.stop:
            if stop in text:
                text, self.finish_reason = text[: text.index(stop)], "stop"
        if finished and self.finish_reason is None:
            stopped = bool(self.ids) and self.ids[-1] in self.served.stop_ids
            self.finish_reason = "stop" if stopped or len(self.ids) < max_new_tokens else "length"
        if self.finish_reason is None:
            hold = max((len(s) - 1 for s in self.stop), default=0)
            text = text[: len(text) - hold] if hold else text
            text = text.rstrip("\ufffd")  # the rest of a character is still to come
        if not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece


def load_generation_config(folder: str):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(folder)
    except OSError:
        return None


def load_served(kind: FolderKind, args) -> Served:
    """Load what `describe_folder` found, on `args.device`, for its task."""
    from transformers import AutoModel, AutoProcessor, AutoTokenizer

    load = {"dtype": args.dtype, "use_safetensors": True, "trust_remote_code": False}
    name = args.served_model_name or Path(kind.adapter or kind.model_path).resolve().name
    try:
        if kind.task == Task.GENERATE:
            return load_generator(kind, args, name, load)
        if kind.task == Task.CLASSIFY:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_pretrained(kind.model_path, **load)
            tokenizer = AutoTokenizer.from_pretrained(kind.model_path)
            served = Served(Task.CLASSIFY, name, model.to(args.device).eval(), tokenizer, kind=kind)
            served.context = context_length(model.config, tokenizer)
            return served
        if kind.task == Task.CLIP:
            model = AutoModel.from_pretrained(kind.model_path, **load).to(args.device).eval()
            processor = AutoProcessor.from_pretrained(kind.model_path)
            return Served(Task.CLIP, name, model, processor.tokenizer, processor, kind=kind)
        from transformers import AutoImageProcessor, AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(kind.model_path, **load).to(args.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(kind.model_path)
        served = Served(Task.CAPTION, name, model, tokenizer, AutoImageProcessor.from_pretrained(kind.model_path))
        served.kind, served.strip_spaces = kind, adds_spaces_between_characters(tokenizer)
        return served
    except OSError as exc:
        raise ServeError(f"{kind.model_path} could not be loaded ({kind.description}): {exc}") from None


def load_generator(kind: FolderKind, args, name: str, load: dict) -> Served:
    """A causal LM or seq2seq model, its adapter unmerged, the tokenizer and prompt format it was trained with."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    folder = kind.adapter or kind.model_path
    config = AutoConfig.from_pretrained(kind.model_path, trust_remote_code=False)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    model_class = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    model = model_class.from_pretrained(kind.model_path, **load)
    tokenizer_folder = folder if (Path(folder) / "tokenizer_config.json").is_file() else kind.model_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    repair_special_tokens(tokenizer, eos_from_sep=True, pad_from_eos=True)  # as training did; nothing is added
    if kind.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, kind.adapter, is_trainable=False)
    generation_config = load_generation_config(folder) or getattr(model, "generation_config", None)
    served = Served(Task.GENERATE, name, model.to(args.device).eval(), tokenizer, kind=kind)
    served.stop_ids, served.context = stop_ids_of(generation_config, tokenizer), context_length(config, tokenizer)
    served.system_prompt, served.strip_spaces = args.system_prompt, adds_spaces_between_characters(tokenizer)
    if not encoder_decoder and (args.template or args.chat_template or getattr(tokenizer, "chat_template", None)):
        try:
            source = choose_chat_template(tokenizer, args.template, args.chat_template)
            served.chat_format = ChatFormat(tokenizer, extra_stop_ids=served.stop_ids)
        except ChatFormatError as exc:
            raise ServeError(f"{folder}: {exc}") from None
        served.stop_ids = served.chat_format.stop_ids
        logger.info("Chat prompts: %s; stop tokens %s", source, tokenizer.convert_ids_to_tokens(served.stop_ids))
    served.generation_defaults = generation_defaults(generation_config)
    return served


def generation_defaults(generation_config) -> dict:
    """temperature / top_p for requests that leave them out: the saved generation config's (greedy unless it samples)."""
    if generation_config is None or not getattr(generation_config, "do_sample", False):
        return {"temperature": 0.0, "top_p": 1.0}
    return {"temperature": float(generation_config.temperature or 1.0), "top_p": float(generation_config.top_p or 1.0)}


def pad_id_of(served: Served) -> int:
    return padding_id(served.tokenizer, served.stop_ids)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
