"""Grad-CAM points at the evidence: a hand-built network whose class-1 score is the amount of red."""
import keras
import numpy as np

from leukoscreen.training.explain import gradcam, last_conv_layer, overlay


def test_gradcam_heat_lies_on_the_evidence():
    inputs = keras.Input((32, 32, 3))
    maps = keras.layers.Conv2D(1, 1, activation="relu", name="redness")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(maps)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    model.get_layer("redness").set_weights([np.array([1.0, -1.0, -1.0]).reshape(1, 1, 3, 1), np.zeros(1)])
    model.layers[-1].set_weights([np.array([[-0.1, 0.1]]), np.zeros(2)])
    image = np.full((32, 32, 3), 40, np.uint8)
    image[20:28, 4:12] = (250, 10, 10)  # a red patch, bottom left
    assert last_conv_layer(model) == "redness"
    heat, index, probability = gradcam(model, image)
    assert index == 1 and probability > 0.5
    assert heat.shape == (32, 32) and heat[20:28, 4:12].mean() > 0.9 and heat[:16].max() < 0.05
    assert overlay(image, heat).shape == image.shape
