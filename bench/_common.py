"""Helpers shared by the benchmark scripts in ``bench/``.

Nothing here measures tinycnn by itself; it holds what both ``bench_train.py`` and
``bench_layers.py`` need so that they agree on it:

* the reference model (:func:`build_tinycnn_model`) and random data of its shape;
* one thread count for every pool in the process (:func:`configure_threads`), and the same count
  for child processes through environment variables (:func:`thread_env`);
* the float32 GEMM ceiling (:func:`measure_gemm`): the GFLOP/s of one square 2048 product, which
  is what a convolution done as im2col + GEMM can at best approach on this machine;
* a description of the machine and the software (:func:`machine_info`), small statistics,
  plain-text tables and JSON output.

Only the standard library is imported at module level: ``_probe.py`` imports this module inside a
child process whose start-up time is being measured, so NumPy, Numba and tinycnn are imported
lazily, inside the functions that need them.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

#: Side of the square float32 matrix product used as the speed ceiling.
GEMM_SIZE = 2048

#: Number of classes of the reference model's softmax head.
NUM_CLASSES = 2


# --- command line ---------------------------------------------------------------------------------

def _int_at_least(minimum, wording):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wording}, received {text!r}")
        return value
    parse.__doc__ = f"argparse type: an int >= {minimum}."
    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def image_size(text):
    """argparse type: an image side the reference model accepts (three 2x2 poolings need >= 8)."""
    value = positive_int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"the reference model pools three times by 2: the image size must "
                                         f"be at least 8, received {value}")
    return value


def add_common_arguments(parser, repeats, warmup):
    """The options every script takes, with the script's own defaults for the repeat counts."""
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="B",
                        help="images per training (and per-layer) step (default: %(default)s)")
    parser.add_argument("--image-size", type=image_size, default=64, metavar="S",
                        help="input images are S x S x 3, float32, NHWC (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                        help="threads for every pool: NumPy's BLAS (through threadpoolctl), Numba, and "
                             "each peer's own (default: os.cpu_count() = %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=repeats, metavar="R",
                        help="timed repeats; min/median/max are taken over them (default: %(default)s)")
    parser.add_argument("--warmup", type=non_negative_int, default=warmup, metavar="W",
                        help="untimed steps before timing, per system and task: the first steps pay for "
                             "Numba's cache load, allocator growth and peers' one-time setup "
                             "(default: %(default)s)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write every figure, the settings and the machine to this JSON file, "
                             "for tracking results over time")


# --- threads --------------------------------------------------------------------------------------

def thread_env(threads):
    """Environment for a child process that should use ``threads`` threads in every pool.

    Environment variables are read when a library loads, so they are the only way to set the
    count in a fresh process before anything is imported.
    """
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[name] = str(threads)
    return env


def configure_threads(threads):
    """Use ``threads`` threads in NumPy's BLAS, every OpenMP runtime loaded so far, and Numba.

    Call it *after* importing tinycnn (whose import picks Numba's threading layer, which must happen
    before Numba starts its pool, and ``numba.set_num_threads`` starts it) and after importing the
    peers (threadpoolctl only limits libraries already loaded).

    Returns
    -------
    limiter : object or None
        threadpoolctl's limiter; keep a reference for as long as the limit should hold.
    report : dict
        What was actually set, for printing and for the JSON file.
    """
    import numba
    import tinycnn  # noqa: F401  (chooses Numba's threading layer before the pool starts)

    report = {"requested": threads}
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limiter = None
        report["blas"] = ("not limited: threadpoolctl is not installed (pip install threadpoolctl, or set "
                          "OPENBLAS_NUM_THREADS / OMP_NUM_THREADS before starting Python)")
    else:
        limiter = threadpool_limits(limits=threads)
        report["blas"] = f"limited to {threads} with threadpoolctl"
    ceiling = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(min(threads, ceiling))
    report["numba"] = numba.get_num_threads()
    if threads > ceiling:
        report["numba_note"] = (f"Numba's pool has {ceiling} threads (NUMBA_NUM_THREADS); "
                                f"{threads} were requested")
    return limiter, report


# --- the reference model and its data ------------------------------------------------------------

#: The workloads ``--model`` chooses from.
MODELS = ("reference", "resnet18")


def build_tinycnn_model(size=64, seed=0, model="reference"):
    """The workload in tinycnn, compiled with Adam and categorical cross-entropy; input
    ``(size, size, 3)`` float32, NHWC. ``'reference'``: ``tinycnn.models.reference_model`` (four
    3x3 'same' convolutions of 32, 64, 128, 256 filters with ReLU, batch norm, max pooling,
    Flatten, Dropout(0.5), softmax Dense). ``'resnet18'``: ``tinycnn.models.resnet18`` (the 3x3
    stem of small images up to 32 pixels, the 7x7 stride-2 stem and max pooling above)."""
    import tinycnn
    from tinycnn.models import reference_model, resnet18

    tinycnn.set_seed(seed)
    build = resnet18 if model == "resnet18" else reference_model
    model = build((size, size, 3), NUM_CLASSES)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


def random_batch(n, size, seed=0):
    """Random images and labels of the reference workload's shapes.

    Returns
    -------
    x : ndarray (n, size, size, 3) float32 in [0, 1)
    y_onehot : ndarray (n, NUM_CLASSES) float32
    labels : ndarray (n,) int64
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=n).astype(np.int64)
    y_onehot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    return x, y_onehot, labels


# --- the GEMM ceiling -----------------------------------------------------------------------------

def measure_gemm(n=GEMM_SIZE, repeats=5):
    """GFLOP/s of ``C = A @ B`` for square float32 ``n x n`` matrices through NumPy's BLAS.

    A product costs ``2 n^3`` floating-point operations. One untimed product comes first (thread
    start-up, page faults), then ``repeats`` timed ones. ``best`` is the ceiling to compare
    against: a layer's GFLOP/s divided by it says how close the layer gets to what this machine's
    BLAS does on an ideal, large, square product.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=c)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        seconds.append(time.perf_counter() - start)
    flops = 2.0 * n ** 3
    rates = [flops / s / 1e9 for s in seconds]
    return {"n": n, "repeats": repeats, "gflops_best": max(rates), "gflops_median": statistics.median(rates),
            "gflops_min": min(rates)}


# --- the machine ----------------------------------------------------------------------------------

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module_name):
    try:
        module = __import__(module_name)
    except Exception:  # noqa: BLE001  (a broken peer must not stop the report)
        return None
    return getattr(module, "__version__", "unknown")


def _git_revision():
    """``(commit, dirty)`` of the checkout this script lives in, or ``(None, None)``."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, dirty if commit else None


def numba_threading_layer():
    """Numba's threading layer; it is only known once a parallel kernel has run."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return "not chosen yet (no parallel kernel has run)"


def blas_info():
    """Loaded BLAS/OpenMP libraries as threadpoolctl sees them, or a note if it is missing."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed; numpy.show_config() lists the BLAS NumPy was built with"}]
    keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture", "prefix")
    return [{k: lib.get(k) for k in keep if lib.get(k) is not None} for lib in threadpool_info()]


def machine_info(peer_modules=()):
    """A dict describing the machine and the software versions, for the header and the JSON file.

    Call it after the benchmark's first tinycnn step so that Numba's threading layer is known.
    """
    commit, dirty = _git_revision()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    versions = {"python": platform.python_version()}
    for name in ("numpy", "numba", "tinycnn", "threadpoolctl", *peer_modules):
        versions[name] = _version(name)
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": affinity,
        "platform": platform.platform(),
        "versions": versions,
        "blas": blas_info(),
        "numba_threading_layer": numba_threading_layer(),
        "tinycnn_git_commit": commit,
        "tinycnn_git_dirty": dirty,
        "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def print_machine(info, threads_report):
    """The header: what ran where, so that two reports can be compared fairly."""
    print(f"CPU        : {info['cpu_model']}  ({info['logical_cpus']} logical CPUs, "
          f"{info['cpus_available']} available to this process)")
    print(f"Platform   : {info['platform']}")
    print("Versions   : " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v is not None))
    for lib in info["blas"]:
        if "note" in lib:
            print(f"BLAS       : {lib['note']}")
            continue
        print(f"BLAS/OpenMP: {lib.get('internal_api', '?')} {lib.get('version', '')} "
              f"({lib.get('user_api', '?')}, {lib.get('threading_layer', '-')} threading, "
              f"{lib.get('architecture', '-')}), {lib.get('num_threads')} threads, {lib.get('prefix', '')}")
    print(f"Numba      : threading layer '{info['numba_threading_layer']}', {threads_report['numba']} threads")
    print(f"Threads    : {threads_report['requested']} requested; BLAS {threads_report['blas']}"
          + (f"; {threads_report['numba_note']}" if "numba_note" in threads_report else ""))
    if info["tinycnn_git_commit"]:
        print(f"Checkout   : {info['tinycnn_git_commit']}"
              + (" (with uncommitted changes)" if info["tinycnn_git_dirty"] else ""))


# --- statistics, tables, JSON ---------------------------------------------------------------------

def summarize(values):
    """min / median / max of a list of numbers, plus the raw list (for the JSON file)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "values": list(values)}


def format_table(headers, rows, align=None):
    """A plain-text table. ``align`` is a string of 'l'/'r' per column (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


def write_json(path, payload):
    """Write ``payload`` as indented JSON, creating the folder if needed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(value):
    """NumPy scalars and anything else non-standard: as a float if possible, else as text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def progress(message):
    """Progress goes to stderr, so that stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


# --- FLOP counts ----------------------------------------------------------------------------------

def layer_flops(layer, batch):
    """Floating-point operations of a tinycnn layer's matrix products, or None if it has none.

    Convolution (im2col + GEMM), for ``N`` images, output ``OH x OW x F``, kernel ``KH x KW``
    over ``Cin`` channels::

        forward             2 * N*OH*OW * KH*KW*Cin * F
        backward, dW        the same (cols.T @ dz)
        backward, dx        the same (dz @ W.T), skipped when ``layer.input_grad_needed`` is False

    Dense is the same with ``M`` rows (N times any leading axes), ``n_in`` inputs and ``U`` units:
    ``2 * M * n_in * U`` per product. Bias, activation, im2col and col2im are not counted: they are
    memory-bound and cost little arithmetic.

    Returns
    -------
    (forward_flops, backward_flops) or None
    """
    from tinycnn.layers import Conv2D, Dense

    if isinstance(layer, Conv2D):
        oh, ow, filters = layer.output_shape
        kh, kw = layer.kernel_size
        product = 2.0 * batch * oh * ow * kh * kw * layer.input_shape[-1] * filters
    elif isinstance(layer, Dense):
        rows = batch
        for d in layer.input_shape[:-1]:
            rows *= d
        product = 2.0 * rows * layer.input_shape[-1] * layer.units
    else:
        return None
    backward = product * (2 if layer.input_grad_needed else 1)
    return product, backward


def model_flops(model, batch):
    """``(forward, training)`` FLOPs of one batch through a built tinycnn model (see :func:`layer_flops`);
    a training step is forward plus backward."""
    forward = backward = 0.0
    for layer in model.layers:
        counted = layer_flops(layer, batch)
        if counted is not None:
            forward += counted[0]
            backward += counted[1]
    return forward, forward + backward
