"""Unit tests for zhtrain/training.py: the loss curve written after training."""

from zhtrain.training import plot_loss_curve


def test_plot_loss_curve_writes_a_png(tmp_path):
    history = [
        {"loss": 2.5, "step": 10, "epoch": 0.5},
        {"loss": 1.8, "step": 20, "epoch": 1.0},
        {"eval_loss": 1.9, "step": 20, "epoch": 1.0},
        {"loss": 1.2, "step": 30, "epoch": 1.5},
        {"train_runtime": 3.2, "step": 30},
    ]
    path = tmp_path / "training_loss.png"
    plot_loss_curve(history, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_loss_curve_eval_only(tmp_path):
    path = tmp_path / "loss.png"
    plot_loss_curve([{"eval_loss": 0.7, "step": 5}], path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_plot_loss_curve_without_losses_writes_nothing(tmp_path):
    path = tmp_path / "training_loss.png"
    plot_loss_curve([{"train_runtime": 1.0, "step": 3}, {"loss": 0.5}], path)  # the loss has no step
    assert not path.exists()
