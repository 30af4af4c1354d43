"""MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D and GlobalMaxPooling2D."""
import numpy as np

from ..kernels import conv as CK
from ..kernels import pooling as K
from .base import Layer, check_int_tuple, check_padding


class _Pooling2D(Layer):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = check_int_tuple(pool_size, 2, "pool_size", self.describe())
        self.strides = (self.pool_size if strides is None
                        else check_int_tuple(strides, 2, "strides", self.describe()))
        self.padding = check_padding(padding, self.describe())

    def compute_output_shape(self, input_shape):
        self._expect_rank(input_shape, 3, "(batch, height, width, channels)")
        h, w, c = input_shape
        ph, pw = self.pool_size
        if self.padding == "valid" and (h < ph or w < pw):
            raise ValueError(f"{self.describe()}: pool_size {self.pool_size} is larger than the input "
                             f"({h}, {w}) with padding='valid'")
        oh, self._pad_top = CK.conv_output_length(h, ph, self.strides[0], self.padding)
        ow, self._pad_left = CK.conv_output_length(w, pw, self.strides[1], self.padding)
        return (oh, ow, c)

    def _args(self):
        return (*self.pool_size, *self.strides, self._pad_top, self._pad_left)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=list(self.pool_size), strides=list(self.strides), padding=self.padding)
        return config


class MaxPooling2D(_Pooling2D):
    """Max over each ``pool_size`` window, Keras's ``MaxPooling2D``.

    Parameters
    ----------
    pool_size : int or (int, int), default (2, 2)
    strides : int or (int, int), default ``pool_size``
    padding : {'valid', 'same'}, default 'valid'

    Notes
    -----
    Forward records which input won each window; backward sends each output gradient to that
    input alone (``dx[argmax] += dy``). Padded positions never win.
    """

    def forward(self, x, training=False):
        y = self._buffer("y", (x.shape[0],) + self.output_shape)
        self._argmax = self._buffer("argmax", y.shape, np.int32)
        K.maxpool_forward(x, *self._args(), y, self._argmax)
        return y

    def backward(self, grad_out):
        dx = self._buffer("dx", (grad_out.shape[0],) + self.input_shape)
        K.maxpool_backward(np.ascontiguousarray(grad_out), self._argmax, *self._args(), dx)
        return dx


class AveragePooling2D(_Pooling2D):
    """Mean over each window, Keras's ``AveragePooling2D``. With ``padding='same'`` the padded
    positions are not counted in the mean (TensorFlow's rule)."""

    def forward(self, x, training=False):
        y = np.empty((x.shape[0],) + self.output_shape, dtype=x.dtype)
        K.avgpool_forward(x, *self._args(), y)
        return y

    def backward(self, grad_out):
        dx = np.empty((grad_out.shape[0],) + self.input_shape, dtype=grad_out.dtype)
        K.avgpool_backward(np.ascontiguousarray(grad_out), *self._args(), dx)
        return dx


class GlobalAveragePooling2D(Layer):
    """Mean over height and width: ``(N, H, W, C) -> (N, C)``, Keras's ``GlobalAveragePooling2D``."""

    def compute_output_shape(self, input_shape):
        self._expect_rank(input_shape, 3, "(batch, height, width, channels)")
        return (input_shape[2],)

    def forward(self, x, training=False):
        y = np.empty((x.shape[0], x.shape[3]), dtype=x.dtype)
        K.global_avgpool_forward(x, y)
        return y

    def backward(self, grad_out):
        dx = np.empty((grad_out.shape[0],) + self.input_shape, dtype=grad_out.dtype)
        K.global_avgpool_backward(np.ascontiguousarray(grad_out), dx)
        return dx


class GlobalMaxPooling2D(Layer):
    """Maximum over height and width: ``(N, H, W, C) -> (N, C)``, Keras's ``GlobalMaxPooling2D``.

    Backward: each image's and channel's gradient goes to the position that won the maximum (the
    first one on ties), zeros elsewhere.
    """

    def compute_output_shape(self, input_shape):
        self._expect_rank(input_shape, 3, "(batch, height, width, channels)")
        return (input_shape[2],)

    def forward(self, x, training=False):
        y = np.empty((x.shape[0], x.shape[3]), dtype=x.dtype)
        self._argmax = self._buffer("argmax", y.shape, np.int64)
        K.global_maxpool_forward(x, y, self._argmax)
        return y

    def backward(self, grad_out):
        dx = self._buffer("dx", (grad_out.shape[0],) + self.input_shape)
        K.global_maxpool_backward(np.ascontiguousarray(grad_out), self._argmax, dx)
        return dx
