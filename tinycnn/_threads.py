"""Threading arrangement, decided once at import time.

The convolution products run in OpenBLAS's threads and everything around them in Numba's
``prange`` loops. Numba's OpenMP layer keeps its workers spinning after a parallel loop ends, and
those spinning workers steal the cores from the very next BLAS call (measured on a 2-core machine:
chunked im2col + GEMM ran 3-8x slower). The ``workqueue`` layer parks its workers instead, so the two
pools take turns. We therefore pick ``workqueue`` unless the user chose a layer explicitly with the
``NUMBA_THREADING_LAYER`` environment variable.

This module must be imported before any parallel kernel first runs; ``tinycnn/__init__.py`` does so.
"""
import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


# --- splitting a batch over threads ---------------------------------------------------------------
#
# A Winograd convolution alternates small BLAS products with Numba transforms, chunk after chunk.
# With OpenBLAS threaded, its workers keep spinning (yielding) for a while after each product, and
# the next transform then shares the cores with them: the transforms ran at about half speed inside
# the layer compared with alone. Instead, each thread takes its own slice of the batch and runs the
# whole chunk loop on it, transforms *and* products, with BLAS single-threaded in the meantime: no
# hand-over between pools at all, and each thread's data stays in its own core's cache.

import threading  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from contextlib import contextmanager  # noqa: E402

_pool = None
_pool_size = 0
_blas = None
_blas_lock = threading.Lock()


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


def split_batch(n, work):
    """Run ``work(lo, hi, slot, serial)`` over the batch ``range(n)``.

    With several threads (``numba.get_num_threads()``), a controllable BLAS and at least two
    images, the batch is cut into contiguous slices, one per thread (slot 0 in the calling
    thread), BLAS runs single-threaded meanwhile, and ``serial=True`` asks ``work`` for the
    serial kernels. Otherwise ``work(0, n, 0, False)`` runs here with the parallel kernels and
    threaded BLAS. Exceptions in a slice are raised here.
    """
    global _pool, _pool_size
    threads = min(numba.get_num_threads(), n)
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
