"""Keras-style import path: ``from tinycnn.models import Sequential, load_model``; and the
reference architecture of tinycnn's showcase, ready-made."""
from .model import Sequential
from .saving import load_model, save_model

__all__ = ["Sequential", "load_model", "save_model", "reference_model"]


def reference_model(input_shape=(64, 64, 3), num_classes=2, augment=False, seed=None):
    """The reference medical-image classifier (the program in README), as a ``Sequential``.

    Four 3x3 'same' convolutions (32, 64, 128, 256 filters, ReLU), batch normalisation after the
    first three, 2x2 max pooling after the last three, Flatten, Dropout(0.5) and a softmax Dense
    layer of ``num_classes`` units. About 0.46 GFLOP per 64x64x3 image forward.

    Parameters
    ----------
    input_shape : (H, W, C)
    num_classes : int
    augment : bool
        Put ``RandomFlip`` and ``RandomRotation(0.05)`` in front (active in training only).
    seed : int, optional
        Seed of the augmentation layers' generators.
    """
    from .layers import (BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, RandomFlip,
                         RandomRotation)
    first = {"input_shape": tuple(input_shape)}
    layers = []
    if augment:
        layers += [RandomFlip("horizontal_and_vertical", seed=seed, **first), RandomRotation(0.05, seed=seed)]
        first = {}
    layers += [
        Conv2D(32, (3, 3), padding="same", activation="relu", **first),
        BatchNormalization(),
        Conv2D(64, (3, 3), padding="same", activation="relu"),
        MaxPooling2D((2, 2)),
        BatchNormalization(),
        Conv2D(128, (3, 3), padding="same", activation="relu"),
        MaxPooling2D((2, 2)),
        BatchNormalization(),
        Conv2D(256, (3, 3), padding="same", activation="relu"),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dropout(0.5),
        Dense(num_classes, activation="softmax"),
    ]
    return Sequential(layers)
