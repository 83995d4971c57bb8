"""What the run_*.py scripts and serve.py share: one module per concept, the groups in sub-packages.

    errors, parsing, launch     user mistakes and exit codes; argument files; process set-up (DDP, DeepSpeed)
    training, checkpoints       the Trainer's set-up and train / evaluate / predict tail; resumable checkpoints
    metrics, padding_free       scores of every task; flattened batches with attention per example
    data/                       data files, images, collators, packing documents into blocks
    chat/                       chat data layouts, and conversations rendered with the model's chat template
    serve/                      the model behind serve.py, its batching engines, tasks and HTTP routes

Nothing here imports a run_*.py script; the scripts import from here.
"""
