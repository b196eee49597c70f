"""The run folder: what a training run leaves behind and how later commands read it back.

runs/NAME/ holds config.json (the resolved training configuration), split.csv (every file with its
sha256, group and part), model.keras, history.csv, metrics.json, predictions.csv, plots (*.png) and
summary.md.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from leukoscreen.edge.preprocessing import SCALE_BAR_CORNER, ColourMode, PreprocessConfig
from leukoscreen.edge.stain import STAINED_LOWER, STAINED_UPPER

Backbone = Literal["mobilenet-v2", "efficientnet-lite0", "alexnet"]
Schedule = Literal["constant", "cosine"]
Precision = Literal["auto", "float32", "mixed_bfloat16"]


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
    schedule: Schedule = "constant"  # "constant" or "cosine" (decays to zero over the epochs)
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
    precision: Precision = "auto"    # "auto" (bfloat16 where the CPU has it), "float32", "mixed_bfloat16"
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(
        mask_corner=SCALE_BAR_CORNER))

    @classmethod
    def with_defaults(cls, data: str, model: str = "basic-cnn", preset: Literal["thesis"] | None = None,
                      colour: ColourMode = "rgb", mask_corner: bool = True, hsv: tuple | None = None,
                      learning_rate: float | None = None, epochs: int | None = None, schedule: Schedule | None = None,
                      patience: int | None = None, **values) -> "TrainConfig":
        """The training policy: defaults that depend on the model and the preset, for what is not given.

        preset "thesis" (thesis 3.9): learning rate 1e-4, batch 5, 6 epochs, the whole network trained, its
        augmentation and an 80/20 hold-out. The Basic CNN's defaults (30 epochs, a cosine schedule run to its
        end) keep a full run within 10 minutes on 2 cores; fine-tuning a backbone starts at 1e-4. The ODRNN
        reads only the stained pixels (the device's definition of stained, unless `hsv` gives other bounds)."""
        if preset == "thesis":
            learning_rate, values["batch_size"], epochs = learning_rate or 1e-4, 5, 6
            values.update(head_epochs=0, fine_tune_fraction=1.0, augmentation="thesis", holdout=True)
            schedule = schedule or "constant"
        backbone = model in ("mobilenet-v2", "efficientnet-lite0", "alexnet")
        basic = model == "basic-cnn"
        epochs = epochs or (30 if basic else 40)
        schedule = schedule or ("cosine" if basic else "constant")
        # a cosine schedule runs its course (its last, small steps matter); the best validation epoch is kept
        patience = patience or (epochs if schedule == "cosine" else 8)
        preprocess = PreprocessConfig(mask_corner=SCALE_BAR_CORNER if mask_corner else 0.0, colour=colour)
        if hsv or model == "odrnn":
            lower, upper = hsv or (STAINED_LOWER, STAINED_UPPER)
            preprocess = replace(preprocess, hsv_lower=tuple(lower), hsv_upper=tuple(upper))
        return cls(data=data, model=model, learning_rate=learning_rate or (1e-4 if backbone else 1e-3), epochs=epochs,
                   schedule=schedule, patience=patience, preprocess=preprocess, **values)

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
