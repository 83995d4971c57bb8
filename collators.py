"""Collators shared by the scripts: they turn a list of dataset rows into one batch of tensors.

They run inside the DataLoader workers (`--dataloader_num_workers`), so the expensive part of a batch, such as
decoding images, happens in parallel with the training step.
"""

import logging

import torch

from mechanics import open_image

logger = logging.getLogger(__name__)


class ImageTextCollator:
    """Decode the images of a batch, apply the image processor, and tokenize the captions.

    Rows are the pairs `load_image_text_datasets` makes: `image_file`, `caption`, `image_index` (and an
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
        images, kept = [], []
        for row in rows:
            try:
                images.append(open_image(row["image_file"], self.target_size))
                kept.append(row)
            except Exception as exc:  # any decoding failure: the file changed after the check
                logger.warning(
                    "Leaving out image %s from this batch: %s: %s", row["image_file"], type(exc).__name__, exc
                )
        if not kept:
            raise RuntimeError(
                f"No image of this batch could be decoded (first: {rows[0]['image_file']}); the image files changed "
                "after the check before training. Re-run to check them again."
            )
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
