"""Resume after a kill, for each of the five scripts: the final metrics (train_loss included) equal an uninterrupted run's.

Each test trains a tiny model for 6 steps with a checkpoint every 2, uninterrupted; then runs the same in a forked
child that SIGKILLs itself halfway through writing checkpoint-4. The atomic save keeps that half-written folder
out of sight (it stays tmp-checkpoint-4); a copy of it is then planted as checkpoint-4, what a non-atomic saver
would have left. `--resume_from_checkpoint True` must skip it with a warning, resume from checkpoint-2, train only
the 4 missing steps, and end where the uninterrupted run ended.
"""

import json
import logging
import shutil
import signal
from functools import partial

import pytest

import run_classification
import run_clip
import run_clm
import run_image_captioning
import run_seq2seq_ptuning
from helpers import count_training_steps, kill_while_saving, tiny_run

MAX_STEPS, SAVE_STEPS, KILL_STEP = 6, 2, 4
RUN = {
    "max_steps": MAX_STEPS,
    "save_strategy": "steps",
    "save_steps": SAVE_STEPS,
    "logging_steps": 1,
    "dataloader_num_workers": 0,
    "report_to": "none",
    "seed": 42,
    "do_train": True,
    "do_eval": True,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def kill_and_resume(module, argv_to, output_dir, monkeypatch, caplog) -> dict:
    """The run killed while saving checkpoint-4, an incomplete checkpoint-4 planted, then resumed; its results.

    argv_to(output_dir) gives the run's argv.
    """
    argv = argv_to(output_dir)
    assert kill_while_saving(module.main, argv, KILL_STEP) == -signal.SIGKILL
    staged = output_dir / f"tmp-checkpoint-{KILL_STEP}" / f"checkpoint-{KILL_STEP}"
    assert (staged / "optimizer.pt").is_file() and not (staged / "trainer_state.json").exists()  # cut off mid-save
    assert not (output_dir / f"checkpoint-{KILL_STEP}").exists()  # ... and out of sight
    shutil.copytree(staged, output_dir / f"checkpoint-{KILL_STEP}")
    steps = count_training_steps(monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resumed = module.main([*argv, "--resume_from_checkpoint", "True"])
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        f"Skipping {output_dir / 'checkpoint-4'}: it is incomplete (it lacks trainer_state.json" in m for m in messages
    )
    assert f"Resuming from {output_dir / 'checkpoint-2'} (step 2)." in messages
    assert steps == [2, 3, 4, 5]  # the global step before each batch: only the missing steps were trained
    assert json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert not (output_dir / f"tmp-checkpoint-{KILL_STEP}").exists()
    return resumed


def assert_same_results(resumed: dict, full: dict, keys: list[str]) -> None:
    """Equal to the last bit: on CPU the resumed run repeats the uninterrupted one exactly (a wrong resume, such as
    one that keeps the encoder's weights from before training, differs in the third digit)."""
    for key in ["train_loss", "eval_loss", *keys]:
        assert resumed[key] == full[key], key


@pytest.mark.slow
def test_classification_resumes_after_a_kill(demo_dir, tmp_path, monkeypatch, caplog):
    data = demo_dir / "data" / "sentiment"
    args = {
        **RUN,
        "model_name_or_path": demo_dir / "models" / "bert-tiny-zh",
        "train_file": data / "train.csv",
        "validation_file": data / "validation.csv",
        "max_train_samples": 64,  # 4 batches an epoch: the resume lands mid-epoch, the run crosses an epoch
        "max_eval_samples": 64,
        "per_device_train_batch_size": 16,
        "max_seq_length": 32,
        "learning_rate": 1e-3,
        "report_to": "tensorboard",
    }
    argv_to = partial(tiny_run, "classification", demo_dir, **args)
    full = run_classification.main(argv_to(tmp_path / "full"))
    events = list((tmp_path / "full").rglob("events.out.tfevents.*"))
    assert events, "--report_to tensorboard wrote no event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("train/loss")] == list(range(1, MAX_STEPS + 1))
    resumed = kill_and_resume(run_classification, argv_to, tmp_path / "killed", monkeypatch, caplog)
    assert_same_results(resumed, full, ["eval_accuracy", "eval_macro_f1"])


@pytest.mark.slow
def test_clm_resumes_after_a_kill(demo_dir, tmp_path, monkeypatch, caplog):
    data = demo_dir / "data" / "clm"
    args = {
        **RUN,
        "model_type": "gpt2",
        "config_overrides": "n_layer=1,n_head=2,n_embd=32,n_positions=64",
        "tokenizer_name": demo_dir / "tokenizer-clm",
        "train_file": data / "train.txt",
        "validation_file": data / "validation.txt",
        "tokenized_cache_dir": tmp_path / "cache",
        "block_size": 32,
        "max_train_samples": 64,
        "max_eval_samples": 32,
        "per_device_train_batch_size": 16,
        "learning_rate": 3e-3,
        "sample_max_new_tokens": 0,
    }
    argv_to = partial(tiny_run, "clm", demo_dir, **args)
    full = run_clm.main(argv_to(tmp_path / "full"))
    resumed = kill_and_resume(run_clm, argv_to, tmp_path / "killed", monkeypatch, caplog)
    assert_same_results(resumed, full, ["eval_token_accuracy", "eval_perplexity"])


@pytest.mark.slow
def test_seq2seq_resumes_after_a_kill(demo_dir, tmp_path, monkeypatch, caplog):
    data = demo_dir / "data" / "adgen"
    args = {
        **RUN,
        "model_name_or_path": demo_dir / "models" / "llama-tiny-sft-zh",
        "train_file": data / "train.jsonl",
        "validation_file": data / "validation.jsonl",
        "finetuning_type": "lora",
        "max_source_length": 32,
        "max_target_length": 16,
        "max_new_tokens": 8,
        "max_train_samples": 48,
        "max_eval_samples": 8,
        "per_device_train_batch_size": 8,
        "learning_rate": 3e-3,
        "predict_with_generate": True,
    }
    argv_to = partial(tiny_run, "seq2seq", demo_dir, **args)
    full = run_seq2seq_ptuning.main(argv_to(tmp_path / "full"))
    resumed = kill_and_resume(run_seq2seq_ptuning, argv_to, tmp_path / "killed", monkeypatch, caplog)
    assert_same_results(resumed, full, ["eval_rouge-l", "eval_bleu-4"])


@pytest.mark.slow
def test_clip_resumes_after_a_kill(demo_dir, tmp_path, monkeypatch, caplog):
    data = demo_dir / "data" / "shapes"
    args = {
        **RUN,
        "model_name_or_path": demo_dir / "models" / "chinese-clip-tiny",
        "train_file": data / "train.csv",
        "validation_file": data / "validation.jsonl",
        "max_train_samples": 64,
        "max_eval_samples": 32,
        "per_device_train_batch_size": 16,
        "max_seq_length": 32,
        "learning_rate": 2e-3,
    }
    argv_to = partial(tiny_run, "clip", demo_dir, **args)
    full = run_clip.main(argv_to(tmp_path / "full"))
    resumed = kill_and_resume(run_clip, argv_to, tmp_path / "killed", monkeypatch, caplog)
    assert_same_results(resumed, full, ["eval_i2t_R@1", "eval_t2i_R@1", "eval_mean_recall"])


@pytest.mark.slow
def test_captioning_resumes_after_a_kill(demo_dir, tmp_path, monkeypatch, caplog):
    data = demo_dir / "data" / "shapes"
    args = {
        **RUN,
        "encoder_model_name_or_path": demo_dir / "models" / "vit-tiny",
        "decoder_model_name_or_path": demo_dir / "models" / "gpt2-tiny-zh",
        "train_file": data / "train.csv",
        "validation_file": data / "validation.jsonl",
        "max_train_samples": 48,
        "max_eval_samples": 16,
        "per_device_train_batch_size": 8,
        "max_target_length": 16,
        "max_new_tokens": 8,
        "learning_rate": 2e-3,
    }
    argv_to = partial(tiny_run, "captioning", demo_dir, **args)
    full = run_image_captioning.main(argv_to(tmp_path / "full"))
    resumed = kill_and_resume(run_image_captioning, argv_to, tmp_path / "killed", monkeypatch, caplog)
    assert_same_results(resumed, full, ["eval_bleu-4", "eval_rouge-l", "eval_cider-d"])
    assert (tmp_path / "killed" / "checkpoint-4" / "preprocessor_config.json").is_file()
