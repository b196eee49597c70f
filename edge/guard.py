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
import zipfile

import numpy as np

STATISTICS = ("mean", "projection", "class_means")
MAX_BYTES = 64 << 20   # per array: 1,280 features x 128 components take 0.66 MB


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


def whiten(features: np.ndarray, statistics: dict[str, np.ndarray]) -> np.ndarray:
    """N x F features in the statistics' whitened principal components (N x components)."""
    width = statistics["mean"].shape[0]
    if features is None or np.ndim(features) != 2 or np.shape(features)[1] != width:
        raise ValueError(f"the guard reads {width} features per image; the model file gives "
                         f"{np.shape(features)[1] if np.ndim(features) == 2 else 'none'}")
    return (np.asarray(features, np.float32) - statistics["mean"]) @ statistics["projection"]


def class_distances(features: np.ndarray, statistics: dict[str, np.ndarray]) -> np.ndarray:
    """Squared distance of each row of N x F features from each class mean, in whitened units (N x classes)."""
    z = whiten(features, statistics)
    return ((z[:, None, :] - statistics["class_means"][None]) ** 2).sum(axis=2)


def mahalanobis(features: np.ndarray, statistics: dict[str, np.ndarray]) -> np.ndarray:
    """Squared distance of each row of N x F features from the nearest class mean, in whitened units."""
    return class_distances(features, statistics).min(axis=1)


def class_mean_probabilities(distances: np.ndarray) -> np.ndarray:
    """The class-means head of an adapted bundle (`leukoscreen adapt`): softmax(-distance / 2), the posterior of
    Gaussian classes sharing one covariance with equal priors (linear discriminant analysis)."""
    logits = -0.5 * np.asarray(distances, np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)


def energy(logits: np.ndarray) -> np.ndarray:
    """-log(sum(exp(logits))) of each row: high where no class has a large logit."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=1)
    return -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))


def save_statistics(statistics: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **statistics)
    return buffer.getvalue()


def load_statistics(content: bytes, components: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of a guard statistics file: a plain .npz of float arrays (nothing pickled is read, and no array
    larger than the file's own bytes allows is allocated). components: the number the manifest records."""
    statistics = {}
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            for name in STATISTICS:
                with archive.open(f"{name}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                    if dtype.kind != "f":
                        raise ValueError(f"{name} is not a plain array of floating-point numbers")
                    if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > archive.getinfo(
                            f"{name}.npy").file_size or archive.getinfo(f"{name}.npy").file_size > MAX_BYTES:
                        raise ValueError(f"{name} declares more numbers than the file holds or allows")
                with archive.open(f"{name}.npy") as member:
                    statistics[name] = np.asarray(np.lib.format.read_array(member, allow_pickle=False), np.float32)
    except ValueError as error:
        raise ValueError(f"not a guard statistics file ({error})") from error
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, TypeError, MemoryError) as error:
        raise ValueError(f"not a guard statistics file (an .npz of {', '.join(STATISTICS)}): "
                         f"{type(error).__name__}") from error
    projection, class_means = statistics["projection"], statistics["class_means"]
    width, kept = projection.shape if projection.ndim == 2 else (0, 0)
    if (kept < 1 or statistics["mean"].shape != (width,) or class_means.ndim != 2 or len(class_means) < 1
            or class_means.shape[1] != kept or not all(np.isfinite(a).all() for a in statistics.values())
            or (components is not None and kept != components) or not np.abs(projection).sum(axis=0).all()):
        raise ValueError("the guard statistics' arrays do not fit together (or with the manifest's components)")
    return statistics
