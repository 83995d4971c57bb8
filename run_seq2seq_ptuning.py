"""Fine-tune a chat / seq2seq model on prompt -> response data: P-Tuning v2, LoRA or full fine-tuning.

    python run_seq2seq_ptuning.py examples/seq2seq_demo.json
    python run_seq2seq_ptuning.py --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --finetuning_type ptuning \
        --pre_seq_len 128 --train_file AdvertiseGen/train.json --validation_file AdvertiseGen/dev.json \
        --prompt_column content --response_column summary --max_source_length 64 --max_target_length 128 \
        --output_dir outputs/adgen-ptuning --do_train --do_eval --predict_with_generate
    torchrun --nproc_per_node 8 run_seq2seq_ptuning.py examples/seq2seq_adgen_ptuning.json

The data format is ChatGLM's (`ptuning/main.py`): a prompt column, a response column and an
optional history column of [query, answer] pairs; Alpaca-style instruction / input / output files
work too. Prompts use the tokenizer's chat template when it has one, else ChatGLM2's
"[Round 1]\\n\\n问：...\\n\\n答：". The loss falls only on the final response and its end token.
Evaluation generates (greedy by default) and scores ROUGE-1/2/L and BLEU-4 as ChatGLM does.
"""

import importlib.util
import json
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
from collators import LABEL_PAD, PromptResponseCollator
from data import drop_invalid_rows, find_column, is_blank, limit_samples, load_raw_datasets
from launch import prepare_launch
from metrics import rouge_bleu
from parsing import parse_args
from trainer_seq2seq import GenerationTrainer, build_generation_config, decode_generations, write_generated_predictions
from training import apply_lora, apply_ptuning, load_adapter, setup_run, train_evaluate_predict

logger = logging.getLogger(__name__)

PROMPT_COLUMNS = ("content", "prompt", "query", "question", "input")
RESPONSE_COLUMNS = ("summary", "response", "answer", "output", "target")


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
    source_prefix: str = field(default="", metadata={"help": "Text put in front of every prompt."})
    max_source_length: int = field(
        default=512, metadata={"help": "Longest prompt in tokens, history included; the oldest turns go first."}
    )
    max_target_length: int = field(
        default=512, metadata={"help": "Longest response in tokens, end token included; longer ones are cut."}
    )
    pad_to_max_length: bool = field(
        default=False,
        metadata={
            "help": "Pad every batch to max_source_length + max_target_length, as ChatGLM does. Slower: "
            "batches are otherwise padded to their own longest row."
        },
    )
    ignore_pad_token_for_loss: bool = field(
        default=True, metadata={"help": "Kept for ChatGLM argument files: padding never counts in the loss."}
    )
    ptuning_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A P-Tuning or LoRA checkpoint saved by this script, to evaluate, predict or continue with.",
            "aliases": ["--adapter_name_or_path"],
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


def read_history(value) -> list[tuple[str, str]] | None:
    """[[query, answer], ...] as a list of string pairs; [] when missing; None when malformed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):  # csv cells hold JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, list) or not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in value):
        return None
    return [(str(q), str(a)) for q, a in value]


def chatglm2_prompt(query: str, history: list[tuple[str, str]]) -> str:
    """ChatGLM2's plain prompt: one "[Round i]" block per earlier turn, then the open question."""
    rounds = [f"[Round {i}]\n\n问：{q}\n\n答：{a}\n\n" for i, (q, a) in enumerate(history, start=1)]
    return "".join(rounds) + f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："


class PromptBuilder:
    """Turns (query, history, response) into token ids: chat template if the tokenizer has one, ChatGLM2 format else."""

    def __init__(self, tokenizer, source_prefix: str, max_source_length: int, max_target_length: int, encoder_decoder):
        self.tokenizer, self.prefix = tokenizer, source_prefix
        self.max_source, self.max_target = max_source_length, max_target_length
        self.encoder_decoder = encoder_decoder
        self.use_template = bool(getattr(tokenizer, "chat_template", None)) and not encoder_decoder
        self.end_ids = self._response_end_ids()

    def _response_end_ids(self) -> list[int]:
        """What closes a response: the chat template's end-of-turn text, or eos."""
        if self.use_template:
            user = [{"role": "user", "content": "Q"}]
            prompt = self.tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
            full = self.tokenizer.apply_chat_template([*user, {"role": "assistant", "content": "A"}], tokenize=False)
            if full.startswith(prompt + "A") and full[len(prompt) + 1 :].strip():
                return self.tokenizer(full[len(prompt) + 1 :].rstrip("\n"), add_special_tokens=False)["input_ids"]
        return [self.tokenizer.eos_token_id]

    def prompt_text(self, query: str, history: list[tuple[str, str]]) -> str:
        if self.use_template:
            messages = []
            for q, a in history:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": self.prefix + query})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.prefix + chatglm2_prompt(query, history)

    def _encode_prompt(self, query: str, history) -> list[int]:
        text = self.prompt_text(query, history)
        ids = self.tokenizer(text, add_special_tokens=self.encoder_decoder)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if not self.encoder_decoder and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def prompt_ids(self, query: str, history: list[tuple[str, str]]) -> tuple[list[int], int, bool]:
        """Prompt ids within max_source_length: the oldest turns are dropped first, then the prompt's start.

        Returns the ids, how many turns were dropped, and whether the prompt itself had to be cut.
        """
        dropped = 0
        ids = self._encode_prompt(query, history)
        while len(ids) > self.max_source and dropped < len(history):
            dropped += 1
            ids = self._encode_prompt(query, history[dropped:])
        cut = len(ids) > self.max_source
        if cut:  # keep the end: it holds the question and the "答：" / assistant cue the model answers after
            bos = self.tokenizer.bos_token_id
            keep = self.max_source - (1 if ids[0] == bos and bos is not None else 0)
            ids = ([bos] if keep < self.max_source else []) + ids[-keep:]
        return ids, dropped, cut

    def response_ids(self, response: str) -> tuple[list[int], bool]:
        """Response ids + the end token(s), within max_target_length."""
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        room = self.max_target - len(self.end_ids)
        return ids[:room] + self.end_ids, len(ids) > room


def training_features(prompt_ids: list[int], response_ids: list[int]) -> dict:
    """A decoder-only training row: prompt + response, with the loss only on the response (and its end token).

    >>> training_features([11, 12], [21, 22, 2])
    {'input_ids': [11, 12, 21, 22, 2], 'labels': [-100, -100, 21, 22, 2]}
    """
    return {"input_ids": prompt_ids + response_ids, "labels": [LABEL_PAD] * len(prompt_ids) + response_ids}


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
    if finetuning_args.finetuning_type == "ptuning" and training_args.gradient_checkpointing:
        problems.append(
            "--finetuning_type ptuning cannot be combined with --gradient_checkpointing: peft drops the trained "
            "prefix when layers are recomputed. Remove --gradient_checkpointing (P-Tuning needs little memory), "
            "or use --finetuning_type lora."
        )
    checkpoint = task_args.ptuning_checkpoint
    if checkpoint and not (Path(checkpoint) / "adapter_config.json").is_file():
        found = sorted(p.name for p in Path(checkpoint).iterdir()) if Path(checkpoint).is_dir() else []
        problems.append(
            f"--ptuning_checkpoint '{checkpoint}' has no adapter_config.json (it holds: {', '.join(found) or 'nothing'}). "
            "Give the output_dir (or a checkpoint-N dir) of a --finetuning_type ptuning/lora run; a full fine-tune "
            "is loaded with --model_name_or_path instead."
        )
    problems += quantization_problems(task_args.quantization_bit, finetuning_args.finetuning_type)
    if task_args.model_parallel_mode and training_args.world_size > 1:
        problems.append(
            "--model_parallel_mode runs ONE process that spreads the model over the GPUs; do not launch it with "
            "torchrun/deepspeed. Use it with plain `python`, or drop it for data parallelism."
        )
    return problems


def warn_about_ignored_arguments(task_args, finetuning_args, training_args) -> None:
    """Say which given arguments have no effect, and turn on generation where prediction needs it."""
    if finetuning_args.finetuning_type != "lora" and finetuning_args.lora_rank != FinetuningArguments.lora_rank:
        logger.warning(
            "--lora_rank is set but --finetuning_type is %s: LoRA settings are ignored.",
            finetuning_args.finetuning_type,
        )
    if (
        finetuning_args.finetuning_type != "ptuning"
        and finetuning_args.pre_seq_len is not None
        and not task_args.ptuning_checkpoint
    ):
        logger.warning(
            "--pre_seq_len is set but --finetuning_type is %s: it is ignored.", finetuning_args.finetuning_type
        )
    if not task_args.ignore_pad_token_for_loss:
        logger.warning("--ignore_pad_token_for_loss false is ignored: learning to predict padding only hurts.")
    if training_args.do_predict and not training_args.predict_with_generate:
        logger.info("--do_predict generates answers: turning on --predict_with_generate.")
        training_args.predict_with_generate = True
    # our collator builds exactly the keys the model and the trainer's generation step use
    training_args.remove_unused_columns = False


def find_roles(ds, split: str, task_args) -> dict[str, str]:
    """{role: column} of one split; roles: prompt | instruction + input (Alpaca), response, history."""
    columns = ds.column_names
    if task_args.prompt_column is None and "instruction" in columns:  # Alpaca-style file
        roles = {"instruction": "instruction", **({"input": "input"} if "input" in columns else {})}
        response_column = task_args.response_column or "output"
        has_response = response_column in columns
    else:
        roles = {"prompt": find_column(ds, task_args.prompt_column, "prompt_column", PROMPT_COLUMNS, split)}
        response_column = task_args.response_column
        has_response = response_column in columns if response_column else bool(set(RESPONSE_COLUMNS) & set(columns))
    if split != "test" or has_response:  # test files may come without answers: predict only
        roles["response"] = find_column(ds, response_column, "response_column", RESPONSE_COLUMNS, split)
    if task_args.history_column or "history" in columns:
        roles["history"] = find_column(ds, task_args.history_column, "history_column", ("history",), split)
    return roles


def query_of(row: dict) -> str:
    """The question of a row given by role: the prompt, or an Alpaca instruction with its input."""
    if "instruction" in row:
        extra = row.get("input")
        return str(row["instruction"]).strip() + ("\n" + str(extra).strip() if not is_blank(extra) else "")
    return str(row["prompt"]).strip()


def row_problem(values: dict, roles: dict[str, str], needs_response: bool) -> str | None:
    """Why a row cannot be used (no prompt, no response, a malformed history), or None."""
    row = {role: values[column] for role, column in roles.items()}
    if is_blank(row.get("prompt", row.get("instruction"))):
        return "empty or missing prompt"
    if needs_response and is_blank(row.get("response")):
        return "empty or missing response"
    if "history" in row and read_history(row["history"]) is None:
        return "history is not a list of [query, answer] pairs"
    return None


def load_prompt_response_data(data_args, task_args, training_args, cache_dir) -> tuple:
    """The raw splits without unusable rows, and the role of each column, per split."""
    with training_args.main_process_first(desc="loading data"):
        raw = load_raw_datasets(data_args, training_args, cache_dir=cache_dir)
    roles = {split: find_roles(ds, split, task_args) for split, ds in raw.items()}
    for split in list(raw):
        problem = partial(row_problem, roles=roles[split], needs_response=split != "test")
        raw[split] = drop_invalid_rows(raw[split], split, list(roles[split].values()), problem)
    limit_samples(raw, data_args)
    return raw, roles


def load_tokenizer_and_config(model_args) -> tuple:
    """The tokenizer, with an eos that ends responses and a pad token, and the model config; tokens added."""
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path, **model_args.hub_kwargs()
    )
    added_tokens = 0
    if tokenizer.eos_token is None:
        if tokenizer.sep_token is not None:  # BERT-vocabulary Chinese GPT-2s end texts with [SEP]
            tokenizer.eos_token = tokenizer.sep_token
        else:
            added_tokens += tokenizer.add_special_tokens({"eos_token": "</s>"})
        logger.info("The tokenizer has no eos token; using %s to end responses.", tokenizer.eos_token)
    if tokenizer.pad_token is None:  # padding never reaches the loss (-100), so sharing eos's id is harmless
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path, **model_args.hub_kwargs()
    )
    return tokenizer, config, added_tokens


def encode_batch(batch, split: str, roles: dict, builder: PromptBuilder, keep_generation_inputs: bool) -> dict:
    """Token ids of a batch: decoder-only rows get prompt + response with labels on the response only, and
    (for evaluation) the prompt alone to generate from; encoder-decoder rows get the prompt and the response.
    """
    n = len(next(iter(batch.values())))
    out = {k: [] for k in ("input_ids", "labels", "prompt_ids", "reference_ids", "length")}
    stats = {"turns_dropped": 0, "prompts_cut": 0, "responses_cut": 0}
    for i in range(n):
        row = {role: batch[column][i] for role, column in roles.items()}
        prompt, dropped, cut = builder.prompt_ids(query_of(row), read_history(row.get("history")) or [])
        stats["turns_dropped"] += dropped
        stats["prompts_cut"] += cut
        response = None if is_blank(row.get("response")) else builder.response_ids(str(row["response"]).strip())
        if response is not None:
            stats["responses_cut"] += response[1]
        if builder.encoder_decoder:
            out["input_ids"].append(prompt)
            out["labels"].append(response[0] if response else None)
            out["length"].append(len(prompt))
            continue
        out["prompt_ids"].append(prompt)
        if response is not None:
            for key, value in training_features(prompt, response[0]).items():
                out[key].append(value)
            out["reference_ids"].append(response[0])
        out["length"].append(len(prompt) + (len(response[0]) if response is not None else 0))
    keep = {"length"}
    if builder.encoder_decoder:
        keep |= {"input_ids"} | ({"labels"} if all(x is not None for x in out["labels"]) else set())
    elif split == "train":
        keep |= {"input_ids", "labels"}
    else:
        keep |= {"prompt_ids"} | ({"input_ids", "labels", "reference_ids"} if out["input_ids"] else set())
        if not keep_generation_inputs:
            keep -= {"prompt_ids", "reference_ids"}
    # per-batch counts ride along as columns (one value per batch) so they survive num_proc workers
    out.update({f"stat_{k}": [v] + [0] * (n - 1) for k, v in stats.items()})
    return {k: v for k, v in out.items() if k in keep or k.startswith("stat_")}


def encode_splits(raw, roles, builder: PromptBuilder, data_args, training_args) -> dict:
    """Every split encoded (main process first; cached by `datasets`), with the truncation counts logged."""
    processed = {}
    with training_args.main_process_first(desc="tokenizing"):
        for split, ds in raw.items():
            encoded = ds.map(
                encode_batch,
                batched=True,
                fn_kwargs={
                    "split": split,
                    "roles": roles[split],
                    "builder": builder,
                    "keep_generation_inputs": training_args.predict_with_generate,
                },
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
            processed[split] = encoded.remove_columns(stat_columns)
    return processed


def load_model(model_args, task_args, finetuning_args, config, tokenizer, added_tokens: int, training_args):
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
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    model_class = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    model = model_class.from_pretrained(
        model_args.model_name_or_path, config=config, **model_args.hub_kwargs(), dtype=model_args.dtype, **load_kwargs
    )
    if added_tokens:
        model.resize_token_embeddings(len(tokenizer))
    for target in (model.config, model.generation_config):
        target.pad_token_id, target.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    if task_args.quantization_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    task_type = "SEQ_2_SEQ_LM" if encoder_decoder else "CAUSAL_LM"
    if task_args.ptuning_checkpoint:
        return load_adapter(
            model, task_args.ptuning_checkpoint, finetuning_args, model_args.model_name_or_path, training_args.do_train
        )
    if finetuning_args.finetuning_type == "lora":
        return apply_lora(model, finetuning_args, task_type)
    if finetuning_args.finetuning_type == "ptuning":
        return apply_ptuning(model, finetuning_args, task_type, config.hidden_size)
    return model


def build_collator(tokenizer, task_args, training_args, encoder_decoder: bool) -> PromptResponseCollator:
    """Dynamic padding, or ChatGLM's static padding to max_source + max_target with --pad_to_max_length."""
    total = task_args.max_source_length + task_args.max_target_length
    static = task_args.pad_to_max_length
    return PromptResponseCollator(
        tokenizer.pad_token_id,
        pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None,
        max_length=(task_args.max_source_length if encoder_decoder else total) if static else None,
        max_label_length=(task_args.max_target_length if encoder_decoder else total) if static else None,
    )


def write_predictions(output, test, roles: dict, tokenizer, output_dir: Path) -> None:
    """generated_predictions.jsonl: prompt, generated answer and reference answer per test row, in file order."""
    prompts = [query_of({role: test[column][i] for role, column in roles.items()}) for i in range(len(test))]
    labels = test[roles["response"]] if "response" in roles else [""] * len(test)
    write_generated_predictions(
        output_dir / "generated_predictions.jsonl",
        {"prompt": prompts, "predict": decode_generations(tokenizer, output.predictions), "label": labels},
    )


def main(argv=None) -> dict:
    # validate
    args = parse_args(ARGUMENT_CLASSES, prepare_launch(argv))
    model_args, data_args, task_args, finetuning_args, generation_args, training_args = args
    raise_if_problems(argument_problems(*args))

    # set up the run
    setup_run(args, model_parallel=task_args.model_parallel_mode)
    warn_about_ignored_arguments(task_args, finetuning_args, training_args)

    # load raw data
    raw, roles = load_prompt_response_data(data_args, task_args, training_args, model_args.cache_dir)

    # tokenizer (and the config: encoder-decoder or decoder-only decides the inputs)
    tokenizer, config, added_tokens = load_tokenizer_and_config(model_args)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))

    # preprocess: prompts in the model's format, loss on the responses only
    builder = PromptBuilder(
        tokenizer, task_args.source_prefix, task_args.max_source_length, task_args.max_target_length, encoder_decoder
    )
    logger.info(
        "Prompt format: %s. Example:\n%s",
        "the tokenizer's chat template" if builder.use_template else "ChatGLM2 [Round i] 问/答",
        builder.prompt_text("<query>", [("<earlier query>", "<earlier answer>")]),
    )
    processed = encode_splits(raw, roles, builder, data_args, training_args)

    # model
    model = load_model(model_args, task_args, finetuning_args, config, tokenizer, added_tokens, training_args)

    # trainer: generation eval scored like ChatGLM's ptuning/main.py
    def compute_metrics(eval_pred) -> dict:
        predictions = decode_generations(tokenizer, eval_pred.predictions)
        return rouge_bleu(predictions, decode_generations(tokenizer, eval_pred.label_ids))

    trainer = GenerationTrainer(
        model=model,
        args=training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation"),
        processing_class=tokenizer,
        data_collator=build_collator(tokenizer, task_args, training_args, encoder_decoder),
        compute_metrics=compute_metrics if training_args.predict_with_generate else None,
        generation_config=build_generation_config(generation_args, tokenizer, model, task_args.max_target_length),
    )

    # train, evaluate, predict
    return train_evaluate_predict(
        trainer,
        training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation"),
        predict_dataset=processed.get("test"),
        after_predict=lambda output: write_predictions(
            output, raw["test"], roles["test"], tokenizer, Path(training_args.output_dir)
        ),
    )


if __name__ == "__main__":
    main()
