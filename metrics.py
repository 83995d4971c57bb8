"""Metrics computed locally (no `evaluate.load`, which needs the Hub): classification for now.

Every function takes plain numpy arrays / lists so it can be checked on hand-computed examples.
"""

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


def retrieval_metrics(similarity: np.ndarray, image_of_text: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Image→text and text→image Recall@k, and their mean, from a [texts, images] similarity matrix.

    `image_of_text[t]` is the column of text t's image. Text→image: a hit when the text's image is among the k
    most similar images. Image→text: a hit when *any* caption of the image is among its k most similar texts.
    Ties count against the hit, so a model that scores everything alike gets chance level, not 1.0.

    >>> retrieval_metrics(np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]]), np.array([0, 0, 1]), ks=(1,))
    {'i2t_R@1': 1.0, 't2i_R@1': 0.6667, 'mean_recall': 0.8333}
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    return _retrieval(lambda start, stop: similarity[start:stop], similarity.shape, image_of_text, ks, chunk_size=None)


def embedding_retrieval_metrics(
    text_embeds: np.ndarray,
    image_embeds: np.ndarray,
    image_of_text: np.ndarray,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk_size: int = 4096,
) -> dict:
    """`retrieval_metrics` on the dot products of (normalised) embeddings, computed `chunk_size` texts at a time so
    that 100k captions x 20k images never need the whole similarity matrix in memory."""
    text_embeds, image_embeds = np.asarray(text_embeds, np.float32), np.asarray(image_embeds, np.float32)
    shape = (len(text_embeds), len(image_embeds))
    return _retrieval(lambda a, b: text_embeds[a:b] @ image_embeds.T, shape, image_of_text, ks, chunk_size)


def _retrieval(block, shape, image_of_text, ks, chunk_size) -> dict:
    """Ranks from similarity rows block(start, stop), in two passes: first the score of each image's best caption."""
    n_texts, n_images = shape
    image_of_text = np.asarray(image_of_text, dtype=np.int64)
    chunk_size = chunk_size or max(n_texts, 1)
    t2i_rank = np.empty(n_texts, dtype=np.int64)
    best_caption = np.full(n_images, -np.inf)
    for start in range(0, n_texts, chunk_size):
        scores = block(start, start + chunk_size)
        rows = np.arange(len(scores))
        true = scores[rows, image_of_text[start : start + len(scores)]]
        t2i_rank[start : start + len(scores)] = (scores >= true[:, None]).sum(axis=1) - 1
        np.maximum.at(best_caption, image_of_text[start : start + len(scores)], true)
    # image→text rank: captions of other images scoring at least as high as the image's best caption
    i2t_rank = np.zeros(n_images, dtype=np.int64)
    for start in range(0, n_texts, chunk_size):
        scores = block(start, start + chunk_size)
        beats = scores >= best_caption[None, :]
        beats[np.arange(len(scores)), image_of_text[start : start + len(scores)]] = False
        i2t_rank += beats.sum(axis=0)
    has_caption = np.isfinite(best_caption)
    recalls = {f"i2t_R@{k}": float((i2t_rank[has_caption] < k).mean()) for k in ks}
    recalls.update({f"t2i_R@{k}": float((t2i_rank < k).mean()) for k in ks})
    recalls["mean_recall"] = float(np.mean(list(recalls.values())))
    return {name: round(value, 4) for name, value in recalls.items()}
