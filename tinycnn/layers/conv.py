"""Conv2D: a 2-D convolution as BLAS matrix products per batch chunk: im2col, or Winograd for 3x3."""
import numpy as np

from ..kernels import conv as K
from .._threads import split_batch
from ..kernels import winograd as WG
from .base import ActivatedLayer, check_int_tuple, check_padding

# The column matrix of one chunk of the batch is kept near this size, so that it stays in cache
# between im2col and the product and memory stays bounded whatever the batch size.
COLUMN_CHUNK_BYTES = 8 * 2**20
# In training, an im2col layer keeps the whole batch's columns for its backward pass when they take
# at most this much (the first layer of an RGB network: 27 columns), instead of rebuilding them.
KEEP_COLUMNS_BYTES = 32 * 2**20
# The same for the Winograd path: transformed inputs and products of one chunk (V and M together).
WINOGRAD_CHUNK_BYTES = 4 * 2**20
# 3x3 stride-1 convolutions with at least this many input channels use Winograd F(2x2, 3x3). With
# fewer channels its 16 matrix products are too thin for BLAS to run well (the first layer of an
# RGB network, C = 3, stays on im2col).
WINOGRAD_MIN_CHANNELS = 16


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

    Forward, for each chunk of images: ``cols = im2col(x)`` (rows = output pixels, columns =
    receptive field), ``y = cols @ kernel.reshape(-1, F)``; the result is already NHWC. Backward:
    ``dW = cols.T @ dz``, ``dcols = dz @ W.T``, ``dx = col2im(dcols)``. The columns are rebuilt in
    the backward pass instead of being stored, trading a cheap copy for a lot of memory.

    3x3 kernels with stride 1 and at least ``WINOGRAD_MIN_CHANNELS`` (16) input channels use
    Winograd's F(2x2, 3x3) instead (``kernels/winograd.py``): 16 smaller products replace the one
    large product and do the same work with 2.25x fewer multiplications (measured on the reference
    model: the step went from ~365 to ~305 ms). The result equals im2col's up to rounding (float32:
    ~1e-6 relative). ``layer.algorithm`` tells which path a built layer takes; setting it to
    ``'im2col'`` after ``build`` switches a Winograd layer back, e.g. to compare the two.
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
        # 1x1 kernels with stride 1 need no im2col: the input *is* the column matrix.
        self._pointwise = (kh, kw) == (1, 1) and self.strides == (1, 1)
        winograd = (kh, kw) == (3, 3) and self.strides == (1, 1) and c >= WINOGRAD_MIN_CHANNELS
        self.algorithm = "winograd" if winograd else "im2col"
        self._kept_cols = None

    def _chunk_images(self, n):
        oh, ow, _ = self.output_shape
        row_bytes = np.prod(self.kernel_size) * self.input_shape[2] * self.dtype.itemsize
        return int(max(1, min(n, COLUMN_CHUNK_BYTES // max(1, oh * ow * row_bytes))))

    def _columns(self, x_chunk, out, serial=False):
        """im2col of a chunk into ``out`` (rows x KH*KW*C); returns the filled view."""
        oh, ow, _ = self.output_shape
        kh, kw = self.kernel_size
        if self._pointwise:
            return x_chunk.reshape(-1, x_chunk.shape[-1])
        cols = out[: x_chunk.shape[0] * oh * ow]
        im2col = K.im2col_serial if serial else K.im2col
        im2col(x_chunk, kh, kw, self.strides[0], self.strides[1], self._pad_h, self._pad_w, oh, ow, cols)
        return cols

    def _column_buffer(self, slot, step):
        if self._pointwise:
            return None
        oh, ow, _ = self.output_shape
        return self._buffer(f"cols{slot}", (step * oh * ow, int(np.prod(self.kernel_size)) * self.input_shape[2]))

    def forward(self, x, training=False):
        n = x.shape[0]
        oh, ow, f = self.output_shape
        y = self._buffer("y", (n, oh, ow, f))
        y2d = y.reshape(-1, f)
        self._x = x
        if self.algorithm == "winograd" and self._epilogue_in_transform():
            # bias and ReLU are applied inside the output transform: no extra pass over y
            self._winograd_forward(x, y, self.activation.name == "relu")
            self.logits = None if self.activation.name == "relu" else y2d
            self._y2d = y2d
            return y
        if self.algorithm == "winograd":
            self._winograd_forward(x, y, relu=False, with_bias=False)
        else:
            self._im2col_forward(x, y2d, training)
        self._y2d = self._activate(y2d)
        return self._y2d.reshape(n, oh, ow, f)

    def _epilogue_in_transform(self):
        return self.activation.name in ("relu", "linear")

    def backward(self, grad_out):
        if self.algorithm == "winograd" and self._epilogue_in_transform():
            # the ReLU mask and the bias gradient are taken inside the output transform's adjoint
            dy2d = np.ascontiguousarray(grad_out).reshape(-1, self.filters)
            return self._winograd_backward(dy2d, relu=self.activation.name == "relu", bias_grad=self.use_bias)
        return super().backward(grad_out)

    # --- 2x2 max pooling fused into a Winograd layer (a rewrite of the model's plan, tinycnn/graph.py) ---

    def fuses_with(self, pool):
        """True if ``pool`` (the next layer) can be computed inside this layer's output transform:
        a Winograd layer with a ReLU or linear activation, then MaxPooling2D 2x2 with stride 2 whose
        windows are exactly the 2x2 output tiles (even output sides, so no padding either way)."""
        from .pooling import MaxPooling2D
        oh, ow, _ = self.output_shape
        return (self.algorithm == "winograd" and self._epilogue_in_transform() and type(pool) is MaxPooling2D
                and pool.pool_size == (2, 2) and pool.strides == (2, 2) and oh % 2 == 0 and ow % 2 == 0)

    def forward_pooled(self, x, training=False):
        """``MaxPooling2D((2, 2))(self.forward(x))`` in one pass: the full-size output is never stored.
        Equal, bit for bit, to the two layers run one after the other (tested)."""
        n = x.shape[0]
        oh, ow, f = self.output_shape
        p = self._buffer("pooled", (n, oh // 2, ow // 2, f))
        argmax = self._buffer("pooled_argmax", p.shape, np.int32)
        self._x = x
        self._winograd_forward(x, None, self.activation.name == "relu", pool=(p, argmax))
        self.logits = None
        self._pooled = (p, argmax)
        return p

    def backward_pooled(self, grad_out):
        """Backward through :meth:`forward_pooled`, from the gradient of the pooled output."""
        p, argmax = self._pooled
        dp = np.ascontiguousarray(grad_out).reshape(p.shape)
        return self._winograd_backward(None, relu=self.activation.name == "relu", bias_grad=self.use_bias,
                                       pool=(dp, p, argmax))

    def _im2col_forward(self, x, y2d, training):
        """``y2d = im2col(x) @ W`` chunk by chunk (no bias/activation).

        In training, when the whole batch's columns fit in ``KEEP_COLUMNS_BYTES`` (a thin first
        layer: 3 channels x 9 = 27 columns), they are kept for the backward pass instead of being
        rebuilt there."""
        n = x.shape[0]
        oh, ow, f = self.output_shape
        pix = oh * ow
        w2d = self.params["kernel"].reshape(-1, f)
        step = self._chunk_images(n)
        width = w2d.shape[0]
        keep = training and not self._pointwise and n * pix * width * self.dtype.itemsize <= KEEP_COLUMNS_BYTES
        kept = self._buffer("cols_kept", (n * pix, width)) if keep else None

        def work(lo, hi, slot, serial):
            buf = None if keep else self._column_buffer(slot, step)
            for n0 in range(lo, hi, step):
                n1 = min(hi, n0 + step)
                cols = self._columns(x[n0:n1], kept[n0 * pix:] if keep else buf, serial)
                np.matmul(cols, w2d, out=y2d[n0 * pix:n1 * pix])

        split_batch(n, work)
        self._kept_cols = kept

    def _linear_backward(self, dz2d):
        if self.algorithm == "winograd":
            return self._winograd_backward(dz2d, relu=False, bias_grad=False)
        x = self._x
        n = x.shape[0]
        oh, ow, f = self.output_shape
        pix = oh * ow
        kh, kw = self.kernel_size
        w2d = self.params["kernel"].reshape(-1, f)
        dx = self._buffer("dx", x.shape) if self.input_grad_needed else None
        step = self._chunk_images(n)
        dw_parts = {}
        kept, self._kept_cols = self._kept_cols, None

        def work(lo, hi, slot, serial):
            buf = None if kept is not None else self._column_buffer(slot, step)
            dw = self._buffer(f"dw{slot}", w2d.shape)
            part = self._buffer(f"dw_part{slot}", w2d.shape)
            col2im = K.col2im_serial if serial else K.col2im
            for n0 in range(lo, hi, step):
                n1 = min(hi, n0 + step)
                if kept is not None:
                    cols = kept[n0 * pix:n1 * pix]
                else:
                    cols = self._columns(x[n0:n1], buf, serial)
                dz = dz2d[n0 * pix:n1 * pix]
                np.matmul(cols.T, dz, out=dw if n0 == lo else part)
                if n0 > lo:
                    dw += part
                if dx is None:
                    continue
                if self._pointwise:
                    np.matmul(dz, w2d.T, out=dx[n0:n1].reshape(-1, w2d.shape[0]))
                else:
                    dcols = cols  # the columns are no longer needed: reuse their memory
                    np.matmul(dz, w2d.T, out=dcols)
                    col2im(dcols, kh, kw, self.strides[0], self.strides[1], self._pad_h, self._pad_w,
                           oh, ow, dx[n0:n1])
            dw_parts[slot] = dw

        split_batch(n, work)
        dw2d = self.grads["kernel"].reshape(-1, f)
        dw2d[...] = dw_parts[0]
        for slot in range(1, len(dw_parts)):  # in slot order: the same sum on every run
            dw2d += dw_parts[slot]
        self._x = None
        return dx

    # --- Winograd F(2x2, 3x3) for 3x3 stride-1 kernels (see kernels/winograd.py) -------------------

    def _winograd_plan(self, n, transform_kernel=True):
        """Tile grid and chunk size (images) of the Winograd path, and the transformed kernel U
        (computed by the forward pass; backward reuses it, as the weights have not changed since)."""
        oh, ow, f = self.output_shape
        c = self.input_shape[2]
        th, tw = WG.tile_grid(oh, ow)
        per_image = 16 * th * tw * (c + f) * self.dtype.itemsize
        step = int(max(1, min(n, WINOGRAD_CHUNK_BYTES // per_image)))
        u = self._buffer("wino_u", (16, c, f))
        if transform_kernel:
            WG.kernel_transform(self.params["kernel"], u)
        return th, tw, step, u

    def _winograd_buffers(self, slot, step, th, tw):
        """V and M of one chunk, for the thread in ``slot`` (reused between steps).

        Each of the 16 planes gets one spare row, so that consecutive planes do not start at
        addresses a multiple of 4 KiB apart: the transforms touch all 16 planes at once, and equal
        low address bits would make those 16 streams evict each other from the same cache sets
        (measured: the input transform ran 2-3x slower without it).
        """
        rows = step * th * tw + 1
        return (self._buffer(f"wino_v{slot}", (16, rows, self.input_shape[2])),
                self._buffer(f"wino_m{slot}", (16, rows, self.output_shape[2])))

    def _winograd_forward(self, x, y, relu, with_bias=True, pool=None):
        """``y = conv(x) + bias`` (then ReLU if ``relu``): per chunk, V = B^T d B, M = V @ U,
        y = A^T M A + bias. With ``pool = (p, argmax)``, y is max-pooled 2x2 on the fly into those
        instead (``y`` unused)."""
        th, tw, step, u = self._winograd_plan(x.shape[0])
        ph, pw = self._pad_h, self._pad_w
        if with_bias and self.use_bias:
            bias = self.params["bias"]
        else:
            bias = self._buffer("zero_bias", (self.filters,))
            bias[...] = 0

        def work(lo, hi, slot, serial):
            v, m = self._winograd_buffers(slot, step, th, tw)
            inp = WG.input_transform_serial if serial else WG.input_transform
            out = WG.output_transform_serial if serial else WG.output_transform
            out_pool = WG.output_transform_pool_serial if serial else WG.output_transform_pool
            for n0 in range(lo, hi, step):
                n1 = min(hi, n0 + step)
                rows = (n1 - n0) * th * tw
                inp(x[n0:n1], ph, pw, th, tw, v)
                np.matmul(v[:, :rows], u, out=m[:, :rows])
                if pool is None:
                    out(m, th, tw, bias, relu, y[n0:n1])
                else:
                    out_pool(m, th, tw, bias, relu, pool[0][n0:n1], pool[1][n0:n1])

        split_batch(x.shape[0], work)

    def _winograd_backward(self, dy2d, relu, bias_grad, pool=None):
        """dZ = dY * (y > 0) if ``relu``; dM = A dZ A^T (with the bias gradient); dU = V^T @ dM
        (-> dW = G^T dU G); dV = dM @ U^T (-> dx = B dV B^T). With ``pool = (dp, p, argmax)``, dY is
        the pooled gradient ``dp``, sent to each window's winner (``dy2d`` unused)."""
        x = self._x
        n = x.shape[0]
        oh, ow, f = self.output_shape
        if pool is None:
            dy = dy2d.reshape(n, oh, ow, f)
            y = self._y2d.reshape(n, oh, ow, f) if relu else dy
        th, tw, step, u = self._winograd_plan(n, transform_kernel=False)
        ph, pw = self._pad_h, self._pad_w
        dx = self._buffer("dx", x.shape) if self.input_grad_needed else None
        db_rows = self._buffer("wino_db_rows", (n * th, f), np.float64)
        du_parts = {}

        def work(lo, hi, slot, serial):
            v, m = self._winograd_buffers(slot, step, th, tw)
            du = self._buffer(f"wino_du{slot}", u.shape)
            part = self._buffer(f"wino_du_part{slot}", u.shape)
            inp = WG.input_transform_serial if serial else WG.input_transform
            out_back = WG.output_transform_backward_serial if serial else WG.output_transform_backward
            pool_back = WG.output_transform_pool_backward_serial if serial else WG.output_transform_pool_backward
            inp_back = WG.input_transform_backward_serial if serial else WG.input_transform_backward
            for n0 in range(lo, hi, step):
                n1 = min(hi, n0 + step)
                rows = (n1 - n0) * th * tw
                if pool is None:
                    out_back(dy[n0:n1], y[n0:n1], relu, th, tw, m, db_rows[n0 * th:n1 * th])
                else:
                    dp, p, argmax = pool
                    pool_back(dp[n0:n1], p[n0:n1], argmax[n0:n1], relu, th, tw, m, db_rows[n0 * th:n1 * th])
                inp(x[n0:n1], ph, pw, th, tw, v)
                np.matmul(v[:, :rows].transpose(0, 2, 1), m[:, :rows], out=du if n0 == lo else part)
                if n0 > lo:
                    du += part
                if dx is not None:
                    # V is no longer needed: its memory takes dV
                    np.matmul(m[:, :rows], u.transpose(0, 2, 1), out=v[:, :rows])
                    inp_back(v, ph, pw, th, tw, dx[n0:n1])
            du_parts[slot] = du

        split_batch(n, work)
        du = du_parts[0]
        for slot in range(1, len(du_parts)):  # in slot order: the same sum on every run
            du += du_parts[slot]
        WG.kernel_transform_backward(du, self.grads["kernel"])
        if bias_grad:
            # one row per tile row of the batch, summed in one fixed order: independent of the split
            self.grads["bias"][...] = db_rows.sum(axis=0)
        self._x = None
        return dx

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
                      padding=self.padding, **self._activation_config())
        return config
