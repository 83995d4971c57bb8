"""The tasks: which script trains each, its demo recipe in examples/, and the metrics the demo table shows.

One table for `make demo` (scripts/run_demo.py, in this order) and for the tests, which check that every script
has a task, every demo recipe exists and every examples/ file belongs to a script (tests/test_scripts.py); their
short runs (tests/helpers.tiny_run) name tasks by the same names.

>>> TASKS["clip"].script, TASKS["clip"].recipe_prefix
('run_clip.py', 'clip')
>>> script_of_recipe("examples/seq2seq_chat_lora.yaml")
'run_seq2seq_ptuning.py'
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Task:
    name: str  # the short name tests and `python scripts/run_demo.py NAME` use
    script: str  # the run_*.py that trains it
    demo_recipe: str  # its argument file on the demo data and models (`make demo`)
    metrics: tuple[str, ...]  # keys of all_results.json the demo table shows, in its order
    # flags of an evaluation of the untrained model first, so the table shows the score before and after training
    untrained_flags: tuple[str, ...] = ()
    title: str = ""  # the demo table's name for it, when not `name`

    @property
    def label(self) -> str:
        return self.title or self.name

    @property
    def recipe_prefix(self) -> str:
        """examples/<prefix>_*.json and .yaml belong to this task's script."""
        return Path(self.demo_recipe).stem.split("_")[0]


TASKS = {
    task.name: task
    for task in (
        Task(
            "classification",
            "run_classification.py",
            "examples/classification_demo.json",
            ("eval_accuracy", "eval_macro_f1"),
        ),
        Task(
            "classification-multilabel",
            "run_classification.py",
            "examples/classification_multilabel_demo.yaml",
            ("eval_micro_f1", "eval_macro_f1"),
        ),
        Task(
            "seq2seq",
            "run_seq2seq_ptuning.py",
            "examples/seq2seq_demo.json",
            ("eval_rouge-l", "eval_bleu-4"),
            ("--do_train", "false", "--do_predict", "false"),
            title="seq2seq (full fine-tuning)",
        ),
        Task(
            "clm",
            "run_clm.py",
            "examples/clm_demo.json",
            ("eval_perplexity_before", "eval_perplexity", "eval_token_accuracy"),
        ),
        Task(
            "clip",
            "run_clip.py",
            "examples/clip_demo.json",
            ("eval_i2t_R@5", "eval_t2i_R@5", "eval_mean_recall"),
        ),
        Task(
            "captioning",
            "run_image_captioning.py",
            "examples/captioning_demo.json",
            ("eval_bleu-4", "eval_rouge-l", "eval_cider-d", "predict_color_accuracy"),
            ("--do_train", "false"),
        ),
    )
}

SCRIPTS = sorted({task.script for task in TASKS.values()})


def script_of_recipe(recipe: str | Path) -> str:
    """The script an examples/ file is for, by its name's first word (clip_demo.json -> run_clip.py)."""
    prefix = Path(recipe).stem.split("_")[0]
    scripts = {task.recipe_prefix: task.script for task in TASKS.values()}
    if prefix not in scripts:
        raise ValueError(f"{Path(recipe).name}: name it <task>_*.json for one of {sorted(scripts)}")
    return scripts[prefix]
