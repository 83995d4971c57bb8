"""One training run, start to end: logging and seed, resume, the train/evaluate/predict tail, loss plot, adapters.

The scripts build their data, model and Trainer; everything after that is the same for all five and lives
here: `train_evaluate_predict` trains (resuming if asked), saves, evaluates, predicts and writes
all_results.json. Adapters are peft's: LoRA and P-Tuning v2 (prefix tuning) are applied, and saved adapters
are loaded with checks that they match the arguments.
"""

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import matplotlib
import torch
import transformers
from datasets import Dataset
from peft import LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model

from arguments import DEFAULT_PRE_SEQ_LEN
from zhtrain.checkpoints import checkpoint_step, newest_complete_checkpoint, read_loss_sum, whole_run_train_loss
from zhtrain.errors import UserError
from zhtrain.launch import end_dry_run, fill_deepspeed_hidden_size, refuse_data_parallel

matplotlib.use("Agg")  # no display on training servers
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)

logger = logging.getLogger(__name__)


def setup_run(parsed: Sequence, model_parallel: bool = False):
    """Logging (INFO on the main process, WARNING elsewhere, one format for all libraries) and the seed.

    `parsed` holds every argument object of the script, its TrainingArguments last (returned). Called
    right after the arguments are validated: it also refuses a single process on several GPUs (DataParallel)
    unless `model_parallel`, and ends a dry run (DRY_RUN=1) here, printing the arguments, before any data is read.
    """
    training_args = parsed[-1]
    refuse_data_parallel(training_args, model_parallel)
    end_dry_run(parsed)
    transformers.set_seed(training_args.seed)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%m/%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.getLogger().setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logging.getLogger("jieba").setLevel(logging.WARNING)  # it logs its dictionary loading at DEBUG/INFO
    if training_args.dataloader_pin_memory and not torch.cuda.is_available():
        logger.info("No GPU: --dataloader_pin_memory is turned off (pinning needs an accelerator; torch would warn).")
        training_args.dataloader_pin_memory = False
    logger.warning(
        "Process rank %s, device %s, n_gpu %s, distributed %s, bf16 %s, fp16 %s",
        training_args.process_index,
        training_args.device,
        training_args.n_gpu,
        training_args.parallel_mode.value == "distributed",
        training_args.bf16,
        training_args.fp16,
    )
    return training_args


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint --resume_from_checkpoint names: a path, or for True the newest complete one in output_dir.

    Incomplete checkpoint folders (cut off by a kill while saving) are skipped with a warning; the one chosen is
    logged. Without the flag, a warning says when output_dir holds a checkpoint that training will not continue.
    """
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() == "false":
        last = newest_complete_checkpoint(training_args.output_dir) if training_args.do_train else None
        if last is not None:
            logger.warning(
                "output_dir already holds %s; training starts afresh and overwrites it. "
                "Pass --resume_from_checkpoint True to continue from it instead.",
                last,
            )
        return None
    checkpoint = str(value)
    if checkpoint.lower() == "true":
        checkpoint = newest_complete_checkpoint(training_args.output_dir, warn=True)
        if checkpoint is None:
            raise UserError(
                f"--resume_from_checkpoint True, but output_dir '{training_args.output_dir}' has no complete "
                "checkpoint-* folder to resume from. Drop the flag to start afresh."
            )
    logger.warning("Resuming from %s (step %d).", checkpoint, checkpoint_step(checkpoint))
    return checkpoint


def train_with_resume(trainer, training_args) -> dict:
    """Train (resuming if asked) and return the metrics; after a resume `train_loss` covers the whole run."""
    checkpoint = resume_checkpoint(training_args)
    # read before training: --save_total_limit may delete the checkpoint once newer ones are saved
    loss_sum = read_loss_sum(checkpoint) if checkpoint else None
    outcome = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(outcome.metrics)
    if checkpoint is not None:
        whole = whole_run_train_loss(loss_sum, metrics["train_loss"], trainer.state.global_step)
        if whole is None:
            logger.warning(
                "%s holds no loss total (it was not saved by these scripts): train_loss averages only the steps "
                "trained after it.",
                checkpoint,
            )
        else:
            metrics["train_loss"] = whole
            for entry in trainer.state.log_history:  # the Trainer logged the resumed-only mean
                if "train_loss" in entry:
                    entry["train_loss"] = whole
    return metrics


def train_evaluate_predict(
    trainer,
    training_args,
    train_dataset: Dataset | None = None,
    eval_dataset: Dataset | None = None,
    predict_dataset: Dataset | None = None,
    after_eval: Callable[[dict], None] | None = None,
    after_predict: Callable[[object], None] | None = None,
) -> dict:
    """The stages after setup, in the same order in every script; returns all metrics (also in all_results.json).

    `after_eval(metrics)` may add task metrics (e.g. perplexity) or write reports; `after_predict(output)` writes
    the task's predictions file from `trainer.predict`'s output.
    """
    results = {}
    fill_deepspeed_hidden_size(trainer)
    if training_args.do_train:
        metrics = train_with_resume(trainer, training_args)
        trainer.save_model()
        if hasattr(train_dataset, "__len__"):  # a streamed (iterable) dataset has no length
            metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        if trainer.is_world_process_zero():
            plot_loss_curve(trainer.state.log_history, Path(training_args.output_dir) / "training_loss.png")
        results.update(metrics)
    if training_args.do_eval and eval_dataset is not None:
        metrics = trainer.evaluate(eval_dataset=eval_dataset)
        metrics["eval_samples"] = len(eval_dataset)
        if after_eval is not None:
            after_eval(metrics)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    if training_args.do_predict and predict_dataset is not None:
        output = trainer.predict(predict_dataset, metric_key_prefix="predict")
        metrics = dict(output.metrics, predict_samples=len(predict_dataset))
        if after_predict is not None and trainer.is_world_process_zero():
            after_predict(output)
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        results.update(metrics)
    return results


def plot_loss_curve(log_history: list[dict], path: Path) -> None:
    """Train and eval loss against the global step, as a PNG next to the checkpoints."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if not train and not evals:
        logger.info("No loss was logged (raise the run length or lower --logging_steps); no loss plot written.")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    logger.info("Loss curve written to %s", path)


def write_json(path: str | Path, obj) -> None:
    """UTF-8 JSON that keeps Chinese readable."""
    Path(path).write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")


def apply_lora(model, finetuning_args, task_type: str):
    """Wrap `model` with LoRA adapters (peft); only the adapters train. task_type: CAUSAL_LM or SEQ_2_SEQ_LM."""
    targets = finetuning_args.lora_target
    if targets == ["all"]:
        targets = "all-linear"  # every linear layer except the output head
    elif targets == ["default"]:
        targets = None  # peft's per-architecture default (e.g. q_proj, v_proj)
    else:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in targets if t not in names]
        if missing:
            linear = sorted(
                {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")}
            )
            raise UserError(
                f"`--lora_target` {', '.join(missing)} is not a module of this model; its linear layers are: "
                f"{', '.join(linear)} (or use 'all')."
            )
    config = LoraConfig(
        task_type=task_type,
        r=finetuning_args.lora_rank,
        lora_alpha=finetuning_args.lora_alpha,
        lora_dropout=finetuning_args.lora_dropout,
        target_modules=targets,
    )
    return get_peft_model(model, config)


class FileOrderEvaluation:
    """Trainer mixin: evaluation and prediction batches follow the data file's row order.

    transformers 5 applies `train_sampling_strategy=group_by_length` to evaluation as well, which reorders the
    predictions; a predictions file must line up with the rows it was made from.
    """

    def _get_eval_sampler(self, eval_dataset):
        if eval_dataset is None or not hasattr(eval_dataset, "__len__"):
            return None
        return torch.utils.data.SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


def apply_ptuning(model, finetuning_args, task_type: str, hidden_size: int):
    """Wrap `model` with P-Tuning v2 (peft prefix tuning): a trained prefix at every layer; only it trains."""
    config = PrefixTuningConfig(
        task_type=task_type,
        num_virtual_tokens=finetuning_args.pre_seq_len or DEFAULT_PRE_SEQ_LEN,
        prefix_projection=finetuning_args.prefix_projection,
        encoder_hidden_size=finetuning_args.prefix_hidden_size or hidden_size,
    )
    return get_peft_model(model, config)


def lora_adapter_dir(path: str | None) -> str | None:
    """`path` when it is the output of a LoRA / P-Tuning run (adapter weights only), else None."""
    return path if path and (Path(path) / "adapter_config.json").is_file() else None


def read_adapter_config(checkpoint: str) -> dict:
    """The adapter_config.json peft saved next to the adapter weights."""
    return json.loads((Path(checkpoint) / "adapter_config.json").read_text(encoding="utf-8"))


def load_adapter(
    model,
    checkpoint: str,
    finetuning_args,
    base_model: str,
    is_trainable: bool,
    arg_name: str = "adapter_name_or_path",
):
    """Load a P-Tuning / LoRA checkpoint onto `model`, refusing one that does not match the arguments given.

    `arg_name` is the flag that named the checkpoint, for the error message.
    """
    saved = read_adapter_config(checkpoint)
    method = {"PREFIX_TUNING": "ptuning", "LORA": "lora"}.get(saved.get("peft_type"), saved.get("peft_type"))
    mismatches = []
    if finetuning_args.finetuning_type not in ("full", method):
        mismatches.append(f"it holds {method} weights but --finetuning_type is {finetuning_args.finetuning_type}")
    if method == "ptuning" and finetuning_args.pre_seq_len not in (None, saved.get("num_virtual_tokens")):
        mismatches.append(
            f"it was trained with pre_seq_len {saved.get('num_virtual_tokens')}, not {finetuning_args.pre_seq_len}"
        )
    if method == "ptuning" and finetuning_args.prefix_projection and not saved.get("prefix_projection"):
        mismatches.append("it was trained without --prefix_projection")
    if mismatches:
        raise UserError(f"--{arg_name} '{checkpoint}' does not match the arguments: {'; '.join(mismatches)}.")
    trained_on = saved.get("base_model_name_or_path")
    if trained_on and Path(str(trained_on)).resolve() != Path(base_model).resolve() and trained_on != base_model:
        logger.warning("%s was trained on %s; loading it onto %s.", checkpoint, trained_on, base_model)
    logger.info(
        "Loading %s checkpoint %s (%s)", method, checkpoint, {k: saved.get(k) for k in ("r", "num_virtual_tokens")}
    )
    return PeftModel.from_pretrained(model, checkpoint, is_trainable=is_trainable)
