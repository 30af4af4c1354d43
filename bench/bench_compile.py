"""What a first run compiles: every Numba specialisation a workload needs, and the CPU time of each.

Run from the repository root, with tinycnn installed::

    python bench/bench_compile.py                       # reference model: a training step, predict at 32 and 1
    python bench/bench_compile.py --model resnet18 --top 30

The workload runs in a fresh child process whose Numba cache is an empty temporary folder
(``NUMBA_CACHE_DIR``), so everything is compiled as on a new install. Numba announces each
compilation (its ``numba:compile`` event); the child records the process CPU time of each, minus
the compilations nested inside it, so the figures add up to the total. Numba's own helpers (array
constructors, string formatting for error messages) appear under the tinycnn kernel whose
compilation first needed them. Printed: the number of specialisations, the total, the wall time of
the whole workload, and the most expensive ones.

CPU time rather than wall time: compiling is single-threaded, and CPU time stays nearly the same on
a busy machine, where wall time does not.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

CHILD = r"""
import json, sys, time, warnings
sys.path.insert(0, sys.argv[1])
from numba.core import event
import _common
import numpy as np
import tinycnn

warnings.simplefilter("ignore")
records, stack = [], []

class Listener(event.Listener):
    def on_start(self, ev):
        stack.append([time.process_time(), 0.0])

    def on_end(self, ev):
        start, nested = stack.pop()
        total = time.process_time() - start
        if stack:
            stack[-1][1] += total
        f = ev.data["dispatcher"].py_func
        records.append({"function": f"{f.__module__}.{f.__qualname__}", "cpu_s": total - nested,
                        "signature": str(ev.data["args"])})

model_name, size, batch = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
wall = time.perf_counter()
model = _common.build_tinycnn_model(size, model=model_name)
x, y, _ = _common.random_batch(batch, size)
with event.install_listener("numba:compile", Listener()):
    model.train_on_batch(x, y)
    model.predict(x, batch_size=batch)
    model.predict(x[:1], batch_size=1)
print(json.dumps({"wall_s": time.perf_counter() - wall, "records": records}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench_compile.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=_common.MODELS, default="reference")
    parser.add_argument("--image-size", type=_common.image_size, default=64, metavar="S")
    parser.add_argument("--batch-size", type=_common.positive_int, default=32, metavar="B")
    parser.add_argument("--top", type=_common.positive_int, default=15, metavar="K",
                        help="list the K most expensive specialisations (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write every record to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tinycnn-empty-cache-") as empty:
        env = dict(os.environ, NUMBA_CACHE_DIR=empty)
        done = subprocess.run([sys.executable, "-c", CHILD, os.path.dirname(os.path.abspath(__file__)), args.model,
                               str(args.image_size), str(args.batch_size)],
                              env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"bench_compile.py: the child failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    records = result["records"]
    ours = [r for r in records if r["function"].startswith("tinycnn.")]
    total = sum(r["cpu_s"] for r in records)
    print(f"=== what a first run compiles: {args.model}, {args.image_size}x{args.image_size}x3, a training step at "
          f"batch {args.batch_size}, predict at {args.batch_size} and 1 (empty Numba cache) ===")
    print(f"{len(records)} specialisations ({len(ours)} of tinycnn's kernels, {len(records) - len(ours)} Numba "
          f"helpers): {total:.1f} s of CPU compiling; the whole workload took {result['wall_s']:.1f} s wall")
    rows = [[f"{r['cpu_s']:.2f}", r["function"], r["signature"][:70]]
            for r in sorted(records, key=lambda r: -r["cpu_s"])[:args.top]]
    print(_common.format_table(["CPU s", "function", "signature"], rows))
    if args.json:
        _common.write_json(args.json, {"benchmark": "bench_compile", "model": args.model, **result})


if __name__ == "__main__":
    main()
