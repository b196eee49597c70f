"""Evaluation of a trained model on a split or a whole data folder, under input variants.

Variants show what a model leans on: the scale-bar corner masked and unmasked, and colour taken away
(per-image colour standardisation, grayscale), where colour shortcuts stop working.
"""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from leukoscreen.edge.preprocessing import SCALE_BAR_CORNER, PreprocessConfig
from leukoscreen.edge.runtimes import RuntimeOptions, to_probabilities
from leukoscreen.training import plots
from leukoscreen.training.cell_data import weak_label_check
from leukoscreen.training.metrics import classification_metrics, describe_outcomes, format_table, screening_outcomes
from leukoscreen.training.prepared_data import PreparedData, prepare, preprocessed_images
from leukoscreen.training.runs import RunError, RunFolder
from leukoscreen.training.splits import SplitError


def variants(config: PreprocessConfig) -> dict[str, PreprocessConfig]:
    """Input variants evaluated beside the trained configuration."""
    return {
        "corner_masked": replace(config, mask_corner=config.mask_corner or SCALE_BAR_CORNER),
        "corner_unmasked": replace(config, mask_corner=0.0),
        "colour_standardized": replace(config, colour="standardize"),
        "grayscale": replace(config, colour="grayscale"),
    }


def predict_probabilities(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """N x K class probabilities of a Keras model for uint8 images (a sigmoid output becomes [1-p, p])."""
    from leukoscreen.training.input_pipeline import image_dataset
    return to_probabilities(model.predict(image_dataset(images, batch_size=batch_size), verbose=0))


def evaluate_part(predict, prepared: PreparedData, part: str, config: PreprocessConfig,
                  n_boot: int = 1000) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics, probabilities and row indices of one part of the prepared data under a preprocessing.
    predict: uint8 images (N x S x S x 3) -> N x K class probabilities."""
    index = prepared.part(part)
    if len(index) == 0:
        raise RunError(f"the {part!r} part of the split is empty")
    images = preprocessed_images([prepared.paths[i] for i in index],
                                 [prepared.sha256s[i] for i in index], config)
    probabilities = predict(images)
    groups = [prepared.rows[i].group for i in index]
    metrics = classification_metrics(prepared.labels[index], probabilities, prepared.class_names,
                                     groups=groups, n_boot=n_boot)
    return metrics, probabilities, index


def evaluate_with_variants(predict, prepared: PreparedData, part: str, config: PreprocessConfig,
                           out_dir: Path, n_boot: int = 1000, screening=None) -> dict:
    """Evaluate a part as trained and under every variant; write metrics.json, predictions.csv, plots.
    screening: (probabilities, labels) -> the device's answers (bundles, which carry a decision)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, probabilities, index = evaluate_part(predict, prepared, part, config, n_boot)
    print(format_table(metrics, f"{part} split ({prepared.dataset.root.name}, {prepared.task}), as trained"))
    as_trained = dict(metrics)
    metrics["variants"] = {}
    for name, variant in variants(config).items():
        result = as_trained if variant == config else evaluate_part(predict, prepared, part, variant, n_boot)[0]
        metrics["variants"][name] = result
        print(f"  {name:<20} accuracy {result['accuracy']:.3f}  macro-F1 {result['macro_f1']:.3f} "
              f"[{result['ci95']['macro_f1'][0]:.3f}-{result['ci95']['macro_f1'][1]:.3f}]")
    if screening:  # once, beside the variants rather than inside the as-trained one
        metrics["screening"] = screening(probabilities, prepared.labels[index])
    if prepared.dataset.kind == "cells":
        metrics["weak_labels"] = weak_label_check(prepared.dataset.root, [prepared.paths[i] for i in index],
                                                  probabilities, prepared.class_names)
        for group, row in metrics["weak_labels"].items():
            print(f"  weak labels, {group:<20} {row['crops']:>6} crops ({row['label']}): called blast "
                  f"{row['called_blast']:.1%}, confidently contradicted {row['confidently_contradicted']:.1%}")
    metrics.update(part=part, data=str(prepared.dataset.root), task=prepared.task)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out_dir / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted"] + [f"p_{c}" for c in prepared.class_names])
        for row_index, p in zip(index, probabilities):
            writer.writerow([prepared.paths[row_index], prepared.class_names[prepared.labels[row_index]],
                             prepared.class_names[int(p.argmax())]] + [f"{v:.5f}" for v in p])
    title = f"{part}: {prepared.dataset.root.name} {prepared.task}"
    plots.confusion(metrics["confusion_matrix"], prepared.class_names, out_dir / "confusion.png", title)
    plots.roc_curves(prepared.labels[index], probabilities, prepared.class_names, out_dir / "roc.png", title)
    return metrics


def evaluate_run(run_path: Path, data_dir: Path | None = None, part: str = "test",
                 out_dir: Path | None = None, n_boot: int = 1000) -> dict:
    """`leukoscreen evaluate RUN`: the run's own data set on a split, or every image of another folder."""
    run = RunFolder(Path(run_path))
    config = run.config()
    own_data = data_dir is None or Path(data_dir).resolve() == Path(config.data).resolve()
    if own_data:
        prepared = prepare(config.data, config.task, config.kind, config.block_size, config.near_distance,
                           config.seed, split_file=run.split_file)
    else:
        prepared = prepare(data_dir, config.task, block_size=config.block_size, all_test=True)
        trained_classes = run.extra()["class_names"]
        if prepared.class_names != trained_classes:
            raise RunError(f"{data_dir} has the classes {prepared.class_names} for task {config.task!r}, "
                           f"the model was trained on {trained_classes}; evaluate on data with the same classes")
        part = "test"
    model = run.load_model()
    return evaluate_with_variants(lambda images: predict_probabilities(model, images), prepared, part, config.preprocess,
                                  Path(out_dir) if out_dir else run.path / f"evaluation-{part}", n_boot)


def evaluate_bundle(bundle_path: Path, data_dir: Path | None, out_dir: Path | None = None,
                    options: RuntimeOptions = RuntimeOptions(), n_boot: int = 1000) -> dict:
    """`leukoscreen evaluate BUNDLE`: the model's metrics through the device runtime (not TensorFlow), and
    its decision rule's answers. This measures the model and its decision, not the whole device pipeline
    (no quality gate, no cell finder). Images that are in the bundle's saved split are evaluated on its test
    part only; other folders in full."""
    from leukoscreen.edge.bundle import load_bundle
    bundle = load_bundle(bundle_path)
    if data_dir is None:
        raise RunError("evaluating a bundle needs --data FOLDER")
    manifest = bundle.manifest
    split_file = bundle.path / "split.csv"
    try:
        prepared = prepare(data_dir, manifest.task, split_file=split_file if split_file.exists() else None)
    except SplitError:  # not the training data set: every image is unseen
        prepared = prepare(data_dir, manifest.task, all_test=True)
    if prepared.class_names != bundle.class_names:
        raise RunError(f"{data_dir} has the classes {prepared.class_names} for task {manifest.task!r}; the bundle "
                       f"was trained on {bundle.class_names}")
    fmt = options.format or manifest.default_format
    runner = bundle.runner(options)
    out = Path(out_dir) if out_dir else bundle.path.parent / f"{bundle.path.name}-evaluation-{fmt}"

    def screening(probabilities, labels):
        outcomes = screening_outcomes(probabilities, labels, bundle.class_names, manifest.calibration,
                                      manifest.decision)
        print(f"the bundle's decision (model and decision rule, without the quality gate or cell finder; "
              f"'Indeterminate' counts as caught; `leukoscreen robustness` measures the whole device pipeline): "
              f"{describe_outcomes(outcomes)}")
        return outcomes.model_dump()

    metrics = evaluate_with_variants(runner.predict, prepared, "test", bundle.preprocess, out, n_boot, screening)
    metrics.update(bundle=str(bundle.path), format=fmt, runtime=runner.name,
                   measures="the model and its decision rule on every image (no quality gate or cell finder)")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
