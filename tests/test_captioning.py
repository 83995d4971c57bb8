"""run_image_captioning.py: labels with literal ids, special tokens, overfitting, end to end on demo data."""

import json
import shutil

import pytest
import torch

import run_image_captioning as cap
from helpers import tiny_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- labels: eos appended, cut at max_target_length; special tokens ------------------------------------------------


def test_caption_labels_keep_eos_when_cut():
    assert cap.caption_labels([11, 12, 13], eos_token_id=2, max_length=8) == [11, 12, 13, 2]
    assert cap.caption_labels([11, 12, 13, 14, 15], eos_token_id=2, max_length=4) == [11, 12, 13, 2]
    assert cap.caption_labels([], eos_token_id=2, max_length=4) == [2]


def test_references_round_trip():
    assert cap.split_references([11, 12, 2, 13, 2, -100, -100], eos_token_id=2) == [[11, 12], [13]]
    assert cap.split_references([11, 2], eos_token_id=2) == [[11]]


def test_special_tokens_bert_vocabulary_and_gpt2_with_only_eos(demo_dir, tmp_path):
    from transformers import AutoTokenizer

    import demo_models

    bert = AutoTokenizer.from_pretrained(demo_dir / "models" / "gpt2-tiny-zh")
    assert cap.set_special_tokens(bert) == 0
    assert (bert.eos_token, bert.pad_token, bert.cls_token) == ("[SEP]", "[PAD]", "[CLS]")

    # an English-GPT-2-like vocabulary: <|endoftext|> is bos, eos and (as often set) pad
    gpt2 = demo_models.build_bpe_tokenizer(["红色的圆形", "蓝色的方形"], bos=None, eos="<|endoftext|>", pad=None)
    gpt2.pad_token = gpt2.eos_token
    size = len(gpt2)
    assert cap.set_special_tokens(gpt2) == 1
    assert gpt2.pad_token_id == size and gpt2.pad_token_id != gpt2.eos_token_id


# ---- argument errors -----------------------------------------------------------------------------------------------


def test_argument_errors_are_collected(demo_dir, tmp_path):
    argv = tiny_run("captioning", demo_dir, tmp_path, do_eval=True, max_target_length=1, num_beams=0)
    argv = [a for a in argv if "model_name_or_path" not in a and "models" not in a]
    with pytest.raises(ValueError) as error:
        cap.main(argv)
    message = str(error.value)
    assert "--model_name_or_path is required" in message and "--decoder_model_name_or_path" in message
    assert "--max_target_length must be at least 2" in message and "--num_beams must be at least 1" in message

    both = tiny_run(
        "captioning", demo_dir, tmp_path, do_eval=True, model_name_or_path=str(demo_dir / "models" / "vit-tiny")
    )
    with pytest.raises(ValueError, match="not both"):
        cap.main(both)


def test_wrong_kinds_of_models_are_named(demo_dir, tmp_path):
    vit = str(demo_dir / "models" / "vit-tiny")
    decoder_is_vit = tiny_run("captioning", demo_dir, tmp_path, do_eval=True, decoder_model_name_or_path=vit)
    with pytest.raises(ValueError, match="vit model, which cannot generate text"):
        cap.main(decoder_is_vit)
    checkpoint_is_vit = tiny_run(
        "captioning",
        demo_dir,
        tmp_path,
        do_eval=True,
        encoder_model_name_or_path=None,
        decoder_model_name_or_path=None,
        model_name_or_path=vit,
    )
    with pytest.raises(ValueError, match="is a vit model, not a VisionEncoderDecoderModel"):
        cap.main(checkpoint_is_vit)


# ---- overfitting: 8 images, 8 captions, reproduced exactly ---------------------------------------------------------


@pytest.mark.slow
def test_overfits_eight_captions_exactly(demo_dir, tmp_path):
    import csv

    shapes = demo_dir / "data" / "shapes"
    with open(shapes / "test.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[::2][:8]  # one caption of each of 8 different images
    data = tmp_path / "eight.csv"
    with open(data, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "image_path"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "image_path": str(shapes / r["image_path"])} for r in rows)
    args = tiny_run(
        "captioning",
        demo_dir,
        tmp_path / "out",
        train_file=str(data),
        validation_file=None,
        test_file=str(data),
        do_train=True,
        do_predict=True,
        max_steps=100,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
    )
    results = cap.main(args)
    lines = [json.loads(line) for line in (tmp_path / "out" / "generated_predictions.jsonl").open(encoding="utf-8")]
    assert [line["predict"] for line in lines] == [r["text"] for r in rows]
    assert results["predict_bleu-4"] == 100.0 and results["predict_rouge-l"] == 100.0


# ---- end to end on the demo data -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(demo_dir, tmp_path_factory):
    """Train on the demo shapes (a shorter run than `make demo`), evaluate and predict."""
    output_dir = tmp_path_factory.mktemp("captioning")
    args = tiny_run(
        "captioning",
        demo_dir,
        output_dir,
        do_train=True,
        do_eval=True,
        do_predict=True,
        num_train_epochs=8,
        max_eval_samples=60,
    )
    return cap.main(args), output_dir


@pytest.mark.slow
def test_untrained_model_scores_low_and_training_raises_every_metric(demo_run, demo_dir, tmp_path):
    results, _ = demo_run
    untrained = cap.main(tiny_run("captioning", demo_dir, tmp_path, do_eval=True, max_eval_samples=60))
    for name in ("eval_bleu-4", "eval_rouge-l", "eval_cider-d"):
        assert results[name] > untrained[name] + 20, name
    assert results["eval_loss"] < untrained["eval_loss"] / 5
    # --max_eval_samples counts (image, caption) pairs, 2 per image; evaluation then runs once per image
    assert results["eval_samples"] == 30


@pytest.mark.slow
def test_colour_is_named_correctly(demo_run):
    from run_demo import caption_color_accuracy

    _, output_dir = demo_run
    assert caption_color_accuracy(output_dir / "generated_predictions.jsonl") >= 0.9


@pytest.mark.slow
def test_saved_model_reloads_and_captions_the_same(demo_run, demo_dir):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    from zhtrain.data.images import image_target_size, open_image
    from zhtrain.metrics import strip_tokenizer_spaces

    _, output_dir = demo_run
    lines = [json.loads(line) for line in (output_dir / "generated_predictions.jsonl").open(encoding="utf-8")][:16]
    model = AutoModelForImageTextToText.from_pretrained(output_dir).eval()
    image_processor = AutoImageProcessor.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    # decoded as the script does (JPEGs straight at the model's resolution), so the pixels are the same
    size = image_target_size(image_processor)
    images = [open_image(demo_dir / "data" / "shapes" / line["image_path"], size) for line in lines]
    with torch.no_grad():  # the saved generation config is the one the evaluation used
        generated = model.generate(image_processor(images, return_tensors="pt")["pixel_values"])
    captions = [strip_tokenizer_spaces(t) for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    assert captions == [line["predict"] for line in lines]
    assert all(set(line) == {"image_path", "predict", "references"} and len(line["references"]) == 2 for line in lines)


@pytest.mark.slow
def test_broken_images_are_skipped_and_listed(demo_run):
    _, output_dir = demo_run
    listed = (output_dir / "skipped_images.txt").read_text(encoding="utf-8")
    for name in ("broken_truncated.jpg", "broken_empty.jpg", "broken_missing.jpg"):
        assert name in listed


@pytest.mark.slow
def test_continue_from_the_saved_checkpoint(demo_run, demo_dir, tmp_path):
    """--model_name_or_path takes the saved VisionEncoderDecoder: same scores when evaluated again."""
    results, output_dir = demo_run
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(output_dir, checkpoint)
    args = tiny_run(
        "captioning",
        demo_dir,
        tmp_path / "again",
        do_eval=True,
        max_eval_samples=60,
        encoder_model_name_or_path=None,
        decoder_model_name_or_path=None,
        model_name_or_path=str(checkpoint),
    )
    again = cap.main(args)
    assert again["eval_cider-d"] == pytest.approx(results["eval_cider-d"], abs=1e-3)


@pytest.mark.multiprocess
def test_two_processes_evaluate_and_predict_every_image_once(demo_run, demo_dir, tmp_path):
    """Under DDP the sampler repeats images to even out the last batch; they must not reach metrics or the file."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    results, output_dir = demo_run
    args = tiny_run(
        "captioning",
        demo_dir,
        tmp_path / "ddp",
        do_eval=True,
        do_predict=True,
        max_eval_samples=60,
        per_device_eval_batch_size=16,  # 30 eval / 100 test images on 2 ranks: uneven last batches
        encoder_model_name_or_path=None,
        decoder_model_name_or_path=None,
        model_name_or_path=str(output_dir),
        use_cpu=True,
    )
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(root / "run_image_captioning.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "all_results.json").read_text(encoding="utf-8"))
    for name in ("eval_bleu-4", "eval_rouge-l", "eval_cider-d", "predict_cider-d"):
        assert ddp[name] == pytest.approx(results[name], abs=1e-3), name
    single = (output_dir / "generated_predictions.jsonl").read_text(encoding="utf-8")
    assert (tmp_path / "ddp" / "generated_predictions.jsonl").read_text(encoding="utf-8") == single


@pytest.mark.slow
def test_gpt2_vocabulary_with_only_eos_gets_a_pad_token_and_bigger_embeddings(demo_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, VisionEncoderDecoderModel

    import demo_models

    texts = ["红色背景上的一个黑色圆形", "一个蓝色的十字，背景是白色"]
    tokenizer = demo_models.build_bpe_tokenizer(texts, bos=None, eos="<|endoftext|>", pad=None, vocab_size=300)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    args = tiny_run(
        "captioning",
        demo_dir,
        tmp_path / "out",
        decoder_model_name_or_path=str(tmp_path / "gpt2"),
        do_train=True,
        max_train_samples=64,
        max_steps=2,
        validation_file=None,
        test_file=None,
    )
    cap.main(args)
    model = VisionEncoderDecoderModel.from_pretrained(tmp_path / "out")
    saved = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert saved.pad_token == "[PAD]" and saved.pad_token_id == len(tokenizer)
    assert model.decoder.get_input_embeddings().num_embeddings == len(tokenizer) + 1
    eos = tokenizer.eos_token_id
    for target in (model.config, model.generation_config):
        assert (target.decoder_start_token_id, target.pad_token_id) == (eos, len(tokenizer))
    assert model.config.eos_token_id == eos
