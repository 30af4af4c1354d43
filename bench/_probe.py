"""Measurements that need a fresh process, run by ``bench_train.py`` as a child.

Usage (normally only by ``bench_train.py``)::

    python bench/_probe.py startup --batch-size 32 --image-size 64
    python bench/_probe.py memory  --batch-size 32 --image-size 64
    python bench/_probe.py memory  --batch-size 32 --image-size 64 --system torch

The thread count is set by the parent through environment variables (``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``NUMBA_NUM_THREADS``, ...), read when each library loads, so the child
does no thread set-up of its own that would add to the times it measures.

The result is printed as one JSON object on the last line of stdout.

``startup``
    Wall-clock seconds of ``import tinycnn``, of building and compiling the reference model, and
    of its first ``train_on_batch`` step, in a process that has imported nothing but the standard
    library. With a warm Numba cache (the parent has already run every kernel once, and
    ``cache=True`` wrote them to disk), the first step pays for loading the cached machine code,
    not for compiling it. This is what a learner waits for before the first batch trains.

``memory``
    Resident memory (RSS) around one training step of tinycnn, or with ``--system torch`` of the
    same model in PyTorch (channels_last), for the ratio. After one untimed warm-up step (cache load,
    optimizer slots), the process's steady RSS is read; the kernel's peak-RSS mark is then reset
    to it (``/proc/self/clear_refs``, Linux >= 4.0), one more step runs, and the new peak is read
    (``VmHWM``). ``step_peak - steady`` is the step's transient working set: activations kept for
    backward, im2col buffers, gradients. The process peak (import, build, warm-up and the step) is
    the larger of ``VmHWM`` before the reset and the step's peak. ``ru_maxrss`` is only a fallback
    off Linux: Linux carries it over ``execve``, so a child forked from a large parent reports the
    parent's peak, not its own.
"""
import argparse
import gc
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402  (standard library only at import time)


def _status_kib(field):
    """A ``Vm*`` line of ``/proc/self/status`` in KiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark to the current RSS; True on success."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def probe_startup(batch_size, size):
    start = time.perf_counter()
    import tinycnn  # noqa: F401
    imported = time.perf_counter()
    model = _common.build_tinycnn_model(size)
    built = time.perf_counter()
    x, y, _ = _common.random_batch(batch_size, size)
    data_ready = time.perf_counter()
    model.train_on_batch(x, y)
    stepped = time.perf_counter()
    return {"import_s": imported - start, "build_compile_s": built - imported,
            "first_step_s": stepped - data_ready, "total_s": (stepped - data_ready) + (built - start)}


def _torch_step(batch_size, size):
    """One PyTorch training step (channels_last, Adam), as bench_train.py times it."""
    import torch

    import bench_train
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    model = bench_train.build_torch_model(torch, size).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    x_nhwc, _, labels = _common.random_batch(batch_size, size)
    x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    return bench_train.torch_training_step(torch, model, optimizer, x, torch.from_numpy(labels))


def _tinycnn_step(batch_size, size):
    model = _common.build_tinycnn_model(size)
    x, y, _ = _common.random_batch(batch_size, size)
    return lambda: model.train_on_batch(x, y)


def probe_memory(batch_size, size, system="tinycnn"):
    mib = 1024.0
    step = (_torch_step if system == "torch" else _tinycnn_step)(batch_size, size)
    step()
    gc.collect()
    steady = _status_kib("VmRSS")
    peak_before = _status_kib("VmHWM")
    if steady is not None and peak_before is not None and _reset_peak_rss():
        step()
        step_peak = _status_kib("VmHWM")
        return {"method": "VmHWM reset to VmRSS before one step (/proc/self/clear_refs)",
                "steady_mib": steady / mib, "step_peak_mib": step_peak / mib,
                "step_transient_mib": (step_peak - steady) / mib,
                "process_peak_mib": max(peak_before, step_peak) / mib}
    step()
    # ru_maxrss is in KiB on Linux, bytes on macOS; see the module docstring for its caveat.
    scale = 1024.0 * mib if sys.platform == "darwin" else mib
    return {"method": "process peak only (ru_maxrss; peak-RSS reset unavailable)",
            "steady_mib": None if steady is None else steady / mib, "step_peak_mib": None,
            "process_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("startup", "memory"), help="what to measure (see above)")
    parser.add_argument("--batch-size", type=_common.positive_int, default=32, help="images per step")
    parser.add_argument("--image-size", type=_common.image_size, default=64, help="input side S (S x S x 3)")
    parser.add_argument("--system", choices=("tinycnn", "torch"), default="tinycnn",
                        help="memory: whose training step (torch: channels_last, as bench_train.py times it)")
    args = parser.parse_args(argv)
    if args.mode == "startup":
        result = probe_startup(args.batch_size, args.image_size)
    else:
        result = probe_memory(args.batch_size, args.image_size, args.system)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
