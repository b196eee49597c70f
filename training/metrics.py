"""Classification metrics with 95% bootstrap intervals, computed with scikit-learn, and the screening
outcomes of a bundle's decision rule on labelled images.

Intervals resample whole groups (patients or smear blocks) when groups are given, because images of
one group are not independent.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from leukoscreen.edge.decision import RULE_CODES, DecisionRule
from leukoscreen.edge.manifest import AnswerCounts, Calibration, ScreeningOutcomes


def rates_from_confusion(cm: np.ndarray) -> dict:
    """Accuracy and per-class precision, recall (sensitivity), specificity and F1 from a confusion matrix
    (rows: true class, columns: predicted class). Undefined ratios (0/0) count as 0."""
    cm = np.asarray(cm, dtype=float)
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    precision, recall, specificity = ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(tn, tn + fp)
    f1 = ratio(2 * precision * recall, precision + recall)
    return {"accuracy": tp.sum() / total if total else 0.0, "precision": precision, "recall": recall,
            "specificity": specificity, "f1": f1}


def _point_metrics(y_true, probabilities, n_classes) -> dict:
    cm = confusion_matrix(y_true, probabilities.argmax(axis=1), labels=range(n_classes))
    rates = rates_from_confusion(cm)
    values = {"accuracy": rates["accuracy"]}
    for name in ("precision", "recall", "specificity", "f1"):
        values[f"macro_{name}"] = float(rates[name].mean())
        for k in range(n_classes):
            values[f"{name}/{k}"] = float(rates[name][k])
    present = np.unique(y_true)
    if len(present) == n_classes:
        if n_classes == 2:
            values["roc_auc"] = float(roc_auc_score(y_true, probabilities[:, 1]))
        else:
            values["roc_auc"] = float(roc_auc_score(y_true, probabilities, multi_class="ovr",
                                                    labels=range(n_classes)))
    return values, cm


def classification_metrics(y_true, probabilities, class_names: list[str], groups=None,
                           n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of predicted class probabilities (N x K) against true labels, with 95% intervals.

    Returns a JSON-ready dict: accuracy, macro_precision, macro_recall, macro_specificity, macro_f1,
    roc_auc (when every class is present), per_class {name: {precision, recall, specificity, f1,
    support}}, confusion_matrix, n, and `ci95` {metric: [low, high]}.
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=float)
    n_classes = len(class_names)
    point, cm = _point_metrics(y_true, probabilities, n_classes)
    groups = np.arange(len(y_true)) if groups is None else np.asarray(groups)
    unique_groups, group_index = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(group_index == g) for g in range(len(unique_groups))]
    rng = np.random.default_rng(seed)
    samples = {key: [] for key in point}
    for _ in range(n_boot):
        chosen = rng.integers(0, len(members), len(members))
        index = np.concatenate([members[g] for g in chosen])
        values, _ = _point_metrics(y_true[index], probabilities[index], n_classes)
        for key in samples:
            if key in values:
                samples[key].append(values[key])
    ci = {key: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
          for key, v in samples.items() if v}
    result = {key: point[key] for key in point if "/" not in key}
    result["per_class"] = {
        name: {m: point[f"{m}/{k}"] for m in ("precision", "recall", "specificity", "f1")}
        | {"support": int(cm[k].sum())}
        for k, name in enumerate(class_names)}
    result["confusion_matrix"] = cm.tolist()
    result["class_names"] = list(class_names)
    result["n"] = int(len(y_true))
    result["n_groups"] = int(len(unique_groups))
    result["ci95"] = {key.replace("/", ":"): value for key, value in ci.items()}
    for k, name in enumerate(class_names):  # readable interval keys per class
        for m in ("precision", "recall", "specificity", "f1"):
            interval = result["ci95"].pop(f"{m}:{k}", None)
            if interval:
                result["ci95"][f"{name}:{m}"] = interval
    return result


def format_table(metrics: dict, title: str = "") -> str:
    """A plain-text table of the metrics with intervals, for the terminal."""
    ci = metrics["ci95"]

    def cell(key, value):
        low, high = ci.get(key, (float("nan"), float("nan")))
        return f"{value:6.3f} [{low:.3f}-{high:.3f}]"

    lines = [title] if title else []
    lines.append(f"n = {metrics['n']} images in {metrics['n_groups']} groups; 95% group-bootstrap intervals")
    lines.append(f"{'class':<12}{'precision':>22}{'recall (sens.)':>22}{'specificity':>22}{'F1':>22}")
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<12}" + "".join(f"{cell(f'{name}:{m}', row[m]):>22}"
                                             for m in ("precision", "recall", "specificity", "f1")))
    lines.append(f"{'macro':<12}" + "".join(f"{cell(f'macro_{m}', metrics[f'macro_{m}']):>22}"
                                           for m in ("precision", "recall", "specificity", "f1")))
    lines.append(f"accuracy {cell('accuracy', metrics['accuracy'])}")
    if "roc_auc" in metrics:
        lines.append(f"ROC-AUC  {cell('roc_auc', metrics['roc_auc'])}")
    names = metrics["class_names"]
    lines.append("confusion matrix (rows true, columns predicted): " + " ".join(names))
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"  {name:<12}" + " ".join(f"{v:6d}" for v in row))
    return "\n".join(lines)


def field_maxima(scores: np.ndarray, blast: np.ndarray, fields: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per field: the highest of its cells' blast scores, and whether it is a blast field (its cells carry
    the field's label)."""
    keys, index = np.unique(np.asarray(fields), return_inverse=True)
    maxima = np.full(len(keys), -np.inf)
    np.maximum.at(maxima, index, scores)
    field_blast = np.zeros(len(keys), dtype=bool)
    field_blast[index] = blast
    return maxima, field_blast


def screening_outcomes(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str],
                       calibration: Calibration, rule: DecisionRule,
                       fields: list[str] | None = None) -> ScreeningOutcomes:
    """A bundle's three answers on labelled images (its model's raw probabilities, calibration and decision
    rule; not the quality gate): counts per answer for blast and non-blast images; sensitivity = blast images
    not answered "no blasts" (referred or retaken), specificity = non-blast images answered "no blasts".
    fields (cell models): the answers are per field, from its most blast-like cell, as the device gives them."""
    scores = rule.score(calibration.apply(probabilities), class_names)
    blast = ~np.isin(labels, [class_names.index(name) for name in rule.negative_classes])
    if fields is not None:
        scores, blast = field_maxima(scores, blast, fields)
    answers = np.array([rule.decide(score).code for score in scores])
    counts = {kind: AnswerCounts(n=int(rows.sum()), **{code: int((answers[rows] == code).sum()) for code in RULE_CODES})
              for kind, rows in (("blast", blast), ("non_blast", ~blast))}
    return ScreeningOutcomes(**counts, sensitivity=1.0 - counts["blast"].no_blasts / max(counts["blast"].n, 1),
                             specificity=counts["non_blast"].no_blasts / max(counts["non_blast"].n, 1),
                             indeterminate_share=float(np.mean(answers == "indeterminate")))


def describe_outcomes(outcomes: ScreeningOutcomes) -> str:
    blast, other = outcomes.blast, outcomes.non_blast
    return (f"sensitivity {outcomes.sensitivity:.3f} (blast images: {blast.possible_blasts} possible blasts, "
            f"{blast.indeterminate} indeterminate, {blast.no_blasts} missed of {blast.n}), specificity "
            f"{outcomes.specificity:.3f} (non-blast images: {other.no_blasts} no blasts, {other.indeterminate} "
            f"indeterminate, {other.possible_blasts} possible blasts of {other.n})")
