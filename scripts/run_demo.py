"""Run every task's demo config and print one table of results (what `make demo` shows).

    python scripts/make_demo_data.py --output_dir demo   # data and tiny models first
    python scripts/run_demo.py                          # all tasks
    python scripts/run_demo.py classification           # only tasks whose name contains the word
    python scripts/run_demo.py seq2seq -- --bf16 true   # arguments after -- go to every script (on a GPU)

Each task runs exactly as a user would run it (`python run_x.py examples/x.json`); its log goes
to outputs/<task>.log and its metrics are read back from output_dir/all_results.json.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from demo_images import SHAPE_COLORS, SHAPES
from tasks import TASKS

ROOT = Path(__file__).resolve().parent.parent


def output_dir_of(config: Path) -> Path:
    """The output_dir an argument file writes to."""
    if config.suffix == ".json":
        values = json.loads(config.read_text(encoding="utf-8"))
    else:
        import yaml

        values = yaml.safe_load(config.read_text(encoding="utf-8"))
    return ROOT / values["output_dir"]


def run_task(
    task: str, script: str, config: str, extra: list[str] = (), passed: list[str] = ()
) -> tuple[dict, float, Path]:
    """Run one demo; return its metrics, wall time and output_dir. Exit with the log's tail if it fails."""
    output_dir = output_dir_of(ROOT / config)
    untrained = bool(extra)
    if untrained:  # the untrained evaluation writes next to the real run
        output_dir = output_dir.with_name(output_dir.name + "_untrained")
        extra = [*extra, "--output_dir", str(output_dir.relative_to(ROOT))]
    extra = [*passed, *extra]
    name = task.split(" ")[0] + ("_untrained" if untrained else "")
    log = ROOT / "outputs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, script, config, *extra]
    print(f"==> {task}: python {' '.join(command[1:])}   (log: {log.relative_to(ROOT)})", flush=True)
    start = time.time()
    # the demo models are tiny: a second thread per matrix costs more in synchronisation than it gains
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.call(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    seconds = time.time() - start
    if code != 0:
        tail = log.read_text(encoding="utf-8").splitlines()[-30:]
        sys.exit(f"{task} failed (exit {code}); last lines of {log}:\n" + "\n".join(tail))
    metrics = json.loads((output_dir / "all_results.json").read_text(encoding="utf-8"))
    if (output_dir / "generated_predictions.jsonl").is_file() and script == "run_image_captioning.py":
        metrics["predict_color_accuracy"] = caption_color_accuracy(output_dir / "generated_predictions.jsonl")
    return metrics, seconds, output_dir


def caption_colors(caption: str) -> tuple[str | None, str | None]:
    """(shape colour, background colour) named in a demo caption; None where it names none.

    >>> caption_colors("蓝色背景上的一个红色圆形"), caption_colors("一个黑色的十字，背景是白色")
    (('红色', '蓝色'), ('黑色', '白色'))
    """
    colors, shapes = "|".join(SHAPE_COLORS), "|".join(SHAPES)
    shape = re.search(f"({colors})的?(?:{shapes})", caption)
    background = re.search(f"({colors})(?:背景|的底色)|背景是({colors})", caption)
    return (shape and shape.group(1), background and (background.group(1) or background.group(2)))


def caption_color_accuracy(predictions_file: Path) -> float:
    """Share of generated captions (generated_predictions.jsonl) naming both colours of their image right."""
    lines = [json.loads(line) for line in Path(predictions_file).read_text(encoding="utf-8").splitlines()]
    right = sum(caption_colors(line["predict"]) == caption_colors(line["references"][0]) for line in lines)
    return round(right / max(len(lines), 1), 4)


def main(argv=None) -> None:
    words = sys.argv[1:] if argv is None else list(argv)
    passed = words[words.index("--") + 1 :] if "--" in words else []
    words = words[: words.index("--")] if "--" in words else words
    rows = []
    for task in TASKS.values():
        if words and not any(w in task.label for w in words):
            continue
        if task.untrained_flags:
            flags = list(task.untrained_flags)
            metrics, seconds, output_dir = run_task(task.label, task.script, task.demo_recipe, flags, passed)
            for name in task.metrics:
                rows.append(
                    (
                        task.label,
                        f"{name} (untrained)",
                        f"{metrics[name]:.4f}",
                        f"{seconds:.0f}",
                        str(output_dir.relative_to(ROOT)),
                    )
                )
        metrics, seconds, output_dir = run_task(task.label, task.script, task.demo_recipe, passed=passed)
        for name in task.metrics:
            rows.append(
                (task.label, name, f"{metrics[name]:.4f}", f"{seconds:.0f}", str(output_dir.relative_to(ROOT)))
            )
    header = ("task", "metric", "value", "seconds", "output dir")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))
    print(
        "\nEach output dir holds the model (reload it with from_pretrained or pipeline), all_results.json, "
        "training_loss.png, and the task's predictions / reports."
    )


if __name__ == "__main__":
    main()
