"""Metrics computed locally (no `evaluate.load`, which needs the Hub): classification for now.

Every function takes plain numpy arrays / lists so it can be checked on hand-computed examples.
"""

import math

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, multilabel_confusion_matrix, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predict_labels(logits: np.ndarray, multi_label: bool, threshold: float = 0.5) -> np.ndarray:
    """Class ids (single-label) or a 0/1 matrix (multi-label: every class whose probability >= threshold)."""
    if multi_label:
        return (sigmoid(logits) >= threshold).astype(int)
    return logits.argmax(axis=-1)


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, multi_label: bool) -> dict:
    """accuracy and macro-F1; for multi-label also micro-F1 (accuracy is then the exact-match ratio).

    >>> classification_metrics(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), multi_label=False)
    {'accuracy': 0.75, 'macro_f1': 0.7333}
    """
    labels = np.asarray(labels)
    if multi_label:
        labels = labels.astype(int)
        return {
            "accuracy": round(float(accuracy_score(labels, predictions)), 4),
            "micro_f1": round(float(f1_score(labels, predictions, average="micro", zero_division=0)), 4),
            "macro_f1": round(float(f1_score(labels, predictions, average="macro", zero_division=0)), 4),
        }
    return {
        "accuracy": round(float(accuracy_score(labels, predictions)), 4),
        "macro_f1": round(float(f1_score(labels, predictions, average="macro", zero_division=0)), 4),
    }


def classification_report(
    predictions: np.ndarray, labels: np.ndarray, label_names: list[str], multi_label: bool
) -> dict:
    """Per-class precision / recall / F1 / support, plus the confusion matrix (rows: true, columns: predicted).

    For multi-label data the confusion is one 2x2 count per label (tp, fp, fn, tn).
    """
    ids = list(range(len(label_names)))
    labels = np.asarray(labels).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, average=None, zero_division=0
    )
    per_class = {
        name: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    report = {"labels": label_names, "per_class": per_class}
    if multi_label:
        counts = multilabel_confusion_matrix(labels, predictions, labels=ids)
        report["per_label_confusion"] = {
            name: {"tp": int(c[1, 1]), "fp": int(c[0, 1]), "fn": int(c[1, 0]), "tn": int(c[0, 0])}
            for name, c in zip(label_names, counts)
        }
    else:
        report["confusion_matrix"] = sklearn_confusion_matrix(labels, predictions, labels=ids).tolist()
    return report


# ---- causal language modelling (run_clm.py) ------------------------------------------------------------------


def perplexity(loss: float) -> float:
    """exp(mean cross-entropy per token); inf where that overflows (an untrained model can get there).

    >>> perplexity(0.0), round(perplexity(2.0), 4)
    (1.0, 7.3891)
    """
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def next_token_accuracy(predictions: np.ndarray, labels: np.ndarray, ignore_index: int = -100) -> float:
    """Share of positions whose predicted id (argmax at t) equals the next token (label at t+1).

    Labels are the unshifted input ids, as the model receives them; positions labelled `ignore_index` don't count.

    >>> next_token_accuracy(np.array([[5, 6, 9, 0]]), np.array([[4, 5, 6, 7]]))
    0.6667
    """
    predictions, labels = np.asarray(predictions)[:, :-1], np.asarray(labels)[:, 1:]
    counted = labels != ignore_index
    if not counted.any():
        return 0.0
    return round(float((predictions[counted] == labels[counted]).mean()), 4)
