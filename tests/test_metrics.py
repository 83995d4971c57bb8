"""Unit tests for zhtrain/metrics.py on hand-computed examples (expected values worked out in the comments)."""

import math

import numpy as np
import pytest

from zhtrain.metrics import (
    caption_metrics,
    cider_d,
    classification_metrics,
    classification_report,
    embedding_retrieval_metrics,
    next_token_accuracy,
    perplexity,
    predict_labels,
    retrieval_metrics,
    rouge_bleu,
    sigmoid,
    softmax,
    strip_tokenizer_spaces,
)

# --------------------------------------------------------------------------------------------- single-label


def test_binary_metrics():
    # predictions [0,1,1,0] vs labels [0,1,0,0]: 3 of 4 right -> accuracy 0.75
    # class 0: TP=2 FP=0 FN=1 -> P=1, R=2/3, F1=0.8
    # class 1: TP=1 FP=1 FN=0 -> P=0.5, R=1, F1=2/3
    # macro F1 = (0.8 + 0.6667) / 2 = 0.73333
    result = classification_metrics(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), multi_label=False)
    assert result == {"accuracy": 0.75, "macro_f1": 0.7333}


# labels      [0, 0, 1, 1, 2, 2]
# predictions [0, 1, 1, 1, 2, 0]  -> right at 0, 2, 3, 4: accuracy 4/6 = 0.6667
# class 0: TP=1 (row 0) FP=1 (row 5) FN=1 (row 1) -> P=0.5  R=0.5 F1=0.5
# class 1: TP=2 (rows 2,3) FP=1 (row 1) FN=0       -> P=2/3  R=1   F1=0.8
# class 2: TP=1 (row 4) FP=0 FN=1 (row 5)          -> P=1    R=0.5 F1=2/3
# macro F1 = (0.5 + 0.8 + 0.6667) / 3 = 0.65556
THREE_LABELS = np.array([0, 0, 1, 1, 2, 2])
THREE_PREDICTIONS = np.array([0, 1, 1, 1, 2, 0])
THREE_NAMES = ["正面", "负面", "中性"]


def test_three_class_metrics():
    result = classification_metrics(THREE_PREDICTIONS, THREE_LABELS, multi_label=False)
    assert result == {"accuracy": 0.6667, "macro_f1": 0.6556}


def test_metrics_accept_lists():
    assert classification_metrics([1, 1, 0], [1, 0, 0], multi_label=False) == {
        # class 0: TP=1 FN=1 FP=0 -> F1 = 2/3; class 1: TP=1 FP=1 FN=0 -> F1 = 2/3
        "accuracy": 0.6667,
        "macro_f1": 0.6667,
    }


def test_perfect_predictions():
    assert classification_metrics(THREE_LABELS, THREE_LABELS, multi_label=False) == {"accuracy": 1.0, "macro_f1": 1.0}


# --------------------------------------------------------------------------------------------- multi-label

# labels                  predictions
# [1, 0, 1]               [1, 0, 1]   exact match
# [0, 1, 0]               [0, 1, 1]   extra label 2
# [1, 1, 0]               [1, 0, 0]   misses label 1
# [0, 0, 1]               [0, 0, 1]   exact match       -> exact-match accuracy 2/4 = 0.5
# label 0: TP=2 FP=0 FN=0 TN=2 -> P=1    R=1   F1=1
# label 1: TP=1 FP=0 FN=1 TN=2 -> P=1    R=0.5 F1=2/3
# label 2: TP=2 FP=1 FN=0 TN=1 -> P=2/3  R=1   F1=0.8
# micro: TP=5 FP=1 FN=1 -> P=R=F1=5/6 = 0.8333;  macro: (1 + 0.6667 + 0.8) / 3 = 0.82222
MULTI_LABELS = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
MULTI_PREDICTIONS = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1]])
MULTI_NAMES = ["价格", "物流", "服务"]


def test_multi_label_metrics():
    result = classification_metrics(MULTI_PREDICTIONS, MULTI_LABELS, multi_label=True)
    assert result == {"accuracy": 0.5, "micro_f1": 0.8333, "macro_f1": 0.8222}


def test_multi_label_metrics_with_float_labels_from_the_trainer():
    # the Trainer hands multi-label targets back as floats (BCE needs them)
    result = classification_metrics(MULTI_PREDICTIONS, MULTI_LABELS.astype(np.float32), multi_label=True)
    assert result == {"accuracy": 0.5, "micro_f1": 0.8333, "macro_f1": 0.8222}


# --------------------------------------------------------------------------------------------- predict_labels

LOGITS = np.array([[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]])
# sigmoid: row 0 -> 0.8808, 0.2689, 0.5;  row 1 -> 0.0474, 0.6225, 0.9820


def test_predict_labels_single_label_is_argmax():
    predicted = predict_labels(LOGITS, multi_label=False)
    assert predicted.tolist() == [0, 2]


def test_predict_labels_single_label_tie_takes_the_first():
    assert predict_labels(np.array([[1.5, 1.5, -2.0]]), multi_label=False).tolist() == [0]


def test_predict_labels_multi_label_default_threshold():
    predicted = predict_labels(LOGITS, multi_label=True)
    assert predicted.tolist() == [[1, 0, 1], [0, 1, 1]]  # logit 0 -> probability 0.5 -> predicted at 0.5
    assert predicted.dtype.kind == "i"


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(0.25, [[1, 1, 1], [0, 1, 1]]), (0.7, [[1, 0, 0], [0, 0, 1]]), (0.9, [[0, 0, 0], [0, 0, 1]])],
)
def test_predict_labels_multi_label_threshold(threshold, expected):
    assert predict_labels(LOGITS, multi_label=True, threshold=threshold).tolist() == expected


# --------------------------------------------------------------------------------------------- classification_report


def test_report_single_label():
    report = classification_report(THREE_PREDICTIONS, THREE_LABELS, THREE_NAMES, multi_label=False)
    assert report["labels"] == THREE_NAMES
    assert report["per_class"] == {
        "正面": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        "负面": {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2},
        "中性": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2},
    }
    # rows: true class, columns: predicted class
    assert report["confusion_matrix"] == [
        [1, 1, 0],  # true 正面: once right, once predicted 负面
        [0, 2, 0],  # true 负面: both right
        [1, 0, 1],  # true 中性: once predicted 正面, once right
    ]
    assert "per_label_confusion" not in report


def test_report_confusion_matrix_is_not_transposed():
    # one row, true class 0, predicted class 1: the count sits at [true][predicted] = [0][1]
    report = classification_report(np.array([1]), np.array([0]), ["正面", "负面"], multi_label=False)
    assert report["confusion_matrix"] == [[0, 1], [0, 0]]


def test_report_class_without_support_gets_zeros():
    names = [*THREE_NAMES, "其他"]  # class 3 never occurs and is never predicted
    report = classification_report(THREE_PREDICTIONS, THREE_LABELS, names, multi_label=False)
    assert report["per_class"]["其他"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["per_class"]["负面"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2}
    assert report["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_report_predicted_class_without_support():
    # class 2 is predicted once but never true: precision 0/1 = 0, recall undefined -> 0
    report = classification_report(np.array([0, 2]), np.array([0, 1]), THREE_NAMES, multi_label=False)
    assert report["per_class"]["中性"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["per_class"]["负面"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_report_multi_label():
    report = classification_report(MULTI_PREDICTIONS, MULTI_LABELS.astype(float), MULTI_NAMES, multi_label=True)
    assert report["labels"] == MULTI_NAMES
    assert report["per_class"] == {
        "价格": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2},
        "物流": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2},
        "服务": {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2},
    }
    assert report["per_label_confusion"] == {
        "价格": {"tp": 2, "fp": 0, "fn": 0, "tn": 2},
        "物流": {"tp": 1, "fp": 0, "fn": 1, "tn": 2},
        "服务": {"tp": 2, "fp": 1, "fn": 0, "tn": 1},
    }
    assert "confusion_matrix" not in report


def test_report_multi_label_without_support():
    labels = np.array([[1, 0], [1, 0]])
    predictions = np.array([[1, 0], [0, 0]])
    report = classification_report(predictions, labels, ["质量", "包装"], multi_label=True)
    assert report["per_class"]["包装"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["per_label_confusion"] == {
        "质量": {"tp": 1, "fp": 0, "fn": 1, "tn": 0},
        "包装": {"tp": 0, "fp": 0, "fn": 0, "tn": 2},
    }


# --------------------------------------------------------------------------------------------- softmax / sigmoid


def test_softmax_known_values():
    # softmax([0, ln 3]) = [1, 3] / 4
    np.testing.assert_allclose(softmax(np.array([[0.0, math.log(3)]])), [[0.25, 0.75]])


def test_softmax_rows_sum_to_one():
    probabilities = softmax(np.array([[1.0, 2.0, 3.0], [-5.0, 0.0, 5.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(probabilities.sum(axis=-1), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(probabilities[2], [1 / 3, 1 / 3, 1 / 3])


def test_softmax_is_stable_for_large_logits():
    with np.errstate(over="raise", invalid="raise"):  # overflow or inf/inf (NaN) would raise
        probabilities = softmax(np.array([[1000.0, 1000.0], [1000.0, 0.0], [-1000.0, -1001.0]]))
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities[0], [0.5, 0.5])
    assert probabilities[1].tolist() == [1.0, 0.0]
    np.testing.assert_allclose(probabilities[2], [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])


def test_softmax_of_a_single_row():
    np.testing.assert_allclose(softmax(np.array([0.0, math.log(3)])), [0.25, 0.75])


def test_sigmoid_known_values():
    # sigmoid(0) = 0.5, sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4
    np.testing.assert_allclose(sigmoid(np.array([0.0, math.log(3), -math.log(3)])), [0.5, 0.75, 0.25])


def test_sigmoid_large_values():
    with np.errstate(over="ignore"):  # exp(1000) overflows to inf, which still gives the right limit
        result = sigmoid(np.array([1000.0, -1000.0]))
    assert result.tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------------------------- causal LM: perplexity, next-token accuracy, tokenizer spaces


def test_clm_metrics_on_known_values():
    assert perplexity(0.0) == 1.0
    assert perplexity(np.log(20.0)) == pytest.approx(20.0)
    assert perplexity(1e6) == float("inf")
    # predictions at t are compared with labels at t+1; -100 labels are not counted
    predictions = np.array([[2, 3, 9, 0], [7, 7, 7, 7]])
    labels = np.array([[1, 2, 3, 4], [5, 7, -100, -100]])
    assert next_token_accuracy(predictions, labels) == 0.75


def test_sample_text_loses_tokenizer_spaces():
    assert strip_tokenizer_spaces("今 天 天 气 很 好 。") == "今天天气很好。"
    assert strip_tokenizer_spaces("用 GPT 2 写 hello world") == "用GPT 2写hello world"


# --------------------------------------------------------------------------------------------- ChatGLM ROUGE / BLEU-4 (seq2seq)


def test_rouge_bleu_hand_computed():
    # words a b c d vs a b c e: ROUGE-1 F = 3/4, ROUGE-2 = 2/3 (ab, bc of 3 bigrams), ROUGE-L = LCS 3/4.
    # BLEU-4 on the 7 characters (spaces included, as ChatGLM): p1..p4 = 6/7, 5/6, 4/5, 3/4, no brevity
    # penalty -> (3/7) ** (1/4) = 0.80911
    scores = rouge_bleu(["a b c d"], ["a b c e"])
    assert scores == {"rouge-1": 75.0, "rouge-2": 66.6667, "rouge-l": 75.0, "bleu-4": pytest.approx(80.9107, abs=1e-3)}
    assert math.isclose((3 / 7) ** 0.25 * 100, 80.9107, abs_tol=1e-3)


def test_rouge_bleu_identical_empty_and_mean():
    same = rouge_bleu(["这款连衣裙很好看。"], ["这款连衣裙很好看。"])
    assert same == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}
    assert rouge_bleu([""], ["参考答案"]) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    assert rouge_bleu(["答案"], ["   "])["rouge-l"] == 0.0
    # the mean over samples: one perfect, one empty
    assert rouge_bleu(["这款连衣裙很好看。", ""], ["这款连衣裙很好看。", "有"])["rouge-1"] == 50.0


# --------------------------------------------------------------------------------------------- captions: BLEU-4, ROUGE-L, CIDEr-D


def test_bleu4_is_corpus_level_on_characters():
    # 红色圆形 vs itself: 4/4 unigrams, 3/3 bigrams, 2/2 trigrams, 1/1 4-grams match
    # 红色方形 vs 红色圆形: 3/4 (红 色 形), 1/3 (红色), 0/2, 0/1
    # corpus: p1 = 7/8, p2 = 4/6, p3 = 2/4, p4 = 1/2; same lengths -> no brevity penalty
    expected = 100 * (7 / 8 * 4 / 6 * 2 / 4 * 1 / 2) ** 0.25
    result = caption_metrics(["红色圆形", "红 色 方 形"], [["红色圆形"], ["红色圆形"]])
    assert result["bleu-4"] == pytest.approx(expected, abs=1e-3)
    # the best-matching reference clips the counts: 红色方形 is exact against its second reference
    assert caption_metrics(["红色方形"], [["红色圆形", "红色方形"]])["bleu-4"] == 100.0
    # alone, 红色方形 has no matching trigram: unsmoothed corpus BLEU is 0
    assert caption_metrics(["红色方形"], [["红色圆形"]])["bleu-4"] == 0.0


def test_rouge_l_takes_the_best_reference():
    # 红色圆 vs 红色的圆形: LCS 红色圆 = 3, P = 3/3, R = 3/5 -> F1 = 0.75
    assert caption_metrics(["红色圆"], [["红色的圆形"]])["rouge-l"] == 75.0
    # a second, worse reference does not lower it; a better one raises it
    assert caption_metrics(["红色圆"], [["蓝方", "红色的圆形"]])["rouge-l"] == 75.0
    assert caption_metrics(["红色圆"], [["红色的圆形", "红色圆"]])["rouge-l"] == 100.0


def test_cider_d_by_hand():
    # two images, N = 2: every n-gram here occurs in the references of one image -> weight tf * (ln 2 - ln 1)
    # image A: 红圆 vs 红圆: cosine 1 for n = 1, 2; no 3/4-grams -> (1 + 1 + 0 + 0) / 4 * 10 = 5
    # image B: 蓝圆 vs 蓝方: unigrams share 蓝 -> ln2^2 / (sqrt(2) ln2)^2 = 0.5; bigrams 0 -> 0.5 / 4 * 10 = 1.25
    assert cider_d(["红圆", "蓝圆"], [["红圆"], ["蓝方"]]) == pytest.approx([5.0, 1.25])
    assert caption_metrics(["红圆", "蓝圆"], [["红圆"], ["蓝方"]])["cider-d"] == pytest.approx(312.5)


def test_cider_d_idf_clipping_length_penalty_and_several_references():
    # 色 is in the references of both images: idf ln(2/2) = 0, it counts for nothing
    # A: 红色 vs 红色: unigram vectors {红: ln2, 色: 0} -> cosine 1; bigram 1 -> 5
    assert cider_d(["红色", "蓝色"], [["红色"], ["蓝色"]]) == pytest.approx([5.0, 5.0])
    # clipping: repeating 红 does not score more than once; the length difference 2 costs exp(-4 / 72)
    # hypothesis 红红红 {红: 3 ln2}, reference 红圆 {红: ln2, 圆: ln2}: min(3ln2, ln2) * ln2 / (3ln2 * sqrt2 ln2)
    unigram = 1 / (3 * math.sqrt(2))
    penalty = math.exp(-((3 - 2) ** 2) / 72)
    assert cider_d(["红红红", "蓝"], [["红圆"], ["蓝"]])[0] == pytest.approx(10 * unigram * penalty / 4)
    # several references: the mean of the per-reference scores
    two = cider_d(["红圆", "蓝方"], [["红圆", "绿方"], ["蓝方"]])
    # A vs 红圆: df(红)=df(圆)=df(红圆)=1 -> 0.5; A vs 绿方: nothing shared -> 0; mean 0.25 x 10
    assert two[0] == pytest.approx(2.5)


def test_empty_predictions_and_references():
    assert caption_metrics(["", ""], [["红圆"], ["蓝方"]]) == {"bleu-4": 0.0, "rouge-l": 0.0, "cider-d": 0.0}
    # an empty reference is ignored; an image with no reference left is not scored at all
    assert caption_metrics(["红色圆形", "x"], [["红色圆形", " "], [""]])["rouge-l"] == 100.0
    assert caption_metrics(["红"], [[]]) == {"bleu-4": 0.0, "rouge-l": 0.0, "cider-d": 0.0}
    # one image, one reference: idf is ln(1/1) = 0 for every n-gram, so CIDEr-D says nothing (0)
    assert caption_metrics(["红圆"], [["红圆"]]) == {"bleu-4": 0.0, "rouge-l": 100.0, "cider-d": 0.0}


# --------------------------------------------------------------------------------------------- retrieval: Recall@k


def test_recall_on_a_hand_built_matrix():
    # 4 texts, 3 images; text t describes image image_of_text[t]
    similarity = np.array(
        [
            [0.9, 0.2, 0.1],  # image 0: ranked 1st
            [0.3, 0.8, 0.5],  # image 1: ranked 1st
            [0.7, 0.1, 0.6],  # image 2: ranked 2nd (image 0 scores higher)
            [0.2, 0.4, 0.3],  # image 2: ranked 2nd
        ]
    )
    metrics = retrieval_metrics(similarity, np.array([0, 1, 2, 2]), ks=(1, 2))
    assert metrics["t2i_R@1"] == 0.5 and metrics["t2i_R@2"] == 1.0
    # image 0: best caption t0 (0.9) beats all others -> hit@1; image 1: t1 (0.8) -> hit@1;
    # image 2: best caption t2 (0.6) but t1 scores 0.5, t0 0.1, t3 is also its own -> hit@1
    assert metrics["i2t_R@1"] == 1.0
    assert metrics["mean_recall"] == pytest.approx((0.5 + 1.0 + 1.0 + 1.0) / 4, abs=1e-4)


def test_image_to_text_counts_a_hit_on_any_caption():
    # image 0 has captions t0, t1; only t1 is near it; image 1 has caption t2
    similarity = np.array([[0.1, 0.2], [0.9, 0.3], [0.5, 0.8]])
    image_of_text = np.array([0, 0, 1])
    metrics = retrieval_metrics(similarity, image_of_text, ks=(1,))
    assert metrics["i2t_R@1"] == 1.0  # image 0's best caption t1 (0.9) beats t2 (0.5)
    assert metrics["t2i_R@1"] == pytest.approx(2 / 3, abs=1e-4)  # t0 prefers image 1
    # counting per caption instead would give image 0 only half a hit: the difference matters
    similarity[1, 0] = 0.4
    assert retrieval_metrics(similarity, image_of_text, ks=(1,))["i2t_R@1"] == 0.5


def test_ties_count_against_the_hit():
    flat = np.zeros((6, 3))
    metrics = retrieval_metrics(flat, np.array([0, 0, 1, 1, 2, 2]), ks=(1, 3))
    assert metrics["t2i_R@1"] == 0.0 and metrics["i2t_R@1"] == 0.0
    assert metrics["t2i_R@3"] == 1.0  # every image is within the top 3 of 3


def test_chunked_embeddings_give_the_same_recall():
    rng = np.random.default_rng(0)
    texts, images = rng.normal(size=(37, 8)), rng.normal(size=(11, 8))
    image_of_text = rng.integers(0, 11, size=37)
    full = retrieval_metrics(texts @ images.T, image_of_text)
    assert embedding_retrieval_metrics(texts, images, image_of_text, chunk_size=5) == full
    assert set(full) == {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mean_recall"}
