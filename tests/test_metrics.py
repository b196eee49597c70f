import numpy as np
import pytest

from leukoscreen.training.metrics import classification_metrics, format_table, rates_from_confusion


def test_rates_match_hand_computed_confusion_matrix():
    # rows true, columns predicted; class 0: tp 5, fp 1+0, fn 2, tn 20-5-1-2 = 12
    cm = np.array([[5, 2, 0], [1, 6, 1], [0, 1, 4]])
    rates = rates_from_confusion(cm)
    assert rates["accuracy"] == pytest.approx(15 / 20)
    assert rates["precision"][0] == pytest.approx(5 / 6)
    assert rates["recall"][0] == pytest.approx(5 / 7)
    assert rates["specificity"][0] == pytest.approx(12 / 13)
    assert rates["f1"][1] == pytest.approx(2 * (6 / 9) * (6 / 8) / (6 / 9 + 6 / 8))
    assert rates["specificity"][2] == pytest.approx(14 / 15)


def test_binary_metrics_with_intervals():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.4, 0.6, 0.8, 0.9, 0.3, 0.7, 0.2])
    metrics = classification_metrics(y, np.c_[1 - p1, p1], ["benign", "malignant"], n_boot=200)
    assert metrics["confusion_matrix"] == [[3, 1], [1, 3]]
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["per_class"]["malignant"]["recall"] == pytest.approx(0.75)
    assert metrics["per_class"]["malignant"]["specificity"] == pytest.approx(0.75)
    assert metrics["roc_auc"] == pytest.approx(14 / 16)
    low, high = metrics["ci95"]["accuracy"]
    assert low <= 0.75 <= high and low < high
    assert "malignant:recall" in metrics["ci95"]
    assert "malignant" in format_table(metrics)


def test_group_bootstrap_counts_groups():
    y = np.array([0, 1] * 10)
    p = np.eye(2)[y]
    metrics = classification_metrics(y, p, ["a", "b"], groups=np.repeat(np.arange(5), 4), n_boot=50)
    assert metrics["n_groups"] == 5 and metrics["ci95"]["accuracy"] == [1.0, 1.0]
