"""Floor 2: one class per layer, with Keras's names, arguments and defaults.

Every layer has ``build(input_shape)``, ``forward(x, training)`` and, next to it,
``backward(grad_out) -> grad_in``; trainable parameters live in ``layer.params[name]`` and their
gradients in ``layer.grads[name]``.
"""
from .augmentation import RandomContrast, RandomFlip, RandomRotation, RandomTranslation
from .base import Layer
from .conv import Conv2D
from .core import Activation, Dense, Dropout, Flatten, Input, InputLayer, ReLU, Softmax
from .merge import Add, Average, Concatenate, Multiply, Subtract
from .normalization import BatchNormalization
from .pooling import AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D

__all__ = ["Layer", "Conv2D", "Dense", "Flatten", "Dropout", "Activation", "ReLU", "Softmax", "Input",
           "InputLayer", "BatchNormalization", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
           "GlobalMaxPooling2D", "Add", "Subtract", "Multiply", "Average", "Concatenate",
           "RandomFlip", "RandomRotation", "RandomTranslation", "RandomContrast"]

#: The classes a saved model may name, and nothing else (see ``saving.py``).
LAYER_CLASSES = {name: globals()[name] for name in __all__ if name not in ("Layer", "Input")}
