"""Metrics computed locally (no `evaluate.load`, which needs the Hub): classification, Chinese ROUGE / BLEU.

Every function takes plain numpy arrays / lists so it can be checked on hand-computed examples.
"""

import logging
import math
import re
from collections import Counter

import numpy as np


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
    # sklearn here, not at the top: it takes a second to import, and serve.py needs only this module's text helpers
    from sklearn.metrics import accuracy_score, f1_score

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
    from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix, precision_recall_fscore_support

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
        report["confusion_matrix"] = confusion_matrix(labels, predictions, labels=ids).tolist()
    return report


# ---- generation: Chinese ROUGE / BLEU as ChatGLM's ptuning/main.py computes them ----------------------------------

# Space between two characters of which one is CJK (ideograph or full-width punctuation): BERT-style tokenizers put
# one between every Chinese character when decoding; spaces between Latin words are kept.
_CJK = r"\u2e80-\u2fff\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_TOKENIZER_SPACE = re.compile(rf"(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")


def strip_tokenizer_spaces(text: str) -> str:
    """Remove the spaces a tokenizer's decode put next to CJK characters; spaces between Latin words stay.

    >>> strip_tokenizer_spaces("这 款 连 衣 裙 很 好 看 。 new york 风")
    '这款连衣裙很好看。new york风'
    """
    return _TOKENIZER_SPACE.sub("", text).strip()


def rouge_bleu(predictions: list[str], references: list[str]) -> dict:
    """ROUGE-1/2/L F-scores on jieba words and BLEU-4 on characters (nltk, smoothing method 3), x100, averaged.

    This is the definition of ChatGLM's ptuning/main.py, so numbers compare with the ones published for it.
    An empty prediction or reference scores 0 (rouge_chinese would raise "Hypothesis is empty").
    """
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    rouge, smoothing = Rouge(), SmoothingFunction().method3
    scores = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for prediction, reference in zip(predictions, references, strict=True):
        prediction, reference = prediction.strip(), reference.strip()
        hypothesis_words = " ".join(w for w in jieba.cut(prediction) if w.strip())
        reference_words = " ".join(w for w in jieba.cut(reference) if w.strip())
        if not hypothesis_words or not reference_words:
            for values in scores.values():
                values.append(0.0)
            continue
        result = rouge.get_scores(hypothesis_words, reference_words)[0]
        for key in ("rouge-1", "rouge-2", "rouge-l"):
            scores[key].append(round(result[key]["f"] * 100, 4))  # ChatGLM rounds per sample, then averages
        bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=smoothing)
        scores["bleu-4"].append(round(bleu * 100, 4))
    return {key: round(float(np.mean(values)), 4) if values else 0.0 for key, values in scores.items()}


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


# ---- retrieval (run_clip.py) ----------------------------------------------------------------------------------------


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


# ---- image captioning (run_image_captioning.py) -------------------------------------------------------------------


def caption_characters(text: str) -> list[str]:
    """A caption as the sequence its metrics count: characters, whitespace dropped (the tokenizer's or not).

    >>> caption_characters("红 色 的 圆")
    ['红', '色', '的', '圆']
    """
    return [c for c in text if not c.isspace()]


def _ngram_counts(characters: list[str], max_n: int = 4) -> dict:
    return Counter(tuple(characters[i : i + n]) for n in range(1, max_n + 1) for i in range(len(characters) - n + 1))


def cider_d(predictions: list[str], references_lists: list[list[str]], sigma: float = 6.0) -> list[float]:
    """CIDEr-D per example, as coco-caption's CiderD computes it but on character n-grams (n = 1..4).

    Each n-gram is weighted tf * log(N / df), where N is the number of examples and df the number of examples whose
    references contain it (the idf comes from the references of this set). Per n, the score is the cosine between
    the prediction's and a reference's vectors with the prediction's weights clipped at the reference's, times a
    Gaussian length penalty exp(-(len_pred - len_ref)^2 / (2 sigma^2)) (lengths in characters); the mean over n and
    over references, times 10, is the example's score. Examples need at least one reference.
    """
    references = [[_ngram_counts(caption_characters(r)) for r in refs] for refs in references_lists]
    document_frequency = Counter()
    for counts in references:
        document_frequency.update(set().union(*counts))
    log_n = math.log(len(references)) if references else 0.0

    def vectors(counts: dict) -> tuple[list[dict], list[float]]:
        vec, norms = [{} for _ in range(4)], [0.0] * 4
        for gram, tf in counts.items():
            weight = tf * (log_n - math.log(max(1.0, document_frequency[gram])))
            vec[len(gram) - 1][gram] = weight
            norms[len(gram) - 1] += weight * weight
        return vec, [math.sqrt(x) for x in norms]

    scores = []
    for prediction, refs, ref_counts in zip(predictions, references_lists, references, strict=True):
        characters = caption_characters(prediction)
        hyp, hyp_norm = vectors(_ngram_counts(characters))
        total = 0.0
        for ref, counts in zip(refs, ref_counts):
            ref_vec, ref_norm = vectors(counts)
            delta = len(characters) - len(caption_characters(ref))
            penalty = math.exp(-(delta**2) / (2 * sigma**2))
            for n in range(4):
                dot = sum(min(w, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, w in hyp[n].items())
                if hyp_norm[n] and ref_norm[n]:
                    dot /= hyp_norm[n] * ref_norm[n]
                total += dot * penalty / 4
        scores.append(10.0 * total / len(refs))
    return scores


def caption_metrics(predictions: list[str], references_lists: list[list[str]]) -> dict:
    """BLEU-4, ROUGE-L and CIDEr-D of generated captions against all references of each image, x100.

    All three count characters (whitespace dropped):
    - bleu-4: corpus-level BLEU-4 (nltk corpus_bleu, no smoothing, brevity penalty from the closest reference
      length), as coco-caption reports it; 0 when no 4-gram of the whole set matches.
    - rouge-l: rouge_chinese's ROUGE-L F1 on characters, the best over an image's references, averaged over images.
    - cider-d: `cider_d` averaged over images (coco-caption's value, which already includes x10, times 100: the
      number papers report, e.g. 120.5).
    An empty prediction scores 0. Empty references are ignored; examples left without any are not scored.

    >>> caption_metrics(["红色圆形"], [["红色圆形", "一个红色的圆"]])["rouge-l"]
    100.0
    """
    import warnings

    from nltk.translate.bleu_score import corpus_bleu
    from rouge_chinese import Rouge

    pairs = []
    for prediction, refs in zip(predictions, references_lists, strict=True):
        refs = [r for r in refs if caption_characters(r)]
        if refs:
            pairs.append((prediction, refs))
    if not pairs:
        return {"bleu-4": 0.0, "rouge-l": 0.0, "cider-d": 0.0}
    predictions, references_lists = [p for p, _ in pairs], [r for _, r in pairs]
    with warnings.catch_warnings():  # nltk warns when some n-gram order has no match at all; the score says it
        warnings.simplefilter("ignore")
        bleu = corpus_bleu(
            [[caption_characters(r) for r in refs] for refs in references_lists],
            [caption_characters(p) for p in predictions],
        )
    rouge, rouge_l = Rouge(), []
    for prediction, refs in pairs:
        hypothesis = " ".join(caption_characters(prediction))
        if not hypothesis:
            rouge_l.append(0.0)
            continue
        rouge_l.append(
            max(rouge.get_scores(hypothesis, " ".join(caption_characters(r)))[0]["rouge-l"]["f"] for r in refs)
        )
    return {
        "bleu-4": round(100 * float(bleu), 4),
        "rouge-l": round(100 * float(np.mean(rouge_l)), 4),
        "cider-d": round(100 * float(np.mean(cider_d(predictions, references_lists))), 4),
    }
