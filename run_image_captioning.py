"""Train an image -> Chinese caption model (VisionEncoderDecoder: a ViT encoder + a Chinese GPT-2 / BERT decoder).

    python run_image_captioning.py examples/captioning_demo.json
    python run_image_captioning.py --encoder_model_name_or_path google/vit-base-patch16-224 \
        --decoder_model_name_or_path uer/gpt2-chinese-cluecorpussmall --train_file data/train.csv \
        --validation_file data/valid.csv --image_column image_path --caption_column text \
        --output_dir outputs/captioning --do_train --do_eval --num_beams 4 --max_new_tokens 16
    torchrun --nproc_per_node 8 run_image_captioning.py examples/captioning_vit_gpt2_chinese.json

The model is an existing `VisionEncoderDecoderModel` checkpoint (--model_name_or_path), or one glued together
from an image encoder and a Chinese decoder that gets new cross-attention layers. Captions end with eos; the
decoder starts from [CLS] (BERT vocabularies) or bos, and pads with a token that is not eos. The data is the
`text,image_path` format of run_clip.py, with the same image checks (broken images skipped and listed in
output_dir/skipped_images.txt). Evaluation generates one caption per image (greedy unless --num_beams) and scores
it against all captions of that image: BLEU-4, ROUGE-L and CIDEr-D on characters (zhtrain.metrics.caption_metrics).
The output_dir holds the model, tokenizer and image processor:

    model = AutoModelForImageTextToText.from_pretrained(output_dir)   # a VisionEncoderDecoderModel
    pixel_values = AutoImageProcessor.from_pretrained(output_dir)(images, return_tensors="pt").pixel_values
    captions = AutoTokenizer.from_pretrained(output_dir).batch_decode(model.generate(pixel_values),
                                                                      skip_special_tokens=True)
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    VisionEncoderDecoderModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from arguments import (
    DataTrainingArguments,
    GenerationArguments,
    ImageDataArguments,
    ModelArguments,
    common_problems,
    generation_problems,
    image_data_problems,
    raise_if_problems,
)
from trainer_seq2seq import (
    MultiReferenceTrainer,
    build_generation_config,
    decode_generations,
    write_generated_predictions,
)
from zhtrain.data.collators import LABEL_PAD, ImageCaptionCollator
from zhtrain.data.images import check_image_rows, image_target_size, load_image_processor, load_image_text_rows
from zhtrain.errors import UserError, run_main
from zhtrain.launch import prepare_launch
from zhtrain.metrics import caption_metrics, strip_tokenizer_spaces
from zhtrain.modeling import fit_embeddings, log_trainable_parameters, repair_special_tokens, set_special_token_ids
from zhtrain.parsing import parse_args
from zhtrain.training import setup_run, train_evaluate_predict

logger = logging.getLogger(__name__)


@dataclass
class CaptioningArguments:
    """Arguments only image captioning needs."""

    encoder_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Build a model: its image encoder, e.g. google/vit-base-patch16-224 (with its image processor). "
            "Use with --decoder_model_name_or_path instead of --model_name_or_path."
        },
    )
    decoder_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Build a model: its text decoder, a Chinese GPT-2 (e.g. uer/gpt2-chinese-cluecorpussmall) or "
            "BERT; it gets new cross-attention layers and its tokenizer is used."
        },
    )
    max_target_length: int = field(
        default=32, metadata={"help": "Longest caption in tokens, eos included; longer ones are cut (eos kept)."}
    )
    freeze_encoder: bool = field(
        default=False, metadata={"help": "Keep the image encoder's weights fixed: train the decoder only."}
    )


ARGUMENT_CLASSES = (
    ModelArguments,
    DataTrainingArguments,
    ImageDataArguments,
    CaptioningArguments,
    GenerationArguments,
    Seq2SeqTrainingArguments,
)


def caption_labels(token_ids: list[int], eos_token_id: int, max_length: int) -> list[int]:
    """A caption's labels: its token ids cut to leave room for eos, then eos (the model learns to stop).

    >>> caption_labels([11, 12, 13], eos_token_id=2, max_length=3)
    [11, 12, 2]
    """
    return token_ids[: max_length - 1] + [eos_token_id]


def split_references(ids, eos_token_id: int) -> list[list[int]]:
    """Concatenated references (each ending with eos, then -100 padding) back into one id list per reference.

    >>> split_references([11, 12, 2, 13, 2, -100], eos_token_id=2)
    [[11, 12], [13]]
    """
    references, current = [], []
    for token in ids:
        if token == LABEL_PAD:
            break
        if token == eos_token_id:
            references.append(current)
            current = []
        else:
            current.append(token)
    return references + ([current] if current else [])


def set_special_tokens(tokenizer) -> int:
    """Give the tokenizer an eos that ends captions and a pad token that differs from it; returns tokens added.

    BERT vocabularies (also the Chinese GPT-2s' vocabularies) end a text with [SEP] and pad with [PAD]; GPT-2's own
    vocabulary has only <|endoftext|>, so a pad token is added (the decoder's embeddings grow by one).
    """
    size = len(tokenizer)
    repair_special_tokens(tokenizer, eos_from_sep=True, new_eos="</s>", new_pad="[PAD]")
    return len(tokenizer) - size


@dataclass
class CaptionProcessor:
    """The image processor (pixels in) and the decoder's tokenizer (captions out), both saved beside the model."""

    image_processor: object
    tokenizer: object


def load_processor(model_args, task_args) -> CaptionProcessor:
    """The encoder's image processor and the decoder's tokenizer (with eos and a pad that is not eos)."""
    hub_kwargs, model_path = model_args.hub_kwargs(), model_args.model_name_or_path
    if model_path:
        image_processor = load_image_processor(model_path, "model_name_or_path", hub_kwargs)
    else:
        image_processor = load_image_processor(
            task_args.encoder_model_name_or_path, "encoder_model_name_or_path", hub_kwargs
        )
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_path or task_args.decoder_model_name_or_path, **hub_kwargs
    )
    set_special_tokens(tokenizer)
    return CaptionProcessor(image_processor, tokenizer)


def configure_training_args(task_args, training_args) -> None:
    """Score captions by generating them and keep the columns the collator reads, logging each change."""
    if (training_args.do_eval or training_args.do_predict) and not training_args.predict_with_generate:
        logger.info("Captions are scored by generating them: turning on --predict_with_generate.")
        training_args.predict_with_generate = True
    if training_args.remove_unused_columns:
        # the Trainer would drop `image_file` / `labels` / `reference_ids` as non-model inputs
        logger.info("Turning off --remove_unused_columns: the collator reads the image_file and reference columns.")
        training_args.remove_unused_columns = False


def check_models(model_args, task_args, hub_kwargs: dict) -> None:
    """Fail early, naming what to pass instead, when a model given is not of the kind its argument needs."""
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
        if config.model_type != "vision-encoder-decoder":
            raise UserError(
                f"--model_name_or_path '{model_args.model_name_or_path}' is a {config.model_type} model, not a "
                "VisionEncoderDecoderModel. To build a captioning model from an image encoder and a text decoder, "
                "pass them as --encoder_model_name_or_path and --decoder_model_name_or_path instead."
            )
        return
    encoder_config = AutoConfig.from_pretrained(task_args.encoder_model_name_or_path, **hub_kwargs)
    if hasattr(encoder_config, "text_config"):
        raise UserError(
            f"--encoder_model_name_or_path '{task_args.encoder_model_name_or_path}' is a {encoder_config.model_type} "
            "image-text model; pass a vision encoder (ViT, DeiT, Swin, BEiT...), e.g. google/vit-base-patch16-224."
        )
    decoder_config = AutoConfig.from_pretrained(task_args.decoder_model_name_or_path, **hub_kwargs)
    if decoder_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(
            f"--decoder_model_name_or_path '{task_args.decoder_model_name_or_path}' is a "
            f"{decoder_config.model_type} model, which cannot generate text; pass a Chinese GPT-2 (e.g. "
            "uer/gpt2-chinese-cluecorpussmall) or BERT (e.g. bert-base-chinese)."
        )


def load_model(model_args, task_args, tokenizer) -> VisionEncoderDecoderModel:
    """A VisionEncoderDecoder checkpoint, or a new one from an image encoder and a decoder with cross-attention;
    with the tokenizer's special ids, the encoder frozen if asked."""
    load_kwargs = dict(model_args.hub_kwargs(), dtype=model_args.dtype)
    if model_args.model_name_or_path:
        model = VisionEncoderDecoderModel.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **load_kwargs
        )
    else:
        model = build_captioner(task_args, load_kwargs)
    set_decoder_tokens(model, tokenizer, model_args, task_args)
    freeze_encoder(model, task_args)
    return model


def build_captioner(task_args, load_kwargs: dict) -> VisionEncoderDecoderModel:
    """A new captioning model from an image encoder and a decoder that gets cross-attention layers."""
    # transformers 5 no longer turns a GPT-2 / BERT config into a decoder itself ('GPT2Config' object has no
    # attribute 'is_decoder'): the config is loaded here and given the cross-attention that reads the image
    hub_kwargs = {k: v for k, v in load_kwargs.items() if k != "dtype"}
    decoder_config = AutoConfig.from_pretrained(task_args.decoder_model_name_or_path, **hub_kwargs)
    decoder_config.is_decoder, decoder_config.add_cross_attention = True, True
    encoder = AutoModel.from_pretrained(task_args.encoder_model_name_or_path, **load_kwargs)
    decoder = AutoModelForCausalLM.from_pretrained(
        task_args.decoder_model_name_or_path, config=decoder_config, **load_kwargs
    )
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    logger.info(
        "Built a captioning model: %s (%s) + %s (%s); the cross-attention layers are new and trained from scratch.",
        task_args.encoder_model_name_or_path,
        type(model.encoder).__name__,
        task_args.decoder_model_name_or_path,
        type(model.decoder).__name__,
    )
    return model


def per_image_rows(dataset: Dataset) -> dict[str, list]:
    """Evaluation rows: one per image with all its captions (rows of `load_image_text_rows` are per caption)."""
    rows: dict[int, dict] = {}
    for path, file, caption, index in zip(
        dataset["image_path"], dataset["image_file"], dataset["caption"], dataset["image_index"]
    ):
        row = rows.setdefault(index, {"image_path": path, "image_file": file, "captions": []})
        if caption is not None:
            row["captions"].append(caption)
    return {key: [row[key] for row in rows.values()] for key in ("image_path", "image_file", "captions")}


class SaveImageProcessorCallback(TrainerCallback):
    """Save the image processor into every checkpoint: the Trainer saves only the tokenizer (processing_class)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.image_processor.save_pretrained(Path(args.output_dir) / f"checkpoint-{state.global_step}")


def argument_problems(model_args, data_args, image_args, task_args, generation_args, training_args) -> list[str]:
    """Every problem with the arguments, found before anything is loaded."""
    problems = common_problems(model_args, data_args, training_args) + image_data_problems(image_args)
    problems += generation_problems(generation_args)
    parts = (task_args.encoder_model_name_or_path, task_args.decoder_model_name_or_path)
    if model_args.model_name_or_path and any(parts):
        problems.append(
            "Pass either --model_name_or_path (a VisionEncoderDecoder checkpoint) or --encoder_model_name_or_path "
            "with --decoder_model_name_or_path (to build one), not both."
        )
    elif not model_args.model_name_or_path and not all(parts):
        problems.append(
            "--model_name_or_path is required (a VisionEncoderDecoder checkpoint), or both "
            "--encoder_model_name_or_path (e.g. google/vit-base-patch16-224) and --decoder_model_name_or_path "
            "(e.g. uer/gpt2-chinese-cluecorpussmall) to build one."
        )
    for name, path in zip(("encoder_model_name_or_path", "decoder_model_name_or_path"), parts):
        if path and path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
            problems.append(f"--{name} '{path}' does not exist.")
    if model_args.config_name:
        problems.append("--config_name is not used by run_image_captioning.py; the config comes with the model(s).")
    if task_args.max_target_length < 2:
        problems.append(
            f"--max_target_length must be at least 2 (a token and eos), got {task_args.max_target_length}."
        )
    return problems


def encode_captions(captions: list[str], tokenizer, max_length: int) -> tuple[list[list[int]], int]:
    """Label ids of each caption (eos-terminated, cut to max_length), and how many were cut."""
    ids = tokenizer([strip_tokenizer_spaces(c) for c in captions], add_special_tokens=False)["input_ids"]
    cut = sum(len(i) > max_length - 1 for i in ids)
    return [caption_labels(i, tokenizer.eos_token_id, max_length) for i in ids], cut


def caption_datasets(pairs, tokenizer, max_length: int) -> dict[str, Dataset]:
    """Training: one example per caption. Evaluation and test: one example per image, with all its captions."""
    data = {}
    for split, ds in pairs.items():
        if split == "train":
            labels, cut = encode_captions(ds["caption"], tokenizer, max_length)
            data[split] = Dataset.from_dict({"image_file": ds["image_file"], "labels": labels})
        else:
            columns, cut = per_image_rows(ds), 0
            if any(columns["captions"]):
                references = []
                for captions in columns["captions"]:
                    ids, n_cut = encode_captions(captions, tokenizer, max_length)
                    references.append(ids)
                    cut += n_cut
                columns["labels"] = [ids[0] for ids in references]
                columns["reference_ids"] = [sum(ids, []) for ids in references]
            data[split] = Dataset.from_dict(columns)
        if cut:
            logger.warning(
                "%s: %d captions are longer than --max_target_length %d tokens and were cut.", split, cut, max_length
            )
    return data


def set_decoder_tokens(model, tokenizer, model_args, task_args) -> None:
    """Decoder start, eos and pad on the config and the generation config; the embeddings grown for new tokens.

    A tokenizer with more ids of its own than the decoder has embeddings (one from another model) is refused.
    """
    from_checkpoint = bool(model_args.model_name_or_path)
    decoder = model_args.model_name_or_path or task_args.decoder_model_name_or_path
    fit_embeddings(model.decoder, tokenizer, model_args.tokenizer_name or decoder, decoder)
    eos = tokenizer.eos_token_id
    start = model.config.decoder_start_token_id if from_checkpoint else None
    if start is None:  # BERT vocabularies start from [CLS]; GPT-2's from its bos (= <|endoftext|>)
        start = next(i for i in (tokenizer.cls_token_id, tokenizer.bos_token_id, eos) if i is not None)
    set_special_token_ids(model, decoder_start_token_id=start, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    logger.info(
        "Decoder start %s, eos %s, pad %s",
        *(f"{tokenizer.convert_ids_to_tokens(i)} ({i})" for i in (start, eos, tokenizer.pad_token_id)),
    )


def freeze_encoder(model, task_args) -> None:
    """--freeze_encoder: the image encoder's weights stay fixed; log what trains."""
    if task_args.freeze_encoder:
        model.encoder.requires_grad_(False)
        logger.info(
            "--freeze_encoder: %d encoder weights stay fixed.", sum(p.numel() for p in model.encoder.parameters())
        )
    log_trainable_parameters(model)


class CaptionMetrics:
    """compute_metrics: BLEU-4, ROUGE-L and CIDEr-D of the generated captions against all captions of each image."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, eval_pred) -> dict:
        predictions = decode_generations(self.tokenizer, eval_pred.predictions)
        eos = self.tokenizer.eos_token_id
        references = [
            decode_generations(self.tokenizer, split_references(row, eos)) for row in eval_pred.label_ids.tolist()
        ]
        return caption_metrics(predictions, references)


def write_predictions(output, test: Dataset, tokenizer, output_dir: Path) -> None:
    """generated_predictions.jsonl: image path, generated caption and the image's captions, per test image."""
    write_generated_predictions(
        output_dir / "generated_predictions.jsonl",
        {
            "image_path": test["image_path"],
            "predict": decode_generations(tokenizer, output.predictions),
            "references": test["captions"],
        },
    )


def main(argv=None) -> dict:
    # validate
    args = parse_args(ARGUMENT_CLASSES, prepare_launch(argv))
    model_args, data_args, image_args, task_args, generation_args, training_args = args
    raise_if_problems(argument_problems(*args), args)

    # set up the run
    setup_run(args)
    configure_training_args(task_args, training_args)

    # load raw data: one row per (image, caption); images are checked below, at the processor's resolution
    check_models(model_args, task_args, model_args.hub_kwargs())
    with training_args.main_process_first(desc="loading data"):
        pairs = load_image_text_rows(
            data_args, image_args, training_args, model_args.cache_dir, captions_optional=("test",)
        )

    # processor: the encoder's image processor and the decoder's tokenizer (with eos and a pad that is not eos)
    processor = load_processor(model_args, task_args)
    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    target_size = image_target_size(image_processor)

    # preprocess: every image decoded once (broken ones skipped and listed), captions -> labels
    with training_args.main_process_first(desc="checking images"):
        pairs = check_image_rows(
            pairs, image_args, training_args, target_size, model_args.cache_dir, data_args.preprocessing_num_workers
        )
    data = caption_datasets(pairs, tokenizer, task_args.max_target_length)

    # model
    model = load_model(model_args, task_args, tokenizer)

    # trainer: the saved model then captions the way it was evaluated
    model.generation_config = build_generation_config(
        generation_args, [tokenizer.eos_token_id], tokenizer.pad_token_id, model, task_args.max_target_length
    )
    trainer = MultiReferenceTrainer(
        model=model,
        args=training_args,
        train_dataset=data.get("train"),
        eval_dataset=data.get("validation"),
        processing_class=tokenizer,
        data_collator=ImageCaptionCollator(image_processor, target_size),
        compute_metrics=CaptionMetrics(tokenizer),
        generation_config=model.generation_config,
        callbacks=[SaveImageProcessorCallback(image_processor)],
    )
    if training_args.do_train and training_args.should_save:
        image_processor.save_pretrained(training_args.output_dir)

    # train, evaluate, predict
    return train_evaluate_predict(
        trainer,
        training_args,
        train_dataset=data.get("train"),
        eval_dataset=data.get("validation"),
        predict_dataset=data.get("test"),
        after_predict=lambda output: write_predictions(
            output, data["test"], tokenizer, Path(training_args.output_dir)
        ),
    )


if __name__ == "__main__":
    run_main(main)
