"""Checkpoints that survive a kill: complete ones found, saves made atomic, and a train_loss that spans a resume.

A run killed while the Trainer writes `checkpoint-N` leaves a folder without trainer_state.json (the Trainer
writes it last), which `--resume_from_checkpoint True` would pick and crash on. `ResumableCheckpoints` (a Trainer
mixin every script uses) writes each checkpoint as `tmp-checkpoint-N/checkpoint-N` and renames it into place
once complete, so a `checkpoint-N` folder is always whole; `newest_complete_checkpoint` still skips, with a
warning, incomplete folders written some other way (an older version, another tool, a full disk).

transformers averages `train_loss` over the steps of the resumed run only; each checkpoint also stores the loss
summed over its steps (`train_loss_sum.json`), from which `whole_run_train_loss` gives the average over all.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

from safetensors import safe_open
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import rotate_checkpoints

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")  # what transformers' get_last_checkpoint looks for
STAGING_PREFIX = "tmp-"  # `tmp-checkpoint-N` matches neither that nor the `checkpoint-*` glob of its rotation
LOSS_SUM_FILE = "train_loss_sum.json"
TRAINER_STATE = "trainer_state.json"
# what Trainer._load_from_checkpoint accepts as the weights (full model, sharded, or a peft adapter)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


def missing_parts(folder: str | Path) -> list[str]:
    """What a checkpoint folder lacks for the Trainer to resume from it (empty when complete)."""
    folder = Path(folder)
    missing = []
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
        if "global_step" not in state:
            missing.append(f"a valid {TRAINER_STATE}")
    except FileNotFoundError:
        missing.append(TRAINER_STATE)
    except (OSError, ValueError):
        missing.append(f"a readable {TRAINER_STATE} (this one is cut off)")
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    # DeepSpeed without gathered weights saves only its global_stepN shards; FSDP its pytorch_model_fsdp* files
    sharded = any(n.startswith(("global_step", "pytorch_model_fsdp")) for n in names)
    if not names & set(WEIGHT_FILES) and not sharded:
        missing.append("the model weights (model.safetensors or adapter_model.safetensors)")
    return missing


def checkpoint_problem(path: str | Path) -> str | None:
    """Why --resume_from_checkpoint PATH cannot be resumed from, or None."""
    if not Path(path).is_dir():
        return "is not a directory"
    missing = missing_parts(path)
    if missing:
        return (
            f"is incomplete (it lacks {' and '.join(missing)}): the run that wrote it was probably stopped while "
            "saving. Pass an older checkpoint, or --resume_from_checkpoint True for the newest complete one"
        )
    return None


def newest_complete_checkpoint(output_dir: str | Path, warn: bool = False) -> str | None:
    """The complete checkpoint-N folder of output_dir with the highest N; newer incomplete ones are skipped."""
    if not Path(output_dir).is_dir():
        return None
    found = []
    for child in Path(output_dir).iterdir():
        match = CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    for _, folder in sorted(found, reverse=True):
        missing = missing_parts(folder)
        if not missing:
            return str(folder)
        if warn:
            logger.warning(
                "Skipping %s: it is incomplete (it lacks %s), probably cut off by a kill while it was saved.",
                folder,
                " and ".join(missing),
            )
    return None


def checkpoint_step(checkpoint: str | Path) -> int:
    """The global step a checkpoint was saved at (from its trainer_state.json)."""
    return json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"]


def read_loss_sum(checkpoint: str | Path) -> dict | None:
    """{"global_step", "train_loss_sum"} saved with a checkpoint by ResumableCheckpoints, or None."""
    try:
        return json.loads((Path(checkpoint) / LOSS_SUM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def whole_run_train_loss(saved: dict | None, resumed_train_loss: float, global_step: int) -> float | None:
    """The mean training loss over every step of a resumed run, or None without the checkpoint's loss sum.

    `resumed_train_loss` is the Trainer's, the mean over the steps after the checkpoint; `saved` is
    `read_loss_sum` of the checkpoint. Two steps summing 6.0, then four of mean 1.5: (6.0 + 4 * 1.5) / 6.

    >>> whole_run_train_loss({"global_step": 2, "train_loss_sum": 6.0}, resumed_train_loss=1.5, global_step=6)
    2.0
    """
    if saved is None:
        return None
    resumed_steps = global_step - saved["global_step"]
    return (saved["train_loss_sum"] + resumed_train_loss * resumed_steps) / max(global_step, 1)


def saved_weight_names(checkpoint: str | Path) -> set[str] | None:
    """The tensor names in a checkpoint's model.safetensors (or its index), None when it has neither."""
    folder = Path(checkpoint)
    if (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return set(f.keys())
    if (folder / "model.safetensors.index.json").is_file():
        return set(json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))["weight_map"])
    return None


def remove_stale_incomplete_checkpoints(output_dir: str, global_step: int) -> None:
    """Delete incomplete checkpoint folders of steps this run has passed: they would take --save_total_limit's
    places (its rotation counts every checkpoint-* folder) while complete ones were deleted."""
    for child in Path(output_dir).iterdir():
        match = CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir() and int(match.group(1)) < global_step and missing_parts(child):
            logger.info("Removing %s: incomplete, and this run has saved a newer checkpoint.", child)
            shutil.rmtree(child, ignore_errors=True)


class ResumableCheckpoints:
    """Trainer mixin: every checkpoint-N appears complete or not at all, stores the loss summed so far, and its
    weights are loaded back exactly as from_pretrained loads them.

    The Trainer's own save runs with its output folder pointed at `tmp-checkpoint-N` (its checkpoint rotation then
    sees that one checkpoint only); the main process renames `tmp-checkpoint-N/checkpoint-N` into place once every
    process has written its part, then rotates the real folder (`--save_total_limit`).
    """

    _staging_dir = None

    def _get_output_dir(self, trial):
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staging, final = os.path.join(run_dir, STAGING_PREFIX + name), os.path.join(run_dir, name)
        # the loss of the steps not yet logged is still on the device of each process: gathered like at logging
        loss_sum = self._total_loss_scalar + nested_gather(self._tr_loss, self.args.parallel_mode).mean().item()
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self._move_into_place(os.path.join(staging, name), final, loss_sum)
            shutil.rmtree(staging, ignore_errors=True)
            remove_stale_incomplete_checkpoints(run_dir, self.state.global_step)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._load_renamed_weights(resume_from_checkpoint, self.model if model is None else model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if not self._load_renamed_weights(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def _load_renamed_weights(self, checkpoint: str, model) -> bool:
        """Load a checkpoint saved under other weight names than the model's; False when the names match.

        transformers 5 saves some models in their original names (the ViT encoder of a VisionEncoderDecoder) and
        renames them in from_pretrained, but the Trainer loads the raw names when it resumes, so those weights
        would stay as they were before training (huggingface/transformers#48805).
        """
        saved = saved_weight_names(checkpoint) if checkpoint else None
        if saved is None or saved <= set(model.state_dict()) or not hasattr(model, "save_pretrained"):
            return False
        logger.info("Loading %s through from_pretrained: its weight names differ from the model's.", checkpoint)
        dtype = next(model.parameters()).dtype
        model.load_state_dict(type(model).from_pretrained(checkpoint, dtype=dtype).state_dict())
        return True

    def _move_into_place(self, written: str, final: str, loss_sum: float) -> None:
        """Finish the staged checkpoint (loss sum, the best-checkpoint path it recorded) and rename it to `final`."""
        Path(written, LOSS_SUM_FILE).write_text(
            json.dumps({"global_step": self.state.global_step, "train_loss_sum": loss_sum}), encoding="utf-8"
        )
        if self.state.best_model_checkpoint == written:  # the Trainer recorded the staging path
            self.state.best_model_checkpoint = final
            self.state.save_to_json(os.path.join(written, TRAINER_STATE))
        if os.path.isdir(final):  # an older run's (or an incomplete) folder of the same step
            shutil.rmtree(final)
        os.rename(written, final)
