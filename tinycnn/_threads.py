"""Threading arrangement, decided once at import time.

Two pools of threads serve tinycnn: Numba's (the ``prange`` loops of batch norm, pooling, dropout,
the optimizer) and the BLAS's (matrix products). Both spin for a while after finishing, to be
ready for the next call, and a spinning thread steals its core from whatever runs next:

* Numba's OpenMP layer slowed the following BLAS call 3-8x on a 2-core machine. The ``workqueue``
  layer parks its workers instead, so we pick it unless the user chose a layer with the
  ``NUMBA_THREADING_LAYER`` environment variable.
* OpenBLAS's idle workers spin (yielding) for about 0.1 s after each threaded product. Every Numba
  kernel between two products (im2col, Winograd transforms, batch norm, pooling) then shared the
  cores with them: one training step took 300 ms, against 198 ms with ``OPENBLAS_THREAD_TIMEOUT=4``
  (workers sleep at once). That variable only works before NumPy loads OpenBLAS, so Conv2D and
  Dense use :func:`split_batch` (and :func:`split_batch_sum` for weight gradients) instead: each thread takes a slice of the batch and runs the whole
  chunk loop on it (serial Numba kernels that release the GIL, and single-threaded BLAS), so
  OpenBLAS's own workers never wake. Each thread's data also stays in its own core's cache.

This module must be imported before any parallel kernel first runs; ``tinycnn/__init__.py`` does so.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


# --- splitting a batch over threads (see the module docstring) -------------------------------------

_pool = None
_pool_size = 0
_blas = None
_blas_lock = threading.Lock()


# --- one batch at a time through the layers ----------------------------------------------------------

#: The lock behind :func:`compute_lock`. Held by every public call while it runs one batch through
#: a model's layers (a training step, a prediction batch, a Grad-CAM pass, ``layer(x)``). Two
#: reasons, both about calls from several Python threads at once:
#:
#: * Numba's ``workqueue`` threading layer *aborts the process* when two threads enter parallel
#:   kernels at the same time ("Concurrent access has been detected"), and a batch of one image, or a
#:   batch norm, pooling or optimizer step, runs such kernels.
#: * A layer keeps per-call state (its output buffers, the input its backward pass needs), so two
#:   batches through one model at once would overwrite each other's.
#:
#: It is reentrant (a callback may call ``predict`` inside ``fit``) and held for one batch, not for
#: a whole ``fit``: threads take turns batch by batch. On this project's 2-core target each batch
#: already uses both cores, so taking turns costs little throughput.
_compute_lock = threading.RLock()


def compute_lock():
    """``with compute_lock():`` around one batch through the layers (see ``_compute_lock``). A
    function, not a name to import, so that a forked child's fresh lock is the one taken."""
    return _compute_lock


def _after_fork_in_child():
    """A forked child has none of the parent's pool threads, and a lock some parent thread held
    would stay held forever: start afresh (the pool is rebuilt on first use)."""
    global _pool, _pool_size, _blas_lock, _compute_lock
    _pool, _pool_size = None, 0
    _blas_lock = threading.Lock()
    _compute_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _blas_controllers():
    """threadpoolctl's handles on the loaded BLAS libraries ([] if they cannot be controlled)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # threadpoolctl missing or unable to inspect this process: no batch splitting
            _blas = []
    return _blas


@contextmanager
def _single_threaded_blas(controllers):
    with _blas_lock:
        before = [c.num_threads for c in controllers]
        for c in controllers:
            c.set_num_threads(1)
        try:
            yield
        finally:
            for c, n in zip(controllers, before):
                c.set_num_threads(n)


def thread_count():
    """Threads tinycnn works with: Numba's setting (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``)."""
    return numba.get_num_threads()


def split_batch(n, work):
    """Run ``work(lo, hi, slot, serial)`` over the batch ``range(n)``.

    With several threads (:func:`thread_count`), a controllable BLAS and at least two
    images, the batch is cut into contiguous slices, one per thread (slot 0 in the calling
    thread), BLAS runs single-threaded meanwhile, and ``serial=True`` asks ``work`` for the
    serial kernels. Otherwise ``work(0, n, 0, False)`` runs here with the parallel kernels and
    threaded BLAS. Exceptions in a slice are raised here.
    """
    global _pool, _pool_size
    threads = min(thread_count(), n)
    controllers = _blas_controllers() if threads > 1 else []
    if threads <= 1 or not controllers:
        work(0, n, 0, False)
        return
    if _pool is None or _pool_size < threads - 1:
        _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="tinycnn")
        _pool_size = threads - 1
    bounds = [n * i // threads for i in range(threads + 1)]
    with _single_threaded_blas(controllers):
        futures = [_pool.submit(work, bounds[i], bounds[i + 1], i, True) for i in range(1, threads)]
        try:
            work(bounds[0], bounds[1], 0, True)
        finally:
            for f in futures:
                f.result()



def split_batch_sum(n, work, out=None):
    """:func:`split_batch` for a sum over the batch, such as a weight gradient ``dW = sum_i x_i^T dz_i``.

    ``work(lo, hi, slot, serial)`` computes its slice's partial sum and returns it (an array, the
    same shape for every slot). The partials are then added in slot order, ``p0 + p1 + ...``, so the
    result does not depend on which thread finished first: a run repeats bit for bit at a fixed
    thread count. The sum goes into ``out`` (overwritten) when given, else into slot 0's partial
    itself; it is returned.
    """
    parts = {}

    def run(lo, hi, slot, serial):
        parts[slot] = work(lo, hi, slot, serial)

    split_batch(n, run)
    total = parts[0] if out is None else out
    if out is not None:
        out[...] = parts[0]
    for slot in range(1, len(parts)):  # in slot order: the same sum on every run
        total += parts[slot]
    return total
