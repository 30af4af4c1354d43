"""Dask scale-out: cross-validation folds and grid searches on a cluster, and prediction over
image arrays larger than one machine's memory. Needs the ``dask`` extra:
``pip install "tinycnn[dask]"`` (``dask[distributed]``).

Folds and searches
------------------
scikit-learn runs folds and grid points through joblib, and joblib has a Dask backend: inside
:func:`scheduler` (or ``joblib.parallel_config(backend='dask')`` with your own ``Client``),
``GridSearchCV(..., n_jobs=-1).fit``, ``cross_val_score(..., n_jobs=-1)`` and
:func:`tinycnn.sklearn.cross_validate_report` send each fit to a worker. Estimators travel as
tinycnn model archives (see :mod:`tinycnn.sklearn`), never as pickled layers.

Threads per worker
------------------
Each worker process should train with one thread (or a stated number): a tinycnn fit already
splits its batches over every thread it is given, so two workers of two threads on two cores would
fight over them. :func:`scheduler` starts local workers that run one task at a time with
``threads`` (default 1) Numba and BLAS threads (``NUMBA_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
...); start the workers of a remote cluster the same way (``NUMBA_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1 dask worker tcp://HOST:8786 --nthreads 1``). Rule of thumb: workers x
threads = cores. Results are bit-identical to a local run with the same seeds and the same thread
count (``cross_validate_report(..., threads=1)``).

Prediction
----------
:func:`predict` maps a model over the blocks of a ``dask.array`` of images: the model travels
once, as one archive in the task graph, and each worker thread loads it once and keeps it.
"""
import hashlib
import os
import threading
from contextlib import contextmanager

import numpy as np

from .model import Model
from .sklearn import _model_from_bytes, _model_to_bytes

__all__ = ["predict", "scheduler"]

# One loaded model per (thread, archive): a model is not safe to use from two threads at once
# (its layers reuse buffers), and loading once per block would repeat the work for every block.
_loaded = threading.local()


def _model_from(archive, digest):
    """The model of ``archive`` for this thread, loaded on first use."""
    cache = _loaded.__dict__.setdefault("models", {})
    if digest not in cache:
        cache.clear()  # one model per thread: a long-lived worker may see many
        cache[digest] = _model_from_bytes(archive)
    return cache[digest]


def _predict_block(block, archive, digest, batch_size):
    return _model_from(archive, digest).predict(block, batch_size=batch_size)


def predict(model, images, batch_size=32):
    """Outputs of ``model`` for a ``dask.array`` of images, as a lazy ``dask.array``.

    Parameters
    ----------
    model : Model or Sequential
        A built model (e.g. ``tinycnn.load_model('model.npz')``, or a fitted estimator's ``model_``).
    images : dask.array.Array (n, h, w, c)
        Chunked along the first axis only (other axes are merged into whole images if needed).
    batch_size : int, default 32
        Batch size of ``model.predict`` inside each block.

    Returns
    -------
    dask.array.Array (n,) + model output shape, in the model's dtype
        Row ``i`` is the prediction for image ``i``, as ``model.predict`` gives it; call
        ``.compute()`` for a NumPy array, or ``.to_zarr(...)``/``.store(...)`` to write it out.
    """
    import dask
    import dask.array as da

    if not isinstance(model, Model):
        raise TypeError(f"tinycnn.dask.predict: `model` must be a tinycnn model (Sequential or Model), received "
                        f"{type(model).__name__}")
    if not isinstance(images, da.Array):
        raise TypeError(f"tinycnn.dask.predict: `images` must be a dask.array.Array (use model.predict for NumPy "
                        f"arrays, or dask.array.from_array(images, chunks=...)), received {type(images).__name__}")
    if not model.built:
        raise ValueError("tinycnn.dask.predict: the model is not built (its input shape is unknown): build or train "
                         "it first")
    expected = tuple(model.input_shape[1:])
    if images.ndim != len(expected) + 1 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"tinycnn.dask.predict: the model takes images of shape {(None,) + expected}, received "
                         f"`images` of shape {images.shape}")
    if images.dtype.kind not in "biuf":
        raise TypeError(f"tinycnn.dask.predict: `images` must hold real numbers, received dtype {images.dtype}")
    images = images.rechunk({axis: -1 for axis in range(1, images.ndim)})
    archive = _model_to_bytes(model)
    digest = hashlib.sha256(archive).hexdigest()
    # One graph key holding the archive: the scheduler sends it to each worker once.
    shipped = dask.delayed(archive, pure=True, traverse=False)
    out_shape = tuple(model.output_shape[1:])
    return images.map_blocks(_predict_block, shipped, digest, batch_size, dtype=model.dtype,
                             chunks=(images.chunks[0],) + tuple((d,) for d in out_shape),
                             drop_axis=list(range(len(out_shape) + 1, images.ndim)) or None,
                             meta=np.empty((0,) * (1 + len(out_shape)), dtype=model.dtype))


def _parse(address):
    """N for 'local:N', None for a scheduler address."""
    if not isinstance(address, str):
        raise TypeError(f"scheduler: `address` must be a string such as 'local:2' or 'tcp://HOST:8786', received "
                        f"{address!r}")
    if address.startswith("local:"):
        count = address[len("local:"):]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"scheduler: 'local:N' needs a positive number of workers N, received {address!r}")
        return int(count)
    if "://" not in address:
        raise ValueError(f"scheduler: expected 'local:N' (N local worker processes) or a scheduler address such as "
                         f"'tcp://HOST:8786', received {address!r}")
    return None


@contextmanager
def _environment(**variables):
    """Set environment variables for the worker processes started inside the block, and put this
    process's values back afterwards. Workers inherit them at start, before anything imports Numba
    (which reads NUMBA_NUM_THREADS once, on import); this process must keep its own, since Numba
    refuses a changed thread count once its threads run."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def scheduler(address, threads=1):
    """Run joblib work (scikit-learn's folds and grid points) on Dask inside the ``with`` block.

    Parameters
    ----------
    address : str
        ``'local:N'``: start a ``LocalCluster`` of N worker processes on this machine (loopback
        only), closed when the block ends; or the address of a running scheduler,
        ``'tcp://HOST:8786'``.
    threads : int, default 1
        For ``'local:N'``: Numba and BLAS threads of each worker process (each runs one task at a
        time).
        A remote cluster's workers keep the settings they were started with (see the module
        docstring).

    Yields
    ------
    distributed.Client

    Examples
    --------
    >>> with tinycnn.dask.scheduler('local:2'):
    ...     search = GridSearchCV(CNNClassifier(...), grid, n_jobs=-1).fit(X, y)
    """
    import joblib
    from distributed import Client, LocalCluster

    workers = _parse(address)
    cluster = None
    if workers is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"scheduler: invalid value for argument `threads`: expected an int >= 1, received "
                             f"{threads!r}")
        count = str(threads)  # as cross_validate_report(threads=...) sets them here
        with _environment(NUMBA_NUM_THREADS=count, OMP_NUM_THREADS=count, OPENBLAS_NUM_THREADS=count,
                          MKL_NUM_THREADS=count):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0")  # loopback, any free port
    client = Client(cluster if cluster is not None else address)
    try:
        with joblib.parallel_config(backend="dask"):
            yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
