"""Temperature scaling and the decision threshold, fitted on the validation split."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from leukoscreen.edge.decision import DecisionRule, blast_score, calibrate
from leukoscreen.edge.manifest import Calibration
from leukoscreen.training.metrics import field_maxima


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, lowest: float = 0.05) -> float:
    """Temperature minimising the negative log-likelihood of the true labels, in [lowest, 20]."""
    def nll(temperature):
        calibrated = calibrate(probabilities, temperature)
        return -np.mean(np.log(np.clip(calibrated[np.arange(len(labels)), labels], 1e-12, 1.0)))

    return float(minimize_scalar(nll, bounds=(lowest, 20.0), method="bounded").x)


def threshold_rank(blast_images: int, target_sensitivity: float) -> int:
    """k = floor((1 - target) * (n + 1)): the rank, counted from the lowest, of the blast score that a new
    blast image reaches with probability at least `target_sensitivity`; 0 when n is too small for that."""
    return int(np.floor((1.0 - target_sensitivity) * (blast_images + 1) + 1e-9))  # 1e-9: 0.01 * 100 is 1


def choose_threshold(scores: np.ndarray, positive: np.ndarray, target_sensitivity: float = 0.99,
                     target_specificity: float = 0.99) -> tuple[float, tuple[float, float]]:
    """The threshold and the indeterminate band [threshold, upper].

    Threshold: of the n positive (blast) scores, the k-th lowest with k = floor((1 - target_sensitivity) *
    (n + 1)). A new positive image, exchangeable with these, then scores at or above it with probability at
    least `target_sensitivity` (the split-conformal quantile). The plain 1% quantile, one order statistic
    higher, falls short of that: k + 1 of n + 1 below it. Below 1 / (1 - target) - 1 positives (99 for 0.99)
    no order statistic gives the guarantee; the lowest positive score is then used.
    Upper: just above the negatives' `target_specificity` quantile (with fewer than 100 negatives, their
    highest score)."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ValueError("the validation split needs both blast and non-blast images to set a threshold")
    ranked = np.sort(scores[positive])
    threshold = float(ranked[max(threshold_rank(len(ranked), target_sensitivity), 1) - 1])
    upper = float(np.quantile(scores[~positive], target_specificity, method="higher"))
    upper = min(1.0, max(threshold, np.nextafter(upper, 2.0)))
    return threshold, (threshold, upper)


def decision_parameters(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str],
                        negative_classes: list[str], target_sensitivity: float = 0.99,
                        fields: list[str] | None = None,
                        lowest_temperature: float = 0.05) -> tuple[Calibration, DecisionRule]:
    """The calibration and the decision rule, fitted on validation probabilities and labels. fields (cell
    models): the field of each cell; the temperature is fitted on the cells, the threshold on the fields, each
    scored by its most blast-like cell, as the device decides a field."""
    calibration = Calibration(temperature=fit_temperature(probabilities, labels, lowest_temperature),
                              fitted_on="validation split")
    scores = blast_score(calibration.apply(probabilities), class_names, negative_classes)
    negative = [class_names.index(n) for n in negative_classes]
    blast = ~np.isin(labels, negative)
    if fields is not None:
        scores, blast = field_maxima(scores, blast, fields)
    threshold, (_, refer_at) = choose_threshold(scores, blast, target_sensitivity)
    rank = threshold_rank(int(blast.sum()), target_sensitivity)
    rule = (f"blast score {rank} of {blast.sum()}, counted from the lowest (split-conformal rank)" if rank else
            f"the lowest of {blast.sum()} blast scores: a {target_sensitivity:.0%} guarantee needs at least "
            f"{int(np.ceil(1 / (1 - target_sensitivity) - 1 - 1e-9))} blast images in the validation split")
    return calibration, DecisionRule(negative_classes=negative_classes, threshold=threshold, refer_at=refer_at,
                                     target_sensitivity=target_sensitivity, threshold_rule=rule,
                                     chosen_on="validation split" if fields is None else
                                     "validation fields, each scored by its most blast-like cell")

