"""Training speed of two versions of tinycnn, side by side in one run: did a change cost speed?

Run from the repository root::

    python bench/compare_revisions.py HEAD~3                 # HEAD~3 against the working tree
    python bench/compare_revisions.py c098421 --new HEAD --rounds 7 --model resnet18

Each version runs in its own fresh processes (two versions of a package cannot share one), from
its own checkout: the working tree, or a revision exported with ``git archive`` into a temporary
folder (its Numba cache warms up in a first, untimed process). The processes alternate, old, new,
old, new, ..., ``--rounds`` times, so that a slow drift of the shared machine hits both alike. In
each process the same workload runs: the model (``--model``: the reference CNN, or ResNet-18 where
the version has it) is built with the same seed, ``--warmup`` training steps run untimed, then
``--repeats`` repeats of ``--steps`` training steps are timed; the process reports its median
images/s. The table gives every round and the median (min-max) of each version over the rounds,
and last the ratio new / old of the medians: above 1 the new version is faster.

Only the public API is used in the child (``tinycnn.models``, ``compile``, ``train_on_batch``), so any
revision since 0.1 can be measured.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The child: one version's training rate, printed as JSON on the last line.
CHILD = r"""
import json, statistics, sys, time
import numpy as np
import tinycnn
from tinycnn import models
batch, size, model_name, warmup, repeats, steps = sys.argv[1:7]
batch, size, warmup, repeats, steps = int(batch), int(size), int(warmup), int(repeats), int(steps)
tinycnn.set_seed(0)
if model_name == "resnet18":
    model = models.resnet18((size, size, 3), 2)
else:
    model = models.reference_model((size, size, 3), 2)
model.compile(optimizer="adam", loss="categorical_crossentropy")
gen = np.random.default_rng(0)
x = gen.random((batch, size, size, 3), dtype=np.float32)
y = np.eye(2, dtype=np.float32)[gen.integers(0, 2, batch)]
for _ in range(warmup):
    model.train_on_batch(x, y)
rates = []
for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    rates.append(batch * steps / (time.perf_counter() - start))
print(json.dumps({"file": tinycnn.__file__, "median": statistics.median(rates), "rates": rates}))
"""


def export(revision, folder):
    """``git archive`` of ``revision`` unpacked into ``folder``; returns the commit's short hash."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return commit


def measure(checkout, args, env, warmup=None, repeats=None):
    """One child process run from ``checkout``: its result dict."""
    child_env = dict(env, PYTHONPATH=checkout + os.pathsep + env.get("PYTHONPATH", ""))
    argv = [str(args.batch_size), str(args.image_size), args.model, str(args.warmup if warmup is None else warmup),
            str(args.repeats if repeats is None else repeats), str(args.steps)]
    done = subprocess.run([sys.executable, "-c", CHILD] + argv, cwd=checkout, env=child_env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"the child for {checkout} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["file"].startswith(checkout):
        raise SystemExit(f"the child imported {result['file']}, not the checkout {checkout}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="the revision to compare against (e.g. HEAD~1, a commit hash)")
    parser.add_argument("--new", default=None, help="the newer revision (default: the working tree)")
    parser.add_argument("--model", choices=("reference", "resnet18"), default="reference")
    parser.add_argument("--rounds", type=_common.positive_int, default=5, help="alternations old/new")
    parser.add_argument("--steps", type=_common.positive_int, default=3, help="training steps per repeat")
    _common.add_common_arguments(parser, repeats=3, warmup=2)
    args = parser.parse_args(argv)
    env = _common.thread_env(args.threads)
    with tempfile.TemporaryDirectory(prefix="tinycnn-compare-") as tmp:
        checkouts = {}
        for label, revision in (("old", args.old), ("new", args.new)):
            if revision is None:
                checkouts[label] = (ROOT, "working tree")
                continue
            folder = os.path.join(tmp, label)
            os.makedirs(folder)
            checkouts[label] = (folder, export(revision, folder))
        print(f"Workload: {args.model}, {args.image_size}x{args.image_size}x3, training batch {args.batch_size}, "
              f"{args.threads} threads; {args.rounds} rounds x (old, new), each a fresh process: "
              f"{args.warmup} warm-up steps, {args.repeats} repeats x {args.steps} steps")
        for label, (folder, name) in checkouts.items():
            _common.progress(f"  {label}: {name} ({folder}): warming the Numba cache")
            measure(folder, args, env, warmup=1, repeats=1)
        medians = {"old": [], "new": []}
        for r in range(args.rounds):
            line = []
            for label in ("old", "new"):
                result = measure(checkouts[label][0], args, env)
                medians[label].append(result["median"])
                line.append(f"{label} {result['median']:.1f} img/s")
            _common.progress(f"  round {r + 1}/{args.rounds}: " + ", ".join(line))
        stats = {label: _common.summarize(values) for label, values in medians.items()}
        rows = [[f"{label} ({checkouts[label][1]})", f"{s['min']:.1f}", f"{s['median']:.1f}", f"{s['max']:.1f}"]
                for label, s in stats.items()]
        print(_common.format_table(["version", "min", "median", "max"], rows, align="lrrr"))
        ratio = stats["new"]["median"] / stats["old"]["median"]
        print(f"new / old (medians of training images/s): {ratio:.3f}")
        if args.json:
            _common.write_json(args.json, {"args": vars(args), "medians": medians, "ratio": ratio,
                                           "revisions": {k: v[1] for k, v in checkouts.items()}})


if __name__ == "__main__":
    main()
