"""Inference images/s against batch size and thread count: tinycnn beside ONNX Runtime and PyTorch.

Run from the repository root, with tinycnn installed (``pip install "tinycnn[bench]"`` brings the
peers; ``[plot]`` draws the picture)::

    python bench/bench_sweep.py                                  # reference model, 64x64x3
    python bench/bench_sweep.py --batch-sizes 1,8,32,128 --threads-list 1,2 --plot sweep.png
    python bench/bench_sweep.py --model resnet18 --json results/sweep.json

What it measures
----------------
One model, built as ``bench_train.py`` builds it (same seed, same weights in tinycnn and, exported by
``model.export``, in ONNX Runtime; PyTorch's twin has its own random weights, which does not change
its speed), run in inference at every batch size of ``--batch-sizes`` and every thread count of
``--threads-list``:

* **tinycnn**: ``model.predict(x, batch_size=len(x))`` on NHWC float32 arrays.
* **tinycnn[fast_inference]**: the same on a second copy of the model (same seed, same weights) with
  ``model.fast_inference = True`` (Winograd F(4x4) in its 3x3 layers).
* **onnxruntime**: the exported model, one session per thread count, as ``bench_train.py`` makes it
  (``onnxruntime_session``: NCHW, full graph optimisation), fed NCHW arrays prepared before timing.
* **torch[channels_last]**: the twin in ``eval()`` under ``inference_mode``, ``torch.set_num_threads``.

For each (threads, batch) cell the systems take turns, round-robin, ``--repeats`` times, each turn
after ``--settle`` seconds idle (PyTorch's OpenMP workers spin after a call and would slow the next
system); each turn times enough calls to cover about ``--images`` images (at least 3 calls). Every figure is the
median images/s over the repeats, with the min-max range beside it. Thread counts are set in this
process (Numba's, the BLAS's through threadpoolctl, each peer's own); Numba's pool is created with
``NUMBA_NUM_THREADS`` (the core count by default), so counts above it are refused.

The output: one table per thread count (images/s, and the ratios of both tinycnn rows to each peer) and, with
``--plot``, a PNG of images/s against batch size, one panel per thread count.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import bench_train  # noqa: E402
from _common import progress  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="bench_sweep.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=_common.MODELS, default="reference")
    parser.add_argument("--image-size", type=_common.image_size, default=64, metavar="S")
    parser.add_argument("--batch-sizes", default="1,8,32,128", metavar="LIST")
    parser.add_argument("--threads-list", default="1,2", metavar="LIST")
    parser.add_argument("--repeats", type=_common.positive_int, default=5, metavar="R")
    parser.add_argument("--images", type=_common.positive_int, default=96, metavar="N",
                        help="images per timed turn, rounded up to whole calls (default: %(default)s)")
    parser.add_argument("--peers", default="onnxruntime,torch", metavar="LIST",
                        help="among 'onnxruntime' and 'torch', or 'none' (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=bench_train.SETTLE_SECONDS, metavar="SECONDS",
                        help="idle time before each turn, so the previous system's spinning threads park "
                             "(default: %(default)s)")
    parser.add_argument("--plot", metavar="PNG", help="draw images/s against batch size into this file")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    try:
        args.batches = [_common.positive_int(b) for b in args.batch_sizes.split(",")]
        args.thread_counts = [_common.positive_int(t) for t in args.threads_list.split(",")]
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    args.peer_list = [] if args.peers == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(args.peer_list) - {"onnxruntime", "torch"}
    if unknown:
        parser.error(f"--peers: unknown {sorted(unknown)}; choose among 'onnxruntime', 'torch' or 'none'")
    return args


def systems_for(args, model, modules, threads):
    """``{name: callable(batch) -> step}`` for one thread count (sessions and pools set here)."""
    import numpy as np
    import numba
    systems = {"tinycnn": lambda x: (lambda: model.predict(x, batch_size=len(x))),
               bench_train.FAST: lambda x: (lambda: args.fast_model.predict(x, batch_size=len(x)))}
    numba.set_num_threads(threads)
    if "onnxruntime" in modules:
        session = bench_train.onnxruntime_session(modules["onnxruntime"], model, threads)
        name = session.get_inputs()[0].name

        def ort_step(x):
            feed = {name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
            return lambda: session.run(None, feed)
        systems["onnxruntime"] = ort_step
    if "torch" in modules:
        torch = modules["torch"]
        torch.set_num_threads(threads)
        twin = args.torch_model

        def torch_step(x):
            t = torch.from_numpy(x).permute(0, 3, 1, 2)  # NHWC memory: already channels_last

            def step():
                with torch.inference_mode():
                    twin(t)
            return step
        systems["torch[channels_last]"] = torch_step
    return systems


def main(argv=None):
    args = parse_args(argv)
    import tinycnn  # noqa: F401  (picks Numba's threading layer before the pool starts)
    import numba
    modules, missing, failed = bench_train.import_peers(args.peer_list)
    ceiling = numba.config.NUMBA_NUM_THREADS
    if max(args.thread_counts) > ceiling:
        sys.exit(f"bench_sweep.py: --threads-list asks for {max(args.thread_counts)} threads; Numba's pool has "
                 f"{ceiling} (set NUMBA_NUM_THREADS before starting)")
    from threadpoolctl import threadpool_limits

    model = _common.build_tinycnn_model(args.image_size, model=args.model)
    args.fast_model = _common.build_tinycnn_model(args.image_size, model=args.model)
    args.fast_model.fast_inference = True
    if "torch" in modules:
        torch = modules["torch"]
        torch.manual_seed(0)
        args.torch_model = bench_train.build_torch_model(torch, args.image_size, args.model).to(
            memory_format=torch.channels_last).eval()
    data = {b: _common.random_batch(b, args.image_size, seed=b)[0] for b in args.batches}

    results = {}  # {threads: {batch: {system: [images/s, ...]}}}
    for threads in args.thread_counts:
        with threadpool_limits(limits=threads):
            systems = systems_for(args, model, modules, threads)
            results[threads] = {}
            for batch in args.batches:
                calls = max(3, -(-args.images // batch))
                steps = {name: make(data[batch]) for name, make in systems.items()}
                for step in steps.values():  # warm-up: caches, allocators, first-call set-up
                    step()
                    step()
                rates = {name: [] for name in steps}
                for _ in range(args.repeats):
                    for name, step in steps.items():
                        time.sleep(args.settle)  # the previous system's spinning threads park
                        start = time.perf_counter()
                        for _ in range(calls):
                            step()
                        rates[name].append(batch * calls / (time.perf_counter() - start))
                results[threads][batch] = rates
                progress(f"threads {threads}, batch {batch}: " + ", ".join(
                    f"{n} {_common.summarize(r)['median']:.0f}" for n, r in rates.items()))

    info = _common.machine_info(peer_modules=list(modules))
    print("=== tinycnn benchmark: inference against batch size and threads ===")
    counts = ", ".join(map(str, args.thread_counts))
    _common.print_machine(info, {"requested": counts, "numba": counts,
                                 "blas": "set to each count in turn with threadpoolctl"})
    print(f"Workload   : {args.model}, {args.image_size}x{args.image_size}x3 float32; {args.repeats} repeats "
          f"round-robin, about {args.images} images per turn; medians (min-max) in images/s")
    for threads, by_batch in results.items():
        names = list(next(iter(by_batch.values())))
        pairs = [(ours, peer) for ours in ("tinycnn", bench_train.FAST) for peer in names
                 if not peer.startswith("tinycnn")]
        rows = []
        for batch, rates in by_batch.items():
            med = {n: _common.summarize(r) for n, r in rates.items()}
            row = [str(batch)] + [f"{med[n]['median']:.0f} ({med[n]['min']:.0f}-{med[n]['max']:.0f})" for n in names]
            row += [f"{med[ours]['median'] / med[peer]['median']:.2f}x" for ours, peer in pairs]
            rows.append(row)
        print(f"\n{threads} thread{'s' if threads > 1 else ''}")
        print(_common.format_table(["batch"] + names + [f"{ours}/{peer}" for ours, peer in pairs], rows))
    for name in missing:
        print(f"\nPeer not installed (skipped): {name}: {bench_train.INSTALL_HINTS[name]}")
    for name, error in failed.items():
        print(f"\nPeer failed (skipped): {name}: {error}")
    if args.plot:
        plot(results, args)
        print(f"\nPicture written to {args.plot}")
    if args.json:
        _common.write_json(args.json, {"benchmark": "bench_sweep", "machine": info, "model": args.model,
                                       "image_size": args.image_size, "images_per_s": results})
        print(f"JSON written to {args.json}")


def plot(results, args):
    """Images/s (median, with the min-max range as error bars) against batch size, a panel per
    thread count, log-scaled batch axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4), sharey=True, squeeze=False)
    for ax, (threads, by_batch) in zip(axes[0], results.items()):
        batches = list(by_batch)
        for name in next(iter(by_batch.values())):
            s = [_common.summarize(by_batch[b][name]) for b in batches]
            med = [x["median"] for x in s]
            ax.errorbar(batches, med, yerr=[[m - x["min"] for m, x in zip(med, s)],
                                            [x["max"] - m for m, x in zip(med, s)]],
                        marker="o", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_title(f"{args.model}, {args.image_size}x{args.image_size}x3, {threads} thread{'s' if threads > 1 else ''}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("inference images/s (median, min-max)")
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
