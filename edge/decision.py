"""From class probabilities to a screening decision worded for a clinic.

Probabilities are calibrated by temperature scaling; the blast score is the probability of not being a
negative class (e.g. 1 - P(Benign)); the bundle's decision rule turns it into one of three answers. Always a
screening aid, never a diagnosis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

RESEARCH_USE = "Research use only."
RuleCode = Literal["no_blasts", "indeterminate", "possible_blasts"]   # the decision rule's three answers
RULE_CODES = get_args(RuleCode)
DecisionCode = Literal[RuleCode, "unfamiliar"]   # and the guard's: not screened
WORDING = {
    "no_blasts": "No blasts suggested",
    "indeterminate": "Indeterminate: retake or review",
    "possible_blasts": "Possible blasts: refer for haematologist review",
    "unfamiliar": "Not screened: unlike the images this model was made for",   # the guard's (edge/guard.py)
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
    code: DecisionCode
    score: float       # blast score in [0, 1]

    @property
    def wording(self) -> str:
        return f"{WORDING[self.code]}. {RESEARCH_USE}"


class DecisionRule(BaseModel):
    """How a calibrated blast score becomes an answer: below `threshold` "No blasts suggested", from
    `refer_at` on "Possible blasts: refer for haematologist review", in between "Indeterminate: retake or
    review" (the indeterminate band)."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    negative_classes: list[str] = Field(min_length=1, description="the classes that are not blast-like (e.g. "
                                                                  "Benign); the blast score is 1 - their probability")
    threshold: float = Field(ge=0, le=1, description="blast scores below it are answered 'No blasts suggested'; "
                                                     "chosen on the validation part for the target sensitivity")
    refer_at: float = Field(ge=0, le=1, description="blast scores at or above it are answered 'Possible blasts: "
                                                    "refer'; between threshold and refer_at: indeterminate")
    target_sensitivity: float = Field(0.99, gt=0, lt=1, description="share of new blast images meant to score at "
                                                                    "or above the threshold")
    threshold_rule: str = Field("", description="how the threshold was chosen, in words")
    chosen_on: str = Field("validation split", description="the images the threshold was chosen on")

    @model_validator(mode="after")
    def _band_is_ordered(self) -> "DecisionRule":
        if self.threshold > self.refer_at:
            raise ValueError(f"decision: need threshold <= refer_at, got {self.threshold} and {self.refer_at}")
        return self

    def score(self, probabilities: np.ndarray, class_names: list[str]) -> np.ndarray:
        """Blast score of each row of N x K calibrated probabilities."""
        return blast_score(probabilities, class_names, self.negative_classes)

    def decide(self, score: float) -> Decision:
        """Below the threshold: no blasts suggested; at or above refer_at: possible blasts; between:
        indeterminate."""
        if score < self.threshold:
            return Decision("no_blasts", float(score))
        if score >= self.refer_at:
            return Decision("possible_blasts", float(score))
        return Decision("indeterminate", float(score))
