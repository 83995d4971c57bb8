"""zhtrain.modeling: context length, special-token repair and ids, embeddings, the trainable-parameter log."""

import logging
from types import SimpleNamespace

import pytest
from transformers import (
    BertConfig,
    BertTokenizerFast,
    BloomConfig,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PretrainedConfig,
)

import demo_models
import run_classification
from zhtrain.errors import UserError
from zhtrain.modeling import (
    context_length,
    document_start_token,
    fit_embeddings,
    fit_to_context,
    log_trainable_parameters,
    padding_id,
    repair_special_tokens,
    set_special_token_ids,
)
from zhtrain.serve.model import describe_folder, load_served

TEXTS = ["红色背景上的一个黑色圆形", "一个蓝色的十字，背景是白色", "今天天气很好"]


def bert_vocab_tokenizer(tmp_path, model_max_length=512) -> BertTokenizerFast:
    """A character vocabulary like bert-base-chinese's: [SEP] ends texts, [PAD] pads, no eos or bos."""
    characters = sorted({c for text in TEXTS for c in text})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters]), encoding="utf-8")
    return BertTokenizerFast(str(vocab), model_max_length=model_max_length)


def tiny_gpt2(vocab_size: int, n_positions: int, head=GPT2LMHeadModel, **extra):
    return head(GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=8, n_layer=1, n_head=2, **extra))


# ---- context length ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, expected",
    [
        (GPT2Config(n_positions=1024), 1024),
        (BertConfig(max_position_embeddings=512), 512),
        (PretrainedConfig(seq_length=8192), 8192),  # ChatGLM
        (PretrainedConfig(max_seq_len=2048), 2048),  # MPT
        (PretrainedConfig(max_sequence_length=4096), 4096),
        (BloomConfig(), None),  # ALiBi: no position limit in the config
    ],
)
def test_context_length_reads_each_architectures_key(config, expected):
    assert context_length(config) == expected


def test_the_tokenizers_limit_counts_only_when_the_config_has_none(tmp_path):
    tokenizer = bert_vocab_tokenizer(tmp_path, model_max_length=512)
    assert context_length(GPT2Config(n_positions=1024), tokenizer) == 1024  # not cut to the borrowed BERT vocab's
    assert context_length(BloomConfig(), tokenizer) == 512
    assert context_length(BloomConfig(), bert_vocab_tokenizer(tmp_path, model_max_length=int(1e30))) is None


def test_a_gpt2_classifier_is_length_checked_in_training(tmp_path, caplog):
    folder = tmp_path / "gpt2-classifier"
    tokenizer = bert_vocab_tokenizer(tmp_path)
    tiny_gpt2(len(tokenizer), 64, GPT2ForSequenceClassification, num_labels=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model_args = SimpleNamespace(model_name_or_path=str(folder), config_name=None, tokenizer_name=None)
    model_args.hub_kwargs = dict
    _, config = run_classification.load_tokenizer_and_config(model_args)
    with caplog.at_level(logging.WARNING, logger="zhtrain.modeling"):
        assert fit_to_context(128, config, "max_seq_length") == 64
    warnings = [r.getMessage() for r in caplog.records if r.name == "zhtrain.modeling"]
    assert warnings == ["--max_seq_length 128 exceeds the model's 64 positions; using 64."]
    assert fit_to_context(32, config, "max_seq_length") == 32


def test_a_gpt2_classifier_is_served_at_its_own_context_not_the_tokenizers_512(tmp_path):
    folder = tmp_path / "gpt2-classifier"
    tokenizer = bert_vocab_tokenizer(tmp_path, model_max_length=512)
    tiny_gpt2(len(tokenizer), 1024, GPT2ForSequenceClassification, num_labels=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    kind = describe_folder(folder)
    served = load_served(kind, SimpleNamespace(dtype="float32", device="cpu", served_model_name=None))
    assert served.task == "classify" and served.tokenizer.model_max_length == 512
    assert served.context == 1024


# ---- special tokens ----------------------------------------------------------------------------------------------


def test_seq2seq_repair_ends_bert_vocab_texts_with_sep(tmp_path):
    tokenizer = bert_vocab_tokenizer(tmp_path)
    size = len(tokenizer)
    assert repair_special_tokens(tokenizer, eos_from_sep=True, new_eos="</s>", pad_from_eos=True) == []
    assert (tokenizer.eos_token, tokenizer.pad_token, len(tokenizer)) == ("[SEP]", "[PAD]", size)


def test_a_new_eos_is_added_and_a_missing_pad_shares_it():
    tokenizer = demo_models.build_bpe_tokenizer(TEXTS, bos=None, eos="<|endoftext|>", pad=None)
    tokenizer.eos_token = None  # a vocabulary with neither eos nor sep
    size = len(tokenizer)
    assert repair_special_tokens(tokenizer, eos_from_sep=True, new_eos="</s>", pad_from_eos=True) == ["eos_token"]
    assert tokenizer.eos_token_id == size and tokenizer.pad_token_id == tokenizer.eos_token_id


def test_a_pad_equal_to_eos_is_replaced_when_the_model_must_learn_to_stop():
    tokenizer = demo_models.build_bpe_tokenizer(TEXTS, bos=None, eos="<|endoftext|>", pad="<|endoftext|>")
    assert repair_special_tokens(tokenizer, pad_from_eos=True) == []  # serving: left as it is
    assert repair_special_tokens(tokenizer, new_pad="[PAD]") == ["pad_token"]
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_a_new_pad_never_takes_the_eos_text():
    tokenizer = demo_models.build_bpe_tokenizer(TEXTS, bos=None, eos="[PAD]", pad=None)
    assert repair_special_tokens(tokenizer, new_pad="[PAD]") == ["pad_token"]
    assert tokenizer.pad_token == "<pad>"


def test_documents_start_with_bos_only_where_the_tokenizer_adds_it(tmp_path):
    llama = demo_models.build_bpe_tokenizer(TEXTS, bos="<s>", eos="</s>", pad=None)
    qwen = demo_models.build_bpe_tokenizer(TEXTS, bos=None, eos="<|endoftext|>", pad="<|endoftext|>")
    bert = bert_vocab_tokenizer(tmp_path)
    repair_special_tokens(bert, new_bos="[BOS]")  # a bos the tokenizer never puts in front of texts
    assert document_start_token(llama) == llama.bos_token_id
    assert document_start_token(qwen) is None and document_start_token(bert) is None


def test_padding_id_falls_back_to_the_stop_ids_then_eos_then_0():
    llama = demo_models.build_bpe_tokenizer(TEXTS, bos="<s>", eos="</s>", pad=None)
    assert padding_id(llama, [7]) == 7
    assert padding_id(llama) == llama.eos_token_id
    llama.pad_token = "<s>"
    assert padding_id(llama, [7]) == llama.bos_token_id
    assert padding_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0


# ---- embeddings, ids on the config, the parameter log ------------------------------------------------------------


def test_embeddings_grow_for_added_tokens_and_refuse_another_models_tokenizer(tmp_path):
    tokenizer = bert_vocab_tokenizer(tmp_path)
    model = tiny_gpt2(len(tokenizer), 32)
    repair_special_tokens(tokenizer, new_eos="[EOS]", new_bos="[BOS]")
    fit_embeddings(model, tokenizer, "tok", "model")
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    with pytest.raises(UserError, match=r"The tokenizer \(tok\) has \d+ tokens, but the model \(small\) has "):
        fit_embeddings(tiny_gpt2(5, 32), tokenizer, "tok", "small")


def test_special_token_ids_reach_a_peft_models_base_config_and_generation_config():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gpt2(20, 16), LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn"]))
    set_special_token_ids(model, eos_token_id=[3, 4], pad_token_id=0, decoder_start_token_id=None)
    base = model.get_base_model()
    for target in (base.config, base.generation_config):
        assert (target.eos_token_id, target.pad_token_id, target.decoder_start_token_id) == ([3, 4], 0, None)


def test_the_trainable_parameter_log_counts_frozen_and_adapter_weights(caplog):
    model = tiny_gpt2(20, 16)
    total = sum(p.numel() for p in model.parameters())
    model.transformer.wte.requires_grad_(False)
    with caplog.at_level(logging.INFO, logger="zhtrain.modeling"):
        trainable, counted = log_trainable_parameters(model)
    assert (trainable, counted) == (total - 20 * 8, total)
    assert caplog.records[-1].getMessage().startswith(f"Training: training {total - 160} of {total} parameters")

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny_gpt2(20, 16), LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["c_attn"]))
    trainable, counted = log_trainable_parameters(lora, "LoRA")
    assert trainable == sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n) and counted > total
