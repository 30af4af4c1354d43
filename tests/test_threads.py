"""The threading arrangement (tinycnn/_threads.py): how a batch is split over threads, that BLAS gets
its thread count back whatever happens, and that the split and the fallback compute the same thing."""
import threading

import numpy as np
import pytest

import tinycnn
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


# --- public calls from many Python threads (tinycnn/_threads.py: compute_lock) --------------------------

def _small_model(seed):
    """Winograd (16 channels), batch norm, fused 2x2 max pooling, dropout, a softmax head: every kind
    of kernel a prediction runs, the parallel ones included (a batch of one image takes them)."""
    from tinycnn.layers import BatchNormalization, Dropout, Flatten, MaxPooling2D
    from tinycnn.models import Sequential
    tinycnn.set_seed(seed)
    model = Sequential([Conv2D(16, 3, padding="same", activation="relu", input_shape=(8, 8, 3)),
                        BatchNormalization(), Conv2D(16, 3, padding="same", activation="relu"),
                        MaxPooling2D(2), Flatten(), Dropout(0.5), Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _hammer(jobs, n_threads):
    """Run ``jobs`` (callables) on ``n_threads`` threads at once; return their results in order."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        return list(pool.map(lambda job: job(), jobs))


@pytest.mark.parametrize("n_models", [1, 2])
def test_predict_from_eight_threads_equals_predict_alone(n_models):
    # Before compute_lock, two threads predicting one image each aborted the whole process
    # (Numba's workqueue layer: "Concurrent access has been detected").
    models = [_small_model(seed) for seed in range(n_models)]
    gen = np.random.default_rng(0)
    x = gen.random((7, 8, 8, 3), dtype=np.float32)
    sizes = [1, 2, 7, 1, 3]
    alone = {(m, b): models[m].predict(x[:b]) for m in range(n_models) for b in sizes}
    jobs = [(i % n_models, sizes[i % len(sizes)]) for i in range(8 * 50)]
    results = _hammer([lambda m=m, b=b: models[m].predict(x[:b]) for m, b in jobs], 8)
    for (m, b), out in zip(jobs, results):
        np.testing.assert_array_equal(out, alone[(m, b)])


def test_model_call_grad_cam_and_evaluate_from_threads_equal_alone():
    from tinycnn.explain import grad_cam
    model = _small_model(0)
    gen = np.random.default_rng(1)
    x = gen.random((4, 8, 8, 3), dtype=np.float32)
    y = tinycnn.to_categorical([0, 1, 2, 1], 3)
    calls = {"call": lambda: model(x[:1]),
             "cam": lambda: grad_cam(model, x[2]).heatmap,
             "evaluate": lambda: np.array(model.evaluate(x, y, verbose=0))}
    alone = {k: f() for k, f in calls.items()}
    keys = list(calls) * 20
    for key, out in zip(keys, _hammer([calls[k] for k in keys], 6)):
        np.testing.assert_array_equal(out, alone[key])


def test_serving_one_model_while_another_trains_in_a_thread():
    from concurrent.futures import ThreadPoolExecutor
    served, trained, reference = _small_model(0), _small_model(1), _small_model(1)
    gen = np.random.default_rng(2)
    x = gen.random((16, 8, 8, 3), dtype=np.float32)
    y = tinycnn.to_categorical(gen.integers(0, 3, 16), 3)
    expected = served.predict(x[:1])
    tinycnn.set_seed(5)
    reference.fit(x, y, epochs=2, batch_size=4, verbose=0)
    with ThreadPoolExecutor(max_workers=4) as pool:
        tinycnn.set_seed(5)
        training = pool.submit(trained.fit, x, y, epochs=2, batch_size=4, verbose=0)
        answers = [pool.submit(served.predict, x[:1]) for _ in range(40)]
        for answer in answers:
            np.testing.assert_array_equal(answer.result(timeout=120), expected)
        training.result(timeout=120)
    for a, b in zip(trained.get_weights(), reference.get_weights()):  # as if trained alone
        np.testing.assert_array_equal(a, b)


def test_two_models_trained_in_two_threads_end_as_if_trained_alone():
    # README, Threads: two models trained from two threads take turns step by step under the lock,
    # and each ends with the weights and history it has when trained alone. (No shuffling: each
    # fit would draw its shuffling generator from the one global seed, in whichever order the two
    # threads start.)
    gen = np.random.default_rng(6)
    x = gen.random((16, 8, 8, 3), dtype=np.float32)
    y = tinycnn.to_categorical(gen.integers(0, 3, 16), 3)

    def train(model):
        history = model.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
        return history.history, model.get_weights()

    alone = [train(_small_model(seed)) for seed in (1, 2)]
    together = _hammer([lambda m=_small_model(seed): train(m) for seed in (1, 2)], 2)
    for (history, weights), (history_alone, weights_alone) in zip(together, alone):
        assert history == history_alone
        for a, b in zip(weights, weights_alone):
            np.testing.assert_array_equal(a, b)


def test_training_one_model_from_two_threads_is_refused():
    model = _small_model(0)
    gen = np.random.default_rng(3)
    x = gen.random((8, 8, 8, 3), dtype=np.float32)
    y = tinycnn.to_categorical(gen.integers(0, 3, 8), 3)
    started, release = threading.Event(), threading.Event()

    class Pause(tinycnn.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            started.set()
            release.wait(timeout=60)

    trainer = threading.Thread(target=model.fit, args=(x, y),
                               kwargs=dict(epochs=1, batch_size=8, verbose=0, callbacks=[Pause()]))
    trainer.start()
    try:
        assert started.wait(timeout=60)
        for call in (lambda: model.fit(x, y, verbose=0), lambda: model.train_on_batch(x, y)):
            with pytest.raises(RuntimeError, match="already being trained by another thread"):
                call()
        np.testing.assert_array_equal(model.predict(x[:2]), model.predict(x[:2]))  # inference still works
    finally:
        release.set()
        trainer.join(timeout=60)
    assert not trainer.is_alive()
    model.train_on_batch(x, y)  # free again once the first fit has returned


_CONCURRENT_SCRIPT = """
import threading, numpy as np, tinycnn, numba
from tinycnn.layers import BatchNormalization, Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.models import Sequential
models = [Sequential([Conv2D(16, 3, padding='same', activation='relu', input_shape=(8, 8, 3)),
                      BatchNormalization(), MaxPooling2D(2), Flatten(), Dense(2, activation='softmax')])
          for _ in range(2)]
x = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
expected = [m.predict(x) for m in models]
bad = []
def run(i):
    for _ in range(30):
        if not np.array_equal(models[i % 2].predict(x), expected[i % 2]):
            bad.append(i)
threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
print('layer', numba.threading_layer(), 'bad', len(bad))
"""


@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_no_abort_under_numba_threading_layers(layer):
    # A fresh process per threading layer: the layer is chosen once, at the first parallel launch.
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    done = subprocess.run([sys.executable, "-c", _CONCURRENT_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"layer {layer} bad 0" in done.stdout


def test_load_model_from_eight_threads_at_once(tmp_path):
    model = _small_model(0)
    path = str(tmp_path / "m.npz")
    model.save(path)
    x = np.random.default_rng(4).random((2, 8, 8, 3), dtype=np.float32)
    expected = model.predict(x)
    outputs = _hammer([lambda: tinycnn.load_model(path).predict(x) for _ in range(16)], 8)
    for out in outputs:
        np.testing.assert_array_equal(out, expected)


# --- tinycnn's own parallel sums at 1, 2, 3 and 4 threads ---------------------------------------------

_THREAD_COUNT_SCRIPT = r"""
import sys
import numba, numpy as np
from tinycnn import _threads  # importing tinycnn picks its threading layer first
from tinycnn.kernels import normalization as N
from tinycnn.kernels._util import column_sums
from tinycnn.layers import BatchNormalization

# How many slices tinycnn spread each kernel over, at each thread count: a pass-through around
# _threads._run_slices where the kernels go through tinycnn's own slices; None where they are
# Numba prange loops (then the probe below shows how many of Numba's threads run one).
slices = None
if hasattr(_threads, "_run_slices"):
    slices, run_slices = {}, _threads._run_slices
    def spying(n, threads, work, *extra):
        slices.setdefault(numba.get_num_threads(), set()).add(threads)
        return run_slices(n, threads, work, *extra)
    _threads._run_slices = spying

@numba.njit(parallel=True)
def workers(n):
    # which of Numba's threads ran each iteration of a prange
    out = np.empty(n, np.int64)
    for i in numba.prange(n):
        out[i] = numba.get_thread_id()
    return out

@numba.njit(parallel=True)
def naive_sum(x):
    # a parallel sum without fixed blocks: each thread adds its own share, so the order of the
    # additions follows the thread count
    s = np.float32(0)
    for i in numba.prange(x.shape[0]):
        s += x[i]
    return s

# Sizes above any grain below which a kernel is not worth splitting.
gen = np.random.default_rng(0)
x = (3 + gen.standard_normal((40009, 5))).astype(np.float32)
dy = gen.standard_normal((40009, 5)).astype(np.float32)
images = gen.standard_normal((32, 24, 24, 8)).astype(np.float32)
d_images = gen.standard_normal((32, 24, 24, 8)).astype(np.float32)
arrays = {"tinycnn_slices": np.array(slices is not None)}
for t in range(1, numba.config.NUMBA_NUM_THREADS + 1):
    numba.set_num_threads(t)
    assert _threads.thread_count() == t
    mean, var = N.moments(x)
    bn = BatchNormalization()
    bn.build(images.shape[1:])
    out = bn.forward(images, training=True).copy()
    arrays.update({f"{t}/workers": np.unique(workers(64)), f"{t}/naive_sum": np.array(naive_sum(x[:, 0])),
                   f"{t}/column_sums": column_sums(x), f"{t}/moments": np.stack([mean, var]),
                   f"{t}/backward_sums": np.stack(N.backward_sums(dy, x, mean)),
                   f"{t}/batch_norm_output": out, f"{t}/batch_norm_dx": bn.backward(d_images).copy(),
                   f"{t}/batch_norm_moving": np.stack([bn.state["moving_mean"], bn.state["moving_variance"]]),
                   f"{t}/batch_norm_grads": np.stack([bn.grads["gamma"], bn.grads["beta"]])})
    if slices is not None:
        arrays[f"{t}/slices"] = np.array(sorted(slices.get(t, ())))
np.savez(sys.argv[1], **arrays)
"""


def test_parallel_sums_are_the_same_at_any_thread_count(tmp_path):
    """Batch-norm statistics and gradients and bias gradients (``column_sums``) add in fixed
    blocks, so 1, 2, 3 and 4 threads give the same bits (README, "Runs repeat").

    In a child process with ``NUMBA_NUM_THREADS=4``, which Numba honours on any machine (threads
    take turns on fewer cores), so the comparison never degenerates into 1 thread against itself.
    Two controls keep it honest: at ``t`` threads the kernels really run in ``t`` pieces (``t``
    slices of tinycnn's own, or ``t`` of Numba's threads in a prange); and a parallel sum without
    fixed blocks, compared the same way, does change."""
    import os
    import subprocess
    import sys
    out = tmp_path / "sums.npz"
    env = dict(os.environ, NUMBA_NUM_THREADS="4", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-c", _THREAD_COUNT_SCRIPT, str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as saved:
        arrays = dict(saved)
    names = {key.split("/", 1)[1] for key in arrays if "/" in key} - {"workers", "naive_sum", "slices"}
    assert len(names) == 7
    for t in (2, 3, 4):
        if arrays["tinycnn_slices"]:
            np.testing.assert_array_equal(arrays[f"{t}/slices"], [t])
        else:
            np.testing.assert_array_equal(arrays[f"{t}/workers"], np.arange(t))
        for name in names:
            assert np.array_equal(arrays[f"{t}/{name}"], arrays[f"1/{name}"]), (name, t)
    assert any(arrays[f"{t}/naive_sum"] != arrays["1/naive_sum"] for t in (2, 3, 4))
