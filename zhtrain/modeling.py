"""What training and serving both need to know about a model and its tokenizer, one helper per job.

- `context_length`: the longest sequence a model takes, from whichever config key its architecture uses;
  `fit_to_context` caps a length argument to it (with a warning).
- `repair_special_tokens` gives a tokenizer the eos / bos / pad a task needs, `document_start_token` says
  whether texts start with bos, `padding_id` picks the id batches are padded with.
- `check_vocabulary_fits` / `fit_embeddings`: a tokenizer the model has no embeddings for is refused; the
  embeddings grow for the special tokens a script added.
- `set_special_token_ids` writes eos / pad / bos / decoder-start ids onto the config and the generation config,
  so the saved model generates the way it was trained.
- `log_trainable_parameters`: how many weights train, one log line for every script.

Serving imports this module: it must stay free of datasets, sklearn and PIL.
"""

import logging

from zhtrain.errors import UserError

logger = logging.getLogger(__name__)

# config keys that hold the number of positions, by architecture: BERT / Llama / Qwen, GPT-2, OPT / Baichuan,
# ChatGLM, MPT
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "max_seq_len")
# a tokenizer without a limit of its own reports this placeholder (transformers' VERY_LARGE_INTEGER)
NO_TOKENIZER_LIMIT = 1_000_000


def context_length(config, tokenizer=None) -> int | None:
    """The longest sequence the model takes, in tokens; None when neither the config nor the tokenizer says.

    Read from the text part of multimodal configs (a CLIP's text tower, a captioner's decoder). The tokenizer's
    `model_max_length` counts only when the config has no positions (ALiBi models such as Bloom): a tokenizer
    borrowed from a 512-position BERT must not cut a 1024-position GPT-2.

    >>> from transformers import BertConfig, BloomConfig, GPT2Config
    >>> context_length(GPT2Config(n_positions=1024)), context_length(BertConfig(max_position_embeddings=512))
    (1024, 512)
    >>> context_length(BloomConfig()) is None
    True
    """
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < NO_TOKENIZER_LIMIT else None


def fit_to_context(length: int, config, flag: str, model: str = "model") -> int:
    """`length` (the value of `--flag`), at most the model's context length; a warning says when it is cut.

    >>> from transformers import GPT2Config
    >>> fit_to_context(128, GPT2Config(n_positions=64), "max_seq_length")
    64
    """
    limit = context_length(config)
    if limit is not None and length > limit:
        logger.warning("--%s %d exceeds the %s's %d positions; using %d.", flag, length, model, limit, limit)
        return limit
    return length


def repair_special_tokens(
    tokenizer,
    *,
    eos_from_sep: bool = False,
    new_eos: str | None = None,
    new_bos: str | None = None,
    new_pad: str | None = None,
    pad_from_eos: bool = False,
) -> list[str]:
    """Give `tokenizer` the special tokens a task needs; returns the names of those added to its vocabulary.

    - eos, when missing: the sep token with `eos_from_sep` (BERT vocabularies end a text with [SEP]), else a new
      `new_eos` token;
    - bos, when missing: a new `new_bos` token;
    - pad: with `new_pad`, a new token when the pad is missing or equal to eos (collators mask padding out of the
      loss, so a pad equal to eos would mask every eos and the model would never learn to stop); with
      `pad_from_eos`, a missing pad becomes eos (for batches whose padding never reaches the loss).

    Each `new_*` left None leaves that token as it is: adding a token changes the model's embedding matrix.

    >>> from transformers import BertTokenizerFast
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "vocab.txt").write_text("\\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中", "文"]))
    >>> tokenizer = BertTokenizerFast(str(folder / "vocab.txt"))
    >>> repair_special_tokens(tokenizer, eos_from_sep=True, pad_from_eos=True), tokenizer.eos_token
    ([], '[SEP]')
    >>> repair_special_tokens(tokenizer, new_bos="[BOS]", new_pad="[PAD]"), tokenizer.bos_token_id
    (['bos_token'], 7)
    """
    wanted = {}
    if tokenizer.eos_token is None:
        if eos_from_sep and tokenizer.sep_token is not None:
            tokenizer.eos_token = tokenizer.sep_token
            logger.info("The tokenizer has no eos token; its sep token %s ends texts.", tokenizer.eos_token)
        elif new_eos is not None:
            wanted["eos_token"] = new_eos
    if tokenizer.bos_token is None and new_bos is not None:
        wanted["bos_token"] = new_bos
    eos = tokenizer.eos_token or wanted.get("eos_token")
    if new_pad is not None and (tokenizer.pad_token is None or tokenizer.pad_token == eos):
        wanted["pad_token"] = new_pad if new_pad != eos else "<pad>"
    if wanted:
        tokenizer.add_special_tokens(wanted)
        logger.info("Added special tokens to the tokenizer: %s", wanted)
    if pad_from_eos and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return sorted(wanted)


def document_start_token(tokenizer) -> int | None:
    """bos when the tokenizer itself starts every text with it (Llama), else None (GPT-2, Qwen2, BERT vocab)."""
    if tokenizer.bos_token_id is None:
        return None
    ids = tokenizer("中文", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id if ids and ids[0] == tokenizer.bos_token_id else None


def padding_id(tokenizer, stop_ids=()) -> int:
    """The id batches are padded with: the pad token, else the first stop id or eos, else 0 (masked anyway)."""
    for candidate in (tokenizer.pad_token_id, *stop_ids, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def check_vocabulary_fits(tokens: int, embeddings, tokenizer_source: str, model_source: str) -> None:
    """Refuse a tokenizer with more ids than the model has embedding rows (a tokenizer from another model).

    The first step would fail with `IndexError: index out of range in self`. `tokens` counts the tokenizer's own
    ids, not the special tokens a script adds (those rows are added to the model).
    """
    rows = embeddings.num_embeddings
    if tokens > rows:
        raise UserError(
            f"The tokenizer ({tokenizer_source}) has {tokens} tokens, but the model ({model_source}) has embeddings "
            f"for only {rows}: token ids from {rows} up do not exist in this model. Use the tokenizer saved with the "
            "model (drop --tokenizer_name, or copy its tokenizer files next to the weights)."
        )


def fit_embeddings(model, tokenizer, tokenizer_source: str, model_source: str) -> None:
    """Refuse a tokenizer of another model, then grow `model`'s embeddings for the special tokens a script added.

    The tokenizer's base vocabulary (`vocab_size`, without added tokens) must fit. Embeddings never shrink: some
    checkpoints round their rows up past the vocabulary (Qwen2).
    """
    embeddings = model.get_input_embeddings()
    check_vocabulary_fits(tokenizer.vocab_size, embeddings, tokenizer_source, model_source)
    rows = embeddings.num_embeddings
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer))
        logger.info("The embeddings grew from %d to %d rows for the tokenizer's added tokens.", rows, len(tokenizer))


def set_special_token_ids(model, **ids) -> None:
    """Write token ids (`eos_token_id=`, `pad_token_id=`, `bos_token_id=`, `decoder_start_token_id=`; eos may be
    a list of stop ids) onto the model's config and generation config, so the saved model generates as trained.

    Only the ids given are written (None included). A peft model's base model gets them.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=10, n_positions=8))
    >>> set_special_token_ids(model, eos_token_id=[2, 3], pad_token_id=0)
    >>> model.config.eos_token_id, model.generation_config.pad_token_id
    ([2, 3], 0)
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for target in (base.config, base.generation_config):
        for name, value in ids.items():
            setattr(target, name, value)


def log_trainable_parameters(model, what: str = "Training") -> tuple[int, int]:
    """Log how many of the model's parameters train; returns (trainable, total).

    peft's own count for adapters (it counts 4-bit weights at their real size); requires_grad otherwise.
    """
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    logger.info("%s: training %d of %d parameters (%.3f%%)", what, trainable, total, 100 * trainable / max(total, 1))
    return trainable, total
