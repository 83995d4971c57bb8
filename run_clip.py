"""Train a Chinese CLIP (image-text dual encoder) contrastively and evaluate image<->text retrieval.

    python run_clip.py examples/clip_demo.json
    python run_clip.py --model_name_or_path OFA-Sys/chinese-clip-vit-base-patch16 --train_file data/train.csv \
        --validation_file data/valid.csv --image_column image_path --caption_column text \
        --output_dir outputs/clip --do_train --do_eval --dataloader_num_workers 8
    python run_clip.py --text_model_name_or_path hfl/chinese-roberta-wwm-ext \
        --vision_model_name_or_path google/vit-base-patch16-224-in21k --freeze_vision_model \
        --train_file data/train.csv --output_dir outputs/clip-bert-vit --do_train --do_eval
    torchrun --nproc_per_node 8 run_clip.py examples/clip_chinese_clip_vit_base.json --gather_negatives

The model is a `ChineseCLIPModel` (or any CLIP-style checkpoint the Auto classes load), or a
`VisionTextDualEncoderModel` built from a Chinese text encoder and a vision encoder; either way the
output_dir reloads with `AutoModel.from_pretrained` + `AutoProcessor.from_pretrained`. Every image is
decoded once before training: broken ones are skipped and listed in output_dir/skipped_images.txt.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    VisionTextDualEncoderProcessor,
)

from arguments import (
    DataTrainingArguments,
    ImageDataArguments,
    ModelArguments,
    common_problems,
    image_data_problems,
    raise_if_problems,
)
from zhtrain.checkpoints import ResumableCheckpoints
from zhtrain.data.collators import ImageTextCollator
from zhtrain.data.images import check_image_rows, image_target_size, load_image_processor, load_image_text_rows
from zhtrain.errors import UserError, run_main
from zhtrain.launch import prepare_launch
from zhtrain.metrics import embedding_retrieval_metrics
from zhtrain.modeling import check_vocabulary_fits, fit_to_context, log_trainable_parameters
from zhtrain.parsing import parse_args
from zhtrain.training import setup_run, train_evaluate_predict, write_json

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values")


@dataclass
class ClipArguments:
    """Arguments only CLIP training needs."""

    text_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Build a dual encoder: its text tower, a Chinese BERT/RoBERTa (e.g. hfl/chinese-roberta-wwm-ext). "
            "Use with --vision_model_name_or_path instead of --model_name_or_path."
        },
    )
    vision_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Build a dual encoder: its vision tower, a ViT or the vision half of a CLIP checkpoint."},
    )
    projection_dim: int = field(
        default=512, metadata={"help": "Built dual encoder only: size of the shared image-text embedding space."}
    )
    logit_scale_init_value: float = field(
        default=2.6592, metadata={"help": "Built dual encoder only: initial log temperature (CLIP's ln(1/0.07))."}
    )
    freeze_vision_model: bool = field(
        default=False,
        metadata={
            "help": "Keep the vision tower's weights fixed (its projection still trains): train text to fit it."
        },
    )
    freeze_text_model: bool = field(
        default=False, metadata={"help": "Keep the text tower's weights fixed (its projection still trains)."}
    )
    max_seq_length: int = field(
        default=52, metadata={"help": "Longest caption in tokens (Chinese-CLIP uses 52); longer ones are truncated."}
    )
    gather_negatives: bool = field(
        default=False,
        metadata={
            "help": "Under DDP, score each rank's captions and images against the whole global batch (a "
            "differentiable all-gather), so every rank trains with world_size x more negatives."
        },
    )
    top_k: int = field(default=10, metadata={"help": "--do_predict: how many retrieved captions to write per image."})
    embeddings_format: str = field(
        default="safetensors",
        metadata={"help": "--do_predict: file format of the saved embeddings.", "choices": ["safetensors", "npy"]},
    )


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, ImageDataArguments, ClipArguments, TrainingArguments)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank's gradient for a slice back to the rank that computed it."""

    @staticmethod
    def forward(ctx, tensor):
        gathered, sizes = _all_gather(tensor)
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return gathered

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # each rank's loss used every slice: sum the gradients of all ranks
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def _all_gather(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Concatenate `tensor` from every rank (first dims may differ, e.g. a short last batch); no gradient."""
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sizes


def contrastive_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    image_index: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: bool = False,
) -> torch.Tensor:
    """The symmetric CLIP loss over (normalised) text and image embeddings of matching pairs.

    Two captions of the same image in one batch are not used as each other's negatives (`image_index` tells
    which pairs share an image). With `gather`, this rank's texts are scored against the images of all ranks
    and its images against all texts; the mean of the ranks' losses is the loss of the global batch, and the
    gradients are those of one process holding the whole batch.
    """
    all_text, all_image, all_index, offset = text_embeds, image_embeds, image_index, 0
    if gather:
        all_text, all_image = _GatherWithGrad.apply(text_embeds), _GatherWithGrad.apply(image_embeds)
        all_index, sizes = _all_gather(image_index)
        offset = sum(sizes[: dist.get_rank()])
    targets = torch.arange(len(text_embeds), device=text_embeds.device) + offset
    same_image = image_index[:, None] == all_index[None, :]
    same_image[torch.arange(len(text_embeds)), targets] = False
    logits_per_text = (logit_scale * text_embeds @ all_image.T).masked_fill(same_image, float("-inf"))
    logits_per_image = (logit_scale * image_embeds @ all_text.T).masked_fill(same_image, float("-inf"))
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_image, targets)) / 2


class ContrastiveTrainer(ResumableCheckpoints, Trainer):
    """Trainer whose loss is `contrastive_loss`, and whose eval returns embeddings for the retrieval metrics.

    Labels of a batch are (row, image_index) pairs: the metrics group captions by image, and the predictions
    file finds each caption's text by its row.
    """

    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it by the accumulation steps

    def __init__(self, *args, gather_negatives: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.gather_negatives = gather_negatives

    def _embed_and_loss(self, model, inputs, gather: bool):
        outputs = model(**{k: v for k, v in inputs.items() if k in MODEL_INPUTS})
        logit_scale = self.accelerator.unwrap_model(model).logit_scale.exp().clamp(max=100)  # CLIP's cap
        loss = contrastive_loss(outputs.text_embeds, outputs.image_embeds, inputs["image_index"], logit_scale, gather)
        return loss, outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        gather = self.gather_negatives and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        loss, outputs = self._embed_and_loss(model, inputs, gather)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self._embed_and_loss(model, inputs, gather=False)
        if prediction_loss_only:
            return loss.detach(), None, None
        labels = torch.stack([inputs["row"], inputs["image_index"]], dim=1)
        return loss.detach(), (outputs.text_embeds.float(), outputs.image_embeds.float()), labels


def group_by_image(text_embeds: np.ndarray, image_embeds: np.ndarray, image_index: np.ndarray):
    """One embedding per distinct image (pairs repeat an image once per caption) and each text's image column."""
    images, first, image_of_text = np.unique(image_index, return_index=True, return_inverse=True)
    return image_embeds[first], first, image_of_text.reshape(-1)


def compute_retrieval_metrics(eval_pred) -> dict:
    text_embeds, image_embeds = eval_pred.predictions
    image_embeds, _, image_of_text = group_by_image(text_embeds, image_embeds, eval_pred.label_ids[:, 1])
    return embedding_retrieval_metrics(text_embeds, image_embeds, image_of_text)


def write_retrieval_predictions(output, dataset, output_dir: Path, top_k: int, embeddings_format: str) -> None:
    """Top-k captions per test image (jsonl), and the image / text embeddings with an index of what each row is."""
    text_embeds, image_embeds = output.predictions
    rows, image_index = output.label_ids[:, 0], output.label_ids[:, 1]
    image_embeds, first, image_of_text = group_by_image(text_embeds, image_embeds, image_index)
    captions = [dataset[int(r)]["caption"] for r in rows]
    image_paths = [dataset[int(rows[i])]["image_path"] for i in first]
    captions_of_image = [[] for _ in image_paths]
    for text, image in zip(captions, image_of_text):
        captions_of_image[image].append(text)
    k = min(top_k, len(captions))
    path = output_dir / "retrieval_predictions.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, len(image_embeds), 1024):
            scores = image_embeds[start : start + 1024] @ text_embeds.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for offset, candidates in enumerate(top):
                image = start + offset
                ranked = candidates[np.argsort(-scores[offset, candidates], kind="stable")]
                retrieved = [
                    {
                        "caption": captions[t],
                        "score": round(float(scores[offset, t]), 4),
                        "correct": bool(image_of_text[t] == image),
                    }
                    for t in ranked
                ]
                line = {"image_path": image_paths[image], "captions": captions_of_image[image], "retrieved": retrieved}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
    if embeddings_format == "safetensors":
        from safetensors.numpy import save_file

        save_file(
            {"image_embeds": np.ascontiguousarray(image_embeds), "text_embeds": np.ascontiguousarray(text_embeds)},
            str(output_dir / "predict_embeddings.safetensors"),
        )
    else:
        np.save(output_dir / "predict_image_embeds.npy", image_embeds)
        np.save(output_dir / "predict_text_embeds.npy", text_embeds)
    write_json(output_dir / "predict_embeddings_index.json", {"images": image_paths, "texts": captions})
    logger.info("Top-%d captions of %d test images written to %s; embeddings next to it", k, len(image_paths), path)


def load_processor(model_args, task_args):
    """The tokenizer + image processor pair, saved with the model so both reload with AutoProcessor."""
    hub_kwargs = model_args.hub_kwargs()
    if model_args.model_name_or_path:
        try:
            processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
        except (OSError, ValueError):
            processor = None
        if not (hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")):
            # a checkpoint with a tokenizer and a preprocessor_config.json but no processor_config.json
            processor = VisionTextDualEncoderProcessor(
                load_image_processor(model_args.model_name_or_path, "model_name_or_path", hub_kwargs),
                AutoTokenizer.from_pretrained(model_args.model_name_or_path, **hub_kwargs),
            )
    else:
        processor = VisionTextDualEncoderProcessor(
            load_image_processor(task_args.vision_model_name_or_path, "vision_model_name_or_path", hub_kwargs),
            AutoTokenizer.from_pretrained(task_args.text_model_name_or_path, **hub_kwargs),
        )
    if model_args.tokenizer_name:
        processor.tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name, **hub_kwargs)
    return processor


def check_is_dual_encoder(model_args, hub_kwargs) -> None:
    """Fail early when --model_name_or_path is a text-only or image-only model, and say what to pass instead."""
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
    if not (hasattr(config, "text_config") and hasattr(config, "vision_config")):
        raise UserError(
            f"--model_name_or_path '{model_args.model_name_or_path}' is a {config.model_type} model "
            f"({', '.join(config.architectures or [])}), not an image-text dual encoder (ChineseCLIPModel, "
            "CLIPModel, VisionTextDualEncoderModel). To build one from a text model and a vision model, pass them "
            "as --text_model_name_or_path and --vision_model_name_or_path instead."
        )
    if config.model_type == "clip":
        logger.warning(
            "%s is an English CLIP: its text tower never learned Chinese. Use a Chinese-CLIP checkpoint "
            "(OFA-Sys/chinese-clip-vit-base-patch16) or build a dual encoder with a Chinese BERT text tower "
            "(--text_model_name_or_path hfl/chinese-roberta-wwm-ext --vision_model_name_or_path ...).",
            model_args.model_name_or_path,
        )


def load_vision_tower(path: str, load_kwargs: dict):
    """A vision encoder: the vision half of a (Chinese-)CLIP checkpoint, or any AutoModel vision model (ViT...)."""
    config = AutoConfig.from_pretrained(path, **{k: v for k, v in load_kwargs.items() if k != "dtype"})
    if hasattr(config, "vision_config") and hasattr(config, "text_config"):
        from transformers import ChineseCLIPVisionModel, CLIPVisionModel

        tower = ChineseCLIPVisionModel if config.model_type == "chinese_clip" else CLIPVisionModel
        return tower.from_pretrained(path, config=config.vision_config, **load_kwargs)
    return AutoModel.from_pretrained(path, **load_kwargs)


def load_model(model_args, task_args):
    """A CLIP-style checkpoint through AutoModel, or a new dual encoder from a text and a vision encoder; the
    towers frozen as asked."""
    load_kwargs = dict(model_args.hub_kwargs(), dtype=model_args.dtype)
    if model_args.model_name_or_path:
        model = AutoModel.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **load_kwargs
        )
    else:
        model = build_dual_encoder(task_args, load_kwargs)
    freeze_towers(model, task_args)
    return model


def build_dual_encoder(task_args, load_kwargs: dict):
    """A new dual encoder from a text and a vision encoder; its projections are new."""
    vision = load_vision_tower(task_args.vision_model_name_or_path, load_kwargs)
    text = AutoModel.from_pretrained(task_args.text_model_name_or_path, **load_kwargs)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision.config,
        text.config,
        projection_dim=task_args.projection_dim,
        logit_scale_init_value=task_args.logit_scale_init_value,
    )
    logger.info(
        "Built a dual encoder: %s (%s) + %s (%s); projections to %d dims are new and trained from scratch.",
        task_args.text_model_name_or_path,
        type(text).__name__,
        task_args.vision_model_name_or_path,
        type(vision).__name__,
        task_args.projection_dim,
    )
    return VisionTextDualEncoderModel(config=config, vision_model=vision, text_model=text)


def argument_problems(model_args, data_args, image_args, task_args, training_args) -> list[str]:
    """Every problem with the arguments, found before anything is loaded."""
    problems = common_problems(model_args, data_args, training_args) + image_data_problems(image_args)
    towers = (task_args.text_model_name_or_path, task_args.vision_model_name_or_path)
    if model_args.model_name_or_path and any(towers):
        problems.append(
            "Pass either --model_name_or_path (a CLIP-style checkpoint) or --text_model_name_or_path with "
            "--vision_model_name_or_path (to build a dual encoder), not both."
        )
    elif not model_args.model_name_or_path and not all(towers):
        problems.append(
            "--model_name_or_path is required (e.g. OFA-Sys/chinese-clip-vit-base-patch16), or both "
            "--text_model_name_or_path and --vision_model_name_or_path to build a dual encoder."
        )
    for name, path in (("text_model_name_or_path", towers[0]), ("vision_model_name_or_path", towers[1])):
        if path and path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
            problems.append(f"--{name} '{path}' does not exist.")
    if model_args.config_name:
        problems.append("--config_name is not used by run_clip.py; the config comes with the model(s).")
    for name in ("max_seq_length", "top_k", "projection_dim"):
        if getattr(task_args, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(task_args, name)}.")
    if training_args.deepspeed:  # it broadcasts every parameter viewed as bytes, impossible for a 0-dim one
        problems.append(
            f"--deepspeed {training_args.deepspeed}: DeepSpeed (0.19) cannot start on a CLIP model, it fails on "
            "the 0-dim logit_scale parameter at any ZeRO stage. Use torchrun (DDP) instead: CLIP models fit on "
            "one GPU, and --gather_negatives gives every rank the negatives of the global batch."
        )
    return problems


def configure_training_args(task_args, training_args) -> None:
    """Keep the columns the collator reads, logging the change; say which settings do nothing or slow training."""
    if task_args.gather_negatives and training_args.world_size == 1:
        logger.warning("--gather_negatives has no effect in a single process; it matters under torchrun / DDP.")
    if training_args.dataloader_num_workers == 0:
        logger.warning(
            "--dataloader_num_workers is 0: images are decoded in the training process, between steps. Set it to "
            "the number of CPU cores per GPU (e.g. 8) so decoding runs in parallel with training."
        )
    if training_args.remove_unused_columns:
        # the collator reads `image_file` / `caption`, which are not model inputs the Trainer would keep
        logger.info("Turning off --remove_unused_columns: the collator reads the image_file and caption columns.")
        training_args.remove_unused_columns = False


def freeze_towers(model, task_args) -> None:
    """--freeze_vision_model / --freeze_text_model: those weights stay fixed (the projections still train)."""
    for flag, tower in (("freeze_vision_model", model.vision_model), ("freeze_text_model", model.text_model)):
        if getattr(task_args, flag):
            tower.requires_grad_(False)
            logger.info(
                "--%s: %d weights of %s stay fixed.",
                flag,
                sum(p.numel() for p in tower.parameters()),
                type(tower).__name__,
            )
    log_trainable_parameters(model)


def caption_length(model, task_args, processor, model_args) -> int:
    """--max_seq_length, at most the text model's positions; a tokenizer that does not fit the model is refused."""
    text_source = model_args.model_name_or_path or task_args.text_model_name_or_path
    check_vocabulary_fits(
        len(processor.tokenizer), model.text_model.get_input_embeddings(), model_args.tokenizer_name or text_source,
        text_source,
    )  # fmt: skip
    return fit_to_context(task_args.max_seq_length, model.config, "max_seq_length", "text model")


def main(argv=None) -> dict:
    # validate
    args = parse_args(ARGUMENT_CLASSES, prepare_launch(argv))
    model_args, data_args, image_args, task_args, training_args = args
    raise_if_problems(argument_problems(*args), args)

    # set up the run
    setup_run(args)
    configure_training_args(task_args, training_args)

    # load raw data: one row per (image, caption); images are checked below, at the processor's resolution
    if model_args.model_name_or_path:
        check_is_dual_encoder(model_args, model_args.hub_kwargs())
    with training_args.main_process_first(desc="loading data"):
        pairs = load_image_text_rows(data_args, image_args, training_args, model_args.cache_dir)

    # processor: the tokenizer and the image processor, saved together with the model
    processor = load_processor(model_args, task_args)
    target_size = image_target_size(processor.image_processor)

    # preprocess: every image decoded once (with --image_cache_dir also stored at that size), broken ones skipped
    with training_args.main_process_first(desc="checking images"):
        data = check_image_rows(
            pairs, image_args, training_args, target_size, model_args.cache_dir, data_args.preprocessing_num_workers
        )
    data = {split: ds.add_column("row", list(range(len(ds)))) for split, ds in data.items()}

    # model
    model = load_model(model_args, task_args)

    # trainer
    collator = ImageTextCollator(
        processor.image_processor,
        processor.tokenizer,
        caption_length(model, task_args, processor, model_args),
        target_size,
    )
    trainer = ContrastiveTrainer(
        model=model,
        args=training_args,
        train_dataset=data.get("train"),
        eval_dataset=data.get("validation"),
        processing_class=processor,
        data_collator=collator,
        compute_metrics=compute_retrieval_metrics,
        gather_negatives=task_args.gather_negatives,
    )

    # train, evaluate, predict
    return train_evaluate_predict(
        trainer,
        training_args,
        train_dataset=data.get("train"),
        eval_dataset=data.get("validation"),
        predict_dataset=data.get("test"),
        after_predict=lambda output: write_retrieval_predictions(
            output, data["test"], Path(training_args.output_dir), task_args.top_k, task_args.embeddings_format
        ),
    )


if __name__ == "__main__":
    run_main(main)
