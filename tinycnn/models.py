"""Keras-style import path: ``from tinycnn.models import Model, Sequential, load_model``; and
ready-made networks: the reference architecture of tinycnn's showcase, and residual networks."""
from .layers import (Activation, Add, BatchNormalization, Conv2D, Dense, Dropout, Flatten, GlobalAveragePooling2D,
                     Input, MaxPooling2D, RandomFlip, RandomRotation)
from .model import Model, Sequential
from .saving import load_model, save_model

__all__ = ["Model", "Sequential", "load_model", "save_model", "reference_model", "resnet", "resnet18"]


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


def _conv_bn(x, filters, kernel_size, strides, name, relu=True):
    """Conv2D (no bias: batch norm's beta replaces it) -> BatchNormalization -> ReLU."""
    x = Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = BatchNormalization(name=f"{name}_bn")(x)
    return Activation("relu", name=f"{name}_relu")(x) if relu else x


def _basic_block(x, filters, strides, name):
    """ResNet's basic block: two 3x3 convolutions and a shortcut, ``relu(F(x) + shortcut(x))``.
    The shortcut is the identity, or a 1x1 convolution (the projection) when the block changes
    the resolution or the width."""
    y = _conv_bn(x, filters, 3, strides, f"{name}_1")
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", relu=False)
    shortcut = x
    if strides != 1 or x.sample_shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_proj", relu=False)
    return Activation("relu", name=f"{name}_out")(Add(name=f"{name}_add")([y, shortcut]))


def resnet(input_shape=(28, 28, 1), num_classes=2, blocks=(2, 2, 2, 2), width=64, small_input=None, augment=False,
           seed=None, name=None):
    """A residual network of basic blocks (He et al. 2016), built with the functional API.

    Parameters
    ----------
    input_shape : (H, W, C)
    num_classes : int
        Softmax outputs.
    blocks : tuple of int
        Basic blocks per stage; stage ``s`` has ``width * 2**s`` filters and halves the resolution
        (but the first). ``(2, 2, 2, 2)`` is ResNet-18, ``(3, 4, 6, 3)`` ResNet-34.
    width : int
        Filters of the first stage (64 in the paper; smaller for quick experiments).
    small_input : bool, optional
        Stem for small images, as MedMNIST v2 does at 28x28: one 3x3 stride-1 convolution and no
        max pooling. Otherwise the paper's stem: a 7x7 stride-2 convolution and a 3x3 stride-2 max
        pooling. Default: small for images of at most 32 pixels a side.
    augment : bool
        Put ``RandomFlip`` and ``RandomRotation(0.05)`` after the input (active in training only).
    seed : int, optional
        Seed of the augmentation layers' generators.
    name : str, optional

    The head is global average pooling and a softmax ``Dense`` layer.
    """
    if small_input is None:
        small_input = max(input_shape[:2]) <= 32
    image = x = Input(shape=tuple(input_shape), name="image")
    if augment:
        x = RandomFlip("horizontal_and_vertical", seed=seed, name="flip")(x)
        x = RandomRotation(0.05, seed=seed, name="rotate")(x)
    if small_input:
        x = _conv_bn(x, width, 3, 1, "stem")
    else:
        x = _conv_bn(x, width, 7, 2, "stem")
        x = MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, count in enumerate(blocks):
        for b in range(count):
            strides = 2 if (stage > 0 and b == 0) else 1
            x = _basic_block(x, width * 2**stage, strides, f"stage{stage + 1}_block{b + 1}")
    x = GlobalAveragePooling2D(name="pool")(x)
    outputs = Dense(num_classes, activation="softmax", name="classifier")(x)
    return Model(image, outputs, name=name or f"resnet{2 + 2 * sum(blocks)}")


def resnet18(input_shape=(28, 28, 1), num_classes=2, width=64, small_input=None, augment=False, seed=None):
    """ResNet-18 (four stages of two basic blocks), the MedMNIST v2 baseline; see :func:`resnet`."""
    return resnet(input_shape, num_classes, (2, 2, 2, 2), width, small_input, augment, seed, name="resnet18")
