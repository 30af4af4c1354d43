"""Conv2D: a 2-D convolution as BLAS matrix products over chunks of the batch.

The layer (Keras's ``Conv2D``) holds the weights and the activation. The arithmetic is done by an
*implementation*, an object the layer picks when it is built (:meth:`Conv2D.build` sets
``algorithm``, whose setter is the one place the choice is made):

* :class:`Im2col`, any kernel and stride: each receptive field is copied into a row of a column
  matrix (``kernels/conv.py: im2col``), and one product with the kernel gives the output.
* :class:`Pointwise`, 1x1 kernels with stride 1: the input already *is* the column matrix.
* :class:`Winograd`, 3x3 kernels with stride 1, at least ``WINOGRAD_MIN_CHANNELS`` input
  channels and ``WINOGRAD_MIN_TILES`` output tiles: Winograd's F(2x2, 3x3) (``kernels/winograd.py``),
  16 smaller products that do the work of the one large product with 2.25x fewer multiplications.
  Bias and ReLU (the *epilogue*) and a following 2x2 max pooling can run inside its output
  transform. An inference call on fewer than ``WINOGRAD_MIN_INFERENCE_TILES`` tiles runs im2col
  instead (:meth:`Conv2D._inference_implementation`).

An implementation owns everything below the layer: which kernels run, its scratch buffers, the
chunk size, and the split of the batch over threads (``tinycnn/_threads.py``). All follow one
pattern: ``forward(x, y, training, epilogue)`` writes the output into the layer's buffer ``y``
and keeps what its backward pass needs; ``backward(dz2d, epilogue)`` writes the kernel gradient
into ``layer.grads`` and returns the input gradient.
"""
from types import SimpleNamespace
from typing import NamedTuple, Optional

import numpy as np

from .._threads import split_batch, split_batch_sum
from ..kernels import conv as K
from ..kernels import winograd as WG
from ..kernels import winograd4 as WG4
from .base import ActivatedLayer, check_int_tuple, check_padding

# The column matrix of one chunk of the batch is kept near this size, so that it stays in cache
# between im2col and the product and memory stays bounded whatever the batch size.
COLUMN_CHUNK_BYTES = 8 * 2**20
# In training, an im2col layer keeps the whole batch's columns for its backward pass when they take
# at most this much (the first layer of an RGB network: 27 columns), instead of rebuilding them.
KEEP_COLUMNS_BYTES = 32 * 2**20
# The same for the Winograd path: transformed inputs and products of one chunk (V and M together),
# sized to stay in a core's L2 cache between the transforms and the 16 products. A chunk is a run of
# tile rows: whole images when they are small, part of one image when one image is larger (64x64,
# 32 -> 64 channels: 6 MiB of V and M per image). One image, one thread, V and M budget -> ms:
# 64x64 32->64 4 MiB 1.43, 1 MiB 0.84; 32x32 64->128 0.81 -> 0.62.
WINOGRAD_CHUNK_BYTES = 2**20
# ... but a chunk has at least this many times C*F/(C+F) tiles: each chunk reads all of U (16 x C x F),
# which then costs at most half of its V and M traffic (16x16, 128 -> 256: 1 MiB chunks were 15%
# slower than whole images; 8x8, 256 -> 256: 47%).
WINOGRAD_MIN_CHUNK_WORK = 2
# 3x3 stride-1 convolutions with at least this many input channels use Winograd F(2x2, 3x3). With
# fewer channels its 16 matrix products are too thin for BLAS to run well (the first layer of an
# RGB network, C = 3, stays on im2col).
WINOGRAD_MIN_CHANNELS = 16
# ... and at least this many 2x2 output tiles per image. Winograd transforms the kernel on every call
# (16 planes for 9 taps) and makes 16 products of one row per tile: on a 2x2 output (one tile, as
# ResNet-18's last stage at 64x64) im2col's one product is faster (3x3 conv 512->512, batch 32: a
# training step 11.1 ms against 16.0).
WINOGRAD_MIN_TILES = 4
# In inference, a Winograd layer runs im2col for a call with fewer output tiles than this over the
# whole batch: the kernel transform is then not paid back. One image, 3x3 'same', C -> C filters,
# im2col / Winograd time: 16x16 (64 tiles) 1.56 at C = 64, 0.98 at 128, 1.08 at 256; 8x8 (16 tiles)
# 1.31 at 64 but 0.70 at 128 and 0.50 at 256; 4x4 0.41 at 256. Training calls keep the layer's
# implementation, which their backward pass needs.
WINOGRAD_MIN_INFERENCE_TILES = 64
# With the model's ``fast_inference`` on, a Winograd layer runs F(4x4) (:class:`Winograd4x4`) for an
# inference call with at least this many 4x4 output tiles over the batch (its kernel transform makes
# 36 planes, 2.25x F(2x2)'s 16, so it needs more work to pay back).
WINOGRAD4_MIN_INFERENCE_TILES = 64
# ... and at least this many per image (a 16x16 output): on smaller images most 6x6 input tiles reach
# into the padding and are copied out one value at a time (ResNet-18 at 64x64, batch 32: F(4x4) in its
# 8x8 layers too made predict slower than without fast inference).
WINOGRAD4_MIN_IMAGE_TILES = 16


class Conv2D(ActivatedLayer):
    """2-D convolution over NHWC images, Keras's ``Conv2D``.

    Parameters
    ----------
    filters : int
        Number of output channels ``F``.
    kernel_size : int or (int, int)
    strides : int or (int, int), default 1
    padding : {'valid', 'same'}, default 'valid' (as Keras)
    activation : None, 'relu', 'sigmoid', 'tanh' or 'softmax'
    use_bias : bool, default True
    kernel_initializer : default 'glorot_uniform'
    bias_initializer : default 'zeros'

    Weights
    -------
    kernel : ndarray (KH, KW, C_in, F)  -- Keras's layout
    bias : ndarray (F,)

    Notes
    -----
    Output size per spatial axis (TensorFlow's rule):
    ``'valid'``: ``floor((H - KH) / sh) + 1``; ``'same'``: ``ceil(H / sh)``, zero padding split with
    the extra row/column at the bottom/right.

    ``y = activation(conv(x) + bias)``. ``conv(x)`` is computed by the implementation chosen in
    :meth:`build` (module docstring): Winograd for 3x3 stride-1 kernels with 16+ input channels and
    an output of at least 4 tiles of 2x2, im2col otherwise (without the copy for 1x1 stride-1
    kernels); an inference call on a small batch runs im2col in a Winograd layer
    (:meth:`_inference_implementation`). Winograd's result equals im2col's
    up to rounding (float32: ~1e-6 relative). ``layer.algorithm`` tells which a built layer runs
    (``'winograd'`` or ``'im2col'``); setting it after ``build`` switches, e.g. to compare the two.
    ``dilation_rate`` and ``groups`` are not supported.
    """

    weight_names = ("kernel", "bias")

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters <= 0:
            raise ValueError(f"{self.describe()}: invalid value for argument `filters`: expected a positive "
                             f"int, received {filters!r}")
        self.filters = int(filters)
        self.kernel_size = check_int_tuple(kernel_size, 2, "kernel_size", self.describe())
        self.strides = check_int_tuple(strides, 2, "strides", self.describe())
        self.padding = check_padding(padding, self.describe())
        self._init_activation(activation, use_bias, kernel_initializer, bias_initializer)
        self.implementation = None  # Im2col, Pointwise or Winograd: chosen by build
        self._epilogue = None
        self.fast_inference = False  # set through the model's fast_inference (see Winograd4x4)

    def compute_output_shape(self, input_shape):
        self._expect_rank(input_shape, 3, "(batch, height, width, channels)")
        h, w, _ = input_shape
        kh, kw = self.kernel_size
        if self.padding == "valid" and (h < kh or w < kw):
            raise ValueError(f"{self.describe()}: kernel_size {self.kernel_size} is larger than the input "
                             f"({h}, {w}) with padding='valid'; use padding='same' or a smaller kernel")
        oh, _ = K.conv_output_length(h, kh, self.strides[0], self.padding)
        ow, _ = K.conv_output_length(w, kw, self.strides[1], self.padding)
        return (oh, ow, self.filters)

    def build(self, input_shape):
        super().build(input_shape)
        h, w, c = self.input_shape
        kh, kw = self.kernel_size
        _, self._pad_h = K.conv_output_length(h, kh, self.strides[0], self.padding)
        _, self._pad_w = K.conv_output_length(w, kw, self.strides[1], self.padding)
        self.add_weight("kernel", (kh, kw, c, self.filters), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)
        self.algorithm = None  # picks the implementation (the setter below)

    @property
    def algorithm(self):
        """``'winograd'`` or ``'im2col'``: the algorithm of the implementation a built layer runs
        (None before ``build``). Setting it after ``build`` switches the implementation, e.g. to
        compare the two; setting None goes back to the automatic choice."""
        return None if self.implementation is None else self.implementation.algorithm

    @algorithm.setter
    def algorithm(self, algorithm):
        # The one place where a convolution picks its implementation (see the module docstring).
        if not self.built:
            raise ValueError(f"{self.describe()}: `algorithm` can be set once the layer is built")
        unit_strides = tuple(self.strides) == (1, 1)
        winograd_applies = tuple(self.kernel_size) == (3, 3) and unit_strides
        if algorithm is None:
            th, tw = WG.tile_grid(*self.output_shape[:2])
            enough_work = self.input_shape[2] >= WINOGRAD_MIN_CHANNELS and th * tw >= WINOGRAD_MIN_TILES
            algorithm = "winograd" if winograd_applies and enough_work else "im2col"
        if algorithm == "winograd" and winograd_applies:
            self.implementation = Winograd(self)
        elif algorithm == "im2col" and tuple(self.kernel_size) == (1, 1) and unit_strides:
            self.implementation = Pointwise(self)
        elif algorithm == "im2col":
            self.implementation = Im2col(self)
        else:
            raise ValueError(f"{self.describe()}: invalid value for `algorithm`: expected 'im2col', None, or "
                             f"'winograd' for a 3x3 kernel with strides 1, received {algorithm!r} for "
                             f"kernel_size {self.kernel_size} and strides {self.strides}")
        self._epilogue = None
        self._small_batch_im2col = self._fast = None  # see _inference_implementation
        self._ran = self.implementation

    def twin(self):
        twin = super().twin()
        if self.built:  # its own implementation: its own scratch buffers and saved input
            twin.algorithm = self.algorithm
        return twin

    def _inference_implementation(self, n):
        """The implementation an inference call on ``n`` images runs: the layer's own, except that a
        Winograd layer runs im2col when the whole batch has fewer than
        ``WINOGRAD_MIN_INFERENCE_TILES`` output tiles (one scan at a time through a small image),
        where transforming the kernel on every call costs more than the products it saves. The two
        agree up to float32 rounding (~1e-6 relative)."""
        if self.implementation.algorithm != "winograd":
            return self.implementation
        if self.fast_inference:
            th4, tw4 = WG4.tile_grid(*self.output_shape[:2])
            if th4 * tw4 >= WINOGRAD4_MIN_IMAGE_TILES and n * th4 * tw4 >= WINOGRAD4_MIN_INFERENCE_TILES:
                if self._fast is None:
                    self._fast = Winograd4x4(self)
                return self._fast
        th, tw = WG.tile_grid(*self.output_shape[:2])
        if n * th * tw >= WINOGRAD_MIN_INFERENCE_TILES:
            return self.implementation
        if self._small_batch_im2col is None:
            self._small_batch_im2col = Im2col(self)
        return self._small_batch_im2col

    @property
    def _kept_cols(self):
        """The columns an im2col implementation kept from a training forward pass for backward
        (``Im2col.kept_columns``), else None."""
        return getattr(self.implementation, "kept_columns", None)

    def _implementation_epilogue(self, implementation=None, affine=None):
        """The bias and ReLU to apply inside the implementation's output pass, or None when the
        layer applies bias and activation itself (an im2col layer, or an activation other than
        ReLU or none). ``affine``: a folded batch normalization's ``(scale, shift)``, applied last."""
        implementation = self.implementation if implementation is None else implementation
        if not (implementation.applies_epilogue and self.activation.name in ("relu", "linear")):
            return None
        return Epilogue(self.params["bias"] if self.use_bias else None, self.activation.name == "relu",
                        *((self._no_affine(),) * 2 if affine is None else affine))

    def folds_norm(self, norm):
        """True if the batch normalization ``norm``, reading only this layer's output, can be folded
        into the output pass of an inference call (``tinycnn/graph.py``): ReLU or no activation, so
        that its per-channel affine map comes right after the epilogue the pass already applies."""
        from .normalization import BatchNormalization
        return type(norm) is BatchNormalization and self.activation.name in ("relu", "linear")

    def forward(self, x, training=False, affine=None):
        """x (N, H, W, C) -> y (N, OH, OW, F) = activation(conv(x) + bias); with ``affine`` (inference,
        a folded batch normalization's ``(scale, shift)``), ``y * scale + shift`` in the same pass."""
        y = self._buffer("y", (x.shape[0],) + self.output_shape)
        implementation = self.implementation if training else self._inference_implementation(x.shape[0])
        self._epilogue = self._implementation_epilogue(implementation, affine)
        implementation.forward(x, y, training, self._epilogue)
        self._ran = implementation  # what backward must differentiate (Grad-CAM follows inference)
        y2d = y.reshape(-1, self.filters)
        if self._epilogue is None:
            y2d = self._activate(y2d, affine)  # bias and activation here; keeps the logits for the loss
        else:
            self.logits = None if self._epilogue.relu else y2d
        self._y2d = y2d
        return y2d.reshape(y.shape)

    def backward(self, grad_out):
        """dL/dy (N, OH, OW, F) -> dL/dx (N, H, W, C); fills ``grads``."""
        if self._epilogue is None:
            return super().backward(grad_out)  # activation and bias gradient, then _linear_backward
        dy2d = np.ascontiguousarray(grad_out).reshape(-1, self.filters)
        return self._ran.backward(dy2d, self._epilogue)

    def _linear_backward(self, dz2d):
        return self._ran.backward(dz2d)

    # --- 2x2 max pooling computed inside a Winograd layer (a rewrite of the model's plan, tinycnn/graph.py) ---

    def fuses_with(self, pool):
        """True if ``pool`` (the next layer) can be computed inside this layer's output transform:
        a Winograd layer with a ReLU or linear activation, then MaxPooling2D 2x2 with stride 2 whose
        windows are exactly the 2x2 output tiles (even output sides, so no padding either way)."""
        from .pooling import MaxPooling2D
        oh, ow, _ = self.output_shape
        return (self.implementation.pools and self._implementation_epilogue() is not None
                and type(pool) is MaxPooling2D and pool.pool_size == (2, 2) and pool.strides == (2, 2)
                and oh % 2 == 0 and ow % 2 == 0)

    def pools_inside(self, n, training):
        """Whether a call on ``n`` images computes a fused 2x2 max pooling inside the Winograd output
        transform: always in training; in inference unless the batch is small enough for im2col
        (:meth:`_inference_implementation`), which has no pooling inside."""
        return training or self._inference_implementation(n).pools

    def forward_pooled(self, x, training=False, affine=None):
        """``MaxPooling2D((2, 2))(self.forward(x))`` in one pass: the full-size output is never stored.
        Equal, bit for bit, to the two layers run one after the other (tested). ``affine``: as in
        :meth:`forward`, applied to the pooled values."""
        oh, ow, f = self.output_shape
        p = self._buffer("pooled", (x.shape[0], oh // 2, ow // 2, f))
        implementation = self.implementation if training else self._inference_implementation(x.shape[0])
        # the winners' positions, for backward: F(4x4) inference keeps none
        argmax = self._buffer("pooled_argmax", p.shape, np.uint8) if implementation is self.implementation else None
        self._epilogue = self._implementation_epilogue(implementation, affine)
        implementation.forward_pooled(x, p, argmax, self._epilogue)
        self._ran = implementation
        self.logits = None
        return p

    def backward_pooled(self, grad_out):
        """Backward through :meth:`forward_pooled`, from the gradient of the pooled output."""
        return self._ran.backward_pooled(np.ascontiguousarray(grad_out), self._epilogue)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
                      padding=self.padding, **self._activation_config())
        return config


# --- the implementations --------------------------------------------------------------------------

class Epilogue(NamedTuple):
    """Bias and ReLU applied inside an implementation's output pass (for Winograd, in its output
    transform, saving a pass over ``y``): ``y = max(z + bias, 0)`` if ``relu`` else ``z + bias``.
    ``bias`` is the layer's (F,) bias, or None for a layer without one (no bias gradient either).
    ``scale`` and ``shift``: then ``y * scale + shift`` per channel, a batch normalization folded in
    for an inference call; empty arrays otherwise."""
    bias: Optional[np.ndarray]
    relu: bool
    scale: np.ndarray
    shift: np.ndarray


def _kernel_table(**roles):
    """The functions an implementation's chunk loops call, by role: serial Numba kernels (they
    release the GIL, so the threads of a batch split run them at once) and BLAS products. One
    table, looked up as ``self.kernels.<role>``, so that a profiler (``bench/bench_layers.py``) can
    shadow it on an instance with timed versions."""
    return SimpleNamespace(**roles)


def _chunks(lo, hi, step):
    """``(n0, n1)`` for the chunks of ``step`` images that cover the slice ``[lo, hi)``."""
    for n0 in range(lo, hi, step):
        yield n0, min(hi, n0 + step)


class _Implementation:
    """What Im2col and Winograd share: the layer they compute for (its weights, gradients, shapes
    and ``_buffer``), the input kept from forward for backward, and how they print."""

    algorithm = None          # what ``layer.algorithm`` reports
    applies_epilogue = False  # bias and ReLU inside the output pass (else the layer applies them)
    pools = False             # 2x2 max pooling inside the output pass (forward_pooled)

    def __init__(self, layer):
        self.layer = layer
        self._x = None

    def __repr__(self):
        return f"{type(self).__name__}({self.layer.name})"

    def chunk_label(self, n):
        """How a batch of ``n`` is cut into chunks, for profiles (``bench/bench_layers.py``)."""
        return f"{self.chunk_images(n)} img"


class Im2col(_Implementation):
    """Convolution as one matrix product per chunk of images.

    Per chunk, with ``cols`` of shape (chunk * OH * OW, KH * KW * C) (one row per output pixel,
    one column per receptive-field element) and ``W2 = kernel.reshape(KH * KW * C, F)``::

        forward    cols = im2col(x),  z = cols @ W2             (z is already NHWC)
        backward   dW2 = sum over chunks of cols.T @ dz,  dcols = dz @ W2.T,  dx = col2im(dcols)

    Chunks of about ``COLUMN_CHUNK_BYTES`` of columns stay in cache between the copy and the
    product, and bound memory whatever the batch. The backward pass rebuilds the columns instead of
    storing them, trading a cheap copy for a lot of memory; only in training, when the whole
    batch's columns take at most ``KEEP_COLUMNS_BYTES`` (a thin first layer: 3 channels x 9 = 27
    columns), are they kept from the forward pass (``kept_columns``).

    The batch is split over threads (``split_batch``): each thread runs the chunk loop on its
    slice, with its own column buffer; the slices' weight gradients are summed in slot order. A
    batch of one image runs whole, its products on BLAS's threads. No epilogue: the layer adds bias
    and activation after the product.

    ``kernels`` holds every function the chunk loops call, by role; a profiler
    (``bench/bench_layers.py``) may shadow it on an instance with timed versions.
    """

    algorithm = "im2col"
    kernels = _kernel_table(im2col=K.im2col, col2im=K.col2im,
                            forward_product=np.matmul, weight_product=np.matmul, input_product=np.matmul)

    def __init__(self, layer):
        super().__init__(layer)
        self.kept_columns = None  # the training batch's columns, kept from forward for backward

    def chunk_images(self, n):
        """Images per chunk for a batch of ``n``: their columns take about ``COLUMN_CHUNK_BYTES``."""
        oh, ow, _ = self.layer.output_shape
        row_bytes = self._column_width() * self.layer.dtype.itemsize
        return int(max(1, min(n, COLUMN_CHUNK_BYTES // max(1, oh * ow * row_bytes))))

    def _column_width(self):
        return int(np.prod(self.layer.kernel_size)) * self.layer.input_shape[2]

    def _kept_buffer(self, n, training):
        """Room for the whole batch's columns when they are to be kept (see the class docstring)."""
        oh, ow, _ = self.layer.output_shape
        shape = (n * oh * ow, self._column_width())
        if training and shape[0] * shape[1] * self.layer.dtype.itemsize <= KEEP_COLUMNS_BYTES:
            return self.layer._buffer("cols_kept", shape)
        return None

    def _column_buffer(self, slot, step):
        """The columns of one chunk, for the thread in ``slot`` (reused from step to step)."""
        oh, ow, _ = self.layer.output_shape
        return self.layer._buffer(f"cols{slot}", (step * oh * ow, self._column_width()))

    def _columns(self, k, x_chunk, out):
        """im2col of a chunk into ``out`` (rows x KH*KW*C); returns the filled view."""
        layer = self.layer
        oh, ow, _ = layer.output_shape
        kh, kw = layer.kernel_size
        cols = out[: x_chunk.shape[0] * oh * ow]
        k.im2col(x_chunk, kh, kw, layer.strides[0], layer.strides[1], layer._pad_h, layer._pad_w, oh, ow, cols)
        return cols

    def _input_gradient(self, k, dz, w2d, cols, dx_chunk):
        """``dx = col2im(dz @ W2.T)`` for one chunk; the columns' memory takes ``dcols``."""
        layer = self.layer
        oh, ow, _ = layer.output_shape
        kh, kw = layer.kernel_size
        k.input_product(dz, w2d.T, out=cols)
        k.col2im(cols, kh, kw, layer.strides[0], layer.strides[1], layer._pad_h, layer._pad_w, oh, ow, dx_chunk)

    def forward(self, x, y, training=False, epilogue=None):
        """``y = conv(x)`` (no bias): x (N, H, W, C), y (N, OH, OW, F) written."""
        assert epilogue is None, "Im2col applies no epilogue"
        n = x.shape[0]
        oh, ow, f = self.layer.output_shape
        pix = oh * ow
        y2d = y.reshape(-1, f)
        w2d = self.layer.params["kernel"].reshape(-1, f)
        step = self.chunk_images(n)
        kept = self._kept_buffer(n, training)

        def work(lo, hi, slot, serial):
            k = self.kernels
            buf = self._column_buffer(slot, step) if kept is None else None
            for n0, n1 in _chunks(lo, hi, step):
                cols = self._columns(k, x[n0:n1], buf if kept is None else kept[n0 * pix:])
                k.forward_product(cols, w2d, out=y2d[n0 * pix:n1 * pix])

        split_batch(n, work)
        self._x, self.kept_columns = x, kept

    def backward(self, dz2d, epilogue=None):
        """From ``dz2d`` (N * OH * OW, F), the gradient of ``conv(x)``: ``grads['kernel']`` written,
        returns dx (N, H, W, C) (None when ``layer.input_grad_needed`` is False)."""
        assert epilogue is None, "Im2col applies no epilogue"
        layer = self.layer
        x, self._x = self._x, None
        kept, self.kept_columns = self.kept_columns, None
        n = x.shape[0]
        oh, ow, f = layer.output_shape
        pix = oh * ow
        w2d = layer.params["kernel"].reshape(-1, f)
        dx = layer._buffer("dx", x.shape) if layer.input_grad_needed else None
        step = self.chunk_images(n)

        def work(lo, hi, slot, serial):
            k = self.kernels
            buf = self._column_buffer(slot, step) if kept is None else None
            dw = layer._buffer(f"dw{slot}", w2d.shape)
            part = layer._buffer(f"dw_part{slot}", w2d.shape)
            for n0, n1 in _chunks(lo, hi, step):
                cols = self._columns(k, x[n0:n1], buf) if kept is None else kept[n0 * pix:n1 * pix]
                dz = dz2d[n0 * pix:n1 * pix]
                k.weight_product(cols.T, dz, out=dw if n0 == lo else part)
                if n0 > lo:
                    dw += part
                if dx is not None:
                    self._input_gradient(k, dz, w2d, cols, dx[n0:n1])
            return dw  # this slice's dW2

        split_batch_sum(n, work, out=layer.grads["kernel"].reshape(-1, f))
        return dx


class Pointwise(Im2col):
    """Im2col for 1x1 kernels with stride 1: the input viewed as (N * H * W, C) already is the
    column matrix, so there is no copy (and nothing to keep), and ``dx = dz @ W2.T`` directly.
    ``algorithm`` is still ``'im2col'``: the same method, without its copies."""

    def _kept_buffer(self, n, training):
        return None

    def _column_buffer(self, slot, step):
        return None

    def _columns(self, k, x_chunk, out):
        return x_chunk.reshape(-1, x_chunk.shape[-1])

    def _input_gradient(self, k, dz, w2d, cols, dx_chunk):
        k.input_product(dz, w2d.T, out=dx_chunk.reshape(-1, w2d.shape[0]))


class Winograd(_Implementation):
    """Winograd's F(2x2, 3x3) for 3x3 kernels with stride 1 (``kernels/winograd.py``).

    The output is cut into 2x2 tiles (a TH x TW grid per image), each computed from a 4x4 input
    tile. With ``U = G g G^T`` (16, C, F), the transformed kernel, per chunk of images::

        forward    V = B^T d B (16, tiles, C),  M = V @ U (16 products),  y = A^T M A + bias
        backward   dM = A dY A^T,  dU = sum over chunks of V^T @ dM,  dV = dM @ U^T,  dx = B dV B^T,
                   dW = G^T dU G

    With an :class:`Epilogue`, the output transform also adds the bias and applies ReLU, and its
    adjoint takes the ReLU mask (from the kept output) and the bias gradient (one row per tile row
    of the batch, summed in one fixed order, so the split over threads does not change it).
    :meth:`forward_pooled` max-pools each 2x2 output tile on the fly instead of storing it.

    Chunks hold about ``WINOGRAD_CHUNK_BYTES`` of V and M (see :meth:`chunk_tile_rows`): whole
    images, or a run of tile rows of one image, which reads the input rows its tiles cover (a
    view). The tiles of neighbouring chunks overlap by two input rows, whose gradient both chunks
    add to. The batch is split over threads as in :class:`Im2col`, the slices' dU summed in slot
    order. ``kernels``: as :class:`Im2col`.
    """

    algorithm = "winograd"
    applies_epilogue = True  # bias and ReLU in the output transform
    pools = True             # 2x2 max pooling in the output transform
    tile = 2                 # outputs per tile side: F(2x2, 3x3)
    planes = 16              # (tile + 2)^2 transformed values per tile, one product each
    grid = staticmethod(WG.tile_grid)
    prefix = "wino"          # of its buffers' names
    kernels = _kernel_table(
        input_transform=WG.input_transform, output_transform=WG.output_transform,
        output_transform_pool=WG.output_transform_pool, output_adjoint=WG.output_transform_backward,
        output_pool_adjoint=WG.output_transform_pool_backward, input_adjoint=WG.input_transform_backward,
        kernel_transform=WG.kernel_transform, kernel_adjoint=WG.kernel_transform_backward,
        forward_product=np.matmul, weight_product=np.matmul, input_product=np.matmul)

    def __init__(self, layer):
        super().__init__(layer)
        self._y = self._pooled = None  # the output (for a ReLU epilogue's mask), the pooled output

    def chunk_tile_rows(self):
        """Tile rows per chunk: V and M in about ``WINOGRAD_CHUNK_BYTES``, and at least
        ``WINOGRAD_MIN_CHUNK_WORK * C * F / (C + F)`` tiles (a row of tiles is TW tiles, ``planes``
        planes of C + F values each). More than an image's TH rows means whole images per chunk."""
        c, (oh, ow, f) = self.layer.input_shape[2], self.layer.output_shape
        _, tw = self.grid(oh, ow)
        by_bytes = WINOGRAD_CHUNK_BYTES // (self.planes * tw * (c + f) * self.layer.dtype.itemsize)
        by_work = -(-WINOGRAD_MIN_CHUNK_WORK * c * f // ((c + f) * tw))
        return int(max(1, by_bytes, by_work))

    def chunk_images(self, n):
        """Whole images per chunk for a batch of ``n`` (1 when an image is cut into several chunks)."""
        th, _ = self.grid(*self.layer.output_shape[:2])
        return int(max(1, min(n, self.chunk_tile_rows() // th)))

    def chunk_label(self, n):
        th, _ = self.grid(*self.layer.output_shape[:2])
        rows = self.chunk_tile_rows()
        return f"{rows}/{th} tile rows" if rows < th else super().chunk_label(n)

    def _chunk_plan(self, lo, hi):
        """``(n0, n1, a, b)`` for the chunks covering images ``[lo, hi)``: images ``n0..n1-1``,
        their tile rows ``a..b-1`` (``a, b = 0, TH`` for whole images, else ``n1 = n0 + 1``)."""
        th, _ = self.grid(*self.layer.output_shape[:2])
        rows = self.chunk_tile_rows()
        if rows >= th:
            for n0, n1 in _chunks(lo, hi, self.chunk_images(hi - lo)):
                yield n0, n1, 0, th
            return
        for n0 in range(lo, hi):
            for a in range(0, th, rows):
                yield n0, n0 + 1, a, min(th, a + rows)

    def _input_rows(self, a, b):
        """The input rows ``[i0, i1)`` that tile rows ``a..b-1`` read, and the zero padding above
        ``i0`` (tile row ``ti`` starts at input row ``tile * ti - ph`` and is ``tile + 2`` high)."""
        ph, h, t = self.layer._pad_h, self.layer.input_shape[0], self.tile
        i0 = max(0, t * a - ph)
        return i0, min(h, t * b - ph + 2), i0 - t * a + ph

    def _transformed_kernel(self, transform=True):
        """U (planes, C, F). The forward pass computes it; backward reuses it, as the weights have
        not changed since."""
        u = self.layer._buffer(f"{self.prefix}_u", (self.planes, self.layer.input_shape[2], self.layer.filters))
        if transform:
            self.kernels.kernel_transform(self.layer.params["kernel"], u)
        return u

    def _scratch(self, slot, n):
        """V and M of one chunk (batch of ``n``), for the thread in ``slot`` (reused between steps).

        Each of the 16 planes gets one spare row, so that consecutive planes do not start at
        addresses a multiple of 4 KiB apart: the transforms touch all 16 planes at once, and equal
        low address bits would make those 16 streams evict each other from the same cache sets.
        """
        th, tw = self.grid(*self.layer.output_shape[:2])
        rows = min(self.chunk_tile_rows(), th) * self.chunk_images(n) * tw + 1
        return (self.layer._buffer(f"{self.prefix}_v{slot}", (self.planes, rows, self.layer.input_shape[2])),
                self.layer._buffer(f"{self.prefix}_m{slot}", (self.planes, rows, self.layer.filters)))

    def forward(self, x, y, training=False, epilogue=None):
        """``y = conv(x)``, or with ``epilogue`` ``max(conv(x) + bias, 0)`` / ``conv(x) + bias``:
        x (N, H, W, C), y (N, OH, OW, F) written (and kept for a ReLU epilogue's mask)."""
        self._run_forward(x, epilogue, y=y)
        self._y = y

    def forward_pooled(self, x, p, argmax, epilogue):
        """As :meth:`forward`, then 2x2 max pooling: p (N, OH/2, OW/2, F) and the winners' positions
        ``argmax`` (uint8, same shape) written; the full-size output is never stored."""
        self._run_forward(x, epilogue, pool=(p, argmax))
        self._pooled = (p, argmax)

    def _run_forward(self, x, epilogue, y=None, pool=None):
        layer = self.layer
        n = x.shape[0]
        _, tw = self.grid(*layer.output_shape[:2])
        t = self.tile
        u = self._transformed_kernel()
        pw = layer._pad_w
        relu = epilogue is not None and epilogue.relu
        if epilogue is not None and epilogue.bias is not None:
            bias = epilogue.bias
        else:
            bias = layer._buffer("zero_bias", (layer.filters,))
            bias[...] = 0
        scale, shift = (epilogue.scale, epilogue.shift) if epilogue is not None else (layer._no_affine(),) * 2

        def work(lo, hi, slot, serial):
            k = self.kernels
            v, m = self._scratch(slot, n)
            for n0, n1, a, b in self._chunk_plan(lo, hi):
                rows = (n1 - n0) * (b - a) * tw
                i0, i1, ph = self._input_rows(a, b)
                k.input_transform(x[n0:n1, i0:i1], ph, pw, b - a, tw, v)
                k.forward_product(v[:, :rows], u, out=m[:, :rows])
                if pool is None:
                    k.output_transform(m, b - a, tw, bias, relu, y[n0:n1, t * a:t * b], scale, shift)
                else:
                    self._pooled_output(k, m, b - a, tw, bias, relu, pool, n0, n1, a, b, scale, shift)

        split_batch(n, work)
        self._x = x

    @staticmethod
    def _pooled_output(k, m, th, tw, bias, relu, pool, n0, n1, a, b, scale, shift):
        """Output transform and 2x2 max pooling of one chunk (tile rows ``a..b-1``) into the pooled
        output and the winners' positions, ``pool = (p, argmax)``."""
        p, argmax = pool
        k.output_transform_pool(m, th, tw, bias, relu, p[n0:n1, a:b], argmax[n0:n1, a:b], scale, shift)

    def backward(self, dz2d, epilogue=None):
        """From ``dz2d`` (N * OH * OW, F), the gradient of :meth:`forward`'s output (with the
        same ``epilogue``): ``grads['kernel']`` (and ``grads['bias']`` with an epilogue's bias)
        written; returns dx (N, H, W, C), or None when ``layer.input_grad_needed`` is False."""
        n = self._x.shape[0]
        dy = dz2d.reshape((n,) + self.layer.output_shape)
        relu = epilogue is not None and epilogue.relu
        return self._run_backward(epilogue, dy=dy, y=self._y if relu else dy)

    def backward_pooled(self, dp, epilogue):
        """From ``dp``, the gradient of :meth:`forward_pooled`'s pooled output: each window's
        gradient goes to its winner; otherwise as :meth:`backward`."""
        p, argmax = self._pooled
        return self._run_backward(epilogue, pool=(dp.reshape(p.shape), p, argmax))

    def _run_backward(self, epilogue, dy=None, y=None, pool=None):
        layer = self.layer
        x, self._x, self._y = self._x, None, None
        n = x.shape[0]
        oh, ow, f = layer.output_shape
        th, tw = WG.tile_grid(oh, ow)
        u = self._transformed_kernel(transform=False)
        pw = layer._pad_w
        relu = epilogue is not None and epilogue.relu
        dx = layer._buffer("dx", x.shape) if layer.input_grad_needed else None
        db_rows = layer._buffer("wino_db_rows", (n * th, f), np.float64)
        if dx is not None:
            # U^T laid out contiguously: BLAS ran dV = dM @ U^T 1.1-1.8x slower on the transposed view
            ut = layer._buffer("wino_ut", (16, f, x.shape[3]))
            ut[...] = u.transpose(0, 2, 1)

        def work(lo, hi, slot, serial):
            k = self.kernels
            v, m = self._scratch(slot, n)
            du = layer._buffer(f"wino_du{slot}", u.shape)
            part = layer._buffer(f"wino_du_part{slot}", u.shape)
            first = True
            for n0, n1, a, b in self._chunk_plan(lo, hi):
                rows, tile_rows = (n1 - n0) * (b - a) * tw, slice(n0 * th + a, (n1 - 1) * th + b)
                out_rows = slice(2 * a, 2 * b)
                if pool is None:
                    k.output_adjoint(dy[n0:n1, out_rows], y[n0:n1, out_rows], relu, b - a, tw, m, db_rows[tile_rows])
                else:
                    dp, p, argmax = pool
                    k.output_pool_adjoint(dp[n0:n1, a:b], p[n0:n1, a:b], argmax[n0:n1, a:b], relu, b - a, tw, m,
                                          db_rows[tile_rows])
                i0, i1, ph = self._input_rows(a, b)
                k.input_transform(x[n0:n1, i0:i1], ph, pw, b - a, tw, v)
                k.weight_product(v[:, :rows].transpose(0, 2, 1), m[:, :rows], out=du if first else part)
                if not first:
                    du += part
                first = False
                if dx is not None:
                    # V is no longer needed: its memory takes dV
                    k.input_product(m[:, :rows], ut, out=v[:, :rows])
                    # the adjoint overwrites its rows; the top two were the previous chunk's bottom two
                    top = slice(i0, min(i0 + 2, i1))
                    if a > 0:
                        shared = layer._buffer(f"wino_shared{slot}", dx[n0:n1, top].shape)
                        shared[...] = dx[n0:n1, top]
                    k.input_adjoint(v, ph, pw, b - a, tw, dx[n0:n1, i0:i1])
                    if a > 0:
                        dx[n0:n1, top] += shared
            return du  # this slice's dU

        du = split_batch_sum(n, work)
        self.kernels.kernel_adjoint(du, layer.grads["kernel"])
        if epilogue is not None and epilogue.bias is not None:
            # one row per tile row of the batch, summed in one fixed order: independent of the split
            layer.grads["bias"][...] = db_rows.sum(axis=0)
        return dx


class Winograd4x4(Winograd):
    """Winograd's F(4x4, 3x3) (``kernels/winograd4.py``), for inference only: 36 products per 4x4
    outputs where F(2x2) makes 64 (16 per 2x2), and transforms that move 44% less data.

    Its float32 outputs carry an error of about 1e-6 to 1e-5 of the output scale (F(2x2) and
    im2col: about 1e-7): a layer runs it only when its model's ``fast_inference`` is on, in an
    inference call (:meth:`Conv2D._inference_implementation`). Chunks, threads and the fused
    epilogue and pooling are those of :class:`Winograd`; the pooling keeps no winners, as no
    backward pass follows. ``backward`` refuses: training, gradient checks and Grad-CAM run the
    layer's exact implementation.
    """

    tile = 4
    planes = 36
    grid = staticmethod(WG4.tile_grid)
    prefix = "wino4"
    kernels = _kernel_table(
        input_transform=WG4.input_transform, output_transform=WG4.output_transform,
        output_transform_pool=WG4.output_transform_pool, kernel_transform=WG4.kernel_transform,
        forward_product=np.matmul)

    @staticmethod
    def _pooled_output(k, m, th, tw, bias, relu, pool, n0, n1, a, b, scale, shift):
        k.output_transform_pool(m, th, tw, bias, relu, pool[0][n0:n1, 2 * a:2 * b], scale, shift)

    def backward(self, dz2d, epilogue=None):
        raise RuntimeError(f"{self.layer.describe()}: its last forward pass ran F(4x4) Winograd for fast inference, "
                           f"which has no backward pass; run the forward pass again with the model's "
                           f"fast_inference off (Grad-CAM does this itself)")

    backward_pooled = backward
