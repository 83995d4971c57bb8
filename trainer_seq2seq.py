"""GenerationTrainer: a small Seq2SeqTrainer subclass that evaluates decoder-only models by generation too.

The stock trainer runs `model(**inputs)` on the generation batch and returns prompt + generation.
For a decoder-only model whose eval inputs are the prompt alone and whose labels are the answer
alone, that crashes (batch-size mismatch). Here, decoder-only eval batches carry both forms:
`input_ids`/`labels` (prompt + answer, teacher-forced: gives eval_loss) and `prompt_ids`
(left-padded prompt: what `generate` continues). The prompt is cut off the generated ids.
Encoder-decoder models keep the stock behaviour.
"""

import contextlib
import json
import logging
from functools import partial
from pathlib import Path

import torch
import transformers
from torch.utils.data import DataLoader
from transformers import GenerationConfig
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import seed_worker

from zhtrain.checkpoints import ResumableCheckpoints
from zhtrain.metrics import strip_tokenizer_spaces
from zhtrain.padding_free import TokenBudgetBatchSampler
from zhtrain.training import FileOrderEvaluation

logger = logging.getLogger(__name__)


def build_generation_config(
    generation_args, stop_ids: list[int], pad_token_id: int, model, default_max_new_tokens: int
) -> GenerationConfig:
    """Greedy unless --do_sample / --num_beams say otherwise; stops at any of `stop_ids` (eos, end-of-turn tokens)."""
    config = GenerationConfig(
        max_new_tokens=generation_args.max_new_tokens or default_max_new_tokens,
        num_beams=generation_args.num_beams,
        do_sample=generation_args.do_sample,
        repetition_penalty=generation_args.repetition_penalty,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_token_id,
    )
    if generation_args.do_sample:  # set only when sampling: greedy with a temperature set is a warning in transformers
        config.temperature = generation_args.temperature
        config.top_p, config.top_k = generation_args.top_p, generation_args.top_k
    if model.config.is_encoder_decoder:
        config.decoder_start_token_id = model.config.decoder_start_token_id
    return config


class GenerationTrainer(FileOrderEvaluation, ResumableCheckpoints, transformers.Seq2SeqTrainer):
    """Generation eval for decoder-only and encoder-decoder models, with the given generation settings.

    Evaluation rows that carry a `row` number (which row of the data file each is) are evaluated longest prompt
    first, so that batches pad little; compute_metrics and the predictions file put them back in file order by it.
    With `max_tokens_per_batch`, training batches hold up to that many tokens instead of a fixed row count.
    """

    def __init__(
        self,
        *args,
        generation_config: GenerationConfig | None = None,
        max_tokens_per_batch: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.generation_settings = generation_config
        self.max_tokens_per_batch = max_tokens_per_batch

    def get_train_dataloader(self):
        if self.max_tokens_per_batch is None:
            return super().get_train_dataloader()
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        batches = TokenBudgetBatchSampler(self.train_dataset["length"], self.max_tokens_per_batch, seed)
        logger.info(
            "%d training batches of up to %d tokens per epoch (%.1f rows each on average), shared by %d process(es)",
            len(batches),
            self.max_tokens_per_batch,
            len(self.train_dataset) / max(len(batches), 1),
            self.args.world_size,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=batches,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            worker_init_fn=partial(
                seed_worker, num_workers=self.args.dataloader_num_workers, rank=self.args.process_index
            ),
        )
        # under DDP accelerate wraps the batch sampler: each rank takes every N-th batch (the same order on all)
        return self.accelerator.prepare(loader)

    def _get_eval_sampler(self, eval_dataset):
        columns = getattr(eval_dataset, "column_names", None) or []
        if "row" not in columns or "input_ids" not in columns:
            return super()._get_eval_sampler(eval_dataset)
        key = "prompt_ids" if "prompt_ids" in columns else "input_ids"  # what generation continues
        lengths = [len(ids) for ids in eval_dataset[key]]
        return sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self.generation_settings is not None and not gen_kwargs:
            gen_kwargs = {"generation_config": self.generation_settings}
        inputs = dict(inputs)
        rows = inputs.pop("row", None)  # which data row each example is: the labels handed to compute_metrics
        if "prompt_ids" not in inputs:  # encoder-decoder, or a teacher-forced-only eval set
            loss, generated, labels = super().prediction_step(
                model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
            )
            return loss, generated, rows[:, None] if rows is not None and generated is not None else labels

        prompt_ids = inputs.pop("prompt_ids")
        prompt_mask = inputs.pop("prompt_attention_mask")
        loss = None
        if "labels" in inputs:
            loss, _, _ = transformers.Trainer.prediction_step(
                self, model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys
            )
        if prediction_loss_only or not self.args.predict_with_generate:
            return loss, None, None

        device = self.args.device
        # every rank must keep calling forward until all are done, or ZeRO-3's parameter gathering hangs
        gen_kwargs.setdefault("synced_gpus", is_deepspeed_zero3_enabled())
        with torch.no_grad(), zero3_step_per_forward(self.model_wrapped, self.model):
            generated = self.model.generate(
                input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device), **gen_kwargs
            )
        generated = generated[:, prompt_ids.shape[1] :]
        return loss, generated, rows[:, None].to(device) if rows is not None else None

    def evaluation_loop(self, *args, **kwargs):
        # transformers' Seq2SeqTrainer.evaluate/predict switch to `accelerator.gather`, which keeps the samples the
        # distributed sampler repeats to fill the last batch: under DDP the outputs would not line up with the data
        # (more predictions than rows). gather_for_metrics drops them.
        self.gather_function = self.accelerator.gather_for_metrics
        return super().evaluation_loop(*args, **kwargs)


@contextlib.contextmanager
def zero3_step_per_forward(engine, model):
    """Under ZeRO-3, start a new parameter-fetch step at every forward of a peft model's base model.

    DeepSpeed resets its fetch bookkeeping in a pre-forward hook on the module it wraps. A peft model's
    `generate` calls the base model directly, so that hook never runs: the bookkeeping grows with every
    generated token and prediction slows down quadratically (seen on CPU and on an H200). The extra hook does the
    reset the wrapper would have done.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", optimizer)  # stage-3 optimizer, or inference-only offload
    if not is_deepspeed_zero3_enabled() or base is model or not hasattr(offload, "get_param_coordinator"):
        yield
        return
    hook = base.register_forward_pre_hook(lambda *_: offload.get_param_coordinator().reset_step())
    try:
        yield
    finally:
        hook.remove()


def decode_generations(tokenizer, token_ids) -> list[str]:
    """Token ids (with -100 padding from the eval loop) -> clean texts without special tokens."""
    ids = token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = [[pad if i < 0 else i for i in row] for row in ids]
    return [strip_tokenizer_spaces(t) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def write_generated_predictions(path: str | Path, columns: dict[str, list]) -> None:
    """generated_predictions.jsonl: one object per row with the given fields (UTF-8, Chinese unescaped).

    `columns` maps each field (e.g. prompt / predict / label) to its values, one per row.
    """
    names = list(columns)
    with open(path, "w", encoding="utf-8") as f:
        for values in zip(*columns.values(), strict=True):
            f.write(json.dumps(dict(zip(names, values)), ensure_ascii=False) + "\n")
    logger.info("%d generated predictions written to %s", len(columns["predict"]), path)


class MultiReferenceTrainer(GenerationTrainer):
    """Encoder-decoder generation eval scored against several references per example (image captioning).

    Eval batches carry `labels` (one reference, teacher-forced: gives eval_loss) and `reference_ids` (all the
    references of the example, each ending with eos, concatenated). The generation and loss are the stock ones
    (`synced_gpus` under ZeRO-3 included); only the ids handed to compute_metrics are the `reference_ids`.
    """

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        references = inputs.get("reference_ids")
        inputs = {key: value for key, value in inputs.items() if key != "reference_ids"}
        loss, generated, labels = super().prediction_step(
            model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
        )
        if generated is None or references is None:
            return loss, generated, labels
        return loss, generated, references.to(generated.device)
