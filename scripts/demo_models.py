"""Tokenizers and tiny randomly initialised models for the demos, saved like hub checkpoints: character-level BERT
WordPiece tokenizers (over the CJK Unified Ideographs block, or only the characters a corpus or the captions use),
small byte-level BPE tokenizers like Qwen2's and Llama's, and from-scratch BERT, Llama, T5, Qwen2 / Llama causal LM,
ViT, Chinese-CLIP and Chinese GPT-2 models (2 layers of width 64 per stack or tower). Weights are drawn under
`torch.random.fork_rng` with seed 0, so they are reproducible and the caller's global torch RNG is left untouched.
"""

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    ChineseCLIPConfig,
    ChineseCLIPModel,
    ChineseCLIPProcessor,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTModel,
)
from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

FULL_WIDTH_SYMBOLS = (
    "，。！？、；：“”‘’（）《》〈〉【】「」『』〔〕…—～·￥％＋－＝／＠＃＆＊．＜＞｜〜・０１２３４５６７８９"
)


def build_tokenizer(out_dir: str | Path) -> PreTrainedTokenizerBase:
    """Build and save a character-level Chinese BERT WordPiece tokenizer."""
    return char_tokenizer(out_dir, [chr(code) for code in range(0x4E00, 0xA000)])


def char_tokenizer(out_dir: str | Path, characters: list[str]) -> PreTrainedTokenizerBase:
    """A BERT-style WordPiece tokenizer over ASCII, punctuation and the given characters, saved to out_dir."""
    ascii_chars = [c for c in string.printable if not c.isspace() and not c.isupper()]
    # WordPiece keeps ASCII words whole, so "price" or "100" only avoid [UNK] with "##" continuation pieces.
    continuations = ["##" + c for c in string.ascii_lowercase + string.digits]
    tokens = [*SPECIAL_TOKENS, *ascii_chars, *continuations, *FULL_WIDTH_SYMBOLS, *characters]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    # Passing `vocab=` works in transformers 5; `vocab_file=` to the constructor is silently ignored.
    tokenizer = BertTokenizerFast(
        vocab=vocab,
        do_lower_case=True,
        tokenize_chinese_chars=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_tiny_bert(out_dir: str | Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Save a tiny randomly initialised BertForMaskedLM plus its tokenizer, like a hub checkpoint."""
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng keeps the caller's global torch RNG untouched while still making the weights reproducible.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForMaskedLM(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def build_tiny_decoder(out_dir: str | Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """A tiny Llama causal LM with the char tokenizer (no eos: like BERT-vocabulary Chinese GPT-2s).

    Llama, not Qwen2: transformers 5 ignores a Qwen2 checkpoint's declared tokenizer class and loads Qwen2's own.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.sep_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def build_tiny_t5(out_dir: str | Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """A tiny T5 encoder-decoder with the char tokenizer; decoding starts from the pad token, as in T5."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_ff=128,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def build_corpus_char_tokenizer(out_dir: str | Path, texts: list[str]) -> PreTrainedTokenizerBase:
    """A BERT-style character tokenizer whose vocabulary holds only the characters of `texts` (plus ASCII).

    It works like bert-base-chinese (WordPiece, [CLS]/[SEP]/[PAD], no bos/eos) but with a few hundred entries
    instead of 21,128, so the output layer of a tiny GPT-2 is cheap enough to train in seconds on a CPU.
    """
    characters = sorted({c for text in texts for c in text if not c.isascii() and not c.isspace()})
    return char_tokenizer(out_dir, characters)


def build_bpe_tokenizer(texts: list[str], bos: str | None, eos: str, pad: str | None, vocab_size: int = 800):
    """A small byte-level BPE tokenizer like Qwen2's (no bos, pad = eos) or Llama's (adds bos, no pad)."""
    specials = [t for t in dict.fromkeys((bos, eos, pad)) if t]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    if bos:  # Llama-style: every encoded text starts with bos
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, model_max_length=1024
    )


def build_tiny_causal_lm(out_dir: str | Path, model_type: str, texts: list[str]) -> None:
    """Save a tiny randomly initialised Qwen2 or Llama checkpoint with a BPE tokenizer, like a hub model."""
    if model_type == "qwen2":  # Qwen2 base models: no bos, pad is the same token as eos
        tokenizer = build_bpe_tokenizer(texts, bos=None, eos="<|endoftext|>", pad="<|endoftext|>")
    else:  # Llama: bos added to every text, no pad token
        tokenizer = build_bpe_tokenizer(texts, bos="<s>", eos="</s>", pad=None)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def build_tiny_vit(out_dir: str | Path, image_size: int = 32, dropout: float = 0.0) -> None:
    """Save a tiny randomly initialised ViT encoder and its image processor, like a hub ViT checkpoint."""
    config = ViTConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ViTModel(config)
    model.save_pretrained(str(out_dir))
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(str(out_dir))


def build_tiny_chinese_clip(
    out_dir: str | Path, tokenizer: PreTrainedTokenizerBase, image_size: int = 32, dropout: float = 0.1
) -> None:
    """Save a tiny randomly initialised ChineseCLIPModel (BERT text tower + ViT) with its processor."""
    config = ChineseCLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 64,
            "hidden_dropout_prob": dropout,
            "attention_probs_dropout_prob": dropout,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
            "projection_dim": 64,
        },
        projection_dim=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ChineseCLIPModel(config)
    model.save_pretrained(str(out_dir))
    image_processor = ChineseCLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    ChineseCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(out_dir))


def build_tiny_chinese_gpt2(out_dir: str | Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Save a tiny randomly initialised GPT-2 with a BERT vocabulary, like the hub's Chinese GPT-2s (uer/gpt2-chinese-*).

    Like them it has no bos/eos of its own in the tokenizer ([CLS] / [SEP] / [PAD] instead); the captioning script
    turns it into a decoder with cross-attention.
    """
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
