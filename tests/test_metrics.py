"""Unit tests for metrics.py on hand-computed examples (expected values worked out in the comments)."""

import math

import numpy as np
import pytest

from metrics import classification_metrics, classification_report, predict_labels, sigmoid, softmax

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
