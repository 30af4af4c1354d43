"""The threading arrangement (tinycnn/_threads.py): how a batch is split over threads, that BLAS gets
its thread count back whatever happens, and that the split and the fallback compute the same thing."""
import threading

import numpy as np
import pytest

from tinycnn import _threads
from tinycnn.layers import Conv2D, Dense


@pytest.fixture
def two_threads(monkeypatch):
    """Split batches in two, whatever the machine's core count (threads also run on one core)."""
    monkeypatch.setattr(_threads, "thread_count", lambda: 2)


def _blas_threads():
    return [c.num_threads for c in _threads._blas_controllers()]


def test_split_batch_covers_the_batch_once_in_contiguous_slices(two_threads):
    if not _threads._blas_controllers():
        pytest.fail("threadpoolctl cannot see NumPy's BLAS here: the split path would never run")
    seen = []
    lock = threading.Lock()

    def work(lo, hi, slot, serial):
        with lock:
            seen.append((lo, hi, slot, serial, threading.current_thread() is threading.main_thread(),
                         _blas_threads()))

    before = _blas_threads()
    _threads.split_batch(7, work)
    seen.sort()
    assert [(lo, hi, slot) for lo, hi, slot, *_ in seen] == [(0, 3, 0), (3, 7, 1)]
    assert all(serial for _, _, _, serial, _, _ in seen)
    assert [main for *_, main, _ in seen] == [True, False]          # slot 0 runs in the caller
    assert all(threads == [1] * len(before) for *_, threads in seen)  # BLAS single-threaded inside
    assert _blas_threads() == before                                # ... and restored after


def test_split_batch_restores_blas_threads_and_raises_when_a_slice_fails(two_threads):
    before = _blas_threads()

    def work(lo, hi, slot, serial):
        if slot == 1:
            raise ValueError("slice 1 failed")

    with pytest.raises(ValueError, match="slice 1 failed"):
        _threads.split_batch(4, work)
    assert _blas_threads() == before


@pytest.mark.parametrize("threads, n", [(1, 3), (2, 1)])
def test_split_batch_falls_back_to_one_call_with_one_thread_or_one_image(monkeypatch, threads, n):
    monkeypatch.setattr(_threads, "thread_count", lambda: threads)
    calls = []
    _threads.split_batch(n, lambda lo, hi, slot, serial: calls.append((lo, hi, slot, serial)))
    assert calls == [(0, n, 0, False)]  # the parallel kernels and threaded BLAS, in this thread


def _run(layer_factory, x, dy):
    layer = layer_factory()
    layer.build(x.shape[1:])
    layer.set_weights([np.random.default_rng(1).standard_normal(w.shape) for w in layer.get_weights()])
    y = layer.forward(x, training=True).copy()
    dx = layer.backward(dy).copy()
    return [y, dx] + [g.copy() for g in layer.grads.values()]


@pytest.mark.parametrize("make, input_shape", [
    (lambda: Conv2D(5, 3, padding="same", activation="relu", dtype="float64"), (7, 6, 2)),   # Winograd
    (lambda: Conv2D(5, 3, strides=2, padding="same", dtype="float64"), (7, 6, 2)),           # im2col
    (lambda: Conv2D(5, 1, dtype="float64"), (7, 6, 2)),                                      # pointwise
    (lambda: Dense(4, activation="relu", dtype="float64"), (6,)),
], ids=["winograd", "im2col", "pointwise", "dense"])
def test_split_and_fallback_paths_agree(two_threads, winograd_everywhere, monkeypatch, make, input_shape):
    gen = np.random.default_rng(0)
    x = gen.standard_normal((5,) + input_shape)
    layer = make()
    layer.build(input_shape)
    dy = gen.standard_normal((5,) + layer.output_shape)

    split = _run(make, x, dy)
    monkeypatch.setattr(_threads, "_blas", [])  # as if threadpoolctl could not control the BLAS
    fallback = _run(make, x, dy)
    assert len(split) == len(fallback) >= 3
    for a, b in zip(split, fallback):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _winograd_case():
    """A Winograd layer factory and its input and output gradient (with ``winograd_everywhere``)."""
    gen = np.random.default_rng(0)
    x = gen.standard_normal((4, 6, 6, 2))
    dy = gen.standard_normal((4, 6, 6, 5))
    return lambda: Conv2D(5, 3, padding="same", activation="relu", dtype="float64"), x, dy


def test_two_layers_in_two_python_threads_at_once(two_threads, winograd_everywhere):
    # Each thread's split takes the BLAS lock in turn; results equal the same work done alone.
    make, x, dy = _winograd_case()
    alone = _run(make, x, dy)
    results, errors = [None, None], []

    def job(i):
        try:
            for _ in range(5):
                results[i] = _run(make, x, dy)
        except Exception as e:  # reported below: an exception in a thread would not fail the test
            errors.append(e)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    for result in results:
        for a, b in zip(result, alone):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork exists on POSIX only")
def test_a_forked_child_can_still_split_batches(two_threads, winograd_everywhere):
    # The parent's pool threads do not exist in a child made by fork(); without a fresh pool the
    # child's first convolution would wait forever for them.
    import multiprocessing
    make, x, dy = _winograd_case()
    expected = _run(make, x, dy)  # the parent's pool now exists

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=lambda: queue.put(_run(make, x, dy)))
    child.start()
    result = queue.get(timeout=60)
    child.join(timeout=30)
    assert child.exitcode == 0
    for a, b in zip(result, expected):
        np.testing.assert_array_equal(a, b)
