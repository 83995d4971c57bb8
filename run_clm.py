"""Pre-train a causal language model on Chinese text: from scratch (e.g. GPT-2 on a BERT vocabulary) or continued.

    python run_clm.py examples/clm_demo.json
    python run_clm.py --model_type gpt2 --config_overrides "n_layer=12,n_head=12,n_embd=768" \
        --tokenizer_name bert-base-chinese --train_file "data/*.csv" --text_column content --block_size 512 \
        --output_dir outputs/gpt2-zh --do_train --do_eval --max_steps 100000 --bf16
    python run_clm.py --model_name_or_path Qwen/Qwen2.5-0.5B --train_file corpus/ --finetuning_type lora \
        --output_dir outputs/qwen-domain --do_train --do_eval --bf16
    torchrun --nproc_per_node 8 run_clm.py examples/clm_gpt2_from_scratch.json

Every document gets an eos, then the documents are concatenated and cut into --block_size blocks
(only the last partial block of a split is dropped). Tokenized blocks are cached as Arrow files keyed
by the data files (path, size, mtime), the tokenizer and the block size: the next run with the same
inputs memory-maps them and starts training at once. --streaming tokenizes on the fly instead, for
corpora larger than the disk or RAM can hold twice. The packing itself is in zhtrain/data/packing.py.
"""

import difflib
import logging
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from arguments import (
    DataTrainingArguments,
    FinetuningArguments,
    ModelArguments,
    common_problems,
    finetuning_problems,
    raise_if_problems,
)
from zhtrain.checkpoints import ResumableCheckpoints
from zhtrain.data.files import find_column, resolve_data_files, stream_columns, take_first
from zhtrain.data.packing import BlockRecipe, DocumentEncoder, StreamedBlocks, load_or_build_blocks, pack_in_memory
from zhtrain.errors import UserError, run_main
from zhtrain.launch import prepare_launch
from zhtrain.metrics import next_token_accuracy, perplexity, strip_tokenizer_spaces
from zhtrain.modeling import (
    context_length,
    document_start_token,
    fit_embeddings,
    log_trainable_parameters,
    padding_id,
    repair_special_tokens,
    set_special_token_ids,
)
from zhtrain.parsing import parse_args
from zhtrain.training import (
    apply_lora,
    load_adapter,
    lora_adapter_dir,
    read_adapter_config,
    setup_run,
    train_evaluate_predict,
)

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("content", "text", "completion")
DEFAULT_PROMPTS = ["今天天气很好，", "中国的首都是", "人工智能"]


@dataclass
class CLMArguments:
    """Arguments only causal-LM pre-training needs."""

    model_type: str | None = field(
        default=None,
        metadata={
            "help": "Architecture to build from scratch (gpt2, llama, qwen2, bloom, ...) when there is no "
            "--model_name_or_path. Needs --tokenizer_name."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "From scratch: comma-separated config values, e.g. 'n_layer=6,n_head=8,n_embd=512'."},
    )
    block_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per training block; default: the model's maximum positions, at most 1024."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read and tokenize the training files on the fly (corpora larger than RAM). Needs --max_steps."
        },
    )
    streaming_validation_documents: int = field(
        default=1000,
        metadata={
            "help": "With --streaming and no --validation_file: the first N documents of the training files are "
            "held out for evaluation (and never trained on)."
        },
    )
    shuffle_buffer_size: int = field(
        default=10000,
        metadata={"help": "With --streaming: documents are shuffled within a buffer of this many (0: file order)."},
    )
    tokenized_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where tokenized blocks are cached as Arrow files; default: <datasets cache>/run_clm."},
    )
    sample_prompts: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        metadata={"help": "Prompts continued after training into generated_samples.txt (greedy decoding)."},
    )
    sample_max_new_tokens: int = field(
        default=64, metadata={"help": "Longest generated continuation per sample prompt, in tokens (0: no samples)."}
    )


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, FinetuningArguments, CLMArguments, TrainingArguments)


def argument_problems(model_args, data_args, finetuning_args, task_args, training_args) -> list[str]:
    """Every problem with the arguments, found before anything is loaded."""
    problems = common_problems(model_args, data_args, training_args)
    problems += finetuning_problems(finetuning_args, ("full", "lora"))
    from_scratch = not model_args.model_name_or_path
    if from_scratch and not task_args.model_type:
        problems.append(
            "Pass --model_name_or_path (continued pre-training) or --model_type with --tokenizer_name (from scratch)."
        )
    if model_args.model_name_or_path and task_args.model_type:
        problems.append("--model_type builds a model from scratch; it cannot be combined with --model_name_or_path.")
    if task_args.model_type and task_args.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        close = difflib.get_close_matches(task_args.model_type, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, n=3)
        problems.append(
            f"--model_type '{task_args.model_type}' is not a causal-LM architecture"
            + (f"; did you mean {', '.join(close)}?" if close else "; e.g. gpt2, llama, qwen2, bloom.")
        )
    if from_scratch and task_args.model_type and not model_args.tokenizer_name:
        problems.append("From scratch (--model_type) needs --tokenizer_name, e.g. bert-base-chinese.")
    if task_args.config_overrides:
        if model_args.model_name_or_path:
            problems.append("--config_overrides applies to a model built from scratch (--model_type) only.")
        bad = [item for item in task_args.config_overrides.split(",") if item.count("=") != 1]
        if bad:
            problems.append(f"--config_overrides must look like 'n_layer=6,n_embd=512'; bad part(s): {bad}.")
    if from_scratch and finetuning_args.finetuning_type == "lora":
        problems.append("--finetuning_type lora adapts a pre-trained --model_name_or_path; from scratch use full.")
    if task_args.block_size is not None and task_args.block_size < 2:
        problems.append(f"--block_size must be at least 2, got {task_args.block_size}.")
    if task_args.streaming and training_args.do_train and training_args.max_steps <= 0:
        problems.append(
            "--streaming reads the corpus as a stream of unknown length, so the run length must be given in "
            "steps: pass --max_steps N (tokens trained = N x batch size x GPUs x --block_size)."
        )
    for name, minimum in (
        ("streaming_validation_documents", 1),
        ("shuffle_buffer_size", 0),
        ("sample_max_new_tokens", 0),
    ):
        if getattr(task_args, name) < minimum:
            problems.append(f"--{name} must be at least {minimum}, got {getattr(task_args, name)}.")
    if training_args.do_predict:
        problems.append(
            "run_clm.py has no prediction step; to score a test corpus pass it as --validation_file with --do_eval."
        )
    return problems


def configure_training_args(training_args) -> None:
    """Pre-training uses the training arguments as given: blocks are full rows with their own labels, which the
    stock Trainer handles (the other scripts adjust theirs here, and log each change)."""


def use_adapter_base(model_args, finetuning_args, training_args) -> str | None:
    """--model_name_or_path a LoRA run's output: load its base model (and the adapter's tokenizer); the adapter dir."""
    adapter_dir = lora_adapter_dir(model_args.model_name_or_path)
    if adapter_dir:
        model_args.tokenizer_name = model_args.tokenizer_name or adapter_dir
        model_args.model_name_or_path = read_adapter_config(adapter_dir)["base_model_name_or_path"]
        if training_args.do_train and finetuning_args.finetuning_type != "lora":
            raise UserError(f"'{adapter_dir}' holds a LoRA adapter: continue training it with --finetuning_type lora.")
    return adapter_dir


def find_text_sources(data_args, training_args) -> dict[str, tuple[list[str], str, str]]:
    """split -> (files, the flag they came from, text column); the column is found from each split's first row."""
    sources = {}
    if data_args.train_file and (training_args.do_train or not data_args.validation_file):
        sources["train"] = (resolve_data_files(data_args.train_file, "train_file"), "train_file")
    if data_args.validation_file and training_args.do_eval:
        sources["validation"] = (resolve_data_files(data_args.validation_file, "validation_file"), "validation_file")
    found = {}
    for split, (files, arg_name) in sources.items():
        columns = SimpleNamespace(column_names=stream_columns(files, arg_name, data_args.file_encoding))
        found[split] = (
            files,
            arg_name,
            find_column(columns, data_args.text_column, "text_column", TEXT_COLUMNS, split),
        )
    return found


def add_missing_special_tokens(tokenizer, from_scratch: bool) -> list[str]:
    """Give the tokenizer an eos (always) and, from scratch, a bos and a pad distinct from eos; the names added.

    A pad equal to eos is the zero_nlp / seed bug: collators mask padding out of the loss, so every eos is
    masked too and the model never learns to stop. Our blocks are never padded, so a pre-trained checkpoint
    whose pad is its eos (Qwen2) keeps its vocabulary: adding a token would change its embedding matrix.
    """
    if not from_scratch:
        return repair_special_tokens(tokenizer, new_eos="[EOS]")
    return repair_special_tokens(tokenizer, new_eos="[EOS]", new_bos="[BOS]", new_pad="[PAD]")


def load_tokenizer_and_config(model_args, task_args, finetuning_args) -> tuple:
    """The tokenizer (with the special tokens documents need) and the model config (built from scratch or read)."""
    from_scratch = not model_args.model_name_or_path
    hub = model_args.hub_kwargs()
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **hub)
    added_tokens = add_missing_special_tokens(tokenizer, from_scratch)
    if "eos_token" in added_tokens and finetuning_args.finetuning_type == "lora":
        raise UserError(
            "The tokenizer has no eos token, and LoRA cannot train the new embedding row one would need. Use "
            "--finetuning_type full, or a --tokenizer_name that has an eos token."
        )
    if model_args.config_name or model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.config_name or model_args.model_name_or_path, **hub)
    else:
        config = AutoConfig.for_model(task_args.model_type)
    if task_args.config_overrides:
        try:
            config.update_from_string(task_args.config_overrides)
        except (ValueError, AttributeError) as exc:
            keys = ", ".join(sorted(k for k in config.to_dict() if not k.startswith("_"))[:40])
            raise UserError(
                f"--config_overrides '{task_args.config_overrides}': {exc}. Config keys: {keys}."
            ) from None
    return tokenizer, config


def choose_block_size(config, model_args, task_args) -> int:
    """--block_size, or the model's context length up to 1024; a block longer than the context is an error."""
    positions = context_length(config)
    block_size = task_args.block_size or min(1024, positions or 1024)
    if positions and block_size > positions:
        fix = "a smaller --block_size" if model_args.model_name_or_path else "--config_overrides n_positions=..."
        raise UserError(f"--block_size {block_size} exceeds the model's {positions} positions; use {fix}.")
    return block_size


def pack_datasets(sources, encoder, block_size, data_args, task_args, training_args) -> dict:
    """The training and evaluation blocks: packed and cached (main process first), or streamed for training."""
    recipes = {
        split: BlockRecipe(files, arg_name, column, data_args.file_encoding, encoder, block_size)
        for split, (files, arg_name, column) in sources.items()
    }
    hold_out = training_args.do_eval and "validation" not in sources
    cache_root = Path(task_args.tokenized_cache_dir or Path(datasets.config.HF_DATASETS_CACHE) / "run_clm")
    processed = {}
    with training_args.main_process_first(desc="tokenizing and packing"):  # the other ranks find the cache
        for split, recipe in recipes.items():
            if split == "train" and task_args.streaming:
                continue
            holdout = data_args.validation_split_percentage if split == "train" and hold_out else 0
            parts = load_or_build_blocks(
                recipe, cache_root, holdout, training_args.seed, data_args.preprocessing_num_workers or 1,
                data_args.overwrite_cache,
            )  # fmt: skip
            processed[split] = parts["main"]
            if "heldout" in parts:
                processed["validation"] = parts["heldout"]
    if task_args.streaming and "train" in recipes:
        processed.update(stream_training_blocks(recipes["train"], hold_out, data_args, task_args, training_args))
    elif "train" in processed:
        processed["train"] = take_first(processed["train"], data_args.max_train_samples)
    if "validation" in processed:
        processed["validation"] = take_first(processed["validation"], data_args.max_eval_samples)
    if not training_args.do_train:
        processed.pop("train", None)
    return processed


def stream_training_blocks(recipe: BlockRecipe, hold_out: bool, data_args, task_args, training_args) -> dict:
    """--streaming: training blocks packed on the fly; the first documents held out for evaluation if needed."""
    processed, skip = {}, 0
    if hold_out:
        skip = task_args.streaming_validation_documents
        documents = list(islice(StreamedBlocks(recipe).documents(), skip))
        what = f"The first {skip} documents of --train_file, held out for evaluation,"
        processed["validation"] = pack_in_memory(documents, recipe.encoder, recipe.block_size, what)
        logger.info("Streaming: the first %d documents of --train_file are held out for evaluation.", skip)
    processed["train"] = StreamedBlocks(
        recipe, skip, task_args.shuffle_buffer_size, training_args.seed, data_args.max_train_samples
    )
    if data_args.preprocessing_num_workers:
        logger.info("--streaming tokenizes on the fly: --preprocessing_num_workers is not used there.")
    return processed


def load_model(model_args, finetuning_args, training_args, config, tokenizer, adapter_dir: str | None):
    """A new model from the config (from scratch) or the checkpoint, with the tokenizer's special ids; LoRA on top."""
    if not model_args.model_name_or_path:
        config.vocab_size = len(tokenizer)
        # before the model is built: Llama-style embeddings keep the pad row at zero
        for name in ("bos", "eos", "pad"):
            setattr(config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
        logger.info("Built a %s from scratch: %.1fM parameters.", config.model_type, model.num_parameters() / 1e6)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, config=config, dtype=model_args.dtype, **model_args.hub_kwargs()
        )
        tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
        fit_embeddings(model, tokenizer, tokenizer_source, model_args.model_name_or_path)  # grown for an added eos
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if tokenizer.bos_token_id is not None:
        ids["bos_token_id"] = tokenizer.bos_token_id
    set_special_token_ids(model, **ids)
    if adapter_dir:
        model = load_adapter(
            model, adapter_dir, finetuning_args, model_args.model_name_or_path, training_args.do_train,
            "model_name_or_path",
        )  # fmt: skip
    elif finetuning_args.finetuning_type == "lora":
        model = apply_lora(model, finetuning_args, "CAUSAL_LM")
    log_trainable_parameters(model, "LoRA" if adapter_dir or finetuning_args.finetuning_type == "lora" else "Training")
    return model


class CLMTrainer(ResumableCheckpoints, Trainer):
    """The stock Trainer, with checkpoints that a kill cannot leave half written."""


def collate_blocks(features: list[dict]) -> dict:
    """Stack full blocks; labels are the input ids themselves (the model shifts them), eos included.

    >>> batch = collate_blocks([{"input_ids": [5, 6, 2]}, {"input_ids": [7, 2, 8]}])
    >>> batch["labels"].tolist()
    [[5, 6, 2], [7, 2, 8]]
    """
    input_ids = torch.as_tensor(np.asarray([f["input_ids"] for f in features]), dtype=torch.long)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def argmax_logits(logits, labels):
    """Keep only the predicted ids: accumulating full (batch, length, vocab) logits would exhaust memory."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def compute_token_accuracy(eval_pred) -> dict:
    return {"token_accuracy": next_token_accuracy(eval_pred.predictions, eval_pred.label_ids)}


def evaluate_before_training(trainer) -> dict:
    """eval loss, perplexity and token accuracy of the model as loaded, so the results show what training changed."""
    if trainer.is_deepspeed_enabled:
        logger.info("DeepSpeed: skipping the evaluation before training (the engine is built by train()).")
        return {}
    metrics = trainer.evaluate()
    before = {
        "eval_loss_before": metrics["eval_loss"],
        "eval_perplexity_before": perplexity(metrics["eval_loss"]),
        "eval_token_accuracy_before": metrics["eval_token_accuracy"],
    }
    logger.info("Before training: %s", before)
    return before


def generate_samples(model, tokenizer, prompts: list[str], start_id: int, max_new_tokens: int) -> list[tuple]:
    """Greedy continuations of each prompt, started like a new document (after eos, or bos for Llama)."""
    model.eval()
    samples = []
    for prompt in prompts:
        ids = [start_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([ids], device=model.device)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=padding_id(tokenizer),
            )  # fmt: skip
        new_ids = output[0, len(ids) :].tolist()
        stopped = tokenizer.eos_token_id in new_ids
        text = strip_tokenizer_spaces(tokenizer.decode(new_ids, skip_special_tokens=True))
        samples.append((prompt, text, stopped))
    return samples


def write_samples(samples: list[tuple], path: Path) -> None:
    lines = []
    for prompt, continuation, stopped in samples:
        lines += [f"prompt: {prompt}", f"sample: {prompt}{continuation}" + (" [eos]" if stopped else ""), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    logger.info("Generated samples written to %s:\n%s", path, "\n".join(lines))


def main(argv=None) -> dict:
    # validate
    args = parse_args(ARGUMENT_CLASSES, prepare_launch(argv))
    model_args, data_args, finetuning_args, task_args, training_args = args
    raise_if_problems(argument_problems(*args), args)

    # set up the run
    setup_run(args)
    configure_training_args(training_args)
    adapter_dir = use_adapter_base(model_args, finetuning_args, training_args)

    # load raw data: the files of each split and their text column
    sources = find_text_sources(data_args, training_args)

    # tokenizer: it decides the token ids, and the config the block size
    tokenizer, config = load_tokenizer_and_config(model_args, task_args, finetuning_args)
    block_size = choose_block_size(config, model_args, task_args)
    encoder = DocumentEncoder(tokenizer, document_start_token(tokenizer), tokenizer.eos_token_id)
    logger.info(
        "Documents are encoded as %s<tokens>%s and packed into blocks of %d tokens.",
        tokenizer.bos_token if encoder.bos_id is not None else "",
        tokenizer.eos_token,
        block_size,
    )

    # preprocess: pack into blocks (cached), or stream
    processed = pack_datasets(sources, encoder, block_size, data_args, task_args, training_args)

    # model
    model = load_model(model_args, finetuning_args, training_args, config, tokenizer, adapter_dir)

    # trainer
    evaluating = training_args.do_eval and "validation" in processed
    trainer = CLMTrainer(
        model=model,
        args=training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation"),
        processing_class=tokenizer,
        data_collator=collate_blocks,
        compute_metrics=compute_token_accuracy if evaluating else None,
        preprocess_logits_for_metrics=argmax_logits if evaluating else None,
    )
    before = evaluate_before_training(trainer) if evaluating and training_args.do_train else {}

    # train, evaluate (no predict step: a test corpus is scored as --validation_file)
    results = train_evaluate_predict(
        trainer,
        training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation") if evaluating else None,
        after_eval=lambda metrics: metrics.update(eval_perplexity=perplexity(metrics["eval_loss"]), **before),
    )
    if training_args.do_train and task_args.sample_prompts and task_args.sample_max_new_tokens:
        # every rank generates (ZeRO-3 needs all of them in each forward); the main one writes
        start_id = encoder.bos_id if encoder.bos_id is not None else tokenizer.eos_token_id
        samples = generate_samples(trainer.model, tokenizer, task_args.sample_prompts, start_id,
                                   task_args.sample_max_new_tokens)  # fmt: skip
        if trainer.is_world_process_zero():
            write_samples(samples, Path(training_args.output_dir) / "generated_samples.txt")
    return results


if __name__ == "__main__":
    run_main(main)
