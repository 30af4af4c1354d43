"""Optimizer updates, in place on flat parameter arrays, Keras's formulas.

Adam (Keras form; ``t`` counts steps from 1):

    m = m + (1 - beta_1) * (g - m)
    v = v + (1 - beta_2) * (g^2 - v)
    p = p - lr_t * m / (sqrt(v) + epsilon),   lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    (AMSGrad: v_hat = max(v_hat, v) in place of v in the step)

SGD with momentum ``mu`` (Keras form):

    velocity = mu * velocity - lr * g
    p = p + velocity                         (plain)
    p = p + mu * velocity - lr * g           (Nesterov)

RMSprop with decay ``rho`` (Keras form: epsilon inside the square root):

    velocity = rho * velocity + (1 - rho) * g^2
    average_gradient = rho * average_gradient + (1 - rho) * g          (centered only)
    increment = lr * g / sqrt(velocity - average_gradient^2 + epsilon)  (centered)
              = lr * g / sqrt(velocity + epsilon)                       (plain)
    momentum_buffer = mu * momentum_buffer + increment;  p = p - momentum_buffer   (mu > 0)
    p = p - increment                                                    (mu = 0)

Shared by every optimizer: decoupled weight decay ``p = p - p * weight_decay * lr`` (before the
step) and the moving average of the weights ``average = m * average + (1 - m) * p`` (after it).
"""
import math

from numba import njit

from ._util import by_rows


@by_rows(0, 1, 2, 3)
@njit(nogil=True, cache=True)
def adam_update(p, g, m, v, lr_t, beta_1, beta_2, epsilon):
    """p, g, m, v : ndarray (P,), updated in place (p, m, v)."""
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] + (1 - beta_1) * (gi - m[i])
        vi = v[i] + (1 - beta_2) * (gi * gi - v[i])
        m[i] = mi
        v[i] = vi
        p[i] -= lr_t * mi / (math.sqrt(vi) + epsilon)


@by_rows(0, 1, 2, 3, 4)
@njit(nogil=True, cache=True)
def amsgrad_update(p, g, m, v, v_hat, lr_t, beta_1, beta_2, epsilon):
    """Adam's AMSGrad variant: as :func:`adam_update`, but divided by the running maximum
    ``v_hat = max(v_hat, v)`` of the second moment, so a step never grows because ``v`` shrank.
    p, g, m, v, v_hat : ndarray (P,), updated in place (p, m, v, v_hat)."""
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] + (1 - beta_1) * (gi - m[i])
        vi = v[i] + (1 - beta_2) * (gi * gi - v[i])
        hi = max(v_hat[i], vi)
        m[i] = mi
        v[i] = vi
        v_hat[i] = hi
        p[i] -= lr_t * mi / (math.sqrt(hi) + epsilon)


@by_rows(0, 1, 2)
@njit(nogil=True, cache=True)
def sgd_update(p, g, velocity, lr, momentum, nesterov):
    """p, g, velocity : ndarray (P,); velocity unused (size 0 allowed) when momentum == 0."""
    if momentum == 0:
        for i in range(p.shape[0]):
            p[i] -= lr * g[i]
        return
    for i in range(p.shape[0]):
        vel = momentum * velocity[i] - lr * g[i]
        velocity[i] = vel
        if nesterov:
            p[i] += momentum * vel - lr * g[i]
        else:
            p[i] += vel


@by_rows(0, 1, 2, 3, 4)
@njit(nogil=True, cache=True)
def rmsprop_update(p, g, velocity, momentum_buffer, average_gradient, lr, rho, momentum, epsilon):
    """RMSprop (Keras form). p, g, velocity : ndarray (P,). ``momentum_buffer`` is used when
    ``momentum > 0`` and ``average_gradient`` (the centred variant) when it has P entries; either
    may have size 0 otherwise."""
    centered = average_gradient.shape[0] == p.shape[0]
    for i in range(p.shape[0]):
        gi = g[i]
        vi = rho * velocity[i] + (1 - rho) * gi * gi
        velocity[i] = vi
        if centered:
            ai = rho * average_gradient[i] + (1 - rho) * gi
            average_gradient[i] = ai
            increment = lr * gi / math.sqrt(vi - ai * ai + epsilon)
        else:
            increment = lr * gi / math.sqrt(vi + epsilon)
        if momentum > 0:
            mi = momentum * momentum_buffer[i] + increment
            momentum_buffer[i] = mi
            p[i] -= mi
        else:
            p[i] -= increment


@by_rows(0)
@njit(nogil=True, cache=True)
def decay_weights(p, rate):
    """Decoupled weight decay, ``p -= p * rate`` with ``rate = weight_decay * lr``. p : ndarray (P,)."""
    for i in range(p.shape[0]):
        p[i] -= p[i] * rate


@by_rows(0, 1)
@njit(nogil=True, cache=True)
def moving_average_update(average, p, momentum):
    """Exponential moving average of the weights, ``average = momentum * average + (1 - momentum) * p``.
    average, p : ndarray (P,)."""
    for i in range(p.shape[0]):
        average[i] = momentum * average[i] + (1 - momentum) * p[i]
