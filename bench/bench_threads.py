"""The cost of serving a model from Python threads: ``model.predict`` on one image at a time from
one thread, from 4 threads sharing one model, and from 4 threads with a model each.

Run from the repository root, with tinycnn installed::

    python bench/bench_threads.py                       # reference model, 64x64x3, batch 1, 4 workers
    python bench/bench_threads.py --model resnet18
    python bench/bench_threads.py --workers 8 --threads 2 --json results/threads.json

What it answers
---------------
A web service answers requests from a thread pool: each request is one image, and several arrive
at once. tinycnn lets any number of threads call ``predict`` at the same time, on one model or on
several, and they take turns batch by batch under one process-wide lock (``tinycnn/_threads.py``,
``compute_lock``): a layer keeps per-call buffers, and the slice threads and BLAS's thread count are
shared by the process. So threads bring safety, not speed:
each batch already uses every core (``--threads``). This measures what taking turns costs.

Three ways to serve, the same weights in each:

* **1 thread**: one thread calls ``model.predict(x)`` on one image ``--workers x --calls`` times;
* **W threads, one model**: ``--workers`` threads share one model, ``--calls`` calls each;
* **W threads, a model each**: each thread has its own copy of the model, ``--calls`` calls each.

The threads start together (a barrier) and the clock runs from their start to the last one's
end. Every output is compared with the single-thread result of the same image; a mismatch is
counted and reported (there should be none).

How it is timed
---------------
Each model first runs ``--warmup`` untimed calls. Then the ways take turns, round-robin
(1 thread repeat 1, shared repeat 1, each repeat 1, 1 thread repeat 2, ...) so that a slow drift
of the machine hits all of them alike, with ``--settle`` seconds of idle time before each. Per
repeat: throughput (images/s over the wall time of all calls) and the latency of single calls
(median and 90th percentile, milliseconds, as each thread sees its ``predict`` return: with W
threads it includes the wait for the lock). The tables show median (min-max) of those figures
over the repeats, and the ratios come last: a throughput ratio near 1.00x means threads cost
nothing; the latency ratio says how much longer a request waits when W arrive together.

``--batch-size`` is the images per ``predict`` call here (default 1, the serving case).
"""
import argparse
import os
import statistics
import sys
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
from _common import progress  # noqa: E402

SETTLE_SECONDS = 0.5


def make_ways(workers):
    """``[(key, label, threads, models)]`` for the three ways of serving."""
    return [("one_thread", "1 thread", 1, 1),
            ("shared", f"{workers} threads, one model", workers, 1),
            ("each", f"{workers} threads, a model each", workers, workers)]


def serve(models, images, expected, threads, calls):
    """Run ``calls`` predictions per thread, thread ``t`` on ``models[t % len(models)]`` and images
    ``images[(t + i) % len(images)]``. Returns ``(wall seconds, [latency seconds], mismatches)``;
    an exception in a thread is raised here."""
    latencies, mismatches, errors = [[] for _ in range(threads)], [0] * threads, []
    barrier = threading.Barrier(threads + 1)

    def work(t):
        model = models[t % len(models)]
        barrier.wait()
        try:
            for i in range(calls):
                k = (t + i) % len(images)
                start = time.perf_counter()
                y = model.predict(images[k])
                latencies[t].append(time.perf_counter() - start)
                if expected is not None and not (y == expected[k]).all():
                    mismatches[t] += 1
        except BaseException as error:  # noqa: BLE001  (re-raised in the calling thread)
            errors.append(error)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall, [s for per_thread in latencies for s in per_thread], sum(mismatches)


def percentile(values, q):
    """The ``q``-th percentile (0-100) of ``values``, linear between order statistics."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    lo = int(at)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)


def measure(ways, models, images, expected, args):
    """Warm-up, then round-robin repeats. Returns ``{key: {figure: [value per repeat]}}`` and the
    total of mismatching outputs per way."""
    progress(f"  warming up: {args.warmup} calls on each of the {len(models)} models")
    serve(models, images, None, len(models), max(1, args.warmup))
    results = {key: {"images_per_s": [], "median_ms": [], "p90_ms": []} for key, *_ in ways}
    mismatches = dict.fromkeys(results, 0)
    total = args.workers * args.calls
    for repeat in range(args.repeats):
        for key, label, threads, count in ways:
            time.sleep(args.settle)
            wall, latencies, wrong = serve(models[:count], images, expected, threads, total // threads)
            results[key]["images_per_s"].append(len(latencies) * args.batch_size / wall)
            results[key]["median_ms"].append(1000 * statistics.median(latencies))
            results[key]["p90_ms"].append(1000 * percentile(latencies, 90))
            mismatches[key] += wrong
        progress(f"  repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{label} {results[key]['images_per_s'][-1]:.1f} img/s" for key, label, *_ in ways))
    return results, mismatches


def _cell(values, digits):
    s = _common.summarize(values)
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def print_results(ways, results, mismatches):
    rows = [[label, _cell(results[key]["images_per_s"], 1), _cell(results[key]["median_ms"], 2),
             _cell(results[key]["p90_ms"], 2), str(mismatches[key])] for key, label, *_ in ways]
    print("\npredict, median (min-max) over repeats")
    print(_common.format_table(["way", "images/s", "latency median ms", "latency p90 ms", "wrong outputs"], rows))


def ratios(ways, results):
    """``{key: {figure: median of the way / median of one thread}}`` for the threaded ways."""
    base = {figure: _common.summarize(values)["median"] for figure, values in results["one_thread"].items()}
    return {key: {figure: _common.summarize(values)["median"] / base[figure]
                  for figure, values in results[key].items()}
            for key, *_ in ways if key != "one_thread"}


def print_ratios(ways, table):
    print("\nRatio to 1 thread, medians  (throughput 1.00x: threads cost nothing; latency 4.00x: a call waits "
          "as long as 4 calls)")
    rows = [[label, f"{table[key]['images_per_s']:.2f}x", f"{table[key]['median_ms']:.2f}x",
             f"{table[key]['p90_ms']:.2f}x"] for key, label, *_ in ways if key in table]
    print(_common.format_table(["way", "throughput", "latency median", "latency p90"], rows))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="bench_threads.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_common_arguments(parser, repeats=5, warmup=3)
    parser.set_defaults(batch_size=1)
    parser.add_argument("--workers", type=_common.positive_int, default=4, metavar="W",
                        help="Python threads calling predict at once (default: %(default)s)")
    parser.add_argument("--calls", type=_common.positive_int, default=25, metavar="K",
                        help="predict calls per worker thread in one repeat; the single thread makes W x K "
                             "(default: %(default)s)")
    parser.add_argument("--model", choices=_common.MODELS, default="reference",
                        help="the workload: the reference CNN or ResNet-18 (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=SETTLE_SECONDS, metavar="SECONDS",
                        help="idle time before each way's repeat (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    progress("importing tinycnn ...")
    import tinycnn  # noqa: F401  (before configure_threads: it picks Numba's threading layer)
    limiter, threads_report = _common.configure_threads(args.threads)  # noqa: F841  (keeps the limit alive)
    # Random weights: the batch-norm statistics are unsettled by design here.
    warnings.filterwarnings("ignore", message=".*moving statistics", category=RuntimeWarning)

    progress(f"building {args.workers} copies of the model ...")
    models = [_common.build_tinycnn_model(args.image_size, model=args.model)]
    for _ in range(args.workers - 1):
        twin = _common.build_tinycnn_model(args.image_size, seed=1, model=args.model)
        twin.set_weights(models[0].get_weights())
        models.append(twin)
    images = [_common.random_batch(args.batch_size, args.image_size, seed=k)[0] for k in range(8)]
    expected = [models[0].predict(x) for x in images]
    ways = make_ways(args.workers)

    info = _common.machine_info()
    print("=== tinycnn benchmark: predict from Python threads ===")
    _common.print_machine(info, threads_report)
    print(f"Workload   : {'reference CNN' if args.model == 'reference' else 'ResNet-18'}, "
          f"{args.image_size}x{args.image_size}x3 float32 NHWC, {args.batch_size} image(s) per predict call; "
          f"{args.workers} worker threads x {args.calls} calls (1 thread: {args.workers * args.calls} calls); "
          f"{args.warmup} warm-up calls, {args.repeats} repeats, round-robin")
    sys.stdout.flush()

    results, mismatches = measure(ways, models, images, expected, args)
    print_results(ways, results, mismatches)
    table = ratios(ways, results)
    if args.json:
        _common.write_json(args.json, {
            "benchmark": "bench_threads",
            "machine": info,
            "threads": threads_report,
            "settings": {"model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
                         "threads": args.threads, "workers": args.workers, "calls": args.calls,
                         "repeats": args.repeats, "warmup": args.warmup, "settle_seconds": args.settle},
            "ways": {key: {"label": label, "threads": threads, "models": count,
                           "figures": {figure: _common.summarize(values) for figure, values in results[key].items()},
                           "wrong_outputs": mismatches[key]}
                     for key, label, threads, count in ways},
            "ratios_to_one_thread": table,
        })
        print(f"\nJSON written to {args.json}")
    print_ratios(ways, table)
    if any(mismatches.values()):
        sys.exit("some outputs differed from the single-thread ones (see 'wrong outputs')")


if __name__ == "__main__":
    main()
