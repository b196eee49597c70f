"""`leukoscreen train`: train a model on a leak-free split and leave a complete run folder."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from leukoscreen import __version__
from leukoscreen.training.cell_data import read_cell_geometry
from leukoscreen.training.prepared_data import prepare, preprocessed_images, with_colour_reference
from leukoscreen.training.runs import RunFolder, TrainConfig
from leukoscreen.training.splits import save_split


def targets_for(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keras targets: 0/1 floats for a sigmoid output, integer labels for softmax."""
    return labels.astype("float32")[:, None] if num_classes == 2 else labels.astype("int32")


def train(config: TrainConfig, out: Path, n_boot: int = 1000) -> dict:
    """Train, evaluate on the test split and write the run folder; returns the test metrics."""
    import keras
    from sklearn.utils.class_weight import compute_class_weight

    from leukoscreen.training import plots
    from leukoscreen.training.evaluation import evaluate_part, evaluate_with_variants, predict_probabilities
    from leukoscreen.training.input_pipeline import image_dataset
    from leukoscreen.training.backbones import BACKBONES
    from leukoscreen.training.models import (build_model, cpu_has_bfloat16, default_input_size, float32_copy,
                                             set_trainable_top)

    started = time.perf_counter()
    run = RunFolder(Path(out))
    run.path.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    precision = config.precision
    if precision == "auto":
        precision = "mixed_bfloat16" if cpu_has_bfloat16() else "float32"
    if precision not in ("float32", "mixed_bfloat16"):
        raise ValueError(f"precision {precision!r}: use auto, float32 or mixed_bfloat16")
    keras.mixed_precision.set_global_policy(precision)
    print(f"training precision: {precision}")
    input_size = default_input_size(config.model)  # an unknown model is named before the data is read
    prepared = prepare(config.data, config.task, config.kind, config.block_size, config.near_distance,
                       config.seed, split_file=Path(config.split_file) if config.split_file else None)
    if prepared.dataset.kind == "cells":  # crops already cut to their size: no intermediate size, no corner
        input_size = read_cell_geometry(prepared.dataset.root)[0].pixels
        config = replace(config, preprocess=replace(config.preprocess, resize=0, mask_corner=0.0))
    if config.preprocess.input_size != input_size:
        config = replace(config, preprocess=replace(config.preprocess, input_size=input_size))
    config = replace(config, task=prepared.task, data=str(prepared.dataset.root))
    save_split(run.split_file, prepared.rows)
    classes = prepared.class_names
    parts = {name: prepared.part(name) for name in ("train", "val", "test")}
    config = replace(config, preprocess=with_colour_reference(
        config.preprocess, [prepared.paths[i] for i in parts["train"]], [prepared.sha256s[i] for i in parts["train"]]))
    print(f"data: {prepared.dataset.root} ({prepared.dataset.kind}), task {prepared.task}: "
          + ", ".join(f"{name} {len(index)}" for name, index in parts.items())
          + f" images; {len(prepared.skipped)} unreadable skipped")

    t0 = time.perf_counter()
    images = preprocessed_images(prepared.paths, prepared.sha256s, config.preprocess)
    preprocess_seconds = time.perf_counter() - t0
    train_index, val_index = parts["train"], parts["val"]
    if config.holdout:  # the thesis' 80/20 hold-out: the test part stays the same, validation joins training
        train_index = np.concatenate([train_index, val_index])
    weights = compute_class_weight("balanced", classes=np.arange(len(classes)),
                                   y=prepared.labels[train_index])
    model = build_model(config.model, len(classes), input_size, config.weights, config.model_options)
    loss = "binary_crossentropy" if len(classes) == 2 else "sparse_categorical_crossentropy"
    train_data = image_dataset(images[train_index], targets_for(prepared.labels[train_index], len(classes)),
                               config.batch_size, training=True, augment=config.augment, seed=config.seed,
                               augmentation=config.augmentation)
    val_data = None if config.holdout else image_dataset(
        images[val_index], targets_for(prepared.labels[val_index], len(classes)), config.batch_size,
        sample_weights=weights[prepared.labels[val_index]] if config.balanced_validation else None)
    callbacks = [keras.callbacks.CSVLogger(str(run.history_file))]
    if not config.holdout:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                       restore_best_weights=True))
    class_weight = dict(enumerate(weights.tolist()))
    t0 = time.perf_counter()
    pretrained = config.model in BACKBONES and config.weights != "none"
    if pretrained and config.head_epochs:  # the new head first, on a frozen backbone
        print(f"head only: {set_trainable_top(model, 0.0)} trainable layers, {config.head_epochs} epochs")
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
        model.fit(train_data, validation_data=val_data, epochs=config.head_epochs, verbose=2,
                  class_weight=class_weight)
    if pretrained:
        print(f"fine-tuning: {set_trainable_top(model, config.fine_tune_fraction)} trainable layers")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate_for(config, len(train_index))), loss=loss,
                  metrics=["accuracy"])
    history = model.fit(train_data, validation_data=val_data, epochs=config.epochs, verbose=2, callbacks=callbacks,
                        class_weight=class_weight)
    fit_seconds = time.perf_counter() - t0
    keras.mixed_precision.set_global_policy("float32")
    model = float32_copy(model, config.model, len(classes), input_size, config.model_options)
    model.save(run.model_file)

    def predict(batch):
        return predict_probabilities(model, batch)

    accuracy = {"val": None}  # with the 80/20 hold-out the validation images were trained on
    for name in ("train",) if config.holdout else ("train", "val"):
        part_metrics, _, _ = evaluate_part(predict, prepared, name, config.preprocess, n_boot=0)
        accuracy[name] = part_metrics["accuracy"]
    metrics = evaluate_with_variants(predict, prepared, "test", config.preprocess, run.path, n_boot)
    metrics["train_accuracy"], metrics["val_accuracy"] = accuracy["train"], accuracy["val"]
    total_seconds = time.perf_counter() - started
    metrics["timing_seconds"] = {"preprocess": round(preprocess_seconds, 1), "fit": round(fit_seconds, 1),
                                 "total": round(total_seconds, 1)}
    metrics["epochs_run"] = len(history.epoch)
    run.metrics_file.write_text(json.dumps(metrics, indent=2))
    run.config_file.write_text(json.dumps({
        "train": config.to_dict(), "class_names": classes, "trained_precision": precision, "software_version": __version__,
        "parameters": int(model.count_params()), "split_method": split_description(config),
        "skipped_files": [info.error for info in prepared.skipped]}, indent=2))
    plots.training_curves(run.history_file, run.path / "training_curves.png")
    run.summary_file.write_text(summary(config, metrics, classes))
    print(f"run folder: {run.path}  (training {fit_seconds:.0f} s, total {total_seconds:.0f} s)")
    return metrics


def learning_rate_for(config: TrainConfig, train_images: int):
    """The configured learning rate, or a cosine decay from it to zero over all the epochs' steps."""
    import keras
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "cosine":
        steps = config.epochs * -(-train_images // config.batch_size)
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps)
    raise ValueError(f"schedule {config.schedule!r}: use constant or cosine")


def split_description(config: TrainConfig) -> str:
    return (f"stratified group split 60/20/20 (seed {config.seed}); groups = patient id, or blocks of "
            f"{config.block_size} neighbouring file numbers, merged across exact and near duplicates "
            f"(perceptual-hash distance <= {config.near_distance})"
            + (f"; re-used from {config.split_file}" if config.split_file else "")
            + ("; 80/20 hold-out: trained on the train and validation parts, fixed epochs" if config.holdout else ""))


def summary(config: TrainConfig, metrics: dict, classes: list[str]) -> str:
    ci = metrics["ci95"]
    lines = [f"# {config.model} on {Path(config.data).name} ({config.task})", "",
             "Research use only. Not for use in diagnostic procedures.", "",
             f"- classes: {', '.join(classes)}",
             f"- split: {split_description(config)}",
             f"- accuracy: train {metrics['train_accuracy']:.3f}, validation "
             + ("(trained on: 80/20 hold-out)" if metrics["val_accuracy"] is None else f"{metrics['val_accuracy']:.3f}")
             + ", "
             f"test {metrics['accuracy']:.3f} [{ci['accuracy'][0]:.3f}-{ci['accuracy'][1]:.3f}]",
             f"- test macro-F1 {metrics['macro_f1']:.3f} [{ci['macro_f1'][0]:.3f}-{ci['macro_f1'][1]:.3f}]",
             f"- training wall time {metrics['timing_seconds']['fit']:.0f} s "
             f"({metrics['epochs_run']} epochs), whole run {metrics['timing_seconds']['total']:.0f} s", ""]
    for name, result in metrics["variants"].items():
        lines.append(f"- {name}: accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}")
    lines += ["", "Augmentation was applied to the training part only, after splitting.", ""]
    return "\n".join(lines)
