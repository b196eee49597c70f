"""The unfamiliar-image guard: how far a field (or a cell) is from the images its model was trained on, in the
model's own feature space, from the same model file (its features and logits are outputs 2 and 3).

Two scores, both higher for less familiar images:
- mahalanobis: the squared Mahalanobis distance of the penultimate features from the nearest class mean, with
  one covariance shared by the classes (Lee et al. 2018), computed in the whitened principal components of the
  training features (`statistics`: their mean, the whitening projection and the class means in it);
- energy: the negative log-sum-exp of the logits (Liu et al. 2020).
The threshold is fitted on the validation part (`leukoscreen bundle guard`) and recorded in the manifest. An
image above it gets "Not screened: unlike the images this model was made for", never a decision.
"""
from __future__ import annotations

import io

import numpy as np

STATISTICS = ("mean", "projection", "class_means")


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, components: int,
                    shrinkage: float = 0.05) -> dict[str, np.ndarray]:
    """Statistics of training features (N x F) with their labels: the shared within-class covariance, shrunk
    towards its mean variance by `shrinkage`, kept in its `components` largest principal directions."""
    features = np.asarray(features, np.float64)
    mean = features.mean(axis=0)
    classes = np.unique(labels)
    centred = np.concatenate([features[labels == c] - features[labels == c].mean(axis=0) for c in classes])
    covariance = centred.T @ centred / max(len(centred) - len(classes), 1)
    covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / len(covariance) * np.eye(
        len(covariance))
    values, vectors = np.linalg.eigh(covariance)
    keep = np.argsort(values)[::-1][:components]
    projection = vectors[:, keep] / np.sqrt(values[keep])
    class_means = np.stack([(features[labels == c].mean(axis=0) - mean) @ projection for c in classes])
    return {"mean": mean.astype(np.float32), "projection": projection.astype(np.float32),
            "class_means": class_means.astype(np.float32)}


def mahalanobis(features: np.ndarray, statistics: dict[str, np.ndarray]) -> np.ndarray:
    """Squared distance of each row of N x F features from the nearest class mean, in whitened units."""
    width = statistics["mean"].shape[0]
    if features is None or np.ndim(features) != 2 or np.shape(features)[1] != width:
        raise ValueError(f"the guard reads {width} features per image; the model file gives "
                         f"{np.shape(features)[1] if np.ndim(features) == 2 else 'none'}")
    z = (np.asarray(features, np.float32) - statistics["mean"]) @ statistics["projection"]
    return ((z[:, None, :] - statistics["class_means"][None]) ** 2).sum(axis=2).min(axis=1)


def energy(logits: np.ndarray) -> np.ndarray:
    """-log(sum(exp(logits))) of each row: high where no class has a large logit."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=1)
    return -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))


def save_statistics(statistics: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **statistics)
    return buffer.getvalue()


def load_statistics(content: bytes) -> dict[str, np.ndarray]:
    """The arrays of a guard statistics file (a plain .npz: no pickled objects are read)."""
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as arrays:
            statistics = {name: np.asarray(arrays[name], np.float32) for name in STATISTICS}
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"not a guard statistics file ({error})") from error
    width, components = statistics["projection"].shape if statistics["projection"].ndim == 2 else (0, 0)
    if (statistics["mean"].shape != (width,) or statistics["class_means"].ndim != 2
            or statistics["class_means"].shape[1] != components or not all(np.isfinite(a).all()
                                                                           for a in statistics.values())):
        raise ValueError("the guard statistics' arrays do not fit together")
    return statistics
