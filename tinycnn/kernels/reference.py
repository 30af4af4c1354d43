"""The textbook versions: every operation as plain, obvious Python loops over NumPy arrays.

Slow on purpose. Read these first to see *what* is computed; read the fast kernels next to see *how*
it is made quick. ``tests/test_kernels.py`` checks that both give the same numbers.

Layouts are those of the package: images NHWC ``(N, H, W, C)``, convolution kernels
``(KH, KW, C_in, C_out)``.
"""
import math

import numpy as np


def conv_output_length(size, kernel, stride, padding):
    """Output length and leading padding (TensorFlow rule; see ``conv.conv_output_length``)."""
    if padding == "valid":
        return (size - kernel) // stride + 1, 0
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2


# --- convolution ----------------------------------------------------------------------------------

def conv2d_forward(x, w, b, strides=(1, 1), padding="valid"):
    """y[n,i,j,f] = b[f] + sum_{a,c,ch} x[n, i*sh-ph+a, j*sw-pw+c, ch] * w[a,c,ch,f]"""
    n_img, h, wd, cin = x.shape
    kh, kw, _, cout = w.shape
    sh, sw = strides
    oh, ph = conv_output_length(h, kh, sh, padding)
    ow, pw = conv_output_length(wd, kw, sw, padding)
    y = np.zeros((n_img, oh, ow, cout), dtype=x.dtype)
    for n in range(n_img):
        for i in range(oh):
            for j in range(ow):
                for f in range(cout):
                    total = b[f] if b is not None else 0.0
                    for a in range(kh):
                        for c in range(kw):
                            hi, wi = i * sh - ph + a, j * sw - pw + c
                            if 0 <= hi < h and 0 <= wi < wd:
                                for ch in range(cin):
                                    total += x[n, hi, wi, ch] * w[a, c, ch, f]
                    y[n, i, j, f] = total
    return y


def conv2d_backward(x, w, dy, strides=(1, 1), padding="valid"):
    """Gradients (dx, dw, db) of sum(y * dy): each product in the forward sum sends its share back."""
    n_img, h, wd, cin = x.shape
    kh, kw, _, cout = w.shape
    sh, sw = strides
    _, ph = conv_output_length(h, kh, sh, padding)
    _, pw = conv_output_length(wd, kw, sw, padding)
    oh, ow = dy.shape[1], dy.shape[2]
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    db = dy.sum(axis=(0, 1, 2))
    for n in range(n_img):
        for i in range(oh):
            for j in range(ow):
                for f in range(cout):
                    g = dy[n, i, j, f]
                    for a in range(kh):
                        for c in range(kw):
                            hi, wi = i * sh - ph + a, j * sw - pw + c
                            if 0 <= hi < h and 0 <= wi < wd:
                                for ch in range(cin):
                                    dx[n, hi, wi, ch] += g * w[a, c, ch, f]
                                    dw[a, c, ch, f] += g * x[n, hi, wi, ch]
    return dx, dw, db


# --- pooling --------------------------------------------------------------------------------------

def _windows(h, w, pool, strides, padding):
    """Yield (i, j, [(hi, wi), ...]) for every output position, in-image positions only."""
    oh, pt = conv_output_length(h, pool[0], strides[0], padding)
    ow, pl = conv_output_length(w, pool[1], strides[1], padding)
    for i in range(oh):
        for j in range(ow):
            cells = [(i * strides[0] - pt + a, j * strides[1] - pl + c)
                     for a in range(pool[0]) for c in range(pool[1])]
            yield i, j, [(hi, wi) for hi, wi in cells if 0 <= hi < h and 0 <= wi < w]


def maxpool_forward(x, pool=(2, 2), strides=None, padding="valid"):
    strides = strides or pool
    n_img, h, w, c = x.shape
    oh, _ = conv_output_length(h, pool[0], strides[0], padding)
    ow, _ = conv_output_length(w, pool[1], strides[1], padding)
    y = np.zeros((n_img, oh, ow, c), dtype=x.dtype)
    for n in range(n_img):
        for i, j, cells in _windows(h, w, pool, strides, padding):
            for ch in range(c):
                y[n, i, j, ch] = max(x[n, hi, wi, ch] for hi, wi in cells)
    return y


def maxpool_backward(x, dy, pool=(2, 2), strides=None, padding="valid"):
    """The gradient goes to the (first) largest element of each window."""
    strides = strides or pool
    n_img, h, w, c = x.shape
    dx = np.zeros_like(x)
    for n in range(n_img):
        for i, j, cells in _windows(h, w, pool, strides, padding):
            for ch in range(c):
                values = [x[n, hi, wi, ch] for hi, wi in cells]
                hi, wi = cells[int(np.argmax(values))]
                dx[n, hi, wi, ch] += dy[n, i, j, ch]
    return dx


def avgpool_forward(x, pool=(2, 2), strides=None, padding="valid"):
    strides = strides or pool
    n_img, h, w, c = x.shape
    oh, _ = conv_output_length(h, pool[0], strides[0], padding)
    ow, _ = conv_output_length(w, pool[1], strides[1], padding)
    y = np.zeros((n_img, oh, ow, c), dtype=x.dtype)
    for n in range(n_img):
        for i, j, cells in _windows(h, w, pool, strides, padding):
            for ch in range(c):
                y[n, i, j, ch] = sum(x[n, hi, wi, ch] for hi, wi in cells) / len(cells)
    return y


def avgpool_backward(x, dy, pool=(2, 2), strides=None, padding="valid"):
    strides = strides or pool
    n_img, h, w, c = x.shape
    dx = np.zeros_like(x)
    for n in range(n_img):
        for i, j, cells in _windows(h, w, pool, strides, padding):
            for hi, wi in cells:
                dx[n, hi, wi, :] += dy[n, i, j, :] / len(cells)
    return dx


def global_avgpool_forward(x):
    return x.mean(axis=(1, 2))


def global_avgpool_backward(x, dy):
    h, w = x.shape[1], x.shape[2]
    return np.broadcast_to(dy[:, None, None, :] / (h * w), x.shape).copy()


def global_maxpool_forward(x):
    return x.max(axis=(1, 2))


def global_maxpool_backward(x, dy):
    """The gradient goes to the first position holding each image's and channel's maximum."""
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c)
    winner = flat.argmax(axis=1)                       # first maximum, as the kernel picks it
    dx = np.zeros_like(flat)
    for i in range(n):
        for ch in range(c):
            dx[i, winner[i, ch], ch] = dy[i, ch]
    return dx.reshape(x.shape)


# --- batch normalization --------------------------------------------------------------------------

def batchnorm_forward(x, gamma, beta, eps):
    """Training mode over every axis but the last. Returns y, batch mean, batch variance."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    xhat = (x - mean) / np.sqrt(var + eps)
    return gamma * xhat + beta, mean, var


def batchnorm_backward(x, dy, gamma, eps):
    """The three-term formula: dx = gamma / sqrt(var+eps) * (dy - mean(dy) - xhat * mean(dy*xhat))."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = ((x - mean) ** 2).mean(axis=axes)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    dx = gamma * inv * (dy - dy.mean(axis=axes) - xhat * (dy * xhat).mean(axis=axes))
    return dx, dgamma, dbeta


def batchnorm_inference(x, gamma, beta, moving_mean, moving_var, eps):
    return gamma * (x - moving_mean) / np.sqrt(moving_var + eps) + beta


# --- activations, dropout -------------------------------------------------------------------------

def relu(z):
    return np.maximum(z, 0)


def relu_backward(dy, y):
    return dy * (y > 0)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(dy, y):
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def dropout(x, u, rate):
    """Inverted dropout: keep where u >= rate and divide by the keep probability."""
    keep = u >= rate
    return np.where(keep, x / (1 - rate), 0).astype(x.dtype), keep


# --- losses (per sample, from logits) -------------------------------------------------------------

def log_softmax(z):
    top = z.max(axis=-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))


def cross_entropy_from_logits(z, y):
    """Per-sample loss and d(sum of losses)/dz."""
    logp = log_softmax(z)
    return -(y * logp).sum(axis=-1), np.exp(logp) * y.sum(axis=-1, keepdims=True) - y


def focal_from_logits(z, y, alpha, gamma):
    """Per-sample focal loss -sum a y (1-p)^g log p; its gradient by the textbook chain rule."""
    logp = log_softmax(z)
    p = np.exp(logp)
    q = 1 - p
    loss = -(alpha * y * q ** gamma * logp).sum(axis=-1)
    # dL/dp_k, then through the softmax Jacobian J_kj = p_k (delta_kj - p_j).
    dl_dp = -alpha * y * (q ** gamma / p - gamma * q ** (gamma - 1) * logp)
    return loss, softmax_backward(dl_dp, p)


# --- optimizers -----------------------------------------------------------------------------------

def adam_step(p, g, m, v, t, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """One Keras Adam step; returns new (p, m, v)."""
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g * g
    lr_t = lr * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    return p - lr_t * m / (np.sqrt(v) + epsilon), m, v


# --- augmentation (kernels/augment.py) ------------------------------------------------------------
# Each augmentation is a linear map of the image once its random parameters are drawn; the backward
# twins apply the transpose of that map.

def flip_images(x, flips):
    """flips[n] = (vertical, horizontal): reverse the rows and/or the columns of image n."""
    y = x.copy()
    for n in range(x.shape[0]):
        if flips[n][0]:
            y[n] = y[n, ::-1, :, :]
        if flips[n][1]:
            y[n] = y[n, :, ::-1, :]
    return y


def fill_index(k, length, fill_mode):
    """Index that integer position k reads along an axis of `length` pixels; None means fill_value.

    constant: k k k k | a b c d | k k k k     nearest: a a a a | a b c d | d d d d
    reflect:  d c b a | a b c d | d c b a     wrap:    a b c d | a b c d | a b c d
    """
    if 0 <= k < length:
        return k
    if fill_mode == "constant":
        return None
    if fill_mode == "nearest":
        return min(max(k, 0), length - 1)
    if fill_mode == "reflect":
        p = k % (2 * length)
        return p if p < length else 2 * length - 1 - p
    return k % length


def sample_point(image, ys, xs, fill_mode="constant", fill_value=0.0, interpolation="bilinear"):
    """The value of `image` (H, W, C) at the real-valued point (ys, xs): a blend of up to 4 pixels."""
    h, w, c = image.shape

    def pixel(r, col):
        r, col = fill_index(r, h, fill_mode), fill_index(col, w, fill_mode)
        return np.full(c, fill_value, dtype=np.float64) if r is None or col is None else image[r, col]

    if interpolation == "nearest":
        return pixel(math.floor(ys + 0.5), math.floor(xs + 0.5))
    y0, x0 = math.floor(ys), math.floor(xs)
    fy, fx = ys - y0, xs - x0
    return ((1 - fy) * (1 - fx) * pixel(y0, x0) + (1 - fy) * fx * pixel(y0, x0 + 1)
            + fy * (1 - fx) * pixel(y0 + 1, x0) + fy * fx * pixel(y0 + 1, x0 + 1))


def sample_weights(ys, xs, h, w, fill_mode="constant", interpolation="bilinear"):
    """The same blend as a list of ((row, col), weight), in-image pixels only (the fill is a constant)."""
    if interpolation == "nearest":
        taps = [((math.floor(ys + 0.5), math.floor(xs + 0.5)), 1.0)]
    else:
        y0, x0 = math.floor(ys), math.floor(xs)
        fy, fx = ys - y0, xs - x0
        taps = [((y0, x0), (1 - fy) * (1 - fx)), ((y0, x0 + 1), (1 - fy) * fx),
                ((y0 + 1, x0), fy * (1 - fx)), ((y0 + 1, x0 + 1), fy * fx)]
    out = []
    for (r, col), weight in taps:
        r, col = fill_index(r, h, fill_mode), fill_index(col, w, fill_mode)
        if r is not None and col is not None:
            out.append(((r, col), weight))
    return out


def affine_transform(x, transforms, fill_mode="constant", fill_value=0.0, interpolation="bilinear"):
    """Output (i, j) of image n = input n at xs = a0 j + a1 i + a2, ys = b0 j + b1 i + b2."""
    n_img, h, w, _ = x.shape
    y = np.zeros_like(x)
    for n in range(n_img):
        a0, a1, a2, b0, b1, b2 = transforms[n][:6]
        for i in range(h):
            for j in range(w):
                y[n, i, j] = sample_point(x[n], b0 * j + b1 * i + b2, a0 * j + a1 * i + a2, fill_mode,
                                          fill_value, interpolation)
    return y


def affine_transform_backward(dy, transforms, fill_mode="constant", interpolation="bilinear"):
    """Transpose of affine_transform: each output gradient goes back to the pixels that output read."""
    n_img, h, w, _ = dy.shape
    dx = np.zeros_like(dy)
    for n in range(n_img):
        a0, a1, a2, b0, b1, b2 = transforms[n][:6]
        for i in range(h):
            for j in range(w):
                for (r, col), weight in sample_weights(b0 * j + b1 * i + b2, a0 * j + a1 * i + a2, h, w,
                                                       fill_mode, interpolation):
                    dx[n, r, col] += weight * dy[n, i, j]
    return dx


def rotate_images(x, angles, fill_mode="constant", fill_value=0.0, interpolation="bilinear"):
    """Rotate image n by angles[n] radians about its centre (Keras's convention): output point p reads
    the input at R(angle) (p - centre) + centre, with p = (column, row)."""
    n_img, h, w, _ = x.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y = np.zeros_like(x)
    for n in range(n_img):
        cos, sin = math.cos(angles[n]), math.sin(angles[n])
        for i in range(h):
            for j in range(w):
                xs = cos * (j - cx) - sin * (i - cy) + cx
                ys = sin * (j - cx) + cos * (i - cy) + cy
                y[n, i, j] = sample_point(x[n], ys, xs, fill_mode, fill_value, interpolation)
    return y


def translate_images(x, shifts, fill_mode="constant", fill_value=0.0, interpolation="bilinear"):
    """Move image n down by shifts[n][0] and right by shifts[n][1] pixels: output (i, j) reads the
    input at (i - dy, j - dx)."""
    n_img, h, w, _ = x.shape
    y = np.zeros_like(x)
    for n in range(n_img):
        dy, dx = shifts[n]
        for i in range(h):
            for j in range(w):
                y[n, i, j] = sample_point(x[n], i - dy, j - dx, fill_mode, fill_value, interpolation)
    return y


def adjust_contrast(x, factors):
    """Per image and channel: y = (x - mean) * factor + mean, mean over the image's pixels."""
    y = np.zeros_like(x)
    for n in range(x.shape[0]):
        for ch in range(x.shape[3]):
            mean = x[n, :, :, ch].mean()
            y[n, :, :, ch] = (x[n, :, :, ch] - mean) * factors[n] + mean
    return y


def adjust_contrast_backward(dy, factors):
    """y = f x + (1 - f) mean(x), so dx = f dy + (1 - f) mean(dy) (the mean's share reaches every pixel)."""
    dx = np.zeros_like(dy)
    for n in range(dy.shape[0]):
        for ch in range(dy.shape[3]):
            g = dy[n, :, :, ch]
            dx[n, :, :, ch] = factors[n] * g + (1 - factors[n]) * g.mean()
    return dx


# --- Winograd F(2x2, 3x3) -------------------------------------------------------------------------

WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=float)
WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=float)


def winograd_conv3x3(x, w, padding="same"):
    """A 3x3 stride-1 convolution by Winograd's F(2x2, 3x3), one tile at a time (no bias).

    For every 2x2 block of outputs, with ``d`` the 4x4 block of (padded) input under it:
    ``y_block = A^T [ sum_c (G w_c G^T) * (B^T d_c B) ] A``. Equal to :func:`conv2d_forward` up to
    rounding; ``kernels/winograd.py`` computes the same thing with 16 matrix products.
    """
    n_img, h, wd, c = x.shape
    f = w.shape[3]
    oh, ph = conv_output_length(h, 3, 1, padding)
    ow, pw = conv_output_length(wd, 3, 1, padding)
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    xp = np.zeros((n_img, 2 * th + 2, 2 * tw + 2, c), dtype=x.dtype)  # every tile fits inside
    rows, cols = min(h, 2 * th + 2 - ph), min(wd, 2 * tw + 2 - pw)
    xp[:, ph:ph + rows, pw:pw + cols] = x[:, :rows, :cols]
    u = np.einsum("ia,abcf,jb->ijcf", WINOGRAD_G, w, WINOGRAD_G)              # (4, 4, C, F)
    y = np.zeros((n_img, 2 * th, 2 * tw, f), dtype=x.dtype)
    for n in range(n_img):
        for ti in range(th):
            for tj in range(tw):
                d = xp[n, 2 * ti:2 * ti + 4, 2 * tj:2 * tj + 4]                       # (4, 4, C)
                v = np.einsum("ip,pqc,jq->ijc", WINOGRAD_BT, d, WINOGRAD_BT)       # (4, 4, C)
                m = np.einsum("ijc,ijcf->ijf", v, u)                               # (4, 4, F)
                y[n, 2 * ti:2 * ti + 2, 2 * tj:2 * tj + 2] = np.einsum("ai,ijf,bj->abf", WINOGRAD_AT, m,
                                                                       WINOGRAD_AT)
    return y[:, :oh, :ow]
