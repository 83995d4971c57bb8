"""Unit tests for zhtrain/data/images.py: checks before training, RGB conversion, reduced-scale decoding, caching,
image-text rows."""

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from arguments import DataTrainingArguments, ImageDataArguments
from zhtrain.data import images
from zhtrain.data.images import (
    check_image_rows,
    check_images,
    image_problem,
    image_target_size,
    load_image_text_rows,
    open_image,
    to_rgb,
)


def photo(size=(120, 90), seed=0) -> Image.Image:
    """A colourful RGB image whose JPEG is a few kB, like a small photo."""
    rng = np.random.default_rng(seed)
    base = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    base[..., 0] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]
    base[..., 1] = np.linspace(255, 0, size[1], dtype=np.uint8)[:, None]
    base[..., 2] = rng.integers(0, 255, size=(size[1], size[0]), dtype=np.uint8)
    return Image.fromarray(base)


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """Good images in every mode real crawls have, and the broken files they leave behind."""
    d = tmp_path / "images"
    d.mkdir()
    photo().save(d / "good.jpg", quality=90)
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "header_only.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)  # JPEG magic, garbage after
    photo().save(d / "corrupt.png")
    data = bytearray((d / "corrupt.png").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeros in the middle of the pixel data
    (d / "corrupt.png").write_bytes(bytes(data))
    (d / "notes.png").write_text("not an image at all", encoding="utf-8")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(d / "cmyk.jpg", quality=95)  # pure red in CMYK
    rgba = Image.new("RGBA", (40, 30), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 20, 30))  # left half fully transparent (its stored colour is black)
    rgba.save(d / "rgba.png")
    palette = Image.new("RGB", (40, 30), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(d / "palette.png")
    gray16 = Image.fromarray(np.full((30, 40), 32896, dtype=np.uint16))  # half of 65535
    gray16.save(d / "gray16.png")
    Image.new("L", (40, 30), 77).save(d / "gray.jpg")
    return d


def test_broken_files_are_found_by_a_full_decode(image_dir):
    assert image_problem(image_dir / "good.jpg") is None
    assert image_problem(image_dir / "missing.jpg") == "missing"
    assert image_problem(image_dir / "empty.jpg") == "empty file (0 bytes)"
    assert image_problem(image_dir / "truncated.jpg") == "truncated"
    assert image_problem(image_dir / "truncated.jpg", target_size=32) == "truncated"  # also with JPEG draft mode
    assert image_problem(image_dir / "notes.png") == "not an image (unknown format or corrupt header)"
    assert image_problem(image_dir).startswith("not a file")
    assert image_problem(image_dir / "header_only.jpg") == "not an image (unknown format or corrupt header)"
    assert image_problem(image_dir / "corrupt.png").startswith("corrupt (OSError: ")
    # Image.verify(), what most scripts use, passes the truncated JPEG: the reason for the full decode
    with Image.open(image_dir / "truncated.jpg") as image:
        image.verify()


def test_every_mode_becomes_rgb_with_the_right_colours(image_dir):
    for name in ("good.jpg", "cmyk.jpg", "rgba.png", "palette.png", "gray16.png", "gray.jpg"):
        image = open_image(image_dir / name)
        assert image.mode == "RGB", name
    red = np.asarray(open_image(image_dir / "cmyk.jpg"))[15, 30]
    assert red[0] > 230 and red[1] < 30 and red[2] < 30
    rgba = np.asarray(open_image(image_dir / "rgba.png"))
    assert rgba[15, 5].tolist() == [255, 255, 255]  # transparent: white, not the black stored underneath
    assert rgba[15, 35].tolist() == [0, 0, 255]
    assert np.asarray(open_image(image_dir / "palette.png"))[0, 0].tolist() == [0, 200, 0]
    assert np.asarray(open_image(image_dir / "gray16.png"))[0, 0].tolist() == [128, 128, 128]  # not clipped to 255
    assert np.asarray(open_image(image_dir / "gray.jpg"))[0, 0].tolist() == [77, 77, 77]
    transparent_palette = Image.new("P", (4, 4), 0)
    transparent_palette.putpalette([10, 20, 30] * 256)
    transparent_palette.info["transparency"] = 0
    assert np.asarray(to_rgb(transparent_palette))[0, 0].tolist() == [255, 255, 255]


def test_large_jpegs_decode_at_reduced_scale(tmp_path):
    photo((900, 600)).save(tmp_path / "big.jpg", quality=90)
    assert open_image(tmp_path / "big.jpg").size == (900, 600)
    small = open_image(tmp_path / "big.jpg", target_size=224)
    assert small.size == (450, 300)  # the 1/2 scale is the smallest that keeps both sides >= 224


def test_target_size_from_image_processors():
    from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    assert image_target_size(ViTImageProcessorPil(size={"height": 224, "width": 224})) == 224
    clip = ChineseCLIPImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})
    assert image_target_size(clip) == 256


def test_check_is_parallel_cached_and_rechecks_changed_files(image_dir, tmp_path, monkeypatch):
    paths = [str(p) for p in sorted(image_dir.iterdir())] + [str(image_dir / "missing.jpg")]
    first = check_images(paths, check_cache_dir=tmp_path / "checks", num_workers=2)
    problems = {Path(p).name: problem for p, (problem, _) in first.items()}
    assert problems["good.jpg"] is None and problems["cmyk.jpg"] is None
    assert problems["truncated.jpg"] == "truncated" and problems["missing.jpg"] == "missing"
    assert problems["empty.jpg"] == "empty file (0 bytes)"

    decoded = []
    original = images.image_problem
    monkeypatch.setattr(images, "image_problem", lambda p, t=None: decoded.append(Path(p).name) or original(p, t))
    again = check_images(paths, check_cache_dir=tmp_path / "checks", num_workers=2)
    assert again == first
    assert decoded == ["missing.jpg"]  # a missing file has nothing to cache; every other result came from the cache

    photo().save(image_dir / "truncated.jpg", quality=90)  # the user re-downloads the broken file
    decoded.clear()
    third = check_images(paths, check_cache_dir=tmp_path / "checks", num_workers=2)
    assert sorted(decoded) == ["missing.jpg", "truncated.jpg"]
    assert third[str(image_dir / "truncated.jpg")][0] is None


def test_image_cache_dir_stores_copies_at_model_resolution(tmp_path, monkeypatch):
    photo((800, 600)).save(tmp_path / "big.jpg", quality=90)
    photo((100, 50)).save(tmp_path / "small.jpg", quality=90)
    paths = [str(tmp_path / "big.jpg"), str(tmp_path / "small.jpg")]
    results = check_images(paths, target_size=64, image_cache_dir=str(tmp_path / "cache"))
    big, small = (Path(results[p][1]) for p in paths)
    assert big.is_relative_to(tmp_path / "cache") and small.is_relative_to(tmp_path / "cache")
    with Image.open(big) as image:
        assert image.size == (85, 64)  # shorter side at the model's resolution, aspect ratio kept
    with Image.open(small) as image:
        assert image.size == (100, 50)  # never enlarged
    monkeypatch.setattr(images, "image_problem", lambda *a: pytest.fail("a cached image was decoded again"))
    assert check_images(paths, target_size=64, image_cache_dir=str(tmp_path / "cache")) == results


def write_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def load(tmp_path, train, validation=None, test=None, **image_kwargs):
    data_args = DataTrainingArguments(
        train_file=[str(train)],
        validation_file=[str(validation)] if validation else None,
        test_file=[str(test)] if test else None,
        validation_split_percentage=image_kwargs.pop("validation_split_percentage", 5),
    )
    training_args = SimpleNamespace(
        output_dir=str(tmp_path / "out"), should_save=True, do_eval=True, eval_strategy="no", seed=0
    )
    image_args = ImageDataArguments(**image_kwargs)
    pairs = load_image_text_rows(data_args, image_args, training_args, captions_optional=("test",))
    return check_image_rows(pairs, image_args, training_args, 32)


def test_image_text_data_skips_broken_images_and_reports_them(image_dir, tmp_path, caplog):
    rows = [
        {"text": "好图", "image_path": "images/good.jpg"},
        {"text": "同一张好图的第二个描述", "image_path": "images/good.jpg"},
        {"text": "截断的图", "image_path": "images/truncated.jpg"},
        {"text": "空文件", "image_path": "images/empty.jpg"},
        {"text": "不存在的图", "image_path": "images/missing.jpg"},
        {"text": "", "image_path": "images/cmyk.jpg"},
        {"text": "没有图片路径", "image_path": ""},
        {"text": "四色图", "image_path": str(image_dir / "cmyk.jpg")},  # absolute paths work too
    ]
    train = write_rows(tmp_path / "train.csv", rows)
    validation = write_rows(
        tmp_path / "validation.jsonl",
        [
            {"text": ["红色", "一张红色的图"], "image_path": "images/cmyk.jpg"},  # several captions in one cell
            {"text": "绿色", "image_path": "images/palette.png"},
        ],
    )
    test = write_rows(tmp_path / "test.jsonl", [{"image_path": "images/rgba.png"}])  # no captions: allowed here
    with caplog.at_level(logging.WARNING):
        data = load(tmp_path, train, validation, test)
    assert data["train"]["caption"] == ["好图", "同一张好图的第二个描述", "四色图"]
    assert data["train"]["image_index"] == [0, 0, 1]
    assert data["validation"]["caption"] == ["红色", "一张红色的图", "绿色"]
    assert data["validation"]["image_index"] == [0, 0, 1]
    assert data["test"]["caption"] == [None]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "Dropped 1 of 8 train rows: empty or missing caption" in messages
    assert "Dropped 1 of 8 train rows: empty or missing image path" in messages
    assert "Skipped 3 of 5 train images (3 rows): 1 truncated, 1 empty file, 1 missing" in messages
    report = (tmp_path / "out" / "skipped_images.txt").read_text(encoding="utf-8").splitlines()
    assert report[0] == "split\timage_path\tfile\tproblem\trows"
    assert sorted(line.split("\t")[1] for line in report[1:]) == [
        "images/empty.jpg",
        "images/missing.jpg",
        "images/truncated.jpg",
    ]


def test_image_root_and_held_out_images(image_dir, tmp_path):
    names = ["good.jpg", "cmyk.jpg", "rgba.png", "palette.png", "gray16.png", "gray.jpg"]
    rows = [{"caption": f"描述{k}", "file": name} for name in names for k in range(3)]
    train = write_rows(tmp_path / "elsewhere.csv", rows)
    data = load(
        tmp_path, train, image_root=str(image_dir), image_column="file", caption_column="caption",
        validation_split_percentage=34,
    )  # fmt: skip
    held_out = set(data["validation"]["image_path"])
    assert len(held_out) == 2 and not held_out & set(data["train"]["image_path"])
    assert len(data["validation"]) == 6  # all three captions of each held-out image
    assert (tmp_path / "out" / "skipped_images.txt").exists() is False


def test_image_data_errors_name_the_column(image_dir, tmp_path):
    train = write_rows(tmp_path / "train.csv", [{"caption": "好图", "image_path": "images/good.jpg"}])
    with pytest.raises(
        ValueError, match=r"`--caption_column` 'text' is not a column .* columns are: caption, image_path"
    ):
        load(tmp_path, train)
    bad = write_rows(tmp_path / "bad.jsonl", [{"text": "好图", "image_path": {"bytes": "..."}}])
    with pytest.raises(
        ValueError, match=r"`--image_column` 'image_path' of the train data must hold image file paths"
    ):
        load(tmp_path, bad)
    broken = write_rows(tmp_path / "broken.csv", [{"text": "坏图", "image_path": "images/truncated.jpg"}])
    with pytest.raises(ValueError, match=r"No usable image in the train data.*--image_root"):
        load(tmp_path, broken, validation_split_percentage=0)
