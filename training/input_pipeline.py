"""tf.data pipelines over uint8 image arrays: shuffling, augmentation (training part only), batching.

Images stay uint8 until a batch is formed; the batch is cast to float32 0-255 for the model.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers


def augmentation(seed: int = 0) -> keras.Sequential:
    """Random flips, rotation, shift, zoom and shear, as the thesis did with ImageDataGenerator."""
    return keras.Sequential([
        layers.RandomFlip("horizontal_and_vertical", seed=seed),
        layers.RandomRotation(0.25, fill_mode="reflect", seed=seed + 1),
        layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 2),
        layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 3),
        layers.RandomShear(x_factor=0.1, y_factor=0.1, fill_mode="reflect", seed=seed + 4),
    ], name="augmentation")


def image_dataset(images: np.ndarray, targets: np.ndarray | None = None, batch_size: int = 32,
                  training: bool = False, augment: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Batches of (float32 images 0-255, targets), or images alone when targets is None."""
    if images.dtype != np.uint8:
        raise TypeError(f"image_dataset expects uint8 images, got {images.dtype}")
    data = tf.data.Dataset.from_tensor_slices(images if targets is None else (images, targets))
    if training:
        data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    augmenter = augmentation(seed) if training and augment else None

    def to_model_input(x):
        x = tf.cast(x, tf.float32)
        return augmenter(x, training=True) if augmenter is not None else x

    if targets is None:
        data = data.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        data = data.map(lambda x, y: (to_model_input(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)
