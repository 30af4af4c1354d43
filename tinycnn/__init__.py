"""tinycnn: a small, readable convolutional-network engine on NumPy and Numba.

    from tinycnn.models import Sequential
    from tinycnn.layers import Conv2D, MaxPooling2D, BatchNormalization, Flatten, Dropout, Dense

Networks with branches use Keras's functional API::

    from tinycnn import Input, Model
    image = Input(shape=(64, 64, 3))
    ...
    model = Model(image, outputs)

The package is built in floors (see README, "How it works"): ``kernels/`` (Numba functions on
arrays), ``layers/`` + losses/optimizers/metrics, ``graph.py`` (the execution plan), ``model.py``
(the training loop), and on top files, data tools, integrations and the command line.
"""
from . import _threads  # noqa: F401  (must run before any parallel kernel: picks the threading layer)
from . import activations, callbacks, gradcheck, initializers, layers, losses, metrics, optimizers, regularizers
from .layers import Input
from .model import Model, Sequential
from .onnx_import import load_onnx  # imports the optional onnx package only when called
from .rng import set_seed
from .saving import load_model, save_model
from .utils import to_categorical

__version__ = "0.1.0"

__all__ = ["Model", "Sequential", "Input", "set_seed", "load_model", "save_model", "load_onnx", "to_categorical",
           "layers", "losses", "optimizers", "metrics", "callbacks", "gradcheck", "initializers", "activations",
           "regularizers"]
