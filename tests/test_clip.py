"""run_clip.py: the contrastive loss, end-to-end training of both model kinds, freezing, DeepSpeed refused, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import run_clip
from helpers import tiny_run

ROOT = Path(__file__).resolve().parent.parent


# ---- the loss -------------------------------------------------------------------------------------------------


def test_contrastive_loss_matches_clip_and_masks_same_image_captions():
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss as clip_loss

    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    image = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    scale = torch.tensor(10.0)
    distinct = torch.arange(6)
    expected = clip_loss(scale * text @ image.T)
    assert run_clip.contrastive_loss(text, image, distinct, scale) == pytest.approx(expected.item(), rel=1e-6)
    # rows 0 and 1 are two captions of one image: neither is a negative for the other
    image[1] = image[0]
    shared = torch.tensor([0, 0, 1, 2, 3, 4])
    masked = run_clip.contrastive_loss(text, image, shared, scale)
    assert masked < run_clip.contrastive_loss(text, image, distinct, scale)
    logits = scale * text @ image.T
    logits[0, 1] = logits[1, 0] = float("-inf")
    by_hand = (
        torch.nn.functional.cross_entropy(logits, torch.arange(6))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(6))
    ) / 2
    assert masked.item() == pytest.approx(by_hand.item(), rel=1e-6)


# ---- end to end ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chinese_clip_run(demo_dir, tmp_path_factory):
    """One short training run of the tiny ChineseCLIPModel, shared by the tests below."""
    output_dir = tmp_path_factory.mktemp("clip")
    argv = tiny_run(
        "clip",
        demo_dir,
        output_dir,
        test_file=demo_dir / "data" / "shapes" / "test.csv",
        top_k=5,
        do_train=True,
        do_eval=True,
        do_predict=True,
    )
    return run_clip.main(argv), output_dir


@pytest.mark.slow
def test_chinese_clip_learns_retrieval(chinese_clip_run):
    results, output_dir = chinese_clip_run
    # 100 validation images with distinct captions: chance is R@5 = 0.05
    assert results["eval_t2i_R@5"] >= 0.3 and results["eval_i2t_R@5"] >= 0.3
    assert results["predict_t2i_R@5"] >= 0.3
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert losses[-1] < losses[0] * 0.8
    # the 3 broken demo files were skipped before training, and listed
    report = (output_dir / "skipped_images.txt").read_text(encoding="utf-8")
    for name in ("broken_truncated.jpg", "broken_empty.jpg", "broken_missing.jpg"):
        assert name in report


@pytest.mark.slow
def test_outputs_reload_and_predictions(chinese_clip_run, demo_dir, tmp_path):
    from transformers import AutoModel, AutoProcessor

    results, output_dir = chinese_clip_run
    model, processor = AutoModel.from_pretrained(output_dir), AutoProcessor.from_pretrained(output_dir)
    assert type(model).__name__ == "ChineseCLIPModel" and type(processor).__name__ == "ChineseCLIPProcessor"

    lines = (output_dir / "retrieval_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 100 and len(first["captions"]) == 2 and len(first["retrieved"]) == 5
    scores = [r["score"] for r in first["retrieved"]]
    assert scores == sorted(scores, reverse=True)
    hits = np.mean([any(r["correct"] for r in json.loads(line)["retrieved"]) for line in lines])
    assert hits == pytest.approx(results["predict_i2t_R@5"], abs=1e-4)  # the file agrees with the metric
    index = json.loads((output_dir / "predict_embeddings_index.json").read_text(encoding="utf-8"))
    embeddings = load_file(str(output_dir / "predict_embeddings.safetensors"))
    assert embeddings["image_embeds"].shape[0] == len(index["images"]) == 100
    assert embeddings["text_embeds"].shape[0] == len(index["texts"]) == 200

    # the reloaded model + processor give the saved embeddings for a test image (loaded the way training does)
    from zhtrain.data.images import image_target_size, open_image

    image = open_image(
        demo_dir / "data" / "shapes" / first["image_path"], image_target_size(processor.image_processor)
    )
    with torch.no_grad():
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        embed = model.get_image_features(pixel_values=pixel_values)
        embed = torch.nn.functional.normalize(
            embed.pooler_output if hasattr(embed, "pooler_output") else embed, dim=-1
        )
    assert np.allclose(embed[0].numpy(), embeddings["image_embeds"][0], atol=1e-4)

    # evaluating the saved model reproduces the end-of-training scores
    again = run_clip.main(tiny_run("clip", demo_dir, tmp_path, model_name_or_path=output_dir, do_eval=True))
    assert again["eval_mean_recall"] == pytest.approx(results["eval_mean_recall"], abs=1e-4)


@pytest.mark.slow
def test_dual_encoder_from_bert_and_vit_learns_and_reloads(demo_dir, tmp_path):
    from transformers import AutoModel, AutoProcessor

    argv = tiny_run(
        "clip",
        demo_dir,
        tmp_path,
        model_name_or_path=None,
        text_model_name_or_path=demo_dir / "models" / "bert-tiny-zh",
        vision_model_name_or_path=demo_dir / "models" / "vit-tiny",
        projection_dim=64,
        max_train_samples=None,  # every training pair: the new projections need the extra steps
        do_train=True,
        do_eval=True,
    )
    results = run_clip.main(argv)
    assert results["eval_t2i_R@5"] >= 0.15 and results["eval_i2t_R@5"] >= 0.15  # 3x chance (0.05)
    model, processor = AutoModel.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)
    assert type(model).__name__ == "VisionTextDualEncoderModel"
    assert type(processor).__name__ == "VisionTextDualEncoderProcessor"
    assert type(model.text_model).__name__ == "BertModel" and type(model.vision_model).__name__ == "ViTModel"
    again = run_clip.main(tiny_run("clip", demo_dir, tmp_path / "eval", model_name_or_path=tmp_path, do_eval=True))
    assert again["eval_mean_recall"] == pytest.approx(results["eval_mean_recall"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("frozen", ["vision", "text"])
def test_freeze_flags_keep_weights_bit_identical(demo_dir, tmp_path, frozen):
    model_dir = demo_dir / "models" / "chinese-clip-tiny"
    argv = tiny_run(
        "clip",
        demo_dir,
        tmp_path,
        max_steps=3,
        max_train_samples=192,
        do_train=True,
        **{f"freeze_{frozen}_model": True},
    )
    run_clip.main(argv)
    before = load_file(str(model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "model.safetensors"))
    other = "text" if frozen == "vision" else "vision"
    frozen_names = [n for n in before if n.startswith(f"{frozen}_model.")]
    trained_names = [n for n in before if n.startswith(f"{other}_model.")]
    assert frozen_names and trained_names
    assert all(np.array_equal(before[n], after[n]) for n in frozen_names)
    assert not all(np.array_equal(before[n], after[n]) for n in trained_names)
    projection = "visual_projection.weight" if frozen == "vision" else "text_projection.weight"
    assert not np.array_equal(before[projection], after[projection])  # the projection still learns


def test_argument_errors_are_collected(demo_dir, tmp_path):
    with pytest.raises(ValueError) as info:
        run_clip.main(
            [
                "--model_name_or_path", str(demo_dir / "models" / "chinese-clip-tiny"),
                "--text_model_name_or_path", str(demo_dir / "models" / "bert-tiny-zh"),
                "--image_root", str(tmp_path / "nowhere"),
                "--top_k", "0",
                "--do_train", "--output_dir", str(tmp_path),
            ]
        )  # fmt: skip
    message = str(info.value)
    assert "Pass either --model_name_or_path" in message
    assert "--do_train needs --train_file" in message
    assert f"--image_root '{tmp_path / 'nowhere'}' is not a directory" in message
    assert "--top_k must be at least 1" in message
    text_model = demo_dir / "models" / "bert-tiny-zh"
    argv = tiny_run("clip", demo_dir, tmp_path, model_name_or_path=text_model, do_eval=True)
    with pytest.raises(
        ValueError, match=r"is a bert model \(BertForMaskedLM\), not an image-text dual encoder.*--text_model"
    ):
        run_clip.main(argv)


def test_run_clip_refuses_deepspeed_before_loading_anything(demo_dir, tmp_path, one_process_world):
    """DeepSpeed 0.19.8 views every parameter as bytes to broadcast it: CLIP's 0-dim logit_scale fails (any stage)."""
    import run_clip

    argv = [
        "--model_name_or_path", str(demo_dir / "models" / "chinese-clip-tiny"),
        "--train_file", str(demo_dir / "data" / "shapes" / "train.csv"), "--do_train", "--use_cpu",
        "--output_dir", str(tmp_path / "out"), "--deepspeed", str(ROOT / "ds_configs" / "zero2.json"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="DeepSpeed .* cannot start on a CLIP model.*Use torchrun"):
        run_clip.main(argv)


# ---- DDP: negatives gathered from every rank -----------------------------------------------------------------


@pytest.mark.multiprocess
def test_gather_negatives_gives_the_gradients_of_the_global_batch(demo_dir, tmp_path):
    """2 ranks x 4 pairs with --gather_negatives take the same SGD step as 1 process with all 8 pairs."""
    from transformers import AutoTokenizer

    import demo_models

    model_dir = tmp_path / "model"  # no dropout: both runs must see identical forward passes
    demo_models.build_tiny_chinese_clip(model_dir, AutoTokenizer.from_pretrained(demo_dir / "tokenizer"), dropout=0.0)
    rows = (demo_dir / "data" / "shapes" / "test.csv").read_text(encoding="utf-8").splitlines()
    train = tmp_path / "train.csv"  # 8 pairs, 8 different images: one global batch
    train.write_text("\n".join([rows[0], *rows[1:17:2]]) + "\n", encoding="utf-8")
    common = [
        "--model_name_or_path", str(model_dir), "--train_file", str(train),
        "--image_root", str(demo_dir / "data" / "shapes"), "--max_seq_length", "32",
        "--do_train", "--max_steps", "1", "--optim", "sgd", "--learning_rate", "1.0", "--weight_decay", "0",
        "--max_grad_norm", "0", "--lr_scheduler_type", "constant", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "--dataloader_num_workers", "0",
        "--do_eval", "--validation_file", str(train), "--per_device_eval_batch_size", "3",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

    def run(output_dir, processes, batch_size, *extra):
        launcher = (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
            if processes > 1
            else [sys.executable]
        )
        command = [*launcher, str(ROOT / "run_clip.py"), *common, "--output_dir", str(output_dir)]
        command += ["--per_device_train_batch_size", str(batch_size), *extra]
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        after = load_file(str(output_dir / "model.safetensors"))
        metrics = json.loads((output_dir / "all_results.json").read_text())
        return {name: before[name] - after[name] for name in before}, metrics  # = the gradient, for SGD with lr 1

    before = load_file(str(model_dir / "model.safetensors"))
    single, single_metrics = run(tmp_path / "single", 1, 8)
    gathered, gathered_metrics = run(tmp_path / "gathered", 2, 4, "--gather_negatives")
    assert sum(np.abs(g).sum() for g in single.values()) > 0
    for name, gradient in single.items():
        np.testing.assert_allclose(gathered[name], gradient, rtol=1e-4, atol=1e-6, err_msg=name)
    # evaluation gathers every rank's embeddings: the recall is that of the whole validation set
    recalls = [k for k in single_metrics if "_R@" in k or k.endswith("mean_recall")]
    assert recalls and all(gathered_metrics[k] == pytest.approx(single_metrics[k], abs=1e-4) for k in recalls)
