"""From class probabilities to a screening decision worded for a clinic.

Probabilities are calibrated by temperature scaling; the blast score is the probability of not being a
negative class (e.g. 1 - P(Benign)); the manifest's threshold and indeterminate band turn it into one of
three answers. Always a screening aid, never a diagnosis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESEARCH_USE = "Research use only."
WORDING = {
    "no_blasts": "No blasts suggested",
    "indeterminate": "Indeterminate: retake or review",
    "possible_blasts": "Possible blasts: refer for haematologist review",
}


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of N x K probabilities: softmax(log(p) / T)."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def blast_score(probabilities: np.ndarray, class_names: list[str], negative_classes: list[str]) -> np.ndarray:
    """Probability of each row not belonging to a negative (non-blast) class."""
    negative = [class_names.index(name) for name in negative_classes]
    return 1.0 - np.asarray(probabilities)[:, negative].sum(axis=1)


@dataclass(frozen=True)
class Decision:
    code: str          # "no_blasts", "indeterminate" or "possible_blasts"
    score: float       # blast score in [0, 1]

    @property
    def wording(self) -> str:
        return f"{WORDING[self.code]}. {RESEARCH_USE}"


def decide(score: float, threshold: float, band: tuple[float, float]) -> Decision:
    """Below the band: no blasts suggested; at or above its top: possible blasts; between: indeterminate."""
    low, high = band
    if not low <= threshold <= high:
        raise ValueError(f"threshold {threshold} must lie in the indeterminate band {band}")
    if score < low:
        return Decision("no_blasts", float(score))
    if score >= high:
        return Decision("possible_blasts", float(score))
    return Decision("indeterminate", float(score))
