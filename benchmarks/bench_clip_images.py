"""Images per second that run_clip.py's input pipeline delivers to the model, against the seed's approach.

    python benchmarks/bench_clip_images.py                       # 256 photos, batch 32, all CPU cores
    python benchmarks/bench_clip_images.py --images 512 --workers 8 --rounds 5

The seed (zero_nlp's CLIP and ViT-GPT2 notebooks) opens every full-size image of a batch in the training
process (`Image.open(path).convert("RGB")`) and runs the image processor on it, between training steps.
run_clip.py decodes in DataLoader workers (`--dataloader_num_workers`), decodes JPEGs straight at reduced
scale when they are much larger than the model input, and with `--image_cache_dir` reads copies stored at
model resolution during the check before training. The benchmark writes photo-like JPEGs of 500-1600 px into
a temp dir, runs each pipeline over all of them for several rounds (interleaved, so a busy machine hurts all
alike) after a warm-up round, and reports the median images/s, plus how far the pixel values drift from the seed's.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zhtrain.data.collators import ImageTextCollator  # noqa: E402
from zhtrain.data.images import check_images, image_target_size  # noqa: E402


def make_photos(folder: Path, count: int, seed: int = 0) -> list[str]:
    """JPEGs that compress like photos: smooth gradients, shapes, blur and sensor-like noise, 500-1600 px wide."""
    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1067), (500, 750), (900, 900)]
    paths = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        x = np.linspace(0, 1, width)[None, :, None]
        y = np.linspace(0, 1, height)[:, None, None]
        colours = rng.uniform(0, 255, size=(2, 2, 3))
        base = (colours[0, 0] * (1 - x) * (1 - y) + colours[0, 1] * x * (1 - y) + colours[1, 0] * (1 - x) * y
                + colours[1, 1] * x * y)  # fmt: skip
        image = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            r = rng.uniform(20, width / 4)
            fill = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=fill)
        image = image.filter(ImageFilter.GaussianBlur(2))
        noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, size=(height, width, 3)).astype(np.int16)
        path = folder / f"photo_{index:04d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def seed_pipeline(paths, processor, batch_size):
    """zero_nlp's way: full-size decode of each batch in the training process, then the image processor."""
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start : start + batch_size]:
            image = Image.open(path)
            if image.mode != "RGB":
                image = image.convert(mode="RGB")
            images.append(image)
        yield processor(images=images, return_tensors="pt")["pixel_values"]


def our_loader(files, processor, tokenizer, batch_size, workers, target_size):
    """run_clip.py's way: ImageTextCollator in DataLoader workers, reduced-scale JPEG decoding.

    Workers persist across rounds, as they do across the thousands of batches of an epoch in training."""
    rows = [{"image_file": f, "caption": "一张照片", "image_index": i} for i, f in enumerate(files)]
    collator = ImageTextCollator(processor, tokenizer, max_length=16, target_size=target_size)
    return torch.utils.data.DataLoader(
        rows, batch_size=batch_size, num_workers=workers, collate_fn=collator, persistent_workers=workers > 0
    )


def our_pipeline(loader):
    for batch in loader:
        yield batch["pixel_values"]


def images_per_second(batches) -> tuple[float, list[torch.Tensor]]:
    start = time.perf_counter()
    outputs = list(batches)
    seconds = time.perf_counter() - start
    return sum(len(b) for b in outputs) / seconds, outputs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="How many photos to generate and load per round.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: cores).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds per pipeline; the median is reported.")
    args = parser.parse_args(argv)

    from transformers import BertTokenizerFast
    from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil

    torch.set_num_threads(1)  # the pipelines are measured, not torch ops; keep the comparison about image IO
    processor = ChineseCLIPImageProcessorPil()  # OFA-Sys/chinese-clip-vit-base-patch16's: 224 px, bicubic, crop
    target_size = image_target_size(processor)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "一", "张", "照", "片"])}
    tokenizer = BertTokenizerFast(
        vocab=vocab, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "photos").mkdir()
        start = time.perf_counter()
        paths = make_photos(tmp / "photos", args.images)
        megabytes = sum(os.path.getsize(p) for p in paths) / 1e6
        print(f"{len(paths)} JPEGs, 500-1600 px, {megabytes / len(paths) * 1000:.0f} kB on average "
              f"(generated in {time.perf_counter() - start:.0f}s); batch {args.batch_size}, "
              f"{args.workers} workers, {os.cpu_count()} CPU cores")  # fmt: skip

        start = time.perf_counter()
        checks = check_images(paths, target_size, image_cache_dir=str(tmp / "cache"), num_workers=args.workers)
        check_seconds = time.perf_counter() - start
        cached = [checks[p][1] for p in paths]

        loaders = [
            our_loader(paths, processor, tokenizer, args.batch_size, 0, target_size),
            our_loader(paths, processor, tokenizer, args.batch_size, args.workers, target_size),
            our_loader(cached, processor, tokenizer, args.batch_size, args.workers, target_size),
        ]
        pipelines = {
            "seed: full decode in the training process": lambda: seed_pipeline(paths, processor, args.batch_size),
            "ours, 0 workers (reduced-scale JPEG decode only)": lambda: our_pipeline(loaders[0]),
            f"ours, {args.workers} DataLoader workers": lambda: our_pipeline(loaders[1]),
            f"ours, {args.workers} workers + --image_cache_dir": lambda: our_pipeline(loaders[2]),
        }
        rates = {name: [] for name in pipelines}
        outputs = {}
        for round_ in range(args.rounds + 1):  # round 0 warms up: worker start, page cache
            for name, pipeline in pipelines.items():
                rate, outputs[name] = images_per_second(pipeline())
                if round_ > 0:
                    rates[name].append(rate)
        loaders.clear()  # stop the persistent workers before the temp dir goes

    reference = torch.cat(outputs[next(iter(pipelines))])
    baseline = statistics.median(next(iter(rates.values())))
    print(f"\none-time image check + resize to {target_size} px (--image_cache_dir): {check_seconds:.1f}s "
          f"({len(paths) / check_seconds:.0f} images/s)\n")  # fmt: skip
    print(f"| pipeline | images/s (median of {args.rounds}) | speed-up | mean abs pixel difference vs seed |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        difference = (torch.cat(outputs[name]) - reference).abs().mean().item()
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {median / baseline:.1f}x | {difference:.4f} |")
    print("\n(pixel values are normalised, roughly -1.8..2.1; a difference of 0.01 is about 0.5/255 of a pixel)")


if __name__ == "__main__":
    main()
