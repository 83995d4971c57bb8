"""Collators shared by the scripts: they turn a list of dataset rows into one batch of tensors.

They run inside the DataLoader workers (`--dataloader_num_workers`), so the expensive part of a batch, such as
decoding images, happens in parallel with the training step.
"""

import logging

import torch

from zhtrain.data import LABEL_PAD
from zhtrain.data.images import decode_batch_images

logger = logging.getLogger(__name__)


def pad_ids(
    sequences: list[list[int]],
    value: int,
    left: bool = False,
    min_length: int | None = None,
    multiple_of: int | None = None,
) -> torch.Tensor:
    """Pad token id lists with `value` to the longest (at least `min_length`, rounded up to `multiple_of`)."""
    length = max(max(len(s) for s in sequences), min_length or 0)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    padded = [
        [value] * (length - len(s)) + list(s) if left else list(s) + [value] * (length - len(s)) for s in sequences
    ]
    return torch.tensor(padded, dtype=torch.long)


class PromptResponseCollator:
    """Pads prompt -> response features; knows each key's pad value and side.

    - `input_ids` / `labels` (teacher-forced, aligned): right-padded with pad id / -100, plus `attention_mask`.
    - `prompt_ids` (prompt only, for generation with a decoder-only model): LEFT-padded, so every prompt ends
      where generation starts, plus `prompt_attention_mask`.
    - `row` (evaluation: which data row an example is, to find its reference answer): a tensor of ints.
    `max_length` / `max_label_length` pad `input_ids` / `labels` of every batch to a fixed length instead
    (ChatGLM's static padding, --pad_to_max_length); the prompt-only keys are always padded dynamically.

    >>> collate = PromptResponseCollator(pad_token_id=0)
    >>> batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "prompt_ids": [5]},
    ...                  {"input_ids": [8, 9], "labels": [-100, 9], "prompt_ids": [8, 8]}])
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7], [8, 9, 0]], [[1, 1, 1], [1, 1, 0]])
    >>> batch["labels"].tolist()
    [[-100, 6, 7], [-100, 9, -100]]
    >>> batch["prompt_ids"].tolist(), batch["prompt_attention_mask"].tolist()
    ([[0, 5], [8, 8]], [[0, 1], [1, 1]])
    """

    def __init__(
        self,
        pad_token_id: int,
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
        max_label_length: int | None = None,
    ):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length, self.max_label_length = max_length, max_label_length

    def _pad(
        self, sequences: list[list[int]], value: int, left: bool = False, fixed: int | None = None
    ) -> torch.Tensor:
        return pad_ids(sequences, value, left=left, min_length=fixed, multiple_of=self.pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        keys = features[0].keys()
        if "input_ids" in keys:
            ids = [f["input_ids"] for f in features]
            batch["input_ids"] = self._pad(ids, self.pad_token_id, fixed=self.max_length)
            batch["attention_mask"] = self._pad([[1] * len(i) for i in ids], 0, fixed=self.max_length)
        if "labels" in keys:
            batch["labels"] = self._pad([f["labels"] for f in features], LABEL_PAD, fixed=self.max_label_length)
        if "prompt_ids" in keys:
            batch["prompt_ids"] = self._pad([f["prompt_ids"] for f in features], self.pad_token_id, left=True)
            batch["prompt_attention_mask"] = self._pad([[1] * len(f["prompt_ids"]) for f in features], 0, left=True)
        if "row" in keys:
            batch["row"] = torch.tensor([f["row"] for f in features], dtype=torch.long)
        return batch


class ImageTextCollator:
    """Decode the images of a batch, apply the image processor, and tokenize the captions.

    Rows are the pairs `zhtrain.data.images.load_image_text_rows` makes: `image_file`, `caption`, `image_index` (and an
    optional `row` number, passed through like `image_index`). An image
    that fails to decode now (changed or deleted since the check before training) is left out of the batch
    with a warning instead of stopping the run; a contrastive batch stays valid with one pair fewer.

    >>> collator = ImageTextCollator(image_processor, tokenizer, max_length=16, target_size=32)
    >>> batch = collator([{"image_file": "red.jpg", "caption": "红色的圆形", "image_index": 0},
    ...                   {"image_file": "blue.png", "caption": "蓝色背景", "image_index": 1}])
    >>> batch["pixel_values"].shape, batch["input_ids"].shape, batch["image_index"].tolist()
    (torch.Size([2, 3, 32, 32]), torch.Size([2, 7]), [0, 1])
    """

    def __init__(self, image_processor, tokenizer, max_length: int, target_size: int | None = None):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.target_size = target_size  # decode JPEGs at a reduced scale when they are much larger

    def __call__(self, rows: list[dict]) -> dict:
        images, kept = decode_batch_images(rows, self.target_size)
        batch = dict(
            self.tokenizer(
                [row["caption"] for row in kept],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )
        batch["pixel_values"] = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        for key in ("image_index", "row"):  # which image each pair shows, and where it came from (predictions)
            if key in kept[0]:
                batch[key] = torch.tensor([row[key] for row in kept], dtype=torch.long)
        return batch


class ImageCaptionCollator:
    """Images -> `pixel_values`; caption token ids -> `labels` right-padded with -100 (ignored by the loss).

    Rows hold `image_file` and, when they have captions, `labels` (one caption's ids, ending with eos) and, for
    evaluation, `reference_ids` (every caption of the image, each ending with eos, one after the other; padded
    with -100 too). Padding with -100 instead of the pad id keeps the loss off the padding, which a model would
    otherwise learn to produce. An image that no longer decodes is left out of the batch with a warning.

    >>> pad_ids([[11, 12, 2], [13, 2]], LABEL_PAD)
    tensor([[  11,   12,    2],
            [  13,    2, -100]])
    """

    def __init__(self, image_processor, target_size: int | None = None):
        self.image_processor = image_processor
        self.target_size = target_size  # decode JPEGs at a reduced scale when they are much larger

    def __call__(self, rows: list[dict]) -> dict:
        images, kept = decode_batch_images(rows, self.target_size)
        batch = {"pixel_values": self.image_processor(images=images, return_tensors="pt")["pixel_values"]}
        for key in ("labels", "reference_ids"):
            if kept[0].get(key) is not None:
                batch[key] = pad_ids([row[key] for row in kept], LABEL_PAD)
        return batch
