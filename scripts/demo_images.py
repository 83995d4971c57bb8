"""Coloured-shape images and their Chinese captions, the image-text demo data of run_clip.py and
run_image_captioning.py: each image is one shape (圆形, 正方形, ...) in one colour on a background of another, drawn
with PIL from a seeded `random.Random`, and its captions fill a few templates ("红色背景上的一个蓝色圆形"). The
training split also holds the broken and non-RGB files that crawled data has, and `caption_characters` lists every
character the captions use (the captioning demo's vocabulary).
"""

import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

from demo_texts import write_csv

# ---------------------------------------------------------------------------
# Image-text demo (run_clip.py, run_image_captioning.py): coloured shapes on coloured backgrounds.
# ---------------------------------------------------------------------------

SHAPE_COLORS = {
    "红色": (215, 35, 35),
    "绿色": (35, 155, 55),
    "蓝色": (35, 70, 215),
    "黄色": (235, 215, 40),
    "紫色": (135, 45, 170),
    "橙色": (245, 140, 25),
    "黑色": (25, 25, 25),
    "白色": (240, 240, 240),
}
SHAPES = ("圆形", "正方形", "三角形", "菱形", "十字", "五角星")
CAPTION_TEMPLATES = (
    "{bg}背景上的一个{fg}{shape}",
    "一个{fg}的{shape}，背景是{bg}",
    "{bg}的底色上画着一个{fg}{shape}",
    "图中是{bg}背景和一个{fg}{shape}",
)
SHAPE_IMAGE_SIZE = 64  # pixels; the demo models look at 32x32


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Corner points of a polygon shape centred on (cx, cy) with radius r; None for the circle."""
    if shape == "正方形":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "三角形":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "菱形":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "十字":
        w = r * 0.38
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx + w, cy + w),
            (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    if shape == "五角星":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    return None


def draw_shape_image(rng: random.Random, fg: str, bg: str, shape: str, size: int = SHAPE_IMAGE_SIZE):
    """One RGB image: a `fg` shape somewhere on a `bg` background, with jittered colours and a little noise."""

    def jitter(rgb):
        return tuple(max(0, min(255, c + rng.randint(-18, 18))) for c in rgb)

    image = Image.new("RGB", (size, size), jitter(SHAPE_COLORS[bg]))
    draw = ImageDraw.Draw(image)
    r = size * rng.uniform(0.22, 0.36)
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    polygon = _shape_polygon(shape, cx, cy, r)
    if polygon is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter(SHAPE_COLORS[fg]))
    else:
        draw.polygon(polygon, fill=jitter(SHAPE_COLORS[fg]))
    for _ in range(size // 4):  # a few stray pixels, so no two images are identical
        draw.point((rng.randrange(size), rng.randrange(size)), fill=jitter(SHAPE_COLORS[bg]))
    return image


def _shape_combinations() -> list[tuple[str, str, str]]:
    return [(fg, bg, s) for fg in SHAPE_COLORS for bg in SHAPE_COLORS if fg != bg for s in SHAPES]


def make_shape_caption_data(
    out_dir: str | Path, n_train: int = 800, n_validation: int = 100, n_test: int = 100, seed: int = 42
) -> dict:
    """Write the image-caption demo: JPEG/PNG images of coloured shapes and Chinese captions for three splits.

    - train.csv: `text,image_path`, two rows (two different captions) per image, as in the seed's news data;
      it also points at a truncated JPEG, a zero-byte file and a missing file, which the scripts must skip,
      and holds a few CMYK / RGBA / palette images that must be converted to RGB.
    - validation.jsonl: one row per image whose `text` is a list of all its captions (several per image).
    - test.csv: two rows per image.
    Validation and test images each use distinct (colour, background, shape) combinations, so every caption
    describes exactly one image of its split. Returns the number of rows per file and the broken paths.
    """
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    combos = _shape_combinations()
    held_out = rng.sample(combos, n_validation + n_test)
    splits = {
        "train": [rng.choice(combos) for _ in range(n_train)],
        "validation": held_out[:n_validation],
        "test": held_out[n_validation:],
    }
    rows = {}
    for split, chosen in splits.items():
        rows[split] = []
        for index, (fg, bg, shape) in enumerate(chosen):
            name = f"images/{split}_{index:04d}.jpg"
            image = draw_shape_image(rng, fg, bg, shape)
            # a few training images come in the modes real crawled data has; the loader converts them to RGB
            if split == "train" and index % 97 == 1:
                name = name.replace(".jpg", "_cmyk.jpg")
                image.convert("CMYK").save(out_dir / name, quality=95)
            elif split == "train" and index % 97 == 2:
                name = name.replace(".jpg", "_rgba.png")
                image.convert("RGBA").save(out_dir / name)
            elif split == "train" and index % 97 == 3:
                name = name.replace(".jpg", "_palette.png")
                image.convert("P", palette=Image.Palette.ADAPTIVE).save(out_dir / name)
            else:
                image.save(out_dir / name, quality=92)
            captions = [t.format(fg=fg, bg=bg, shape=shape) for t in rng.sample(CAPTION_TEMPLATES, 2)]
            rows[split].append((name, captions))

    # broken files, as a crawl leaves them: the check before training must find and list them
    good = (out_dir / rows["train"][0][0]).read_bytes()
    (images / "broken_truncated.jpg").write_bytes(good[: len(good) // 2])
    (images / "broken_empty.jpg").write_bytes(b"")
    broken = ["images/broken_truncated.jpg", "images/broken_empty.jpg", "images/broken_missing.jpg"]
    for k, name in enumerate(broken):
        rows["train"].insert(10 + 40 * k, (name, ["红色背景上的一个蓝色圆形", "一个蓝色的圆形，背景是红色"]))

    write_csv(out_dir / "train.csv", ["text", "image_path"], [[c, n] for n, caps in rows["train"] for c in caps])
    with open(out_dir / "validation.jsonl", "w", encoding="utf-8") as f:
        for name, captions in rows["validation"]:
            f.write(json.dumps({"image_path": name, "text": captions}, ensure_ascii=False) + "\n")
    write_csv(out_dir / "test.csv", ["text", "image_path"], [[c, n] for n, caps in rows["test"] for c in caps])
    return {"train_rows": 2 * len(rows["train"]), "validation_images": n_validation, "broken": broken}


def caption_characters() -> list[str]:
    """Every character the shape captions use: the captioning demo's vocabulary (small, so a CPU trains it fast)."""
    texts = [t.format(fg=fg, bg=bg, shape=s) for fg, bg, s in _shape_combinations() for t in CAPTION_TEMPLATES]
    return sorted(set("".join(texts)))
