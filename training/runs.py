"""The run folder: what a training run leaves behind and how later commands read it back.

runs/NAME/ holds config.json (the resolved training configuration), split.csv (every file with its
sha256, group and part), model.keras, history.csv, metrics.json, predictions.csv, plots (*.png) and
summary.md.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from leukoscreen.edge.preprocessing import SCALE_BAR_CORNER, PreprocessConfig


@dataclass
class TrainConfig:
    data: str
    model: str = "basic-cnn"
    weights: str = "imagenet"        # backbones: imagenet, none (from scratch) or a .pth path
    head_epochs: int = 5             # backbones with weights: epochs training only the new head first
    fine_tune_fraction: float = 0.3  # then the top share of the backbone's layers trains too
    model_options: dict = field(default_factory=dict)  # odrnn: sequence, cell, layers, units, bidirectional, dropout
    task: str | None = None          # None: the data set's first task (all-aria: subtype)
    kind: str = "auto"
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    schedule: str = "constant"       # "constant" or "cosine" (decays to zero over the epochs)
    patience: int = 8
    balanced_validation: bool = False  # weight the validation loss by class like the training loss (early stopping
    #                                    and the kept epoch then follow the class-balanced objective)
    augment: bool = True
    augmentation: str = "default"    # "default" or "thesis" (reflection, rotation 25-125 degrees, 15-25 px shifts)
    holdout: bool = False            # thesis preset: train on train + validation (80%), fixed epochs, no early stop
    seed: int = 0
    block_size: int = 20
    near_distance: int = 6
    split_file: str | None = None
    precision: str = "auto"          # "auto" (bfloat16 where the CPU has it), "float32", "mixed_bfloat16"
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(
        mask_corner=SCALE_BAR_CORNER))

    def to_dict(self) -> dict:
        values = asdict(self)
        values["preprocess"] = self.preprocess.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        values["preprocess"] = PreprocessConfig.from_dict(values.get("preprocess", {}))
        return cls(**values)


class RunError(ValueError):
    """A run folder that is missing something; the message says what."""


@dataclass
class RunFolder:
    path: Path

    config_file = property(lambda self: self.path / "config.json")
    split_file = property(lambda self: self.path / "split.csv")
    model_file = property(lambda self: self.path / "model.keras")
    history_file = property(lambda self: self.path / "history.csv")
    metrics_file = property(lambda self: self.path / "metrics.json")
    predictions_file = property(lambda self: self.path / "predictions.csv")
    summary_file = property(lambda self: self.path / "summary.md")

    def config(self) -> TrainConfig:
        if not self.config_file.exists():
            raise RunError(f"{self.path} is not a run folder (no config.json); "
                           "pass a folder made by `leukoscreen train`")
        return TrainConfig.from_dict(json.loads(self.config_file.read_text())["train"])

    def extra(self) -> dict:
        """Everything config.json records beside the training configuration (classes, timings...)."""
        return {k: v for k, v in json.loads(self.config_file.read_text()).items() if k != "train"}

    def metrics(self) -> dict:
        if not self.metrics_file.exists():
            raise RunError(f"{self.path} has no metrics.json; run `leukoscreen evaluate {self.path}`")
        return json.loads(self.metrics_file.read_text())

    def load_model(self):
        import keras
        if not self.model_file.exists():
            raise RunError(f"{self.path} has no model.keras; the training did not finish")
        return keras.models.load_model(self.model_file)
