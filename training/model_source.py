"""What a bundle is made from: a trained run's model, its data and split, and how to describe it.

`leukoscreen convert` reads a run through this (a `leukoscreen train` run, or a Model 1 run of
`leukoscreen classical`: a feature extractor and a classical classifier fitted per format).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from leukoscreen.edge.preprocessing import PreprocessConfig
from leukoscreen.training.prepared_data import PreparedData, prepare
from leukoscreen.training.runs import RunFolder


@dataclass
class Source:
    """The Keras model each format exports, and what describes it."""
    model: object                  # Keras model; for a two-stage bundle the feature extractor
    reference: Callable            # uint8 images -> the float model's class probabilities
    prepared: PreparedData         # the data set with the run's split
    preprocess: PreprocessConfig
    split_file: Path
    training: dict                 # recorded in the manifest (`TrainingRecord`)
    seed: int = 0
    # two-stage (thesis Model 1): (features, labels) -> a fitted scikit-learn classifier; each format gets
    # one fitted on the features that format computes, so int8 feature drift is learnt, not suffered
    fit_classifier: Callable | None = None


def run_source(run: RunFolder) -> Source:
    """A trained run folder (`leukoscreen train`)."""
    from leukoscreen.training.evaluation import predict_probabilities
    config, extra = run.config(), run.extra()
    model = run.load_model()
    prepared = prepare(config.data, config.task, config.kind, config.block_size, config.near_distance,
                       config.seed, split_file=run.split_file)
    training = {"model": config.model, "data": Path(config.data).name, "task": config.task,
                "split_method": extra.get("split_method", ""), "run": run.path.name,
                "trained_precision": extra.get("trained_precision", "float32")}
    return Source(model, lambda images: predict_probabilities(model, images), prepared, config.preprocess,
                  run.split_file, training, config.seed)


def load_source(run_path: Path, classifier: str | None = None) -> Source:
    """A run folder of either kind; `classifier` chooses a Model 1 run's classifier (default: the best)."""
    if (run_path / "classical.json").exists():
        from leukoscreen.training.classical import classical_source
        return classical_source(run_path, classifier)
    return run_source(RunFolder(run_path))
