"""Model 1 of the thesis (section 3.9): features from a frozen CNN, then classical classifiers.

Features: AlexNet fc7 (4096, after its ReLU) or the pooled features of a pretrained edge backbone
(1280). Classifiers (scikit-learn): decision tree (at most 20 splits), linear discriminant, SVM with
linear, Gaussian and cubic kernels, and 1-nearest neighbour. Evaluated by 10-fold group-aware
cross-validation over the whole data set (whole groups in one fold: no leak), with intervals that
resample groups, and also on the foundation's test split (fitted on its train + validation parts).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from leukoscreen.edge.preprocessing import SCALE_BAR_CORNER, PreprocessConfig
from leukoscreen.training.metrics import classification_metrics
from leukoscreen.training.model_source import Source
from leukoscreen.training.prepared_data import (default_cache_dir, prepare, preprocessed_images,
                                                with_colour_reference)
from leukoscreen.training.splits import group_kfold, save_split


def classifiers() -> dict:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    def scaled(model):
        return make_pipeline(StandardScaler(), model)
    return {
        "Decision tree (max 20 splits)": lambda: DecisionTreeClassifier(max_leaf_nodes=21, random_state=0),
        # shrinkage keeps the pooled covariance invertible with more features than a fold has images
        "Linear discriminant": lambda: scaled(LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")),
        "SVM linear": lambda: scaled(SVC(kernel="linear")),
        "SVM Gaussian": lambda: scaled(SVC(kernel="rbf", gamma="scale")),
        "SVM cubic": lambda: scaled(SVC(kernel="poly", degree=3, gamma="scale", coef0=1.0)),
        "K-NN (k=1)": lambda: scaled(KNeighborsClassifier(n_neighbors=1)),
    }


def with_probabilities(model):
    """A classifier as the device needs it, giving class probabilities: an SVM's scores are calibrated
    (sigmoid, cross-validated on the training images); the other classifiers have their own."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC
    if hasattr(model, "steps") and isinstance(model.steps[-1][1], SVC):  # the SVMs are scaled pipelines
        model.steps[-1] = (model.steps[-1][0], CalibratedClassifierCV(model.steps[-1][1], ensemble=False))
    return model


def feature_extractor(backbone: str, weights: str, input_size: int, seed: int = 0):
    """The frozen backbone up to its feature layer, as a Keras model (uint8-range float pixels in)."""
    import keras

    from leukoscreen.training.backbones import build_backbone
    keras.utils.set_random_seed(seed)  # weights "none": a seeded random network
    ported = build_backbone(backbone, None if weights == "none" else weights, input_size)
    return keras.Model(ported.model.input, ported.model.get_layer(ported.feature_layer).output)


def extract_features(backbone: str, weights: str, images: np.ndarray, seed: int = 0,
                     batch_size: int = 32) -> np.ndarray:
    extractor = feature_extractor(backbone, weights, images.shape[1], seed)
    return extractor.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)


def classical_source(path: Path, classifier: str | None = None):
    """What `leukoscreen convert` needs to make a two-stage bundle of a Model 1 run: the feature extractor
    and the chosen classifier (default: the best cross-validated macro-F1), refitted on the run's train
    part so that the validation part stays free for calibration and the test part for the figures."""
    summary = json.loads((path / "classical.json").read_text())
    results = summary["classifiers"]
    name = classifier or max(results, key=lambda n: results[n]["cross_validation"]["macro_f1"])
    if name not in results:
        raise ValueError(f"classifier {name!r} is not in {path}; it has: {', '.join(results)}")
    seed = summary.get("seed", 0)
    config = PreprocessConfig.from_dict(summary["preprocess"])
    prepared = prepare(summary["data"], summary["task"], block_size=summary.get("block_size", 20),
                       split_file=path / "split.csv")
    extractor = feature_extractor(summary["backbone"], summary["weights"], config.input_size, seed)
    train = prepared.part("train")
    images = preprocessed_images([prepared.paths[i] for i in train], [prepared.sha256s[i] for i in train], config)
    print(f"fitting {name} on the float features of {len(train)} training images (the desktop reference)")

    def fit(features: np.ndarray, labels: np.ndarray):
        return with_probabilities(classifiers()[name]()).fit(features, labels)
    reference_model = fit(extractor.predict(images.astype(np.float32), batch_size=32, verbose=0),
                          prepared.labels[train])

    def reference(batch: np.ndarray) -> np.ndarray:
        return reference_model.predict_proba(extractor.predict(batch.astype(np.float32), batch_size=32, verbose=0))
    training = {"model": f"Model 1: {summary['backbone']} features ({summary['weights']}) + {name}",
                "backbone": summary["backbone"], "weights": summary["weights"], "classifier": name,
                "classifier_fitted_on": "the train part's features as each format computes them",
                "data": Path(summary["data"]).name, "task": summary["task"],
                "split_method": f"the group split of the Model 1 run ({path.name}/split.csv)", "run": path.name}
    return Source(extractor, reference, prepared, config, path / "split.csv", training, seed, fit)


def cached_features(backbone: str, weights: str, images: np.ndarray, sha256s: list[str],
                    preprocess: PreprocessConfig, seed: int) -> np.ndarray:
    weights_id = weights
    if weights not in ("none", "imagenet"):
        weights_id = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([backbone, weights_id, seed, preprocess.to_dict(), sha256s]).encode())
    path = default_cache_dir() / f"features-{key.hexdigest()[:24]}.npy"
    if path.exists():
        return np.load(path)
    features = extract_features(backbone, weights, images, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, features)
    return features


def _one_hot(predicted: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[predicted]


def run_classical(data: str, out: Path, backbone: str = "mobilenet-v2", weights: str = "imagenet",
                  task: str | None = None, colour: str = "rgb", folds: int = 10, block_size: int = 20,
                  seed: int = 0, n_boot: int = 1000) -> dict:
    from leukoscreen.training.backbones import BACKBONES
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare(data, task, block_size=block_size, seed=seed)
    save_split(out / "split.csv", prepared.rows)
    names, labels = prepared.class_names, prepared.labels
    groups = np.array([row.group for row in prepared.rows])
    config = PreprocessConfig(input_size=BACKBONES[backbone][1], mask_corner=SCALE_BAR_CORNER, colour=colour)
    train_index = prepared.part("train")
    config = with_colour_reference(config, [prepared.paths[i] for i in train_index],
                                   [prepared.sha256s[i] for i in train_index])
    t0 = time.perf_counter()
    images = preprocessed_images(prepared.paths, prepared.sha256s, config)
    features = cached_features(backbone, weights, images, prepared.sha256s, config, seed)
    feature_seconds = time.perf_counter() - t0
    print(f"{backbone} ({weights}) features {features.shape} in {feature_seconds:.0f} s")
    fold_of = group_kfold(labels, groups, folds, seed)
    development = np.concatenate([prepared.part("train"), prepared.part("val")])
    test = prepared.part("test")
    results = {}
    for name, make in classifiers().items():
        t0 = time.perf_counter()
        predicted = np.empty(len(labels), dtype=int)
        for fold in range(folds):
            held_out = fold_of == fold
            predicted[held_out] = make().fit(features[~held_out], labels[~held_out]).predict(features[held_out])
        cv = classification_metrics(labels, _one_hot(predicted, len(names)), names, groups, n_boot, seed)
        test_predicted = make().fit(features[development], labels[development]).predict(features[test])
        held = classification_metrics(labels[test], _one_hot(test_predicted, len(names)), names, groups[test],
                                      n_boot, seed)
        results[name] = {"cross_validation": cv, "test_split": held, "seconds": time.perf_counter() - t0}
        print(f"  {name:<30} {folds}-fold accuracy {cv['accuracy']:.3f}, macro-F1 {cv['macro_f1']:.3f}; "
              f"test split macro-F1 {held['macro_f1']:.3f}")
    summary = {"model": f"Model 1: {backbone} features ({'from scratch: random weights' if weights == 'none' else weights})"
                        " + classical classifiers",
               "backbone": backbone, "weights": weights, "seed": seed, "block_size": block_size,
               "task": prepared.task, "classes": names,
               "data": str(prepared.dataset.root), "colour": colour, "folds": folds, "n": int(len(labels)),
               "n_groups": int(len(np.unique(groups))), "feature_seconds": feature_seconds,
               "feature_size": int(features.shape[1]), "preprocess": config.to_dict(), "classifiers": results}
    (out / "classical.json").write_text(json.dumps(summary, indent=2))
    (out / "classical.md").write_text(classical_table(summary))
    return summary


def _with_interval(metrics: dict, key: str) -> str:
    low, high = metrics["ci95"].get(key, (None, None))
    return f"{metrics[key]:.3f}" + (f" [{low:.3f}-{high:.3f}]" if low is not None else "")


def classical_table(summary: dict) -> str:
    """A table shaped like the thesis' Table 1 (macro averages over the classes for more than two)."""
    lines = [f"### {summary['model']}", "",
             f"{summary['task']} ({', '.join(summary['classes'])}), {summary['n']} images in {summary['n_groups']} "
             f"groups, colour {summary['colour']}; {summary['folds']}-fold group cross-validation (95% intervals "
             "resample groups), and the test split of the foundation's group split.", "",
             "| classifier | precision | recall (sensitivity) | accuracy | specificity | macro-F1 | test-split macro-F1 |",
             "|---|---|---|---|---|---|---|"]
    for name, result in summary["classifiers"].items():
        cv = result["cross_validation"]
        lines.append(f"| {name} | {_with_interval(cv, 'macro_precision')} | {_with_interval(cv, 'macro_recall')} | "
                     f"{_with_interval(cv, 'accuracy')} | {_with_interval(cv, 'macro_specificity')} | "
                     f"{_with_interval(cv, 'macro_f1')} | {_with_interval(result['test_split'], 'macro_f1')} |")
    return "\n".join(lines) + "\n"
