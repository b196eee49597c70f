"""Hyperparameter search for the ODRNN (thesis 3.18): the Red Deer Algorithm, random search, or the
default configuration, at a fixed budget of evaluations scored on the validation part (macro-F1).

Each evaluation trains a network for a few epochs on the training part of the group split. Every result
is appended to `evaluations.jsonl` as it comes, with progress on the terminal; a search that was stopped
resumes: the seeded optimiser asks for the same configurations again, and those already in the file are
taken from it instead of being trained again. The best configuration is then trained in full (a normal
run folder with test metrics). `tune_head` is the thesis' other use of RDA: adjusting a trained
network's output-layer weights, scored on validation data.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from leukoscreen.edge.stain import STAINED_LOWER, STAINED_UPPER
from leukoscreen.edge.preprocessing import SCALE_BAR_CORNER, PreprocessConfig
from leukoscreen.training.prepared_data import prepare, preprocessed_images
from leukoscreen.training.red_deer import Dimension, random_search, red_deer
from leukoscreen.training.runs import TrainConfig

SPACE = [
    Dimension("sequence", "choice", choices=("rows", "cnn")),
    Dimension("cell", "choice", choices=("lstm", "gru")),
    Dimension("layers", "int", 1, 3),
    Dimension("units", "int", 16, 128),
    Dimension("bidirectional", "choice", choices=(False, True)),
    Dimension("dropout", "float", 0.0, 0.5),
    Dimension("learning_rate", "float", 3e-4, 3e-3, log=True),
]
DEFAULT = {"sequence": "rows", "cell": "lstm", "layers": 2, "units": 64, "bidirectional": False, "dropout": 0.2,
           "learning_rate": 1e-3}
METHODS = ("rda", "random", "default")


def _macro_f1(labels: np.ndarray, probabilities: np.ndarray) -> float:
    from sklearn.metrics import f1_score
    return float(f1_score(labels, probabilities.argmax(axis=1), average="macro"))


class Evaluator:
    """Trains one configuration for a few epochs and scores it on the validation part."""

    def __init__(self, data: str, task: str | None, input_size: int, hsv: tuple, epochs: int, seed: int,
                 balanced_validation: bool = False):
        from leukoscreen.training.models import cpu_has_bfloat16
        self.precision = "mixed_bfloat16" if cpu_has_bfloat16() else "float32"
        self.prepared = prepare(data, task, seed=seed)
        self.task = self.prepared.task
        self.preprocess = PreprocessConfig(input_size=input_size, mask_corner=SCALE_BAR_CORNER,
                                           hsv_lower=hsv[0], hsv_upper=hsv[1])
        self.images = preprocessed_images(self.prepared.paths, self.prepared.sha256s, self.preprocess)
        self.train_index, self.val_index = self.prepared.part("train"), self.prepared.part("val")
        self.epochs, self.seed, self.balanced_validation = epochs, seed, balanced_validation

    def __call__(self, params: dict) -> float:
        import keras
        keras.mixed_precision.set_global_policy(self.precision)
        try:
            return self._score(params)
        finally:  # the process's other models (the final training, tests) start from float32
            keras.mixed_precision.set_global_policy("float32")

    def _score(self, params: dict) -> float:
        import keras
        from sklearn.utils.class_weight import compute_class_weight

        from leukoscreen.training.evaluation import predict_probabilities
        from leukoscreen.training.input_pipeline import image_dataset
        from leukoscreen.training.models import build_model
        from leukoscreen.training.train import targets_for
        keras.utils.set_random_seed(self.seed)
        classes = self.prepared.class_names
        labels = self.prepared.labels
        options = {k: v for k, v in params.items() if k != "learning_rate"}
        model = build_model("odrnn", len(classes), self.preprocess.input_size, options=options)
        loss = "binary_crossentropy" if len(classes) == 2 else "sparse_categorical_crossentropy"
        model.compile(optimizer=keras.optimizers.Adam(params["learning_rate"]), loss=loss)
        weights = compute_class_weight("balanced", classes=np.arange(len(classes)), y=labels[self.train_index])
        train = image_dataset(self.images[self.train_index], targets_for(labels[self.train_index], len(classes)),
                              32, training=True, augment=True, seed=self.seed)
        val = image_dataset(self.images[self.val_index], targets_for(labels[self.val_index], len(classes)), 64,
                            sample_weights=weights[labels[self.val_index]] if self.balanced_validation else None)
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
        model.fit(train, validation_data=val, epochs=self.epochs, verbose=0, callbacks=[stop],
                  class_weight=dict(enumerate(weights.tolist())))
        return _macro_f1(labels[self.val_index], predict_probabilities(model, self.images[self.val_index]))


def run_search(data: str, out: Path, method: str = "rda", budget: int = 20, seed: int = 0, task: str | None = None,
               epochs: int = 10, input_size: int = 64, hsv: tuple | None = None, population: int = 8,
               males: int = 3, final_epochs: int = 40, balanced_validation: bool = False, deterministic: bool = False,
               evaluator=None) -> dict:
    """deterministic: TensorFlow's op determinism for the whole process, so that a configuration scores the
    same every time it is evaluated with the same seed (without it, short trainings on 2 threads differ)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: use one of {', '.join(METHODS)}")
    if method != "default" and budget < (population if method == "rda" else 1):
        raise ValueError(f"budget {budget}: RDA needs at least its population ({population}) evaluations")
    if epochs < 1 or input_size < 8:
        raise ValueError(f"epochs {epochs} and input size {input_size} must be positive (input size >= 8)")
    hsv = hsv or (STAINED_LOWER, STAINED_UPPER)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "evaluations.jsonl"
    settings = {"data": data, "method": method, "budget": budget, "seed": seed, "task": task, "epochs": epochs,
                "input_size": input_size, "hsv_lower": list(hsv[0]), "hsv_upper": list(hsv[1])}
    # options recorded only when set, so searches made before they existed still resume
    settings.update({name: True for name, value in (("balanced_validation", balanced_validation),
                                                     ("deterministic", deterministic)) if value})
    settings_file = out / "search.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise ValueError(f"{out} holds a search with other settings ({settings_file}); use another --out")
    settings_file.write_text(json.dumps(settings, indent=2))
    earlier = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    if deterministic:
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    evaluate = evaluator or Evaluator(data, task, input_size, hsv, epochs, seed, balanced_validation)
    calls = []
    started = time.perf_counter()

    def objective(params: dict) -> float:
        index = len(calls)
        if index < len(earlier) and earlier[index]["params"] == json.loads(json.dumps(params)):
            score, seconds, resumed = earlier[index]["val_macro_f1"], earlier[index]["seconds"], True
        else:
            t0 = time.perf_counter()
            score, resumed = evaluate(params), False
            seconds = time.perf_counter() - t0
            with open(log, "a") as handle:
                handle.write(json.dumps({"index": index, "params": params, "val_macro_f1": score,
                                         "seconds": round(seconds, 1)}) + "\n")
        calls.append(score)
        print(f"[{method} seed {seed}] evaluation {index + 1}/{budget if method != 'default' else 1}: "
              f"validation macro-F1 {score:.3f} (best {max(calls):.3f}){' (from the log)' if resumed else ''} {params}",
              flush=True)
        return 1.0 - score

    if method == "rda":
        result = red_deer(objective, SPACE, budget, seed, population=population, males=min(males, population - 1))
        best_params, best_score = result.best_params, 1.0 - result.best_value
    elif method == "random":
        result = random_search(objective, SPACE, budget, seed)
        best_params, best_score = result.best_params, 1.0 - result.best_value
    else:
        best_params, best_score = DEFAULT, 1.0 - objective(DEFAULT)
    summary = {**settings, "task": evaluate.task, "evaluations": len(calls), "best_params": best_params,
               "best_val_macro_f1": best_score,
               "search_seconds": round(time.perf_counter() - started, 1),
               "evaluation_seconds": round(sum(e.get("seconds", 0) for e in _read(log)), 1)}
    if final_epochs:
        from leukoscreen.training.train import train
        config = TrainConfig(data=data, model="odrnn", task=evaluate.task, epochs=final_epochs, seed=seed,
                             balanced_validation=balanced_validation,
                             learning_rate=best_params["learning_rate"],
                             model_options={k: v for k, v in best_params.items() if k != "learning_rate"},
                             preprocess=PreprocessConfig(input_size=input_size, mask_corner=SCALE_BAR_CORNER,
                                                         hsv_lower=hsv[0], hsv_upper=hsv[1]))
        metrics = train(config, out / "best-run")
        summary["test"] = {k: metrics[k] for k in ("accuracy", "macro_f1")} | {"ci95": {
            k: metrics["ci95"][k] for k in ("accuracy", "macro_f1")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _read(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def tune_head(run_path: Path, out: Path, budget: int = 300, seed: int = 0, spread: float = 0.5) -> dict:
    """RDA on the output layer's weights, starting from the trained values (each weight may move by up to
    `spread` times the layer's weight standard deviation), scored on validation macro-F1 (ties broken by
    cross-entropy). Writes a copy of the run with the adjusted head and its test metrics."""
    import shutil

    import keras

    from leukoscreen.training.evaluation import evaluate_run
    from leukoscreen.training.runs import RunFolder
    run = RunFolder(run_path)
    config = run.config()
    prepared = prepare(config.data, config.task, config.kind, config.block_size, config.near_distance, config.seed,
                       split_file=run.split_file)
    val = prepared.part("val")
    images = preprocessed_images([prepared.paths[i] for i in val], [prepared.sha256s[i] for i in val],
                                 config.preprocess)
    model = run.load_model()
    head = model.layers[-1]
    features = keras.Model(model.input, head.input).predict(images.astype(np.float32), verbose=0)
    kernel, bias = head.get_weights()
    start = np.concatenate([kernel.ravel(), bias])
    scale = spread * float(kernel.std())
    labels = prepared.labels[val]

    def probabilities_for(weights: np.ndarray) -> np.ndarray:
        w, b = weights[: kernel.size].reshape(kernel.shape), weights[kernel.size:]
        logits = features @ w + b
        if logits.shape[1] == 1:
            p = 1 / (1 + np.exp(-logits[:, 0]))
            return np.stack([1 - p, p], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def score(weights: np.ndarray) -> tuple[float, float]:
        p = probabilities_for(weights)
        return _macro_f1(labels, p), float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-9, 1))))

    space = [Dimension(f"w{i}", "float", -1.0, 1.0) for i in range(start.size)]

    def objective(params: dict) -> float:
        f1, loss = score(start + scale * np.array(list(params.values())))
        return (1.0 - f1) + 0.01 * loss

    before = score(start)
    result = red_deer(objective, space, budget, seed)
    tuned = start + scale * np.array(list(result.best_params.values()))
    if (1.0 - before[0]) + 0.01 * before[1] <= result.best_value:  # nothing found beats the trained weights
        tuned = start
    after = score(tuned)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run.path, out, ignore=shutil.ignore_patterns("evaluation-*"))
    head.set_weights([tuned[: kernel.size].reshape(kernel.shape), tuned[kernel.size:]])
    model.save(out / "model.keras")
    metrics = evaluate_run(out, out_dir=out)
    summary = {"run": str(run.path), "budget": budget, "seed": seed, "spread": spread,
               "val_macro_f1_before": before[0], "val_macro_f1_after": after[0],
               "test_macro_f1_before": run.metrics()["macro_f1"], "test_macro_f1_after": metrics["macro_f1"]}
    (out / "head_tuning.json").write_text(json.dumps(summary, indent=2))
    print(f"output layer tuned by RDA: validation macro-F1 {before[0]:.3f} -> {after[0]:.3f}; test "
          f"{summary['test_macro_f1_before']:.3f} -> {summary['test_macro_f1_after']:.3f}")
    return summary
