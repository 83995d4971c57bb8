"""run_clm.py: special tokens and labels, argument errors, and tiny end-to-end pre-training runs (cache, streaming)."""

import json
import logging
import os

import pytest
from transformers import AutoTokenizer

import run_clm
from helpers import tiny_run
from zhtrain.data import packing


def clm_args(demo_dir, output_dir, **overrides) -> list[str]:
    """A short from-scratch GPT-2 run (train and evaluate) on the demo corpus; overrides replace or add flags."""
    return tiny_run("clm", demo_dir, output_dir, **{"do_train": True, "do_eval": True, **overrides})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- units: special tokens, document starts, eos in the labels -----------------------------------------------------


def test_llama_style_tokenizer_gets_bos_per_document(demo_dir):
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "models" / "llama-tiny-zh")
    bos = run_clm.document_start_token(tokenizer)
    assert bos == tokenizer.bos_token_id
    tokens = packing.DocumentEncoder(tokenizer, bos, tokenizer.eos_token_id)(["北京天气", "上海"]).tolist()
    assert tokens[0] == bos and tokens[-1] == tokenizer.eos_token_id
    assert tokens.count(bos) == 2 and tokens.count(tokenizer.eos_token_id) == 2
    assert tokens[tokens.index(tokenizer.eos_token_id) + 1] == bos  # the next document starts right after eos


def test_bert_vocab_gets_bos_eos_and_a_pad_that_is_not_eos(demo_dir, char_tokenizer):
    plain = AutoTokenizer.from_pretrained(demo_dir / "tokenizer-clm")
    assert plain.eos_token is None and plain.bos_token is None
    assert char_tokenizer.eos_token_id is not None and char_tokenizer.bos_token_id is not None
    assert char_tokenizer.pad_token_id != char_tokenizer.eos_token_id
    assert len(char_tokenizer) == len(plain) + 2  # [BOS] and [EOS]; [PAD] was already there


def test_eos_stays_in_the_labels(char_tokenizer):
    eos = char_tokenizer.eos_token_id
    encoder = packing.DocumentEncoder(char_tokenizer, None, eos)
    blocks = packing.BlockPacker(8).add(encoder(["北京今天晴。", "上海有雨。", "杭州多云，有风。"]))
    batch = run_clm.collate_blocks([{"input_ids": row} for row in blocks])
    assert (batch["labels"] == eos).sum() == (batch["input_ids"] == eos).sum() > 0
    assert (batch["labels"] != -100).all()


def test_pretrained_pad_equal_to_eos_is_left_alone(demo_dir):
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "models" / "qwen2-tiny-zh")
    assert tokenizer.pad_token == tokenizer.eos_token  # like Qwen2 base checkpoints
    assert run_clm.add_missing_special_tokens(tokenizer, from_scratch=False) == []
    assert run_clm.add_missing_special_tokens(tokenizer, from_scratch=True) == ["bos_token", "pad_token"]
    assert tokenizer.pad_token != tokenizer.eos_token


# ---- argument and data errors --------------------------------------------------------------------------------------


def test_streaming_without_max_steps_is_an_error(demo_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--streaming reads the corpus as a stream.*pass --max_steps N"):
        run_clm.main(clm_args(demo_dir, tmp_path, streaming=True, max_steps=None, num_train_epochs=1))


def test_argument_errors_are_collected(demo_dir, tmp_path):
    with pytest.raises(ValueError) as info:
        run_clm.main(
            clm_args(demo_dir, tmp_path, model_type="gtp2", tokenizer_name=None, finetuning_type="lora", block_size=1)
        )
    message = str(info.value)
    assert "--model_type 'gtp2' is not a causal-LM architecture; did you mean gpt2" in message
    assert "needs --tokenizer_name" in message
    assert "--finetuning_type lora adapts a pre-trained --model_name_or_path" in message
    assert "--block_size must be at least 2" in message
    with pytest.raises(ValueError, match=r"key n_layerz isn't in the original config dict"):
        run_clm.main(clm_args(demo_dir, tmp_path, config_overrides="n_layerz=2"))


def test_corpus_smaller_than_one_block_is_a_clear_error(demo_dir, tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("今天天气很好。\n\n明天下雨。\n", encoding="utf-8")
    argv = clm_args(demo_dir, tmp_path / "out", train_file=tiny, validation_file=None, do_eval=None)
    with pytest.raises(ValueError, match=r"train_file.*has only 14 tokens \(2 documents\).*block of 64 tokens"):
        run_clm.main(argv)


# ---- end to end ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpt2_from_scratch_learns_and_stops(demo_dir, tmp_path):
    prompts = ["西红柿炒鸡蛋的做法：", "星期六，我和"]
    results = run_clm.main(
        clm_args(demo_dir, tmp_path, max_steps=120, warmup_steps=10, sample_prompts=prompts, logging_steps=20)
    )
    # an untrained model is near-uniform over the ~460-entry vocabulary; the templates are easy to learn
    assert results["eval_perplexity_before"] > 200
    assert results["eval_perplexity"] < results["eval_perplexity_before"] / 20
    assert results["eval_token_accuracy"] > 0.5 > results["eval_token_accuracy_before"]
    saved = json.loads((tmp_path / "all_results.json").read_text(encoding="utf-8"))
    assert saved["eval_perplexity"] == pytest.approx(results["eval_perplexity"])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert config["eos_token_id"] == tokenizer.eos_token_id != tokenizer.pad_token_id == config["pad_token_id"]
    samples = (tmp_path / "generated_samples.txt").read_text(encoding="utf-8")
    assert samples.count("prompt: ") == 2
    assert "sample: 西红柿炒鸡蛋的做法：" in samples and " 的" not in samples  # BERT spaces stripped
    assert "[eos]" in samples  # the model learned to end a document


@pytest.mark.slow
def test_tokenized_cache_is_reused(demo_dir, tmp_path, monkeypatch, caplog):
    """A second run with the same inputs reads the cache and never calls the tokenizer; an edited file rebuilds."""
    corpus = tmp_path / "corpus.csv"  # zero_nlp's format: a `content` column, found without --text_column
    corpus.write_text((demo_dir / "data" / "clm" / "train.csv").read_text(encoding="utf-8"), encoding="utf-8")
    argv = clm_args(
        demo_dir, tmp_path / "out", train_file=corpus, validation_file=None, max_steps=1, sample_max_new_tokens=0
    )
    with caplog.at_level(logging.INFO):
        first = run_clm.main(argv)
    assert any("Tokenized --train_file" in r.getMessage() for r in caplog.records)
    caplog.clear()

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    with monkeypatch.context() as patch, caplog.at_level(logging.INFO):
        patch.setattr(packing.DocumentEncoder, "__call__", no_tokenizing)
        second = run_clm.main(argv)
    assert any("tokenization skipped" in r.getMessage() for r in caplog.records)
    assert second["eval_samples"] == first["eval_samples"] and second["eval_loss"] == pytest.approx(first["eval_loss"])

    os.utime(corpus, ns=(1_000_000_000, 1_000_000_000))  # same bytes, new mtime: the key changes
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_clm.main(argv)
    assert any("Tokenized --train_file" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_streaming_run_holds_out_documents(demo_dir, tmp_path):
    results = run_clm.main(
        clm_args(
            demo_dir,
            tmp_path,
            streaming=True,
            validation_file=None,
            streaming_validation_documents=200,
            max_steps=3,
            sample_max_new_tokens=0,
        )
    )
    assert results["eval_samples"] >= 100  # 200 documents of ~45 tokens in blocks of 64
    assert results["eval_perplexity"] < results["eval_perplexity_before"]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.slow
def test_qwen2_continued_pretraining(demo_dir, tmp_path):
    model_dir = demo_dir / "models" / "qwen2-tiny-zh"
    before = AutoTokenizer.from_pretrained(model_dir)
    results = run_clm.main(
        clm_args(
            demo_dir,
            tmp_path,
            model_type=None,
            config_overrides=None,
            tokenizer_name=None,
            model_name_or_path=model_dir,
            block_size=128,
            max_steps=40,
            learning_rate=2e-3,
        )
    )
    assert results["eval_perplexity"] < results["eval_perplexity_before"] / 2
    after = AutoTokenizer.from_pretrained(tmp_path)
    assert len(after) == len(before)  # the checkpoint's vocabulary (pad = eos) is kept: no resize needed
    assert (tmp_path / "generated_samples.txt").is_file()


@pytest.mark.slow
def test_lora_adapter_reloads_with_peft(demo_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = demo_dir / "models" / "llama-tiny-zh"
    common = dict(
        model_type=None,
        config_overrides=None,
        tokenizer_name=None,
        model_name_or_path=model_dir,
        block_size=128,
        learning_rate=5e-3,
    )
    results = run_clm.main(
        clm_args(demo_dir, tmp_path / "lora", finetuning_type="lora", lora_rank=4, max_steps=20, **common)
    )
    assert results["eval_loss"] < results["eval_loss_before"]
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "lora" / "model.safetensors").exists()  # only the adapter is saved

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "lora")
    ids = torch.tensor([[1, 5, 9, 30, 44, 2]])
    assert not torch.allclose(base(ids).logits, tuned(ids).logits)
    # evaluating the saved adapter reproduces the run's final eval loss
    again = run_clm.main(
        clm_args(demo_dir, tmp_path / "eval", do_train=None, **dict(common, model_name_or_path=tmp_path / "lora"))
    )
    assert again["eval_loss"] == pytest.approx(results["eval_loss"], rel=1e-4)
