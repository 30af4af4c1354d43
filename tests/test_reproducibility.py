"""Runs repeat bit for bit across processes (README, "Runs repeat"): the reference architecture,
trained in two fresh processes with the same seed and 2 threads, ends with the same weights and
history to the last bit; a different seed ends elsewhere, so the comparison can fail.

The children train the reference model on 16x16 images, small enough to be cheap, large enough for
every fast route the 64x64 model takes: the first convolution runs im2col (3 input channels), the
other three Winograd (16+ channels), each with its 2x2 max pooling computed inside it (the plan's
rewrite), and with 2 threads every convolution splits its batch over both (``_threads.split_batch``)
and adds the slices' weight gradients in slot order. Each child reports which routes it took, and
the test asserts them, so a change that moved the model off a route shows here instead of leaving
the test to check something easier.

The first child runs alone and fills Numba's on-disk cache if it is empty; the other two then load
the kernels from it and run side by side.
"""
import json
import os
import subprocess
import sys

import numpy as np

_CHILD = r"""
import json, sys
import numpy as np
import numba, tinycnn
from tinycnn import _threads
from tinycnn.layers import conv, core
from tinycnn.models import reference_model

seed, out = int(sys.argv[1]), sys.argv[2]

# Which batch splits ran: a pass-through around the layers' split calls records the work that
# received a second slice (slot 1) with the serial kernels. The arithmetic is untouched.
split = set()
def spying(run_split):
    def run(n, work, **kwargs):
        def observed(lo, hi, slot, serial):
            if slot == 1 and serial:
                split.add(work.__qualname__.replace(".<locals>.work", ""))
            return work(lo, hi, slot, serial)
        return run_split(n, observed, **kwargs)
    return run
for module in (conv, core):
    module.split_batch, module.split_batch_sum = spying(module.split_batch), spying(module.split_batch_sum)

tinycnn.set_seed(seed)
gen = np.random.default_rng(0)  # the same data for every seed: the seed changes the weights, order and dropout
x = gen.random((32, 16, 16, 3), dtype=np.float32)
y = tinycnn.to_categorical(gen.integers(0, 2, 32), 2)
model = reference_model(input_shape=(16, 16, 3), num_classes=2)
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
history = model.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, verbose=0)
plan = []
model.summary(print_fn=plan.append, show_plan=True)
arrays = {f"weight_{i}": w for i, w in enumerate(model.get_weights())}
arrays.update({f"history_{k}": np.array(v) for k, v in history.history.items()})
arrays["prediction"] = model.predict(x[:4], verbose=0)
np.savez(out, **arrays)
print(json.dumps({"threads": numba.get_num_threads(), "blas_controlled": bool(_threads._blas_controllers()),
                  "plan": plan[0], "split": sorted(split)}))
"""

_THREADS = {name: "2" for name in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                   "MKL_NUM_THREADS")}


def _start(seed, out, hash_seed):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONWARNINGS="ignore", **_THREADS)
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(seed), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(child, out):
    """``(report, {name: array})`` of a finished child."""
    stdout, stderr = child.communicate(timeout=600)
    assert child.returncode == 0, stderr[-3000:]
    with np.load(out) as saved:
        return json.loads(stdout.strip().splitlines()[-1]), dict(saved)


def _routes_taken(report):
    """The routes the issue asks for, asserted on what the child saw."""
    assert report["threads"] == 2 and report["blas_controlled"], report
    plan = report["plan"].splitlines()
    convolutions = [line for line in plan if "(Conv2D, " in line]
    assert len(convolutions) == 4, report["plan"]
    assert "(Conv2D, Im2col)" in convolutions[0], convolutions[0]
    for line in convolutions[1:]:  # Winograd, with its max pooling computed inside
        assert "(Conv2D, Winograd) + " in line and "(MaxPooling2D, computed inside)" in line, line
    # Every convolution's forward and weight gradient ran as two slices, one per thread.
    assert {"Im2col.forward", "Im2col.backward", "Winograd._run_forward",
            "Winograd._run_backward"} <= set(report["split"]), report["split"]


def test_reference_model_trains_bit_identically_in_two_processes(tmp_path):
    outs = [tmp_path / f"run{i}.npz" for i in range(3)]
    first = _start(0, outs[0], hash_seed="1")
    report, runs = _finish(first, outs[0])
    _routes_taken(report)
    children = [_start(0, outs[1], hash_seed="2"), _start(1, outs[2], hash_seed="1")]
    (same_report, same), (_, other_seed) = [_finish(c, o) for c, o in zip(children, outs[1:])]
    assert same_report == report

    assert sorted(same) == sorted(runs) and len(runs["history_loss"]) == 2
    for name in runs:  # weights (batch-norm statistics included), history, predictions: to the bit
        assert np.array_equal(same[name], runs[name]), name
    # The comparison can fail: another seed gives other weights and another history.
    weights = [name for name in runs if name.startswith("weight_")]
    differ = [name for name in weights if not np.array_equal(other_seed[name], runs[name])]
    assert len(differ) == len(weights), sorted(set(weights) - set(differ))
    assert not np.array_equal(other_seed["history_loss"], runs["history_loss"])
