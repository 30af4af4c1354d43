"""BatchNormalization over the last (channel) axis."""
import numpy as np

from .. import initializers
from ..kernels import normalization as K
from .base import Layer


class BatchNormalization(Layer):
    """Batch normalization, Keras's ``BatchNormalization`` (``axis=-1``).

    Parameters
    ----------
    momentum : float, default 0.99
    epsilon : float, default 1e-3
    center, scale : bool, default True
        Learn ``beta`` / ``gamma``. When False the parameter is fixed (0 / 1) and left out of the
        weights, as in Keras.

    Weights
    -------
    ``[gamma, beta, moving_mean, moving_variance]``, each ``(C,)``; the last two are not trainable.

    Notes
    -----
    Training mode, statistics over every axis but the channel one (``M`` values per channel):

        mean = sum(x) / M,   var = sum((x - mean)^2) / M          (biased, as Keras)
        y = gamma * (x - mean) / sqrt(var + epsilon) + beta
        moving_mean     = momentum * moving_mean     + (1 - momentum) * mean
        moving_variance = momentum * moving_variance + (1 - momentum) * var

    Inference mode: the same map with ``moving_mean`` and ``moving_variance``.

    Backward in training mode (``inv = 1/sqrt(var + epsilon)``, ``xhat = (x - mean) * inv``):

        dbeta = sum(dy),  dgamma = sum(dy * xhat),
        dx = gamma * inv * (dy - dbeta / M - xhat * dgamma / M)

    The mean and variance depend on every sample, hence the two extra terms. In inference mode they
    are constants and ``dx = gamma * inv * dy``.
    """

    weight_names = ("gamma", "beta", "moving_mean", "moving_variance")

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        if axis != -1:
            raise ValueError(f"{self.describe()}: invalid value for argument `axis`: only -1 (channels in "
                             f"NHWC) is supported, received {axis!r}")
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0 <= momentum <= 1:
            raise ValueError(f"{self.describe()}: invalid value for argument `momentum`: expected a float in "
                             f"[0, 1], received {momentum!r}")
        if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or not epsilon > 0:
            raise ValueError(f"{self.describe()}: invalid value for argument `epsilon`: expected a float > 0, "
                             f"received {epsilon!r}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        for argument, value in (("center", center), ("scale", scale)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{self.describe()}: invalid value for argument `{argument}`: expected a bool, "
                                 f"received {value!r}")
        self.center = bool(center)
        self.scale = bool(scale)
        #: Training-mode forward passes since the statistics were initialised (see statistics_settled).
        self.updates = 0
        #: True once the moving statistics come from data rather than from their initial 0 and 1: set
        #: by ``Model.recalibrate_batchnorm`` and by ``set_weights`` (weights from Keras, an ONNX file),
        #: and kept through later training updates, which move data-based statistics on from there.
        self.recalibrated = False

    def statistics_settled(self, tolerance=0.05):
        """False only while training has started to move the statistics but their initial values
        still weigh at least ``tolerance`` (``momentum ** updates``: fewer than 299 updates at momentum
        0.99). An untrained layer (0 updates), or one whose statistics were recalibrated or set with
        ``set_weights`` (then fine-tuned or not: the values training started from were data's), counts
        as settled."""
        return self.recalibrated or self.updates == 0 or self.momentum ** self.updates < tolerance

    def set_weights(self, weights):
        super().set_weights(weights)
        self.recalibrated = True  # the moving statistics were given, e.g. trained elsewhere

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.describe()}: expected input of rank >= 2, received input with shape "
                             f"{(None,) + tuple(input_shape)}")
        return tuple(input_shape)

    def build(self, input_shape):
        super().build(input_shape)
        c = (self.input_shape[-1],)
        if self.scale:
            self.add_weight("gamma", c, initializers.ones)
        if self.center:
            self.add_weight("beta", c, initializers.zeros)
        self.add_weight("moving_mean", c, initializers.zeros, trainable=False)
        self.add_weight("moving_variance", c, initializers.ones, trainable=False)

    def _gamma_beta(self):
        c = self.input_shape[-1]
        gamma = self.params["gamma"].astype(np.float64) if self.scale else np.ones(c)
        beta = self.params["beta"].astype(np.float64) if self.center else np.zeros(c)
        return gamma, beta

    def forward(self, x, training=False):
        c = self.input_shape[-1]
        x2d = x.reshape(-1, c)
        if training:
            mean, var = K.moments(x2d)
            self.state["moving_mean"][...] = (self.momentum * self.state["moving_mean"]
                                              + (1 - self.momentum) * mean)
            self.state["moving_variance"][...] = (self.momentum * self.state["moving_variance"]
                                                  + (1 - self.momentum) * var)
            self.updates += 1
        else:
            mean = self.state["moving_mean"].astype(np.float64)
            var = self.state["moving_variance"].astype(np.float64)
        inv = 1.0 / np.sqrt(var + self.epsilon)
        gamma, beta = self._gamma_beta()
        scale = gamma * inv
        shift = beta - mean * scale
        y = self._buffer("y", x.shape)
        K.channel_affine(x2d, scale.astype(self.dtype), shift.astype(self.dtype), y.reshape(-1, c))
        self._x2d, self._mean, self._inv, self._training = x2d, mean, inv, training
        return y

    def inference_affine(self):
        """``(scale, shift)`` of the inference-mode forward pass, ``y = x * scale + shift`` per channel
        (from the moving statistics, computed as :meth:`forward` does), for folding this layer into the
        output pass of the convolution before it (``tinycnn/graph.py``)."""
        mean = self.state["moving_mean"].astype(np.float64)
        var = self.state["moving_variance"].astype(np.float64)
        gamma, beta = self._gamma_beta()
        scale = gamma * (1.0 / np.sqrt(var + self.epsilon))
        return scale.astype(self.dtype), (beta - mean * scale).astype(self.dtype)

    def backward(self, grad_out):
        c = self.input_shape[-1]
        dy2d = np.ascontiguousarray(grad_out).reshape(-1, c)
        m = dy2d.shape[0]
        mean = self._mean.astype(self.dtype)
        sum_dy, sum_dy_xc = K.backward_sums(dy2d, self._x2d, mean)
        dbeta = sum_dy
        dgamma = sum_dy_xc * self._inv
        if self.scale:
            self.grads["gamma"][...] = dgamma
        if self.center:
            self.grads["beta"][...] = dbeta
        gamma, _ = self._gamma_beta()
        a = gamma * self._inv
        if self._training:
            b = -a * self._inv * dgamma / m
            cc = -a * dbeta / m
        else:
            b = np.zeros(c)
            cc = np.zeros(c)
        dx = self._buffer("dx", dy2d.shape)
        K.backward_apply(dy2d, self._x2d, mean, a.astype(self.dtype), b.astype(self.dtype),
                         cc.astype(self.dtype), dx)
        return dx.reshape(grad_out.shape)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, epsilon=self.epsilon, center=self.center, scale=self.scale)
        return config
