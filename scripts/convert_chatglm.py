"""Convert a ChatGLM2-6B / ChatGLM3-6B checkpoint (THUDM's remote code) to transformers' native GLM.

    python scripts/convert_chatglm.py path/to/chatglm3-6b path/to/chatglm3-6b-native
    python scripts/convert_chatglm.py path/to/chatglm2-6b path/to/chatglm2-6b-native --dtype bfloat16
    python scripts/convert_chatglm.py my-finetuned-chatglm out --family chatglm3 --max_shard_size 2GB

The output folder loads with plain `AutoModelForCausalLM.from_pretrained(DST)` and
`AutoTokenizer.from_pretrained(DST)`, `trust_remote_code` off, as a `GlmForCausalLM` (`model_type: glm`):

- config.json: a `GlmConfig` from ChatGLM's config.json (read as JSON; the remote code is never imported).
- model*.safetensors: the weights renamed, `query_key_value` split into q/k/v projections, in the checkpoint's
  dtype unless `--dtype` says otherwise. The source is read one tensor at a time (safetensors, or `.bin` shards
  memory-mapped with `torch.load(weights_only=True)`); the output is written one shard at a time. Peak memory is
  one output shard (`--max_shard_size`, default 2GB) plus the source shard being read (memory-mapped pages count
  as resident but are file-backed; a legacy non-zip `.bin` cannot be mapped and is read whole) plus ~0.5 GB for
  Python, torch and transformers: a 6B model (12.5 GB, THUDM's ~2 GB shards) needs about 5 GB, and a smaller
  `--max_shard_size` lowers the peak.
- tokenizer.json etc.: a fast tokenizer built from the sentencepiece `tokenizer.model` (no remote code), with
  ChatGLM's special-token ids and the project's chat template
  (`zhtrain.chat.format.TEMPLATES["chatglm2"/"chatglm3"]`).
  It is checked against sentencepiece on a fixed set of texts and conversations before it is written, and again
  after it is reloaded from DST; any difference is an error.
- generation_config.json: ChatGLM's stop ids (`</s>`; for ChatGLM3 also `<|user|>` and `<|observation|>`), pad 0.

Refused, with the reason: ChatGLM-6B (v1, 2D positions: another architecture), GLM-4 remote-code checkpoints
(THUDM publishes the same weights natively: THUDM/glm-4-9b-chat-hf), quantized (int4/int8) checkpoints, P-Tuning
prefix-encoder weights, and any weight or config option the native model cannot reproduce exactly.
"""

import argparse
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sentencepiece import SentencePieceProcessor
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import AutoTokenizer, GenerationConfig, GlmConfig, GlmForCausalLM, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SentencePieceExtractor, import_protobuf
from transformers.utils.hub import convert_file_size_to_int

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zhtrain.chat.format import TEMPLATES, ChatFormat  # noqa: E402

logger = logging.getLogger(__name__)

FAMILIES = ("chatglm2", "chatglm3")

# ChatGLM's tokenizer numbers its special tokens after the sentencepiece vocabulary, in this order. "sop"/"eop"
# get angle brackets here: as plain words they would turn a user's "sop" into the special token.
SPECIAL_TOKENS = {
    "chatglm2": ["[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"],
    "chatglm3": ["[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
                 "<|observation|>"],
}  # fmt: skip
# What ChatGLM's chat() stops generating at, besides eos.
EXTRA_STOP_TOKENS = {"chatglm2": [], "chatglm3": ["<|user|>", "<|observation|>"]}

# The defaults of ChatGLM's ChatGLMConfig: a key missing from config.json means this value.
CHATGLM_DEFAULTS = {
    "num_layers": 28,
    "padded_vocab_size": 65024,
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "kv_channels": 128,
    "num_attention_heads": 32,
    "seq_length": 2048,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "layernorm_epsilon": 1e-5,
    "rmsnorm": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "add_bias_linear": False,
    "add_qkv_bias": False,
    "multi_query_attention": False,
    "multi_query_group_num": 1,
    "fp32_residual_connection": False,
    "quantization_bit": 0,
    "pre_seq_len": None,
    "rope_ratio": 1,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 2,
}

# Config options whose non-default value the native model cannot reproduce: (key, bad value, what it means).
UNSUPPORTED_OPTIONS = [
    ("rmsnorm", False, "LayerNorm instead of RMSNorm"),
    ("post_layer_norm", False, "no final layer norm"),
    ("apply_residual_connection_post_layernorm", True, "residual connections taken after the layer norm"),
    ("add_bias_linear", True, "biases on the attention output and MLP projections"),
    ("fp32_residual_connection", True, "a float32 residual stream"),
]

# Names inside transformer.encoder.layers.N (ChatGLM) -> inside model.layers.N (GLM); query_key_value is split.
LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
TOP_RENAMES = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "encoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
}
# Buffers the native model computes from the config (ChatGLM saves the rotary inverse frequencies).
RECOMPUTED = {"rotary_pos_emb.inv_freq"}
LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)")

WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Texts the tokenizer must encode (and decode) exactly as sentencepiece does: Chinese, English, digits, runs of
# spaces (also leading and trailing), newlines and tabs, emoji and rare characters that need byte fallback,
# full-width forms, control characters, and words that look like ChatGLM's special tokens.
VERIFY_TEXTS = [
    "",
    "你好",
    "你好，世界！今天天气怎么样？",
    "类型#裙*版型#宽松*风格#性感*图案#线条*裙型#阔腿裤",
    "Hello, world! It's 3:45 p.m. — isn't it?",
    "1234567890 3.14159 -42 1e-5 0x1F 2023年12月31日",
    " leading space",
    "  two leading spaces",
    "trailing spaces   ",
    "a  b   c    d",
    " ",
    "   ",
    "\n",
    "line one\nline two\n\nline four\n",
    "\n\n  \n\t\tindented\r\n",
    "\u3000全角空格\u3000",
    "😀🎉👍🏽 emoji 🇨🇳",
    "𠀀𪚥𰻞 rare Han, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "Café naïve façade Ωμέγα Привет",
    "\x00\x01\x7f control",
    "\u200b zero\u200dwidth",
    "▁ already a metaspace ▁▁",
    "<s> < unk > <0x0A> sop eop MASK gMASK",
    "def f(x):\n    return {'a': [1, 2]}  # code",
    "[Round 1]\n\n问：你好\n\n答：",
]
VERIFY_CONVERSATIONS = [
    [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
        {"role": "user", "content": "写一句关于春天的诗。 "},
        {"role": "assistant", "content": "春风又绿江南岸。"},
    ],
    [{"role": "user", "content": "  spaces\n\nand lines 😀"}, {"role": "assistant", "content": " 42\n"}],
]
VERIFY_SYSTEM = {"role": "system", "content": "你是一个乐于助人的助手。"}


class ConversionError(ValueError):
    """The checkpoint cannot be converted exactly; the message names the file or key, the rule and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# The source folder


def read_config(src: Path) -> dict:
    """ChatGLM's config.json as a dict; refuses what is not a ChatGLM2/3 checkpoint, saying what was found."""
    if not src.is_dir():
        raise ConversionError(f"{src} is not a folder: give the folder of a ChatGLM2/ChatGLM3 checkpoint.")
    path = src / "config.json"
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in src.iterdir())) or "nothing"
        raise ConversionError(
            f"{src} has no config.json (it holds: {found}), so it is no Hugging Face checkpoint folder. Give the "
            "folder a ChatGLM2/ChatGLM3 download or fine-tune wrote (config.json, tokenizer.model, weights)."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc}).") from None
    model_type = config.get("model_type")
    if model_type == "glm" or model_type == "glm4":
        raise ConversionError(
            f"{path} is already a native transformers model (model_type {model_type!r}): load it with "
            "AutoModelForCausalLM.from_pretrained, no conversion needed."
        )
    if model_type != "chatglm":
        raise ConversionError(
            f"{path} has model_type {model_type!r}, not 'chatglm': this converter only turns THUDM's ChatGLM2-6B / "
            "ChatGLM3-6B checkpoints into native GLM. Other models load as they are."
        )
    if config.get("position_encoding_2d") or ("padded_vocab_size" not in config and "inner_hidden_size" in config):
        raise ConversionError(
            f"{path} is ChatGLM-6B (the first version: position_encoding_2d, vocab_size "
            f"{config.get('vocab_size')}). Its 2D positions and layout are another architecture that transformers 5 "
            "has no native model for, so it cannot be converted. Use ChatGLM2-6B / ChatGLM3-6B (convert them with "
            "this script) or GLM-4 (THUDM/glm-4-9b-chat-hf)."
        )
    if config.get("padded_vocab_size") == 151552 or not (src / "tokenizer.model").is_file():
        tokenizer_files = sorted(p.name for p in src.glob("tokeniz*")) or ["no tokenizer files"]
        if config.get("padded_vocab_size") == 151552 or _uses_tiktoken(src):
            raise ConversionError(
                f"{src} is a GLM-4 remote-code checkpoint (padded_vocab_size {config.get('padded_vocab_size')}, "
                f"tiktoken tokenizer: {', '.join(tokenizer_files)}). THUDM publishes the same weights in native "
                "format: use THUDM/glm-4-9b-chat-hf (or glm-4-9b-hf), which transformers 5 loads directly with "
                "AutoModelForCausalLM; no conversion needed."
            )
        raise ConversionError(
            f"{src} has no tokenizer.model (found: {', '.join(tokenizer_files)}): the ChatGLM2/3 tokenizer is built "
            "from its sentencepiece model. Copy tokenizer.model from the base model's folder into it."
        )
    return config


def _uses_tiktoken(src: Path) -> bool:
    """Whether the folder's tokenizer code is GLM-4's (tiktoken) rather than ChatGLM2/3's (sentencepiece)."""
    code = src / "tokenization_chatglm.py"
    return code.is_file() and "tiktoken" in code.read_text(encoding="utf-8", errors="replace")


def detect_family(src: Path, config: dict, family: str | None = None) -> str:
    """chatglm2 or chatglm3: `family` if given, else the tokenizer code (ChatGLM3's defines the role tokens)."""
    if family:
        if family not in FAMILIES:
            raise ConversionError(f"--family must be one of {', '.join(FAMILIES)}, got {family!r}.")
        return family
    code = src / "tokenization_chatglm.py"
    if code.is_file():
        return "chatglm3" if "<|user|>" in code.read_text(encoding="utf-8", errors="replace") else "chatglm2"
    name = str(config.get("_name_or_path", "")).lower()
    for candidate in FAMILIES:
        if candidate in name:
            return candidate
    raise ConversionError(
        f"{src} has no tokenization_chatglm.py and its config.json does not name the model "
        f"(_name_or_path {config.get('_name_or_path')!r}), so ChatGLM2 and ChatGLM3 cannot be told apart (same "
        "architecture and vocabulary, different chat formats). Pass --family chatglm2 or --family chatglm3."
    )


def chatglm_option(config: dict, key: str):
    """A ChatGLM config value, with ChatGLMConfig's default when config.json leaves it out."""
    return config[key] if key in config else CHATGLM_DEFAULTS[key]


# ---------------------------------------------------------------------------------------------------------------
# The config


def glm_config(config: dict, family: str, dtype: torch.dtype | None, modeling_code: str | None = None) -> GlmConfig:
    """The native GlmConfig for a ChatGLM config; refuses options the native model cannot reproduce."""

    def opt(key):
        return chatglm_option(config, key)

    for key, bad, meaning in UNSUPPORTED_OPTIONS:
        if opt(key) == bad:
            raise ConversionError(
                f"config.json sets {key}={json.dumps(bad)} ({meaning}); the native GLM model does not have that, so "
                "the converted model would compute something else. Only the ChatGLM2/3-6B layout converts exactly."
            )
    if opt("quantization_bit"):
        raise ConversionError(
            f"config.json sets quantization_bit={opt('quantization_bit')}: this is one of ChatGLM's int4/int8 "
            "checkpoints (chatglm2-6b-int4 and the like), whose packed weights only THUDM's kernels read. Convert "
            "the float16 checkpoint instead, and quantize the native model afterwards (e.g. bitsandbytes)."
        )
    heads, head_dim = opt("num_attention_heads"), opt("kv_channels")
    if head_dim is None:
        head_dim = opt("hidden_size") // heads
    kv_heads = opt("multi_query_group_num") if opt("multi_query_attention") else heads
    if heads % kv_heads:
        raise ConversionError(
            f"config.json: num_attention_heads {heads} is not a multiple of multi_query_group_num {kv_heads}."
        )
    if head_dim % 4:
        # ChatGLM rotates the first kv_channels // 2 dimensions in pairs; GLM's partial_rotary_factor 0.5 gives the
        # same only when that half is even.
        raise ConversionError(f"config.json: kv_channels {head_dim} is not a multiple of 4, so RoPE would differ.")
    if opt("hidden_dropout"):
        logger.warning(
            "config.json sets hidden_dropout=%s, which the native GLM has no counterpart for: training with the "
            "converted model uses no dropout on the residual stream (inference is unaffected).",
            opt("hidden_dropout"),
        )
    if opt("pre_seq_len") is not None:
        logger.warning(
            "config.json sets pre_seq_len=%s (a P-Tuning v2 config): only the base model is converted; train a new "
            "prefix on the native model (run_seq2seq_ptuning.py --finetuning_type ptuning).",
            opt("pre_seq_len"),
        )
    if config.get("tie_word_embeddings"):
        logger.warning(
            "config.json sets tie_word_embeddings=true, but ChatGLM's remote code never ties output_layer to the "
            "embedding (it defines no output embeddings): the native model is left untied, as ChatGLM computes."
        )
    return GlmConfig(
        vocab_size=opt("padded_vocab_size"),
        hidden_size=opt("hidden_size"),
        intermediate_size=opt("ffn_hidden_size"),
        num_hidden_layers=opt("num_layers"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=opt("seq_length"),
        rms_norm_eps=opt("layernorm_epsilon"),
        rope_parameters=rope_parameters(config, family, modeling_code),
        attention_bias=bool(opt("add_qkv_bias")),
        attention_dropout=opt("attention_dropout"),
        tie_word_embeddings=False,
        pad_token_id=opt("pad_token_id"),
        eos_token_id=opt("eos_token_id"),
        bos_token_id=None,
        use_cache=True,
        dtype=dtype,
        architectures=["GlmForCausalLM"],
    )


def rope_parameters(config: dict, family: str, modeling_code: str | None = None) -> dict:
    """GLM's rope_parameters for ChatGLM's RoPE: base 10000, the first half of each head rotated in pairs.

    `rope_ratio` (the 32k models) means two things: ChatGLM3 (like GLM-4) multiplies the base by it, ChatGLM2
    divides the positions by it (position interpolation), which is GLM's "linear" RoPE scaling. When the folder's
    modeling_chatglm.py is given it must agree with the family's reading, else the conversion is refused.
    """
    ratio = chatglm_option(config, "rope_ratio")
    params = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    if ratio == 1:
        return params
    interpolates = family == "chatglm2"
    if modeling_code is not None:
        scales_base = bool(re.search(r"base\s*=\s*base\s*\*\s*self\.rope_ratio", modeling_code))
        divides_positions = bool(re.search(r"\)\s*/\s*self\.rope_ratio", modeling_code))
        if scales_base == divides_positions or divides_positions != interpolates:
            raise ConversionError(
                f"config.json sets rope_ratio={ratio}, but modeling_chatglm.py does not apply it as {family} does "
                f"({'positions divided by it' if interpolates else 'the RoPE base multiplied by it'}), so the "
                "native RoPE would differ. Pass the right --family, or convert a folder with THUDM's code for it."
            )
    if interpolates:
        return {**params, "rope_type": "linear", "factor": float(ratio)}
    return {**params, "rope_theta": 10000.0 * ratio}


# ---------------------------------------------------------------------------------------------------------------
# The weights


def weight_files(src: Path) -> list[Path]:
    """The checkpoint's weight files in order: an index's shards, or the single file."""
    for name in WEIGHT_FILES:
        path = src / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            weight_map = json.loads(path.read_text(encoding="utf-8")).get("weight_map", {})
            shards = list(dict.fromkeys(weight_map.values()))
            missing = [s for s in shards if not (src / s).is_file()]
            if missing:
                raise ConversionError(f"{path} names shards that are not in {src}: {', '.join(missing)}.")
            return [src / s for s in shards]
        return [path]
    weightish = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".gguf")
    found = ", ".join(sorted(p.name for p in src.iterdir() if p.suffix in weightish or p.name.endswith(".index.json")))
    raise ConversionError(
        f"{src} has none of {', '.join(WEIGHT_FILES)} (weight-like files found: {found or 'none'}). Give the folder "
        "holding the checkpoint's weights."
    )


def read_tensors(path: Path):
    """(name, tensor) of one weight file, one tensor at a time; .bin files are memory-mapped where possible."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is no dict)
                yield name, f.get_tensor(name)
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        # A legacy (pre-zip) torch.save file cannot be memory-mapped: it is read whole.
        state = torch.load(path, map_location="cpu", weights_only=True)
    for name in list(state):
        yield name, state.pop(name)


def convert_tensor(name: str, tensor: torch.Tensor, config: GlmConfig, where: Path) -> list[tuple[str, torch.Tensor]]:
    """The native (name, tensor) pairs for one ChatGLM weight; [] for buffers the native model recomputes."""
    key = name.removeprefix("transformer.")
    if key in RECOMPUTED:
        return []
    if not tensor.is_floating_point() or key.endswith("weight_scale"):
        raise ConversionError(
            f"{where}: '{name}' ({tensor.dtype}) is a quantized weight (ChatGLM's int4/int8 quantize()). Convert the "
            "float16 checkpoint instead and quantize the native model afterwards (e.g. bitsandbytes)."
        )
    if key in TOP_RENAMES:
        return [(TOP_RENAMES[key], tensor)]
    match = LAYER_KEY.fullmatch(key)
    if match:
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        if rest in LAYER_RENAMES:
            return [(prefix + LAYER_RENAMES[rest], tensor)]
        if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
            kind = rest.rsplit(".", 1)[1]
            q, k, v = split_qkv(tensor, config, f"{where}: '{name}'")
            return [(f"{prefix}self_attn.{p}_proj.{kind}", t) for p, t in zip("qkv", (q, k, v))]
    if key.startswith("prefix_encoder."):
        hint = (
            "a P-Tuning v2 prefix encoder (ChatGLM ptuning/main.py). It cannot be carried into the native model: "
            "convert the base model's folder, then train a prefix on it (run_seq2seq_ptuning.py --finetuning_type "
            "ptuning)"
        )
    elif key.startswith("classifier_head"):
        hint = "ChatGLMForSequenceClassification's head; only the causal-LM model converts"
    else:
        hint = "not part of ChatGLM2/3's model, so there is nowhere exact to put it"
    raise ConversionError(f"{where}: weight '{name}' is {hint}. Nothing was converted.")


def split_qkv(tensor: torch.Tensor, config: GlmConfig, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ChatGLM's fused query_key_value rows as separate q, k, v (weight or bias), each a contiguous copy.

    With multi-query attention the rows are all query heads, then the key groups, then the value groups. Without
    it ChatGLM views the output as (heads, 3 * head_dim): per head its q, k and v rows, interleaved.
    """
    heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    rows = (heads + 2 * kv_heads) * dim
    if tensor.shape[0] != rows or (tensor.dim() == 2 and tensor.shape[1] != config.hidden_size):
        raise ConversionError(
            f"{what} has shape {tuple(tensor.shape)}; the config (num_attention_heads {heads}, multi_query_group_num "
            f"{kv_heads}, kv_channels {dim}, hidden_size {config.hidden_size}) needs {rows} rows."
        )
    if kv_heads == heads:
        per_head = tensor.reshape(heads, 3, dim, *tensor.shape[1:])
        return tuple(per_head[:, i].reshape(heads * dim, *tensor.shape[1:]).clone() for i in range(3))
    q, k, v = tensor.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=0)
    return q.clone(), k.clone(), v.clone()


class ShardWriter:
    """Writes safetensors shards of at most `max_bytes` as tensors arrive, then names them as save_pretrained does."""

    def __init__(self, dst: Path, max_bytes: int):
        self.dst, self.max_bytes = dst, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.dst / f"model-part-{len(self.shards) + 1:05d}.safetensors"
        save_file({k: t.contiguous() for k, t in self.pending.items()}, str(path), metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[Path]:
        """Rename the shards (model.safetensors, or model-0000i-of-0000n.safetensors + the index); their paths."""
        self.flush()
        # safetensors writes through a private temporary file (mode 0600): give the shards the mode the other
        # files of the folder get, so a model folder shared between users stays readable.
        umask = os.umask(0)
        os.umask(umask)
        names = (
            ["model.safetensors"]
            if len(self.shards) == 1
            else [f"model-{i:05d}-of-{len(self.shards):05d}.safetensors" for i in range(1, len(self.shards) + 1)]
        )
        weight_map, paths = {}, []
        for (path, keys), name in zip(self.shards, names):
            final = self.dst / name
            path.rename(final)
            final.chmod(0o666 & ~umask)
            paths.append(final)
            weight_map.update(dict.fromkeys(keys, name))
        if len(paths) == 1:
            return paths
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return paths


def convert_weights(src: Path, dst: Path, config: GlmConfig, dtype: torch.dtype | None, max_shard_size) -> dict:
    """Convert every weight file of `src` into safetensors shards in `dst`; {native name: dtype} of what was written.

    Every native weight must come out exactly once, with the shape the native model has: a missing, duplicated
    or misshapen weight is an error (the native model would otherwise start from random values).
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GlmForCausalLM(config).state_dict().items()}
    writer = ShardWriter(dst, convert_file_size_to_int(max_shard_size))
    written: dict[str, torch.dtype] = {}
    for path in weight_files(src):
        for name, tensor in read_tensors(path):
            for new_name, new in convert_tensor(name, tensor, config, path):
                if new_name in written:
                    raise ConversionError(f"{path}: '{name}' gives {new_name} a second time (a duplicated weight).")
                if new_name not in expected or tuple(new.shape) != expected[new_name]:
                    raise ConversionError(
                        f"{path}: '{name}' has shape {tuple(tensor.shape)}, which does not fit the config "
                        f"(native {new_name} needs {expected.get(new_name)}). Is config.json this checkpoint's?"
                    )
                new = new.to(dtype) if dtype is not None else new
                written[new_name] = new.dtype
                writer.add(new_name, new)
    missing = sorted(set(expected) - set(written))
    if missing:
        raise ConversionError(
            f"{src}: the checkpoint lacks {len(missing)} weight(s) the model needs, e.g. {', '.join(missing[:4])} "
            "(native names). A weight index that lists only some shards, or a P-Tuning / LoRA output folder instead "
            "of a full model, looks like this: give the full model's folder."
        )
    writer.finish()
    return written


# ---------------------------------------------------------------------------------------------------------------
# The tokenizer


def build_tokenizer(tokenizer_model: Path, family: str, model_max_length: int) -> PreTrainedTokenizerFast:
    """A fast tokenizer that encodes as ChatGLM's sentencepiece model, with ChatGLM's special tokens and ids.

    Sentencepiece (BPE, byte fallback, a "▁" prepended to every text, spaces as "▁") becomes a tokenizers BPE:
    the same pieces and merges, the same prefix and space rules as a normalizer, so each text between special
    tokens is encoded as sentencepiece encodes it on its own, exactly as ChatGLM builds its inputs.
    """
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(tokenizer_model.read_bytes())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    rules = {
        "model_type BPE": spec.model_type == 2,
        "byte_fallback": spec.byte_fallback,
        "add_dummy_prefix": norm.add_dummy_prefix,
        "no remove_extra_whitespaces": not norm.remove_extra_whitespaces,
        "no normalization rules (identity)": not norm.precompiled_charsmap and norm.name in ("identity", ""),
    }
    broken = [rule for rule, ok in rules.items() if not ok]
    if broken:
        raise ConversionError(
            f"{tokenizer_model} is not ChatGLM2/3's kind of sentencepiece model (it breaks: {', '.join(broken)}), "
            "so the fast tokenizer built here would not encode exactly as it does."
        )
    sp = SentencePieceProcessor(model_file=str(tokenizer_model))
    pieces = SentencePieceExtractor(str(tokenizer_model)).extract(BPE)
    unk = sp.id_to_piece(sp.unk_id())
    backend = Tokenizer(BPE(vocab=pieces["vocab"], merges=pieces["merges"], unk_token=unk, fuse_unk=True,
                            byte_fallback=True))  # fmt: skip
    # sentencepiece always prepends "▁" (even to a text that starts with a space, where tokenizers' Metaspace
    # would not), then writes spaces as "▁".
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = SPECIAL_TOKENS[family]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    ids = {t: backend.token_to_id(t) for t in specials}
    wanted = {t: sp.vocab_size() + i for i, t in enumerate(specials)}
    if ids != wanted:
        raise ConversionError(f"special token ids came out as {ids}, ChatGLM's are {wanted}.")
    eos = sp.id_to_piece(sp.eos_id())
    # As ChatGLM's tokenizer with add_special_tokens=True: [gMASK] <sop> first; a pair ends with eos.
    backend.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A",
        pair=f"[gMASK] <sop> $A $B {eos}",
        special_tokens=[("[gMASK]", ids["[gMASK]"]), ("<sop>", ids["<sop>"]), (eos, sp.eos_id())],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        unk_token=unk,
        pad_token=unk,  # ChatGLM pads with <unk> (id 0)
        bos_token=None,
        extra_special_tokens=specials,
        padding_side="left",  # ChatGLM's tokenizer pads on the left, as batched generation needs
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = TEMPLATES[family]
    return tokenizer


def native_chatglm2_ids(sp: SentencePieceProcessor, ids: dict, messages: list[dict]) -> list[int]:
    """ChatGLM2's training ids for a conversation (ptuning/main.py): [gMASK] sop prompt answer eos."""
    history, turns = [], list(zip(messages[::2], messages[1::2]))
    for user, assistant in turns[:-1]:
        history.append((user["content"], assistant["content"]))
    prompt = "".join(f"[Round {i}]\n\n问：{q}\n\n答：{a}\n\n" for i, (q, a) in enumerate(history, start=1))
    prompt += f"[Round {len(history) + 1}]\n\n问：{turns[-1][0]['content']}\n\n答："
    return [ids["[gMASK]"], ids["<sop>"], *sp.encode(prompt), *sp.encode(turns[-1][1]["content"]), sp.eos_id()]


def native_chatglm3_ids(sp: SentencePieceProcessor, ids: dict, messages: list[dict]) -> list[int]:
    """ChatGLM3's training ids for a conversation (finetune_hf.py): [gMASK] sop, per message <|role|> "\\n" text."""
    out = [ids["[gMASK]"], ids["<sop>"]]
    for message in messages:
        out += [ids[f"<|{message['role']}|>"], *sp.encode("\n"), *sp.encode(message["content"])]
    return [*out, sp.eos_id()]


def verify_tokenizer(tokenizer, tokenizer_model: Path, family: str, what: str) -> None:
    """Refuse a tokenizer that encodes (or decodes) any fixed text or conversation differently from ChatGLM."""
    sp = SentencePieceProcessor(model_file=str(tokenizer_model))
    ids = {t: sp.vocab_size() + i for i, t in enumerate(SPECIAL_TOKENS[family])}
    problems = []
    for token, wanted in {**ids, tokenizer.eos_token: sp.eos_id(), tokenizer.pad_token: sp.unk_id()}.items():
        if tokenizer.convert_tokens_to_ids(token) != wanted:
            problems.append(f"{token} has id {tokenizer.convert_tokens_to_ids(token)}, ChatGLM's is {wanted}")
    if tokenizer.bos_token_id is not None:
        problems.append(f"bos is {tokenizer.bos_token!r}; ChatGLM prepends no bos")
    for text in VERIFY_TEXTS:
        wanted = sp.encode(text)
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != wanted:
            problems.append(f"{text!r} encodes as {got[:12]}, sentencepiece gives {wanted[:12]}")
        elif tokenizer.decode(got) != sp.decode(wanted):
            problems.append(
                f"{text!r} decodes as {tokenizer.decode(got)!r}, sentencepiece gives {sp.decode(wanted)!r}"
            )
        prefixed = tokenizer(text)["input_ids"]
        if prefixed != [ids["[gMASK]"], ids["<sop>"], *wanted]:
            problems.append(f"{text!r} with special tokens encodes as {prefixed[:12]}, ChatGLM starts [gMASK] <sop>")
    chat = ChatFormat(tokenizer)
    for messages in VERIFY_CONVERSATIONS:
        if family == "chatglm3":
            messages = [VERIFY_SYSTEM, *messages]
            wanted = native_chatglm3_ids(sp, ids, messages)
            got = chat.encode(messages, True, 10**6, 10**6).input_ids
        else:
            wanted = native_chatglm2_ids(sp, ids, messages)
            got = chat.encode(messages, False, 10**6, 10**6).input_ids
        if got != wanted:
            problems.append(f"a {family} conversation renders as {got[:16]}..., ChatGLM builds {wanted[:16]}...")
    if problems:
        raise ConversionError(
            f"the {what} does not reproduce ChatGLM's tokenization exactly, so it is not written: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )


# ---------------------------------------------------------------------------------------------------------------
# The whole conversion


def convert(
    src,
    dst,
    family: str | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = "2GB",
) -> Path:
    """Convert the ChatGLM2/3 checkpoint folder `src` into a native GLM folder `dst` (created; must not hold files).

    `family`: chatglm2 / chatglm3 (detected from the tokenizer code when None). `dtype`: float32, float16 or
    bfloat16 (None keeps the checkpoint's). Returns `dst`. Nothing is left in `dst` when the conversion fails.
    """
    src, dst = Path(src), Path(dst)
    config = read_config(src)
    family = detect_family(src, config, family)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    target_dtype = DTYPES[dtype] if dtype else None
    modeling = src / "modeling_chatglm.py"
    code = modeling.read_text(encoding="utf-8", errors="replace") if modeling.is_file() else None
    native = glm_config(config, family, None, code)
    files = weight_files(src)  # refuse a folder without weights before anything is written
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"{dst} already exists and is not an empty folder: choose a new output folder.")
    created = not dst.exists()
    dst.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = build_tokenizer(src / "tokenizer.model", family, native.max_position_embeddings)
        verify_tokenizer(tokenizer, src / "tokenizer.model", family, "tokenizer built from tokenizer.model")
        logger.info("Converting %s (%s, %d weight file(s)) to %s", src, family, len(files), dst)
        dtypes = convert_weights(src, dst, native, target_dtype, max_shard_size)
        native.dtype = dtypes["model.embed_tokens.weight"]
        native.save_pretrained(dst)
        stop_ids = [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(EXTRA_STOP_TOKENS[family])]
        GenerationConfig(eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id).save_pretrained(dst)
        tokenizer.save_pretrained(dst)
        verify_tokenizer(
            AutoTokenizer.from_pretrained(dst), src / "tokenizer.model", family, f"tokenizer saved in {dst}"
        )
    except BaseException:
        if created:
            shutil.rmtree(dst, ignore_errors=True)
        else:
            for path in dst.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise
    logger.info("Wrote %s: load it with AutoModelForCausalLM / AutoTokenizer.from_pretrained(%r)", dst, str(dst))
    return dst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="ChatGLM2/ChatGLM3 checkpoint folder (config.json, tokenizer.model, weights).")
    parser.add_argument("dst", help="Output folder for the native GLM checkpoint (new, or empty).")
    parser.add_argument("--family", choices=FAMILIES, help="Override the detection of ChatGLM2 vs ChatGLM3.")
    parser.add_argument("--dtype", choices=list(DTYPES), help="Cast the weights (default: keep the checkpoint's).")
    parser.add_argument(
        "--max_shard_size", default="2GB", help="Largest output shard (default 2GB; also bounds the memory used)."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(message)s", level=logging.INFO)
    try:
        convert(args.src, args.dst, family=args.family, dtype=args.dtype, max_shard_size=args.max_shard_size)
    except ConversionError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
