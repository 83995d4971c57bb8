"""Unit tests for zhtrain/data/collators.py on small batches (the docstring examples run as doctests too)."""

from PIL import Image

import run_image_captioning as cap
from zhtrain.data import collators
from zhtrain.data.collators import ImageTextCollator


def test_image_text_collator_batches_and_leaves_out_an_image_broken_since_the_check(tmp_path, monkeypatch, demo_dir):
    from transformers import AutoTokenizer
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (300, 200), "red").save("red.jpg")
    Image.new("RGBA", (40, 60), (0, 0, 255, 128)).save("blue.png")
    image_processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "tokenizer")
    collator = ImageTextCollator(image_processor, tokenizer, max_length=16, target_size=32)
    batch = collator(
        [
            {"image_file": "red.jpg", "caption": "红色的圆形", "image_index": 0},
            {"image_file": "blue.png", "caption": "蓝色背景", "image_index": 1},
        ]
    )
    assert (batch["pixel_values"].shape, batch["input_ids"].shape, batch["image_index"].tolist()) == (
        (2, 3, 32, 32),
        (2, 7),
        [0, 1],
    )
    assert tokenizer.decode(batch["input_ids"][1], skip_special_tokens=True).replace(" ", "") == "蓝色背景"
    # an image broken after the check leaves its pair out of the batch instead of stopping training
    (tmp_path / "red.jpg").write_bytes(b"")
    batch = collator(
        [
            {"image_file": "red.jpg", "caption": "红色的圆形", "image_index": 0, "row": 5},
            {"image_file": "blue.png", "caption": "蓝色背景", "image_index": 1, "row": 6},
        ]
    )
    assert batch["row"].tolist() == [6] and batch["pixel_values"].shape[0] == 1


def test_image_caption_collator_pads_labels_with_minus_100(demo_dir):
    image_processor = cap.load_image_processor(str(demo_dir / "models" / "vit-tiny"), "x", {})
    collate = collators.ImageCaptionCollator(image_processor, target_size=32)
    image = str(demo_dir / "data" / "shapes" / "images" / "test_0000.jpg")
    batch = collate(
        [
            {"image_file": image, "labels": [11, 12, 2], "reference_ids": [11, 12, 2, 13, 2]},
            {"image_file": image, "labels": [13, 2], "reference_ids": [14, 2]},
        ]
    )
    assert batch["labels"].tolist() == [[11, 12, 2], [13, 2, -100]]
    assert batch["reference_ids"].tolist() == [[11, 12, 2, 13, 2], [14, 2, -100, -100, -100]]
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    # a prediction-only batch (test file without captions) has no labels at all
    assert set(collate([{"image_file": image}])) == {"pixel_values"}
