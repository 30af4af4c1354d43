"""Threading arrangement, decided once at import time.

tinycnn's Numba kernels are serial loops that release the GIL. This module spreads them over the
cores with one small pool of Python threads: :func:`in_slices` gives each thread a slice of an
array's rows (batch norm, activations, pooling, dropout, the optimizers), :func:`split_batch` a
slice of the batch for the convolutions and Dense (the whole chunk loop: serial kernels and
single-threaded BLAS products). Why not Numba's ``parallel=True`` and a threaded BLAS:

* Both keep their threads spinning for a while after finishing, to be ready for the next call, and
  a spinning thread steals its core from whatever runs next. Numba's OpenMP layer slowed the
  following BLAS call 3-8x on a 2-core machine. OpenBLAS's idle workers spin (yielding) for about
  0.1 s after each threaded product: one training step took 300 ms, against 198 ms with
  ``OPENBLAS_THREAD_TIMEOUT=4`` (workers sleep at once), a variable that only works before NumPy
  loads OpenBLAS. In :func:`split_batch`, OpenBLAS's own workers never wake, and each thread's
  data stays in its own core's cache.
* A ``parallel=True`` function takes several times longer to compile than the same loop serial
  (about 1.3 s against 0.3 s here), paid on every fresh install.
* Numba's ``workqueue`` layer aborts the process when two Python threads launch parallel
  functions at once.

No tinycnn kernel uses ``parallel=True``; should one (or a user's own) run Numba-parallel, the
``workqueue`` layer is picked here unless the user chose a layer with the ``NUMBA_THREADING_LAYER``
environment variable: it parks its workers instead of spinning.

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
#: * A layer keeps per-call state (its output buffers, the input its backward pass needs), so two
#:   batches through one model at once would overwrite each other's.
#: * One pool of slice threads serves every call (:func:`in_slices`, :func:`split_batch`), and
#:   BLAS's thread count is set process-wide while a batch is split. (Before tinycnn's kernels left
#:   ``parallel=True``, Numba's ``workqueue`` layer also *aborted the process* when two threads
#:   entered parallel kernels at once: the fault the lock was first added for.)
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


def _thread_pool(threads):
    """The pool of ``threads - 1`` workers (the calling thread is the first of the team)."""
    global _pool, _pool_size
    if _pool is None or _pool_size < threads - 1:
        _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="tinycnn",
                                   initializer=_mark_inside)
        _pool_size = threads - 1
    return _pool


#: ``_inside.active`` is True in a thread that is running one slice of a split: a kernel it calls
#: runs whole in that thread instead of splitting again (a pool worker waiting for a task queued
#: behind itself would wait forever).
_inside = threading.local()


def _mark_inside():
    _inside.active = True


@contextmanager
def _slice_of_split():
    before = getattr(_inside, "active", False)
    _inside.active = True
    try:
        yield
    finally:
        _inside.active = before


def _run_slices(n, threads, work, *extra):
    """``work(lo, hi, *extra_i)`` on ``threads`` contiguous slices of ``range(n)``: slice 0 here,
    the others in the pool; waits for all and raises the first error."""
    bounds = [n * i // threads for i in range(threads + 1)]
    futures = [_thread_pool(threads).submit(work, bounds[i], bounds[i + 1], *(e[i] for e in extra))
               for i in range(1, threads)]
    try:
        with _slice_of_split():
            work(bounds[0], bounds[1], *(e[0] for e in extra))
    finally:
        for f in futures:
            f.result()


#: Elements below which :func:`in_slices` runs a kernel whole in the calling thread: handing a
#: slice to the pool and waiting for it costs some tens of microseconds, about what a pass over
#: this many float32 values takes.
SLICE_GRAIN = 1 << 16


def in_slices(n, work, elements):
    """Run ``work(lo, hi)`` over ``range(n)`` (rows of an array, blocks of a sum), one contiguous
    slice per thread: how every element-wise and row-wise kernel is spread over the cores.

    The kernels themselves are serial Numba functions that release the GIL (``nogil=True``), so
    Python threads run them truly in parallel. Compared with Numba's own ``parallel=True``, this
    compiles several times faster (no parallel-loop lowering) and never meets the ``workqueue``
    layer's abort on concurrent parallel launches. ``elements`` (what the kernel touches) decides
    whether splitting pays: below ``2 * SLICE_GRAIN``, on one thread, or inside a slice of another
    split, ``work(0, n)`` runs here. Slices are contiguous and in order, so a kernel that writes
    each row from that row alone gives the same bits at any thread count.
    """
    threads = min(thread_count(), n)
    if threads <= 1 or elements < 2 * SLICE_GRAIN or getattr(_inside, "active", False):
        work(0, n)
        return
    _run_slices(n, threads, work)


def split_batch(n, work):
    """Run ``work(lo, hi, slot, serial)`` over the batch ``range(n)``.

    With several threads (:func:`thread_count`), a controllable BLAS and at least two
    images, the batch is cut into contiguous slices, one per thread (slot 0 in the calling
    thread), BLAS runs single-threaded meanwhile, and ``serial`` is True. Otherwise (one image,
    one thread) ``work(0, n, 0, False)`` runs here, the Numba kernels in this thread and the BLAS
    products on all of its threads. Exceptions in a slice are raised here.
    """
    threads = min(thread_count(), n)
    controllers = _blas_controllers() if threads > 1 else []
    if threads <= 1 or not controllers:
        work(0, n, 0, False)
        return
    with _single_threaded_blas(controllers):
        _run_slices(n, threads, work, range(threads), [True] * threads)



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
