"""Fine-tune a chat / seq2seq model on conversations: P-Tuning v2, LoRA or full fine-tuning.

    python run_seq2seq_ptuning.py examples/seq2seq_demo.json
    python run_seq2seq_ptuning.py --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --finetuning_type ptuning \
        --pre_seq_len 128 --train_file AdvertiseGen/train.json --validation_file AdvertiseGen/dev.json \
        --prompt_column content --response_column summary --max_source_length 64 --max_target_length 128 \
        --output_dir outputs/adgen-ptuning --do_train --do_eval --predict_with_generate
    python run_seq2seq_ptuning.py examples/seq2seq_messages_lora.yaml          # OpenAI messages / ShareGPT data
    torchrun --nproc_per_node 8 run_seq2seq_ptuning.py examples/seq2seq_adgen_ptuning.json

Data: OpenAI `messages` or ShareGPT `conversations` files, ChatGLM's (`ptuning/main.py`) prompt / response /
history columns, or Alpaca instruction / input / output files (zhtrain/chat/data.py). Conversations are rendered
with the model's own chat template, or `--template` / `--chat_template` (zhtrain/chat/format.py), and the loss
falls on the answers and their stop tokens only: every answer, or the last one with --mask_history. Evaluation
generates the last answer from the turns before it (greedy by default) and scores ROUGE-1/2/L and BLEU-4 as
ChatGLM does, against the answers as written in the data file.
"""

import importlib.util
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    Seq2SeqTrainingArguments,
)

from arguments import (
    DataTrainingArguments,
    FinetuningArguments,
    GenerationArguments,
    ModelArguments,
    common_problems,
    finetuning_problems,
    generation_problems,
    raise_if_problems,
)
from trainer_seq2seq import GenerationTrainer, build_generation_config, decode_generations, write_generated_predictions
from zhtrain.chat.data import ChatColumns, conversation_of, conversation_problem, find_chat_columns
from zhtrain.chat.format import (
    TEMPLATE_NAMES,
    ChatFormat,
    ChatFormatError,
    choose_chat_template,
    drop_oldest_turn,
    encoder_decoder_prompt,
)
from zhtrain.data.collators import PromptResponseCollator
from zhtrain.data.files import drop_invalid_rows, limit_samples, load_raw_datasets
from zhtrain.errors import run_main
from zhtrain.launch import prepare_launch
from zhtrain.metrics import rouge_bleu, strip_tokenizer_spaces
from zhtrain.modeling import fit_embeddings, log_trainable_parameters, repair_special_tokens, set_special_token_ids
from zhtrain.padding_free import PACKED_SDPA, PaddingFreeCollator, padding_free_problems
from zhtrain.parsing import parse_args
from zhtrain.training import (
    apply_lora,
    apply_ptuning,
    load_adapter,
    setup_run,
    train_evaluate_predict,
)

logger = logging.getLogger(__name__)


@dataclass
class PromptResponseArguments:
    """Arguments only prompt -> response fine-tuning needs (names as in ChatGLM's ptuning/main.py)."""

    prompt_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with the prompt (ADGEN: content); found among content, prompt, query... if unset. "
            "Alpaca files (instruction + input + output) are recognised without it."
        },
    )
    response_column: str | None = field(
        default=None, metadata={"help": "Column with the response (ADGEN: summary); found among summary, response..."}
    )
    history_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with earlier turns as a list of [query, answer] pairs; 'history' is used if present."
        },
    )
    messages_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with whole conversations: OpenAI messages [{role, content}] or ShareGPT [{from, value}]; "
            "'messages' or 'conversations' is used if present."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System prompt for every conversation that does not bring its own."}
    )
    mask_history: bool | None = field(
        default=None,
        metadata={
            "help": "Learn only the last answer of each conversation (as ChatGLM's ptuning/ does). Default: true "
            "for ChatGLM / Alpaca files (their history is context), false for messages / ShareGPT files (every "
            "answer is learned, as LLaMA-Factory and MedicalGPT do)."
        },
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Prompt format for a tokenizer without a chat template (default: the tokenizer's own template, "
            "else 'default', this project's [Round i] format).",
            "choices": list(TEMPLATE_NAMES),
        },
    )
    chat_template: str | None = field(
        default=None, metadata={"help": "A Jinja chat template file to use instead of the tokenizer's."}
    )
    enable_thinking: bool | None = field(
        default=None,
        metadata={
            "help": "Qwen3-style templates: false renders the empty think block into the prompt (non-thinking "
            "mode); unset or true keeps the template's default, where it is part of the learned answer."
        },
    )
    source_prefix: str = field(default="", metadata={"help": "Text put in front of the question being answered."})
    max_source_length: int = field(
        default=512,
        metadata={"help": "Longest prompt in tokens, earlier turns included; the oldest turns are dropped first."},
    )
    max_target_length: int = field(
        default=512,
        metadata={"help": "Longest last answer in tokens, end token included; longer ones are cut (end token kept)."},
    )
    pad_to_max_length: bool = field(
        default=False,
        metadata={
            "help": "Pad every batch to max_source_length + max_target_length, as ChatGLM does. Slower: "
            "batches are otherwise padded to their own longest row."
        },
    )
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Train on batches of real tokens only: the rows of a batch are concatenated into one, positions "
            "restart at each and no row attends to another (decoder-only models). Evaluation batches stay padded."
        },
    )
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={
            "help": "With --padding_free: fill each training batch with rows up to this many tokens instead of "
            "--per_device_train_batch_size rows, so every step has about the same size."
        },
    )
    ignore_pad_token_for_loss: bool = field(
        default=True, metadata={"help": "Kept for ChatGLM argument files: padding never counts in the loss."}
    )
    adapter_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A LoRA or P-Tuning adapter saved by this script (its output_dir or a checkpoint-N dir), to "
            "evaluate, predict or continue training with. The old name --ptuning_checkpoint still works."
        },
    )
    model_parallel_mode: bool = field(
        default=False,
        metadata={
            "help": "Spread one model over all visible GPUs (device_map=auto), in one process. For models "
            "too big for one GPU; not with torchrun/deepspeed."
        },
    )
    quantization_bit: int | None = field(
        default=None,
        metadata={"help": "Load the base model in 4 or 8 bits (bitsandbytes, CUDA only) for LoRA/P-Tuning."},
    )


ARGUMENT_CLASSES = (
    ModelArguments,
    DataTrainingArguments,
    PromptResponseArguments,
    FinetuningArguments,
    GenerationArguments,
    Seq2SeqTrainingArguments,
)


def quantization_problems(bits: int | None, finetuning_type: str) -> list[str]:
    """What stops `--quantization_bit bits` on this machine (bitsandbytes needs CUDA)."""
    if bits is None:
        return []
    problems = []
    if bits not in (4, 8):
        problems.append(f"--quantization_bit must be 4 or 8, got {bits}.")
    elif not torch.cuda.is_available():
        problems.append("--quantization_bit needs a CUDA GPU (bitsandbytes); this machine has none.")
    elif importlib.util.find_spec("bitsandbytes") is None:
        problems.append("--quantization_bit needs bitsandbytes: `pip install bitsandbytes` (CUDA builds).")
    if finetuning_type == "full":
        problems.append("--quantization_bit trains adapters only: use --finetuning_type lora or ptuning.")
    return problems


def batching_problems(model_args, task_args) -> list[str]:
    """What is wrong with --padding_free / --max_tokens_per_batch; a local model's config is read for it (a hub
    model's is checked once it is loaded)."""
    problems = []
    folder = Path(model_args.config_name or model_args.model_name_or_path or "")
    if task_args.padding_free and (folder / "config.json").is_file():
        try:
            config = AutoConfig.from_pretrained(folder)
        except (OSError, ValueError):  # not loadable: reported by the checks of the model itself
            config = None
        longest = task_args.max_source_length + task_args.max_target_length
        problems += padding_free_problems(config, longest) if config is not None else []
    if task_args.padding_free and task_args.pad_to_max_length:
        problems.append(
            "--padding_free and --pad_to_max_length contradict each other (batches without padding, or padded to "
            "max_source_length + max_target_length): choose one."
        )
    budget, longest = task_args.max_tokens_per_batch, task_args.max_source_length + task_args.max_target_length
    if budget is not None and not task_args.padding_free:
        problems.append(
            "--max_tokens_per_batch needs --padding_free: a padded batch costs rows x its longest row, not its "
            "tokens. Add --padding_free, or set --per_device_train_batch_size instead."
        )
    elif budget is not None and budget < longest:
        problems.append(
            f"--max_tokens_per_batch {budget} is smaller than one example can be ({longest} tokens: "
            "--max_source_length + --max_target_length): raise it, or lower those."
        )
    return problems


def argument_problems(model_args, data_args, task_args, finetuning_args, generation_args, training_args) -> list[str]:
    """Every problem with the arguments, found before anything is loaded."""
    problems = common_problems(model_args, data_args, training_args)
    problems += finetuning_problems(finetuning_args, ("full", "lora", "ptuning"))
    problems += generation_problems(generation_args)
    if not model_args.model_name_or_path:
        problems.append("--model_name_or_path is required (a hub id such as Qwen/Qwen2.5-1.5B-Instruct, or a dir).")
    for name in ("max_source_length", "max_target_length"):
        if getattr(task_args, name) < 2:
            problems.append(f"--{name} must be at least 2, got {getattr(task_args, name)}.")
    if task_args.template and task_args.chat_template:
        problems.append("Pass --template NAME or --chat_template FILE, not both.")
    if task_args.chat_template and not Path(task_args.chat_template).is_file():
        problems.append(f"--chat_template '{task_args.chat_template}' is not a file (a Jinja chat template).")
    if task_args.messages_column and (task_args.prompt_column or task_args.response_column):
        problems.append(
            "--messages_column reads whole conversations; it cannot be combined with --prompt_column / "
            "--response_column (one row holds either a conversation or a prompt and a response)."
        )
    if finetuning_args.finetuning_type == "ptuning" and training_args.gradient_checkpointing:
        problems.append(
            "--finetuning_type ptuning cannot be combined with --gradient_checkpointing: peft drops the trained "
            "prefix when layers are recomputed. Remove --gradient_checkpointing (P-Tuning needs little memory), "
            "or use --finetuning_type lora."
        )
    checkpoint = task_args.adapter_name_or_path
    if checkpoint and not (Path(checkpoint) / "adapter_config.json").is_file():
        found = sorted(p.name for p in Path(checkpoint).iterdir()) if Path(checkpoint).is_dir() else []
        problems.append(
            f"--adapter_name_or_path '{checkpoint}' has no adapter_config.json "
            f"(it holds: {', '.join(found) or 'nothing'}). "
            "Give the output_dir (or a checkpoint-N dir) of a --finetuning_type ptuning/lora run; a full fine-tune "
            "is loaded with --model_name_or_path instead."
        )
    problems += quantization_problems(task_args.quantization_bit, finetuning_args.finetuning_type)
    problems += batching_problems(model_args, task_args)
    if task_args.model_parallel_mode and training_args.world_size > 1:
        problems.append(
            "--model_parallel_mode runs ONE process that spreads the model over the GPUs; do not launch it with "
            "torchrun/deepspeed. Use it with plain `python`, or drop it for data parallelism."
        )
    return problems


def configure_training_args(task_args, finetuning_args, training_args) -> None:
    """Turn on generation where prediction needs it and keep the collator's columns, logging each change; say
    which given arguments have no effect."""
    if finetuning_args.finetuning_type != "lora" and finetuning_args.lora_rank != FinetuningArguments.lora_rank:
        logger.warning(
            "--lora_rank is set but --finetuning_type is %s: LoRA settings are ignored.",
            finetuning_args.finetuning_type,
        )
    if (
        finetuning_args.finetuning_type != "ptuning"
        and finetuning_args.pre_seq_len is not None
        and not task_args.adapter_name_or_path
    ):
        logger.warning(
            "--pre_seq_len is set but --finetuning_type is %s: it is ignored.", finetuning_args.finetuning_type
        )
    if task_args.max_tokens_per_batch is not None:
        logger.info(
            "Training batches hold up to %d tokens each (--max_tokens_per_batch): --per_device_train_batch_size "
            "and --train_sampling_strategy are not used for them.",
            task_args.max_tokens_per_batch,
        )
    if not task_args.ignore_pad_token_for_loss:
        logger.warning("--ignore_pad_token_for_loss false is ignored: learning to predict padding only hurts.")
    if training_args.do_predict and not training_args.predict_with_generate:
        logger.info("--do_predict generates answers: turning on --predict_with_generate.")
        training_args.predict_with_generate = True
    if training_args.remove_unused_columns:
        # the collator builds exactly the keys the model and the trainer's generation step use
        logger.info("Turning off --remove_unused_columns: the collator needs the prompt_ids and row columns.")
        training_args.remove_unused_columns = False


def row_problem(values: dict, chat_columns: ChatColumns, task_args, needs_answer: bool) -> str | None:
    """Why a row cannot be used (see zhtrain.chat.data.conversation_problem), or None."""
    row = {role: values[column] for role, column in chat_columns.columns.items()}
    messages = conversation_of(row, chat_columns, task_args.system_prompt, task_args.source_prefix)
    return conversation_problem(messages, needs_answer)


def load_chat_data(data_args, task_args, training_args, cache_dir) -> tuple:
    """The raw splits without unusable conversations, and where each split's conversations are."""
    with training_args.main_process_first(desc="loading data"):
        raw = load_raw_datasets(data_args, training_args, cache_dir=cache_dir)
    chat_columns = {split: find_chat_columns(ds, split, task_args) for split, ds in raw.items()}
    for split in list(raw):
        problem = partial(
            row_problem, chat_columns=chat_columns[split], task_args=task_args, needs_answer=split != "test"
        )
        raw[split] = drop_invalid_rows(raw[split], split, list(chat_columns[split].columns.values()), problem)
    limit_samples(raw, data_args)
    return raw, chat_columns


def conversations(dataset, chat_columns: ChatColumns, task_args) -> list[list[dict]]:
    """Every row of a split as its conversation."""
    rows = dataset.select_columns(list(chat_columns.columns.values())).to_list()
    return [
        conversation_of(
            {role: row[column] for role, column in chat_columns.columns.items()},
            chat_columns,
            task_args.system_prompt,
            task_args.source_prefix,
        )
        for row in rows
    ]


def load_tokenizer_and_config(model_args) -> tuple:
    """The tokenizer (an eos that ends answers, a pad token) and the model config."""
    hub = model_args.hub_kwargs()
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **hub)
    # BERT-vocabulary Chinese GPT-2s end texts with [SEP]; padding never reaches the loss (-100), so a pad that
    # shares eos's id is harmless
    repair_special_tokens(tokenizer, eos_from_sep=True, new_eos="</s>", pad_from_eos=True)
    config = AutoConfig.from_pretrained(model_args.config_name or model_args.model_name_or_path, **hub)
    return tokenizer, config


def saved_stop_ids(model_args) -> list[int]:
    """The model's own stop ids from its generation config (Qwen: <|im_end|> and <|endoftext|>; Llama-3.1: three)."""
    try:
        eos = GenerationConfig.from_pretrained(model_args.model_name_or_path, **model_args.hub_kwargs()).eos_token_id
    except OSError:
        eos = None
    return [eos] if isinstance(eos, int) else list(eos or [])


def build_chat_format(tokenizer, task_args, model_stop_ids: list[int]) -> ChatFormat:
    """The chat template chosen for this run (stored on the tokenizer, so it is saved with it) and its stop ids."""
    source = choose_chat_template(tokenizer, task_args.template, task_args.chat_template)
    kwargs = {} if task_args.enable_thinking is None else {"enable_thinking": task_args.enable_thinking}
    chat_format = ChatFormat(tokenizer, kwargs, model_stop_ids)
    example = [
        {"role": "user", "content": "<earlier question>"},
        {"role": "assistant", "content": "<earlier answer>"},
        {"role": "user", "content": "<question>"},
        {"role": "assistant", "content": "<answer>"},
    ]
    logger.info(
        "Prompt format: %s; stop tokens %s. Example:\n%s",
        source,
        tokenizer.convert_ids_to_tokens(chat_format.stop_ids),
        chat_format.render(example),
    )
    return chat_format


def encode_batch(batch, split: str, chat_columns: ChatColumns, chat_format: ChatFormat, task_args, learn_all, keep):
    """Token ids of a batch of conversations (decoder-only): prompt + answers with labels on the answers, and,
    for evaluation, the prompt alone to generate from. `keep` lists the features this split needs.
    """
    n = len(next(iter(batch.values())))
    out = {k: [] for k in ("input_ids", "labels", "prompt_ids", "length")}
    stats = {"turns_dropped": 0, "prompts_cut": 0, "answers_cut": 0}
    for i in range(n):
        row = {role: batch[column][i] for role, column in chat_columns.columns.items()}
        messages = conversation_of(row, chat_columns, task_args.system_prompt, task_args.source_prefix)
        try:
            encoded = chat_format.encode(messages, learn_all, task_args.max_source_length, task_args.max_target_length)
        except ChatFormatError as exc:
            raise ChatFormatError(f"The {split} conversations cannot be encoded: {exc}.") from None
        out["input_ids"].append(encoded.input_ids)
        out["labels"].append(encoded.labels)
        out["prompt_ids"].append(encoded.prompt_ids)
        out["length"].append(len(encoded.input_ids))
        stats["turns_dropped"] += encoded.turns_dropped
        stats["prompts_cut"] += encoded.prompt_cut
        stats["answers_cut"] += encoded.answer_cut
    # per-batch counts ride along as columns (one value per batch) so they survive num_proc workers
    out.update({f"stat_{k}": [v] + [0] * (n - 1) for k, v in stats.items()})
    return {k: v for k, v in out.items() if k in keep or k.startswith("stat_")}


def encoder_decoder_batch(batch, split: str, chat_columns: ChatColumns, tokenizer, task_args, keep):
    """Token ids of a batch for an encoder-decoder model (T5): the conversation before the last answer as the
    source (this project's [Round i] text, oldest turns dropped first), the last answer + eos as the labels.
    """
    n = len(next(iter(batch.values())))
    out = {"input_ids": [], "labels": [], "length": []}
    stats = {"turns_dropped": 0, "prompts_cut": 0, "answers_cut": 0}
    for i in range(n):
        row = {role: batch[column][i] for role, column in chat_columns.columns.items()}
        messages = conversation_of(row, chat_columns, task_args.system_prompt, task_args.source_prefix)
        answer = messages.pop()["content"] if messages[-1]["role"] == "assistant" else None
        while True:
            ids = tokenizer(encoder_decoder_prompt(tokenizer, messages))["input_ids"]
            if len(ids) <= task_args.max_source_length or sum(m["role"] == "user" for m in messages) < 2:
                break
            messages, stats["turns_dropped"] = drop_oldest_turn(messages), stats["turns_dropped"] + 1
        stats["prompts_cut"] += len(ids) > task_args.max_source_length
        out["input_ids"].append(ids[-task_args.max_source_length :])
        out["length"].append(len(out["input_ids"][-1]))
        if answer is not None:
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            stats["answers_cut"] += len(answer_ids) > task_args.max_target_length - 1
            out["labels"].append(answer_ids[: task_args.max_target_length - 1] + [tokenizer.eos_token_id])
    out.update({f"stat_{k}": [v] + [0] * (n - 1) for k, v in stats.items()})
    return {k: v for k, v in out.items() if (k in keep and (k != "labels" or len(v) == n)) or k.startswith("stat_")}


def encode_splits(raw, chat_columns, chat_format, tokenizer, encoder_decoder, data_args, task_args, training_args):
    """Every split encoded (main process first; cached by `datasets`), with the truncation counts logged.

    Evaluation and test rows carry a `row` number (unique over both splits) that finds their reference answer.
    """
    processed, offset = {}, 0
    with training_args.main_process_first(desc="tokenizing"):
        for split, ds in raw.items():
            learn_all = not (
                chat_columns[split].is_chatglm_file if task_args.mask_history is None else task_args.mask_history
            )
            keep = {"input_ids", "labels", "length"}
            if split != "train" and training_args.predict_with_generate:
                keep.add("prompt_ids")
            if encoder_decoder:
                function = partial(encoder_decoder_batch, tokenizer=tokenizer)
            else:
                function = partial(encode_batch, chat_format=chat_format, learn_all=learn_all)
            encoded = ds.map(
                function,
                batched=True,
                fn_kwargs={"split": split, "chat_columns": chat_columns[split], "task_args": task_args, "keep": keep},
                remove_columns=ds.column_names,
                num_proc=data_args.preprocessing_num_workers,
                load_from_cache_file=not data_args.overwrite_cache,
                desc=f"Tokenizing {split}",
            )
            stat_columns = [c for c in encoded.column_names if c.startswith("stat_")]
            for column in stat_columns:
                count = sum(encoded[column])
                if count:
                    what = column[len("stat_") :].replace("_", " ")
                    logger.warning(
                        "%s: %d %s (raise --max_source_length / --max_target_length to keep them)", split, count, what
                    )
            encoded = encoded.remove_columns(stat_columns)
            if split != "train":
                encoded = encoded.add_column("row", list(range(offset, offset + len(encoded))))
                offset += len(encoded)
            if split == "train" and learn_all:
                logger.info("train: every assistant answer of a conversation is learned (--mask_history false).")
            processed[split] = encoded
    return processed


def reference_answers(raw, chat_columns, task_args) -> list[str]:
    """The last answer of every evaluation and test row, as written in the data ("" when it has none).

    Indexed like the `row` feature: the validation rows first, then the test rows.
    """
    references = []
    for split in ("validation", "test"):
        if split in raw:
            for messages in conversations(raw[split], chat_columns[split], task_args):
                references.append(messages[-1]["content"] if messages[-1]["role"] == "assistant" else "")
    return references


def load_model(model_args, task_args, finetuning_args, training_args, config, tokenizer):
    """The causal-LM or seq2seq model (quantized or spread over GPUs if asked), with its adapter or new adapters."""
    load_kwargs = {}
    if task_args.model_parallel_mode:
        if torch.cuda.device_count() < 2:
            logger.warning("--model_parallel_mode with %d GPU(s): nothing to spread.", torch.cuda.device_count())
        load_kwargs["device_map"] = "auto"
    if task_args.quantization_bit:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=task_args.quantization_bit == 4,
            load_in_8bit=task_args.quantization_bit == 8,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_type="nf4",
        )
    if task_args.padding_free:  # sdpa within each example of a flattened batch (zhtrain/padding_free.py)
        load_kwargs["attn_implementation"] = PACKED_SDPA
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    model_class = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    model = model_class.from_pretrained(
        model_args.model_name_or_path, config=config, **model_args.hub_kwargs(), dtype=model_args.dtype, **load_kwargs
    )
    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    fit_embeddings(model, tokenizer, tokenizer_source, model_args.model_name_or_path)  # grown for an added eos
    if task_args.quantization_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    task_type = "SEQ_2_SEQ_LM" if encoder_decoder else "CAUSAL_LM"
    method = finetuning_args.finetuning_type
    if task_args.adapter_name_or_path:
        model = load_adapter(
            model, task_args.adapter_name_or_path, finetuning_args, model_args.model_name_or_path,
            training_args.do_train, "adapter_name_or_path",
        )  # fmt: skip
    elif method == "lora":
        model = apply_lora(model, finetuning_args, task_type)
    elif method == "ptuning":
        model = apply_ptuning(model, finetuning_args, task_type, config.hidden_size)
    log_trainable_parameters(model, {"lora": "LoRA", "ptuning": "P-Tuning v2"}.get(method, "Training"))
    return model


def set_stop_tokens(model, tokenizer, stop_ids: list[int], training_args) -> None:
    """Every stop id on the model's config and generation config, so the saved model stops at end of turn.

    An adapter's output_dir holds no model: its generation_config.json is written next to the adapter.
    """
    set_special_token_ids(model, pad_token_id=tokenizer.pad_token_id, eos_token_id=list(stop_ids))
    if hasattr(model, "get_base_model") and training_args.do_train and training_args.should_save:
        model.get_base_model().generation_config.save_pretrained(training_args.output_dir)


def build_collator(tokenizer, task_args, training_args, encoder_decoder: bool):
    """Dynamic padding, ChatGLM's static padding to max_source + max_target with --pad_to_max_length, or
    padding-free training batches with --padding_free (evaluation batches padded dynamically)."""
    total = task_args.max_source_length + task_args.max_target_length
    static = task_args.pad_to_max_length
    padded = PromptResponseCollator(
        tokenizer.pad_token_id,
        pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None,
        max_length=(task_args.max_source_length if encoder_decoder else total) if static else None,
        max_label_length=(task_args.max_target_length if encoder_decoder else total) if static else None,
    )
    return PaddingFreeCollator(padded) if task_args.padding_free else padded


class ChatMetrics:
    """compute_metrics: ChatGLM's ROUGE / BLEU of the generated answers against the answers in the data file.

    The labels the trainer hands over are row numbers; scoring the raw answers (not their token ids, cut to
    --max_target_length and decoded) makes `scripts/score_predictions.py` on the predictions file give the
    same numbers.
    """

    def __init__(self, tokenizer, references: list[str]):
        self.tokenizer, self.references = tokenizer, references

    def __call__(self, eval_pred) -> dict:
        predictions = decode_generations(self.tokenizer, eval_pred.predictions)
        rows = eval_pred.label_ids[:, 0].tolist()
        return rouge_bleu(predictions, [strip_tokenizer_spaces(self.references[r]) for r in rows])


def write_predictions(output, test, test_columns: ChatColumns, tokenizer, references, task_args, output_dir) -> None:
    """generated_predictions.jsonl in file order: the conversation before the answer, the generation, the answer.

    Messages files keep `messages`; ChatGLM / Alpaca files keep `prompt` (the question as the model saw it) and
    their `history` pairs.
    """
    rows = output.label_ids[:, 0].tolist()
    order = sorted(range(len(rows)), key=rows.__getitem__)
    first, predictions = min(rows), decode_generations(tokenizer, output.predictions)
    contexts = [m[:-1] if m[-1]["role"] == "assistant" else m for m in conversations(test, test_columns, task_args)]
    contexts = [contexts[rows[i] - first] for i in order]
    records = {"predict": [predictions[i] for i in order], "label": [references[rows[i]] for i in order]}
    if test_columns.layout == "messages":
        records = {"messages": contexts, **records}
    else:
        records = {"prompt": [c[-1]["content"] for c in contexts], **records}
        if "history" in test_columns.columns:
            turns = [[m["content"] for m in c if m["role"] != "system"][:-1] for c in contexts]
            records["history"] = [[list(pair) for pair in zip(t[::2], t[1::2])] for t in turns]
    write_generated_predictions(output_dir / "generated_predictions.jsonl", records)


def main(argv=None) -> dict:
    # validate
    args = parse_args(ARGUMENT_CLASSES, prepare_launch(argv))
    model_args, data_args, task_args, finetuning_args, generation_args, training_args = args
    raise_if_problems(argument_problems(*args), args)

    # set up the run
    setup_run(args, model_parallel=task_args.model_parallel_mode)
    configure_training_args(task_args, finetuning_args, training_args)

    # load raw data: conversations, the unusable ones dropped and counted
    raw, chat_columns = load_chat_data(data_args, task_args, training_args, model_args.cache_dir)

    # tokenizer, and the prompt format: the chat template, its answer spans and stop tokens
    tokenizer, config = load_tokenizer_and_config(model_args)
    longest = task_args.max_source_length + task_args.max_target_length
    raise_if_problems(padding_free_problems(config, longest) if task_args.padding_free else [])
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    chat_format = None if encoder_decoder else build_chat_format(tokenizer, task_args, saved_stop_ids(model_args))

    # preprocess: token ids with labels on the answers only
    processed = encode_splits(
        raw, chat_columns, chat_format, tokenizer, encoder_decoder, data_args, task_args, training_args
    )
    references = reference_answers(raw, chat_columns, task_args)

    # model
    model = load_model(model_args, task_args, finetuning_args, training_args, config, tokenizer)
    stop_ids = chat_format.stop_ids if chat_format else [tokenizer.eos_token_id]
    set_stop_tokens(model, tokenizer, stop_ids, training_args)

    # trainer: generation eval scored like ChatGLM's ptuning/main.py
    trainer = GenerationTrainer(
        model=model,
        args=training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation"),
        processing_class=tokenizer,
        data_collator=build_collator(tokenizer, task_args, training_args, encoder_decoder),
        compute_metrics=ChatMetrics(tokenizer, references) if training_args.predict_with_generate else None,
        generation_config=build_generation_config(
            generation_args, stop_ids, tokenizer.pad_token_id, model, task_args.max_target_length
        ),
        max_tokens_per_batch=task_args.max_tokens_per_batch,
    )

    # train, evaluate, predict
    return train_evaluate_predict(
        trainer,
        training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation"),
        predict_dataset=processed.get("test"),
        after_predict=lambda output: write_predictions(
            output, raw["test"], chat_columns["test"], tokenizer, references, task_args, Path(training_args.output_dir)
        ),
    )


if __name__ == "__main__":
    run_main(main)
