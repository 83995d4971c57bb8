"""zhtrain/padding_free.py: a flattened batch trains exactly like the same rows padded, attention never crosses
examples, P-Tuning's prefix reaches every example, token-budget batches; and run_seq2seq_ptuning.py --padding_free."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from accelerate import skip_first_batches
from accelerate.data_loader import BatchSamplerShard
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, Seq2SeqTrainingArguments

import run_seq2seq_ptuning as s2s
from helpers import tiny_run, to_argv
from trainer_seq2seq import GenerationTrainer
from zhtrain.data.collators import PromptResponseCollator
from zhtrain.padding_free import (
    PACKED_SDPA,
    PADDING_FREE_MODELS,
    PaddingFreeCollator,
    TokenBudgetBatchSampler,
    padding_free_problems,
)
from zhtrain.training import apply_lora, apply_ptuning

TOLERANCE = 1e-5  # float32
# (length, answer spans): the middle one is a two-turn conversation with both answers learned
EXAMPLES = [(7, [(3, 7)]), (12, [(3, 6), (9, 12)]), (5, [(2, 5)])]


def tiny_config(model_type: str, **changes):
    if model_type == "gpt2":
        sizes = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, "bos_token_id": 1, "eos_token_id": 2}
        sizes |= {"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}
    else:
        sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
        sizes |= {"num_key_value_heads": 2, "max_position_embeddings": 64}  # grouped-query attention
    return AutoConfig.for_model(model_type, vocab_size=50, pad_token_id=0, **sizes, **changes)


def tiny_model(model_type: str, finetuning_type: str = "full"):
    """A tiny random model on transformers' sdpa, as without --padding_free; adapters get random weights (LoRA's
    second matrix starts at zero, which would make its gradients trivially equal)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type), attn_implementation="sdpa").eval()
    settings = SimpleNamespace(pre_seq_len=4, prefix_projection=False, prefix_hidden_size=None, lora_target=["all"])
    settings.lora_rank, settings.lora_alpha, settings.lora_dropout = 4, 8, 0.0
    if finetuning_type == "lora":
        model = apply_lora(model, settings, "CAUSAL_LM")
    elif finetuning_type == "ptuning":
        model = apply_ptuning(model, settings, "CAUSAL_LM", model.config.hidden_size)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad and finetuning_type != "full":
                parameter.normal_(std=0.5)
    return model


def packed_copy(model):
    """The same weights, with the attention --padding_free loads."""
    packed = copy.deepcopy(model)
    (packed.get_base_model() if hasattr(packed, "get_base_model") else packed).set_attn_implementation(PACKED_SDPA)
    return packed


def features(seed: int = 1, examples=EXAMPLES) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length, spans in examples:
        ids = torch.randint(3, 50, (length,), generator=generator).tolist()
        labels = [-100] * length
        for start, end in spans:
            labels[start:end] = ids[start:end]
        rows.append({"input_ids": ids, "labels": labels, "length": length})
    return rows


def loss_and_gradients(model, batch) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CASES = [(t, "full") for t in PADDING_FREE_MODELS] + [(t, "ptuning") for t in PADDING_FREE_MODELS]
CASES += [("llama", "lora"), ("glm", "lora")]


@pytest.mark.parametrize(("model_type", "finetuning_type"), CASES)
def test_flattened_batch_gives_the_loss_and_gradients_of_the_padded_one(model_type, finetuning_type):
    model = tiny_model(model_type, finetuning_type)
    rows = features()
    padded = PromptResponseCollator(pad_token_id=0)
    loss, gradients = loss_and_gradients(model, padded(rows))
    packed_loss, packed_gradients = loss_and_gradients(packed_copy(model), PaddingFreeCollator(padded)(rows))
    assert gradients.keys() == packed_gradients.keys() and gradients
    assert abs(loss - packed_loss) <= TOLERANCE
    assert max((gradients[n] - packed_gradients[n]).abs().max().item() for n in gradients) <= TOLERANCE
    assert max(g.abs().max().item() for g in gradients.values()) > 1e-3  # gradients that could differ


def logits_per_example(model, rows, restart_positions: bool = True) -> list[torch.Tensor]:
    batch = PaddingFreeCollator(PromptResponseCollator(0))(rows)
    if not restart_positions:  # one long sequence: what a model that ignores example boundaries would see
        batch = {"input_ids": batch["input_ids"], "position_ids": torch.arange(batch["input_ids"].shape[1])[None]}
    with torch.no_grad():  # no cache, as in training: transformers only looks for packed examples without one
        logits = model(**batch, use_cache=False).logits[0]
    return list(logits.split([len(r["input_ids"]) for r in rows]))


@pytest.mark.parametrize("attention", [PACKED_SDPA, "sdpa", "eager"])  # the last two: transformers' packed masks
@pytest.mark.parametrize("model_type", PADDING_FREE_MODELS)
def test_attention_never_crosses_examples(model_type, attention):
    model = tiny_model(model_type)
    model.set_attn_implementation(attention)
    rows = features()
    changed = copy.deepcopy(rows)
    changed[1]["input_ids"] = [(i % 40) + 4 for i in reversed(changed[1]["input_ids"])]
    before, after = logits_per_example(model, rows), logits_per_example(model, changed)
    assert torch.equal(before[0], after[0]) or (before[0] - after[0]).abs().max() < 1e-6
    assert (before[2] - after[2]).abs().max() < 1e-6
    assert (before[1] - after[1]).abs().max() > 1e-3
    # the check can fail: without positions that restart, the third example sees the changed second one
    leaky = logits_per_example(model, rows, False)[2] - logits_per_example(model, changed, False)[2]
    assert leaky.abs().max() > 1e-4


@pytest.mark.parametrize("model_type", ["llama", "glm", "qwen2"])
def test_the_ptuning_prefix_is_seen_by_every_packed_example(model_type):
    model = tiny_model(model_type, "ptuning")
    rows = features()
    packed = logits_per_example(packed_copy(model), rows)
    collate = PromptResponseCollator(0)
    with torch.no_grad():
        alone = [model(**collate([row])).logits[0] for row in rows]  # each example on its own, prefix first
        base = model.get_base_model()
        with model.disable_adapter():
            no_prefix = [base(**collate([row])).logits[0] for row in rows]
    for i in range(len(rows)):
        assert (packed[i] - alone[i]).abs().max() <= TOLERANCE
        assert (alone[i] - no_prefix[i]).abs().max() > 1e-2  # the prefix changes every example's logits


def test_collator_pads_evaluation_rows_as_before():
    padded = PromptResponseCollator(pad_token_id=0)
    rows = [dict(r, row=i, prompt_ids=r["input_ids"][:3]) for i, r in enumerate(features())]
    batch, expected = PaddingFreeCollator(padded)(rows), padded(rows)
    assert batch.keys() == expected.keys() and all(torch.equal(batch[k], expected[k]) for k in batch)
    train = PaddingFreeCollator(padded)(features())
    assert train["input_ids"].shape == (1, 24) and train["cu_seq_lens_q"].tolist() == [0, 7, 19, 24]
    assert train["max_length_q"] == 12 and "attention_mask" not in train


def test_token_budget_batches_cover_every_row_once_within_the_budget():
    lengths = torch.randint(5, 120, (500,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=512, seed=3)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
        assert sorted(i for batch in epochs[-1] for i in batch) == list(range(500))
        assert len(epochs[-1]) == len(sampler)
        assert max(sum(lengths[i] for i in batch) for batch in epochs[-1]) <= 512
    sizes = sorted(sum(lengths[i] for i in batch) for batch in epochs[0])
    assert sum(sizes[8:]) / (512 * len(sizes[8:])) > 0.95  # near-constant steps: all but the last few are full
    assert epochs[0] != epochs[1] and sorted(map(sorted, epochs[0])) == sorted(map(sorted, epochs[1]))
    assert list(TokenBudgetBatchSampler(lengths, 512, seed=3)) == epochs[0]  # the same seed, the same batches
    # DDP: accelerate hands each rank every other batch; together they train every row
    ranks = [list(BatchSamplerShard(sampler, num_processes=2, process_index=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == -(-len(sampler) // 2)
    assert {i for rank in ranks for batch in rank for i in batch} == set(range(500))
    assert not {tuple(b) for b in ranks[0]} & {tuple(b) for b in ranks[1][: len(sampler) // 2]}
    with pytest.raises(
        ValueError, match=r"--max_tokens_per_batch 100 is smaller than the longest training example \(118 tokens\)"
    ):
        TokenBudgetBatchSampler(lengths, 100)


def test_trainer_fills_training_batches_to_the_token_budget(tmp_path):
    rows = features(examples=[(n % 17 + 4, [(2, n % 17 + 4)]) for n in range(60)])
    dataset = Dataset.from_list(rows)
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", seed=5)
    trainer = GenerationTrainer(
        model=tiny_model("llama"),
        args=args,
        train_dataset=dataset,
        data_collator=PaddingFreeCollator(PromptResponseCollator(0)),
        max_tokens_per_batch=64,
    )
    loader = trainer.get_train_dataloader()
    batches = list(loader)
    assert len(batches) == len(TokenBudgetBatchSampler(dataset["length"], 64, seed=5))
    assert all(b["input_ids"].shape[0] == 1 and b["input_ids"].shape[1] <= 64 for b in batches)
    assert sum(b["input_ids"].shape[1] for b in batches) == sum(dataset["length"])
    # resuming mid-epoch (the Trainer skips the batches already trained) gives the rest of the same epoch
    second_epoch = epoch_batches(loader, 1)
    assert second_epoch != epoch_batches(loader, 0)
    assert epoch_batches(skip_first_batches(loader, 3), 1) == second_epoch[3:]


def epoch_batches(loader, epoch: int) -> list:
    """The batches of `epoch`, with the epoch set as Trainer._run_epoch sets it."""
    loader.set_epoch(epoch)
    inner = getattr(loader.batch_sampler, "batch_sampler", None)
    if hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)
    return [b["input_ids"].tolist() for b in loader]


def test_evaluation_runs_longest_prompt_first(tmp_path):
    dataset = Dataset.from_dict(
        {"input_ids": [[1] * n for n in (5, 9, 7)], "length": [5, 9, 7], "row": [0, 1, 2],
         "prompt_ids": [[1] * n for n in (2, 8, 4)]}
    )  # fmt: skip
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = GenerationTrainer(model=tiny_model("llama"), args=args)
    assert list(trainer._get_eval_sampler(dataset)) == [1, 2, 0]
    assert list(trainer._get_eval_sampler(dataset.remove_columns("prompt_ids"))) == [1, 2, 0]
    assert list(trainer._get_eval_sampler(dataset.remove_columns("row"))) == [0, 1, 2]  # no row number: file order


def test_padding_free_problems_name_the_reason(tmp_path):
    assert padding_free_problems(tiny_config("llama"), 512) == []
    assert "encoder-decoder" in padding_free_problems(AutoConfig.for_model("t5"), 512)[0]
    assert "ALiBi" in padding_free_problems(AutoConfig.for_model("bloom"), 512)[0]
    window = padding_free_problems(tiny_config("mistral", sliding_window=256), 512)[0]
    assert "sliding window is 256 tokens" in window and tiny_config("mistral", sliding_window=4096)
    assert padding_free_problems(tiny_config("mistral", sliding_window=4096), 512) == []


def test_argument_errors(demo_dir, tmp_path):
    common = {"train_file": demo_dir / "data" / "adgen" / "train.jsonl", "output_dir": tmp_path, "do_train": True}
    llama = demo_dir / "models" / "llama-tiny-sft-zh"
    cases = [
        ({"padding_free": True, "pad_to_max_length": True}, "contradict each other"),
        ({"max_tokens_per_batch": 1024}, "--max_tokens_per_batch needs --padding_free"),
        ({"padding_free": True, "max_tokens_per_batch": 100}, r"smaller than one example can be \(1024 tokens"),
        ({"padding_free": True, "model_name_or_path": demo_dir / "models" / "t5-tiny-zh"}, "encoder-decoder"),
    ]
    for changes, message in cases:
        args = {"model_name_or_path": llama, "max_source_length": 512, "max_target_length": 512, **common, **changes}
        with pytest.raises(ValueError, match=message):
            s2s.main(to_argv(args))


# ---- end to end ----------------------------------------------------------------------------------------------


def train(demo_dir, output_dir, *extra, data="adgen", finetuning_type="full", **overrides) -> dict:
    """A short run_seq2seq_ptuning.py run (evaluated; `extra` adds --do_train and such) on a demo data set."""
    args = {
        "train_file": demo_dir / "data" / data / "train.jsonl", "validation_file": demo_dir / "data" / data /
        "validation.jsonl", "max_source_length": 96, "max_train_samples": 240, "per_device_train_batch_size": 12,
        "per_device_eval_batch_size": 12, "num_train_epochs": 2, "seed": 7, "logging_steps": None,
        "finetuning_type": finetuning_type, "use_cpu": True, "do_eval": True, **overrides,
    }  # fmt: skip
    return s2s.main([*tiny_run("seq2seq", demo_dir, output_dir, **args), *extra])


@pytest.mark.slow
def test_token_budget_training_reaches_the_eval_loss_of_padded_training(demo_dir, tmp_path):
    common = {"num_train_epochs": 6, "max_train_samples": 96, "per_device_train_batch_size": 8,
              "learning_rate": 5e-3, "max_source_length": 48}  # fmt: skip
    untrained = train(demo_dir, tmp_path / "untrained", **common)["eval_loss"]
    padded = train(demo_dir, tmp_path / "padded", "--do_train", **common)
    # batches filled to 560 tokens (~8 rows of ~68, as many steps), flattened, in another composition
    budget = train(demo_dir, tmp_path / "budget", "--do_train", "--padding_free", max_tokens_per_batch=560, **common)
    assert padded["eval_loss"] < untrained - 4  # trained close to the end: 8.0 -> 1.08
    # within noise: other seeds moved the eval loss by up to 12% here (1.04-1.08 padded, 1.03-1.16 budget)
    assert budget["eval_loss"] == pytest.approx(padded["eval_loss"], rel=0.2)


@pytest.mark.slow
@pytest.mark.parametrize("finetuning_type", ["lora", "ptuning"])
def test_adapters_train_padding_free_on_multi_turn_chat_as_padded(finetuning_type, demo_dir, tmp_path):
    common = {
        "data": "chat",
        "finetuning_type": finetuning_type,
        "learning_rate": 1e-2,
        "pre_seq_len": 8,
        "mask_history": "false",
        "max_train_samples": 64,
        "num_train_epochs": 1,
    }  # every answer learned
    if finetuning_type == "lora":
        common.pop("pre_seq_len")
    untrained = train(demo_dir, tmp_path / "untrained", **common)["eval_loss"]
    padded = train(demo_dir, tmp_path / "padded", "--do_train", **common)
    free = train(demo_dir, tmp_path / "free", "--do_train", "--padding_free", **common)
    assert free["eval_loss"] < untrained
    # the same batches, flattened: the same run up to float rounding
    assert free["train_loss"] == pytest.approx(padded["train_loss"], rel=1e-3)
    assert free["eval_loss"] == pytest.approx(padded["eval_loss"], rel=1e-3)
    assert json.loads((tmp_path / "free" / "adapter_config.json").read_text())["peft_type"] in (
        "LORA",
        "PREFIX_TUNING",
    )


@pytest.mark.slow
def test_generation_eval_sorted_by_length_restores_file_order(demo_dir, tmp_path, monkeypatch):
    """Sorted evaluation batches give the file-order predictions file and the same scores."""
    from zhtrain.training import FileOrderEvaluation

    chat = demo_dir / "data" / "chat"
    args = {"train_file": None, "validation_file": None, "test_file": chat / "validation.jsonl", "do_predict": True,
            "max_predict_samples": 12, "per_device_eval_batch_size": 1, "max_new_tokens": 8, "use_cpu": True,
            "max_source_length": None, "max_target_length": None}  # fmt: skip
    rows = [json.loads(line) for line in (chat / "validation.jsonl").read_text(encoding="utf-8").splitlines()][:12]
    sorted_run = s2s.main(tiny_run("seq2seq", demo_dir, tmp_path / "sorted", **args))
    monkeypatch.setattr(GenerationTrainer, "_get_eval_sampler", FileOrderEvaluation._get_eval_sampler)
    file_order = s2s.main(tiny_run("seq2seq", demo_dir, tmp_path / "file_order", **args))
    predictions = (tmp_path / "sorted" / "generated_predictions.jsonl").read_text(encoding="utf-8")
    assert predictions == (tmp_path / "file_order" / "generated_predictions.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line)["prompt"] for line in predictions.splitlines()] == [r["prompt"] for r in rows]
    scores = {k: v for k, v in sorted_run.items() if not k.endswith(("runtime", "per_second", "time"))}
    assert scores == {k: v for k, v in file_order.items() if not k.endswith(("runtime", "per_second", "time"))}
    assert "predict_rouge-l" in scores
    # and the sorted order is not the file order (history lengths vary), so the check above means something
    lengths = [sum(len(q) + len(a) for q, a in r["history"]) + len(r["prompt"]) for r in rows]
    assert lengths != sorted(lengths, reverse=True)
