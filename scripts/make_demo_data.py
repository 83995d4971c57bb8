"""Generate the offline demo data and tiny from-scratch models used by `make demo` and the tests.

Everything is synthetic and seeded, so running it twice gives byte-identical files and nothing is downloaded.

Usage:
    python scripts/make_demo_data.py --output_dir demo
    python scripts/make_demo_data.py --output_dir /tmp/demo --small
"""

import argparse
import time
from pathlib import Path

import demo_images
import demo_models
import demo_texts


def main(argv: list[str] | None = None) -> None:
    """Generate the tokenizer, tiny model and demo datasets under --output_dir."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo", help="Directory to write everything into.")
    parser.add_argument("--small", action="store_true", help="Write much smaller datasets, for fast tests.")
    args = parser.parse_args(argv)

    out = Path(args.output_dir)
    if args.small:
        sentiment_sizes = {"n_train": 200, "n_validation": 60, "n_test": 60}
        multilabel_sizes = {"n_train": 150, "n_validation": 50, "n_test": 40}
        shape_sizes = {"n_train": 200, "n_validation": 40, "n_test": 40}
    else:
        sentiment_sizes = {"n_train": 2000, "n_validation": 300, "n_test": 300}
        multilabel_sizes = {"n_train": 1500, "n_validation": 300, "n_test": 200}
        shape_sizes = {"n_train": 800, "n_validation": 100, "n_test": 100}

    start = time.perf_counter()
    tokenizer = demo_models.build_tokenizer(out / "tokenizer")
    print(f"tokenizer   -> {out / 'tokenizer'} (vocab size {len(tokenizer)})")

    demo_models.build_tiny_bert(out / "models" / "bert-tiny-zh", tokenizer)
    print(f"tiny BERT   -> {out / 'models' / 'bert-tiny-zh'}")

    demo_texts.make_sentiment_data(out / "data" / "sentiment", **sentiment_sizes)
    sizes = ", ".join(f"{k[2:]}={v}" for k, v in sentiment_sizes.items())
    print(f"sentiment   -> {out / 'data' / 'sentiment'} ({sizes})")

    demo_texts.make_multilabel_data(out / "data" / "multilabel", **multilabel_sizes)
    sizes = ", ".join(f"{k[2:]}={v}" for k, v in multilabel_sizes.items())
    print(f"multilabel  -> {out / 'data' / 'multilabel'} ({sizes})")

    demo_models.build_tiny_decoder(out / "models" / "llama-tiny-sft-zh", tokenizer)
    demo_models.build_tiny_t5(out / "models" / "t5-tiny-zh", tokenizer)
    print(f"tiny Llama, T5 -> {out / 'models'}")
    adgen_sizes = {"n_train": 200, "n_validation": 40, "n_test": 40} if args.small else {}
    demo_texts.make_adgen_data(out / "data" / "adgen", **adgen_sizes)
    demo_texts.make_chat_data(out / "data" / "chat", **({"n_train": 60, "n_validation": 20} if args.small else {}))
    print(f"adgen, chat -> {out / 'data'}")

    clm_sizes = {"n_train": 1000, "n_validation": 100} if args.small else {"n_train": 4000, "n_validation": 300}
    demo_texts.make_clm_corpus(out / "data" / "clm", **clm_sizes)
    clm_texts = (out / "data" / "clm" / "train.txt").read_text(encoding="utf-8").splitlines()
    clm_tokenizer = demo_models.build_corpus_char_tokenizer(out / "tokenizer-clm", clm_texts)
    for model_type in ("qwen2", "llama"):
        demo_models.build_tiny_causal_lm(out / "models" / f"{model_type}-tiny-zh", model_type, clm_texts)
    print(
        f"clm corpus  -> {out / 'data' / 'clm'} (train={clm_sizes['n_train']} documents); "
        f"its char vocab ({len(clm_tokenizer)}) -> {out / 'tokenizer-clm'}; tiny Qwen2 / Llama"
    )

    shapes = demo_images.make_shape_caption_data(out / "data" / "shapes", **shape_sizes)
    sizes = ", ".join(f"{k[2:]}={v} images" for k, v in shape_sizes.items())
    print(f"shapes      -> {out / 'data' / 'shapes'} ({sizes}; {len(shapes['broken'])} broken files to skip)")

    demo_models.build_tiny_chinese_clip(out / "models" / "chinese-clip-tiny", tokenizer)
    demo_models.build_tiny_vit(out / "models" / "vit-tiny")
    print(f"tiny CLIP   -> {out / 'models' / 'chinese-clip-tiny'}, {out / 'models' / 'vit-tiny'}")
    caption_tokenizer = demo_models.char_tokenizer(out / "models" / "gpt2-tiny-zh", demo_images.caption_characters())
    demo_models.build_tiny_chinese_gpt2(out / "models" / "gpt2-tiny-zh", caption_tokenizer)
    print(
        f"tiny GPT-2  -> {out / 'models' / 'gpt2-tiny-zh'} (BERT vocabulary of the caption characters, {len(caption_tokenizer)} tokens; for captioning with vit-tiny)"
    )

    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
