"""Optimizer updates, in place on flat parameter arrays, Keras's formulas.

Adam (Keras form; ``t`` counts steps from 1):

    m = m + (1 - beta_1) * (g - m)
    v = v + (1 - beta_2) * (g^2 - v)
    p = p - lr_t * m / (sqrt(v) + epsilon),   lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)

SGD with momentum ``mu`` (Keras form):

    velocity = mu * velocity - lr * g
    p = p + velocity                         (plain)
    p = p + mu * velocity - lr * g           (Nesterov)
"""
import math

from numba import njit, prange


@njit(parallel=True, cache=True)
def adam_update(p, g, m, v, lr_t, beta_1, beta_2, epsilon):
    """p, g, m, v : ndarray (P,), updated in place (p, m, v)."""
    for i in prange(p.shape[0]):
        gi = g[i]
        mi = m[i] + (1 - beta_1) * (gi - m[i])
        vi = v[i] + (1 - beta_2) * (gi * gi - v[i])
        m[i] = mi
        v[i] = vi
        p[i] -= lr_t * mi / (math.sqrt(vi) + epsilon)


@njit(parallel=True, cache=True)
def sgd_update(p, g, velocity, lr, momentum, nesterov):
    """p, g, velocity : ndarray (P,); velocity unused (size 0 allowed) when momentum == 0."""
    if momentum == 0:
        for i in prange(p.shape[0]):
            p[i] -= lr * g[i]
        return
    for i in prange(p.shape[0]):
        vel = momentum * velocity[i] - lr * g[i]
        velocity[i] = vel
        if nesterov:
            p[i] += momentum * vel - lr * g[i]
        else:
            p[i] += vel
