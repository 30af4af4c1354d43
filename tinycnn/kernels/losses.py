"""Loss values and their gradients, one sample (row) at a time.

Every kernel writes the per-sample loss into ``loss`` (N,) and the gradient of
``sum_i w[i] * loss[i]`` into ``grad``; the caller picks ``w`` (sample weights divided by the batch
size gives Keras's "sum over batch size" mean).

From logits ``z`` (the softmax is folded in, so nothing is ever ``log(0)``):

    log p_k = z_k - logsumexp(z),  logsumexp(z) = max(z) + log(sum_k exp(z_k - max(z)))
    cross-entropy   L = -sum_k y_k log p_k                 dL/dz = p * sum(y) - y
    focal           L = -sum_k a_k y_k (1 - p_k)^g log p_k
                    dL/dz_j = -(G_j - p_j sum_k G_k),  G_k = a_k y_k [(1-p_k)^g - g p_k (1-p_k)^(g-1) log p_k]

``1 - p_k`` is computed as ``sum_{j != k} p_j`` (prefix and suffix sums), which keeps its relative
precision when ``p_k`` rounds to 1: that is what makes logits of +-1e4 give exact gradients.

From probabilities ``p`` (Keras's rule when the model does not end in a softmax we can fold): ``p``
is renormalised to sum 1 and clipped to ``[eps, 1 - eps]``; the gradient flows through both steps.
"""
import math

import numpy as np
from numba import njit


@njit(cache=True)
def _log_softmax_row(z, r, e, logp, q):
    """Fill ``e`` (shifted exps), ``logp`` and ``q = 1 - p`` for row ``r``; return ``sum(e)``."""
    k = z.shape[1]
    top = z[r, 0]
    for j in range(1, k):
        if z[r, j] > top:
            top = z[r, j]
    s = 0.0
    for j in range(k):
        e[j] = math.exp(z[r, j] - top)
        s += e[j]
    lse = top + math.log(s)
    for j in range(k):
        logp[j] = z[r, j] - lse
    # q_j = (sum of e over all j' != j) / s, from prefix and suffix sums: no cancellation.
    acc = 0.0
    for j in range(k):
        q[j] = acc
        acc += e[j]
    acc = 0.0
    for j in range(k - 1, -1, -1):
        q[j] = (q[j] + acc) / s
        acc += e[j]
    return s


@njit(cache=True)
def softmax_cross_entropy(z, y, w, loss, grad):
    """z, y, grad : (N, K); w, loss : (N,). ``loss = -sum y log softmax(z)``."""
    n, k = z.shape
    e = np.empty(k)
    logp = np.empty(k)
    q = np.empty(k)
    for r in range(n):
        s = _log_softmax_row(z, r, e, logp, q)
        total_y = 0.0
        value = 0.0
        for j in range(k):
            total_y += y[r, j]
            value -= y[r, j] * logp[j]
        loss[r] = value
        for j in range(k):
            grad[r, j] = w[r] * (e[j] / s * total_y - y[r, j])


@njit(cache=True)
def softmax_focal(z, y, alpha, gamma, w, loss, grad):
    """Categorical focal loss from logits. alpha : (K,) per-class weights; gamma >= 0."""
    n, k = z.shape
    e = np.empty(k)
    logp = np.empty(k)
    q = np.empty(k)
    g = np.empty(k)
    for r in range(n):
        s = _log_softmax_row(z, r, e, logp, q)
        value = 0.0
        total_g = 0.0
        for j in range(k):
            ay = alpha[j] * y[r, j]
            mod = q[j] ** gamma
            value -= ay * mod * logp[j]
            second = 0.0
            if gamma != 0 and q[j] > 0:
                second = gamma * (e[j] / s) * q[j] ** (gamma - 1) * logp[j]
            g[j] = ay * (mod - second)
            total_g += g[j]
        loss[r] = value
        for j in range(k):
            grad[r, j] = -w[r] * (g[j] - e[j] / s * total_g)


@njit(cache=True)
def _renormalised_clipped(p, r, eps, qn, c):
    """Row ``r`` of ``p`` divided by its sum (into ``qn``) and clipped (into ``c``); return the sum."""
    k = p.shape[1]
    s = 0.0
    for j in range(k):
        s += p[r, j]
    for j in range(k):
        qn[j] = p[r, j] / s
        c[j] = min(max(qn[j], eps), 1 - eps)
    return s


@njit(cache=True)
def _chain_renormalise(dq, qn, s, w, grad, r):
    """Gradient through ``q = p / sum(p)``: ``dp_j = (dq_j - sum_k dq_k q_k) / s``."""
    k = dq.shape[0]
    dot = 0.0
    for j in range(k):
        dot += dq[j] * qn[j]
    for j in range(k):
        grad[r, j] = w[r] * (dq[j] - dot) / s


@njit(cache=True)
def probs_cross_entropy(p, y, eps, w, loss, grad):
    """Cross-entropy on probabilities, Keras style (renormalise, clip to [eps, 1-eps])."""
    n, k = p.shape
    qn = np.empty(k)
    c = np.empty(k)
    dq = np.empty(k)
    for r in range(n):
        s = _renormalised_clipped(p, r, eps, qn, c)
        value = 0.0
        for j in range(k):
            value -= y[r, j] * math.log(c[j])
            inside = qn[j] > eps and qn[j] < 1 - eps
            dq[j] = -y[r, j] / c[j] if inside else 0.0
        loss[r] = value
        _chain_renormalise(dq, qn, s, w, grad, r)


@njit(cache=True)
def probs_focal(p, y, alpha, gamma, eps, w, loss, grad):
    """Categorical focal loss on probabilities, Keras style (renormalise, clip)."""
    n, k = p.shape
    qn = np.empty(k)
    c = np.empty(k)
    dq = np.empty(k)
    for r in range(n):
        s = _renormalised_clipped(p, r, eps, qn, c)
        value = 0.0
        for j in range(k):
            ay = alpha[j] * y[r, j]
            one_minus = 1 - c[j]
            logc = math.log(c[j])
            value -= ay * one_minus ** gamma * logc
            inside = qn[j] > eps and qn[j] < 1 - eps
            if inside:
                dq[j] = -ay * (one_minus ** gamma / c[j] - gamma * one_minus ** (gamma - 1) * logc)
            else:
                dq[j] = 0.0
        loss[r] = value
        _chain_renormalise(dq, qn, s, w, grad, r)


@njit(cache=True)
def sigmoid_binary_cross_entropy(z, y, w, loss, grad):
    """Binary cross-entropy from logits, mean over the K outputs of a row.

    ``L = max(z, 0) - z*y + log(1 + exp(-|z|))`` (never overflows); ``dL/dz = sigmoid(z) - y``.
    """
    n, k = z.shape
    for r in range(n):
        value = 0.0
        for j in range(k):
            v = z[r, j]
            value += max(v, 0.0) - v * y[r, j] + math.log1p(math.exp(-abs(v)))
            if v >= 0:
                sig = 1.0 / (1.0 + math.exp(-v))
            else:
                ev = math.exp(v)
                sig = ev / (1.0 + ev)
            grad[r, j] = w[r] * (sig - y[r, j]) / k
        loss[r] = value / k


@njit(cache=True)
def probs_binary_cross_entropy(p, y, eps, w, loss, grad):
    """Binary cross-entropy on probabilities clipped to [eps, 1-eps], mean over the K outputs."""
    n, k = p.shape
    for r in range(n):
        value = 0.0
        for j in range(k):
            c = min(max(p[r, j], eps), 1 - eps)
            t = y[r, j]
            value -= t * math.log(c) + (1 - t) * math.log(1 - c)
            inside = p[r, j] > eps and p[r, j] < 1 - eps
            grad[r, j] = w[r] * (-t / c + (1 - t) / (1 - c)) / k if inside else 0.0
        loss[r] = value / k
