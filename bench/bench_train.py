"""Training and inference throughput of tinycnn next to PyTorch, ONNX Runtime and Keras, on one CNN workload.

Run from the repository root, with tinycnn installed::

    python bench/bench_train.py                       # tinycnn + every peer that is installed
    python bench/bench_train.py --peers none          # tinycnn alone
    python bench/bench_train.py --threads 1 --json results/train.json

The workload
------------
The reference model, built identically in each system::

    Conv2D(32, 3x3, same, relu) BN  Conv2D(64) MaxPool BN  Conv2D(128) MaxPool BN
    Conv2D(256) MaxPool  Flatten  Dropout(0.5)  Dense(2, softmax)

compiled with Adam (lr 1e-3, beta 0.9/0.999, epsilon 1e-7) and categorical cross-entropy, fed
random float32 images of 64x64x3 (``--image-size``) in batches of 32 (``--batch-size``).

* **tinycnn**: NHWC; a training step is ``model.train_on_batch(x, y)``, inference is
  ``model.predict(x, batch_size=len(x))`` (one forward pass over the whole batch, input checks
  included, as a user calls it).
* **tinycnn[fast_inference]** (inference only): a second copy of the model, same weights, with
  ``model.fast_inference = True``: Winograd F(4x4, 3x3) in its 3x3 layers, whose float32 outputs
  differ from the exact ones by about 1e-6 of their scale (``tinycnn/kernels/winograd4.py``).
* **torch[channels_last]** and **torch[nchw]**: the same stack in ``torch.nn`` (Conv2d padding 1,
  BatchNorm2d(eps=1e-3, momentum=0.01) which is Keras's momentum 0.99, MaxPool2d, Dropout, Linear
  on logits with ``cross_entropy``, which folds the softmax in as tinycnn does), ``torch.optim.Adam``
  with the same settings. Measured in both memory formats: channels_last is NHWC in memory, as
  tinycnn; NCHW is PyTorch's default. A training step is zero_grad, forward, loss, backward,
  ``optimizer.step()``; inference runs in ``eval()`` mode under ``torch.inference_mode()``.
* **onnxruntime** (inference only): the tinycnn model itself, exported with ``model.export(...,
  channels_first=True)`` and run by ONNX Runtime's CPU provider with ``--threads`` intra-op threads
  and full graph optimisation, fed NCHW arrays prepared before timing (see ``onnxruntime_system``).
* **keras[<backend>]**: Keras 3 with whatever backend it is configured for; ``train_on_batch`` and
  ``predict_on_batch``.

Input tensors are prepared once, before timing; no system pays for converting the data.

How it is timed
---------------
Tasks: one training step at batch B, inference at batch B, and inference at batch 256 (see
``--inference-batch-sizes``). For each task every system first runs ``--warmup`` untimed steps; then
the systems take turns, round-robin: tinycnn repeat 1, torch repeat 1, ..., tinycnn repeat 2, ...
so that a slow drift of the machine (another job, thermal throttling) hits all of them alike.
A repeat times ``--steps`` consecutive steps (for inference at least ``--min-images`` images, so a
batch of 1 is timed over 96 calls, not 3); its rate is ``batch * steps / seconds`` images/s.
The tables show min / median / max over the repeats: a wide spread means a noisy machine, and the
median is the figure to compare. Every pool uses ``--threads`` threads.

Reading the output
------------------
1. The machine: CPU, BLAS library and threads, Numba's threading layer, versions, git commit.
2. The float32 GEMM ceiling: GFLOP/s of one 2048 x 2048 product through NumPy's BLAS. The column
   ``GFLOP/s`` in the tables is ``images/s x`` the model's convolution and dense FLOPs per image
   (bias, normalisation and pooling not counted): it says how much of that ceiling a system turns
   into useful arithmetic.
3. Each in a fresh subprocess (``bench/_probe.py``): peak resident memory of one training step at
   batch B, tinycnn's and (reference model, if installed) PyTorch's with their ratio; and the time
   of ``import tinycnn`` + build + first training step, twice with Numba's cache already warm and
   once with an empty cache (every kernel the step needs compiled: what a new user waits for).
4. One table per task.
5. Last, the ratios tinycnn / peer of the median images/s: above 1 tinycnn is faster, 0.5 means
   tinycnn runs at half the peer's speed; the inference rows again for tinycnn[fast_inference].

A peer that is not installed is skipped and listed with how to install it. PyTorch:
``pip install torch==2.13.0`` (exactly this pin: a CPU build; a bare ``pip install torch`` pulls a
CUDA build of several GB). Keras: ``pip install keras jax``.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
from _common import progress  # noqa: E402

#: How to install each peer; shown when one is missing.
INSTALL_HINTS = {
    "torch": "pip install torch==2.13.0   (that exact pin: the CPU build; a bare `pip install torch` "
             "pulls a multi-GB CUDA build)",
    "keras": "pip install keras jax",
    "onnxruntime": 'pip install "tinycnn[onnx]"   (onnx to export the model, onnxruntime to run it)',
}

#: Default seconds of idle time between two systems' repeats (``--settle``). Thread pools (OpenMP,
#: OpenBLAS) keep their workers spinning for a while after a parallel region; this lets them park
#: before the next system starts, so that one system's idle spinners do not steal cores from the
#: other. Measured here: with 0.05 s, tinycnn's batch-32 inference right after PyTorch's ran at
#: 126-233 images/s (bimodal) against a steady ~230 alone; PyTorch's OpenMP workers were still
#: spinning when tinycnn started.
SETTLE_SECONDS = 0.5

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_probe.py")


# --- the systems under test -----------------------------------------------------------------------

class System:
    """One framework configuration: a display name and one zero-argument step function per task.

    ``steps[task_key]`` runs one step of that task (a training step, or one inference batch).
    ``notes`` are printed under the tables (e.g. a thread count that could not be enforced).
    """

    def __init__(self, name, steps, notes=()):
        self.name = name
        self.steps = steps
        self.notes = list(notes)


def make_tasks(batch_size, inference_batch_sizes):
    """``[(key, label, kind, batch)]``: training at B first, then inference at each size, no duplicates."""
    tasks = [(f"train_b{batch_size}", f"training step, batch {batch_size}", "train", batch_size)]
    for b in dict.fromkeys(inference_batch_sizes):
        tasks.append((f"infer_b{b}", f"inference, batch {b}", "infer", b))
    return tasks


FAST = "tinycnn[fast_inference]"


def tinycnn_system(args, data, tasks):
    """tinycnn, and tinycnn[fast_inference]: a second model built with the same seed (the same
    weights) whose inference runs F(4x4) Winograd; it has inference tasks only."""
    model = _common.build_tinycnn_model(args.image_size, model=args.model)
    fast = _common.build_tinycnn_model(args.image_size, model=args.model)
    fast.fast_inference = True
    steps, fast_steps = {}, {}
    for key, _, kind, batch in tasks:
        x, y, _ = data[batch]
        if kind == "train":
            steps[key] = lambda x=x, y=y: model.train_on_batch(x, y)
        else:
            steps[key] = lambda x=x, b=batch: model.predict(x, batch_size=b)
            fast_steps[key] = lambda x=x, b=batch: fast.predict(x, batch_size=b)
    return System("tinycnn", steps), System(FAST, fast_steps), model


def build_torch_resnet18(torch, size):
    """ResNet-18 in ``torch.nn``, as ``tinycnn.models.resnet18`` builds it: the same stems (3x3
    stride 1 up to 32 pixels; else 7x7 stride 2 and a 3x3 stride-2 max pooling), basic blocks with a
    1x1 projection where the shape changes, convolutions without bias, batch norm with Keras's
    epsilon and momentum, global average pooling and a linear head on logits."""
    nn = torch.nn

    def conv_bn(c_in, c_out, k, stride):
        return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
                nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01)]

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(c_in, c_out, 3, stride), nn.ReLU(), *conv_bn(c_out, c_out, 3, 1))
            self.shortcut = (nn.Sequential(*conv_bn(c_in, c_out, 1, stride)) if stride != 1 or c_in != c_out
                             else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    small = size <= 32
    layers = conv_bn(3, 64, 3 if small else 7, 1 if small else 2) + [nn.ReLU()]
    if not small:
        layers.append(nn.MaxPool2d(3, stride=2, padding=1))
    c_in = 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for b in range(2):
            layers.append(Block(c_in, width, 2 if stage > 0 and b == 0 else 1))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, _common.NUM_CLASSES)]
    return nn.Sequential(*layers)


def build_torch_model(torch, size, model="reference"):
    """The workload in ``torch.nn`` (NCHW semantics; memory format chosen by the caller)."""
    if model == "resnet18":
        return build_torch_resnet18(torch, size)
    nn = torch.nn

    def conv(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU()]

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    side = size
    for _ in range(3):
        side //= 2
    return nn.Sequential(
        *conv(3, 32), bn(32),
        *conv(32, 64), nn.MaxPool2d(2), bn(64),
        *conv(64, 128), nn.MaxPool2d(2), bn(128),
        *conv(128, 256), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(256 * side * side, _common.NUM_CLASSES),
    )


def torch_training_step(torch, model, optimizer, x, target):
    """One PyTorch training step as a callable: zero_grad, forward, cross-entropy on the logits,
    backward, ``optimizer.step()`` (also what ``_probe.py`` measures the memory of)."""
    import torch.nn.functional as F

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        optimizer.step()
    return step


def torch_systems(torch, args, data, tasks):
    """Two systems: the model in channels_last memory format (NHWC in memory) and in NCHW."""
    systems = []
    for fmt_name, fmt in (("channels_last", torch.channels_last), ("nchw", torch.contiguous_format)):
        torch.manual_seed(0)
        model = build_torch_model(torch, args.image_size, args.model).to(memory_format=fmt)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
        steps = {}
        for key, _, kind, batch in tasks:
            x_nhwc, _, labels = data[batch]
            # A permuted NHWC array is already channels_last in memory; .contiguous(fmt) copies only for NCHW.
            x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
            if kind == "train":
                step = torch_training_step(torch, model, optimizer, x, torch.from_numpy(labels))
            else:
                def step(model=model, x=x):
                    model.eval()
                    with torch.inference_mode():
                        model(x)
            steps[key] = step
        systems.append(System(f"torch[{fmt_name}]", steps))
    return systems


def onnxruntime_session(ort, model, threads):
    """``model`` exported with ``channels_first=True`` and loaded by ONNX Runtime's CPU provider with
    ``threads`` intra-op threads and full graph optimisation (the file goes once it is loaded)."""
    with tempfile.TemporaryDirectory(prefix="tinycnn-bench-") as folder:
        path = os.path.join(folder, "model.onnx")
        model.export(path, channels_first=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnxruntime_system(ort, args, data, tasks, model):
    """Inference only: the tinycnn model (the same weights) exported with ``model.export`` and run
    by ONNX Runtime with ``--threads`` intra-op threads, as a deployment would run it.

    Exported with ``channels_first=True`` and fed NCHW arrays prepared before timing, as PyTorch is:
    ONNX Runtime's convolutions are NCHW, and a Transpose in front of them (the NHWC export) would
    charge it for a copy no NCHW user pays. The graph is optimised fully (ORT_ENABLE_ALL: batch norm
    folded into the convolution where it is exact, operators fused) at session creation, untimed.
    """
    import numpy as np
    session = onnxruntime_session(ort, model, args.threads)
    name = session.get_inputs()[0].name
    steps = {}
    for key, _, kind, batch in tasks:
        if kind != "infer":
            continue
        feed = {name: np.ascontiguousarray(data[batch][0].transpose(0, 3, 1, 2))}
        steps[key] = lambda feed=feed: session.run(None, feed)
    return System("onnxruntime", steps)


def keras_system(keras, args, data, tasks):
    """The reference model in Keras 3, on whichever backend Keras is configured for."""
    if args.model != "reference":
        raise ValueError(f"the Keras peer builds only the reference model, not {args.model!r}")
    backend = keras.backend.backend()
    notes = []
    if backend == "torch":
        import torch
        torch.set_num_threads(args.threads)
    elif backend == "tensorflow":
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        except RuntimeError as error:
            notes.append(f"keras[tensorflow]: thread count not enforced ({error})")
    else:
        notes.append(f"keras[{backend}]: --threads is not enforced for this backend (XLA sizes its own "
                     f"CPU thread pool; set XLA_FLAGS before starting Python to change it)")
    L = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(shape=(args.image_size, args.image_size, 3)),
        L.Conv2D(32, (3, 3), padding="same", activation="relu"), L.BatchNormalization(),
        L.Conv2D(64, (3, 3), padding="same", activation="relu"), L.MaxPooling2D((2, 2)), L.BatchNormalization(),
        L.Conv2D(128, (3, 3), padding="same", activation="relu"), L.MaxPooling2D((2, 2)), L.BatchNormalization(),
        L.Conv2D(256, (3, 3), padding="same", activation="relu"), L.MaxPooling2D((2, 2)),
        L.Flatten(), L.Dropout(0.5), L.Dense(_common.NUM_CLASSES, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
                  loss="categorical_crossentropy")
    steps = {}
    for key, _, kind, batch in tasks:
        x, y, _ = data[batch]
        if kind == "train":
            steps[key] = lambda x=x, y=y: model.train_on_batch(x, y)
        else:
            steps[key] = lambda x=x: model.predict_on_batch(x)
    return System(f"keras[{backend}]", steps, notes)


def import_peers(requested):
    """Import the requested peers that are installed.

    Returns ``(modules, missing, failed)``: ``{name: module}``, the names not installed, and
    ``{name: error}`` for those installed but failing to import.
    """
    modules, missing, failed = {}, [], {}
    for name in requested:
        if importlib.util.find_spec(name) is None:
            missing.append(name)
            continue
        try:
            modules[name] = __import__(name)
        except Exception as error:  # noqa: BLE001  (a broken peer is reported, never fatal)
            failed[name] = f"{type(error).__name__}: {error}"
    return modules, missing, failed


# --- timing ---------------------------------------------------------------------------------------

def time_steps(step, count):
    """Seconds for ``count`` consecutive calls of ``step``."""
    start = time.perf_counter()
    for _ in range(count):
        step()
    return time.perf_counter() - start


def run_task(systems, task, args, failed):
    """Warm-up, then round-robin repeats for one task. Returns ``{system name: [images/s, ...]}``.

    A peer whose warm-up raises is dropped from this task (and reported); tinycnn's errors propagate.
    """
    key, label, _, batch = task
    active = []
    for system in systems:
        if key not in system.steps:  # an inference-only peer on a training task
            continue
        progress(f"  {label}: warming up {system.name} ({args.warmup} steps)")
        try:
            time_steps(system.steps[key], max(1, args.warmup))
        except Exception as error:  # noqa: BLE001
            if system.name.startswith("tinycnn"):
                raise
            failed[f"{system.name} ({label})"] = f"{type(error).__name__}: {error}"
            progress(f"  {label}: {system.name} failed and is skipped: {error}")
            continue
        active.append(system)
    rates = {system.name: [] for system in active}
    # Small inference batches take a few milliseconds: time enough of them that a repeat is not
    # decided by the first call after the settle pause (threads waking up, caches refilling).
    steps = args.steps if task[2] == "train" else max(args.steps, -(-args.min_images // batch))
    for repeat in range(args.repeats):
        for system in active:
            time.sleep(args.settle)
            seconds = time_steps(system.steps[key], steps)
            rates[system.name].append(batch * steps / seconds)
        progress(f"  {label}: repeat {repeat + 1}/{args.repeats}: "
                 + ", ".join(f"{name} {r[-1]:.1f} img/s" for name, r in rates.items()))
    return rates


def run_probe(mode, args, extra=(), env=None):
    """Run ``bench/_probe.py MODE`` in a fresh interpreter; its last stdout line is JSON."""
    command = [sys.executable, PROBE, mode, "--batch-size", str(args.batch_size),
               "--image-size", str(args.image_size), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env=dict(_common.thread_env(args.threads), **(env or {})), timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["subprocess_wall_s"] = wall
    return result


# --- report ---------------------------------------------------------------------------------------

def print_probes(memory, startup, batch_size):
    print("\nIn a fresh process each (bench/_probe.py)")
    for name, result in memory.items():
        if "error" in result:
            print(f"  {name} memory probe failed: {result['error']}")
            continue
        if result.get("step_peak_mib") is not None:
            print(f"  {name}: peak RSS during one training step (batch {batch_size}): {result['step_peak_mib']:.0f} "
                  f"MiB = steady {result['steady_mib']:.0f} MiB (model, optimizer state, libraries) "
                  f"+ {result['step_transient_mib']:.0f} MiB transient")
        print(f"  {name}: process peak RSS (import, build, warm-up and steps; {result['method']}): "
              f"{result['process_peak_mib']:.0f} MiB")
    peaks = {name: r.get("step_peak_mib") for name, r in memory.items() if "error" not in r}
    if peaks.get("tinycnn") and peaks.get("torch[channels_last]"):
        print(f"  peak RSS of a training step, tinycnn / torch[channels_last]: "
              f"{peaks['tinycnn'] / peaks['torch[channels_last]']:.2f}x")
    for name, result in startup:
        if "error" in result:
            print(f"  start-up ({name}) failed: {result['error']}")
            continue
        print(f"  import tinycnn + build + first training step ({name}): {result['total_s']:.2f} s "
              f"(import {result['import_s']:.2f} s, build+compile {result['build_compile_s']:.2f} s, "
              f"first step {result['first_step_s']:.2f} s; whole subprocess {result['subprocess_wall_s']:.2f} s)")


def print_task_table(label, rates, flops_per_image, gemm_best):
    rows = []
    for name, values in rates.items():
        s = _common.summarize(values)
        gflops = s["median"] * flops_per_image / 1e9
        rows.append([name, f"{s['min']:.1f}", f"{s['median']:.1f}", f"{s['max']:.1f}",
                     f"{1000.0 / s['median']:.2f}", f"{gflops:.1f}", f"{100.0 * gflops / gemm_best:.0f}%"])
    print(f"\n{label}  (images/s over repeats; ms/img and GFLOP/s from the median)")
    print(_common.format_table(["system", "min", "median", "max", "ms/img", "GFLOP/s", "of GEMM"], rows))


def ratios(results, ours="tinycnn"):
    """``{task: {peer: ours' median / peer median}}``; the peers are the systems not named tinycnn."""
    out = {}
    for task, rates in results.items():
        if ours not in rates:
            continue
        median = _common.summarize(rates[ours])["median"]
        out[task] = {name: median / _common.summarize(values)["median"]
                     for name, values in rates.items() if not name.startswith("tinycnn")}
    return out


def print_ratios(table, fast_table, tasks):
    peers = sorted({peer for row in table.values() for peer in row})
    print("\nRatio tinycnn / peer, median images/s  (>1: tinycnn faster; 0.50x: tinycnn at half the peer's speed)")
    if not peers:
        print("  no peer was measured")
        return
    rows = []
    for key, label, _, _ in tasks:
        if key in table:
            rows.append([label] + [f"{table[key][p]:.2f}x" if p in table[key] else "-" for p in peers])
    for key, label, _, _ in tasks:
        if key in fast_table:
            rows.append([f"{label}, fast_inference"]
                        + [f"{fast_table[key][p]:.2f}x" if p in fast_table[key] else "-" for p in peers])
    print(_common.format_table(["task"] + peers, rows))


# --- main -----------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="bench_train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_common_arguments(parser, repeats=5, warmup=2)
    parser.add_argument("--steps", type=_common.positive_int, default=3, metavar="K",
                        help="steps timed together in one repeat (default: %(default)s)")
    parser.add_argument("--min-images", type=_common.positive_int, default=96, metavar="N",
                        help="inference: time at least N images per repeat (more calls for small batches; "
                             "default: %(default)s)")
    parser.add_argument("--model", choices=_common.MODELS, default="reference",
                        help="the workload: the reference CNN or ResNet-18 (default: %(default)s)")
    parser.add_argument("--peers", default="torch,onnxruntime,keras", metavar="LIST",
                        help="comma-separated peers to compare with, among 'torch', 'onnxruntime' and 'keras', "
                             "or 'none' "
                             "(default: %(default)s; a peer that is not installed is skipped)")
    parser.add_argument("--inference-batch-sizes", metavar="LIST",
                        help="comma-separated inference batch sizes (default: the training batch size and 256)")
    parser.add_argument("--settle", type=float, default=SETTLE_SECONDS, metavar="SECONDS",
                        help="idle time before each system's repeat, so the previous system's spinning "
                             "threads park (default: %(default)s)")
    parser.add_argument("--no-probes", action="store_true",
                        help="skip the two subprocess measurements (tinycnn's peak RSS and start-up time)")
    args = parser.parse_args(argv)
    peers = [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    if peers == ["none"]:
        peers = []
    unknown = [p for p in peers if p not in INSTALL_HINTS]
    if unknown:
        parser.error(f"--peers: unknown peer(s) {unknown}; choose among {sorted(INSTALL_HINTS)} or 'none'")
    args.peer_list = peers
    if args.inference_batch_sizes:
        try:
            args.inference_list = [_common.positive_int(b) for b in args.inference_batch_sizes.split(",")]
        except argparse.ArgumentTypeError as error:
            parser.error(f"--inference-batch-sizes: {error}")
    else:
        args.inference_list = [args.batch_size, 256]
    return args


def main(argv=None):
    args = parse_args(argv)

    progress("importing tinycnn and the peers ...")
    import tinycnn  # noqa: F401  (before configure_threads: it picks Numba's threading layer)
    modules, missing, import_failed = import_peers(args.peer_list)
    limiter, threads_report = _common.configure_threads(args.threads)  # noqa: F841  (keeps the limit alive)
    if "torch" in modules:
        modules["torch"].set_num_threads(args.threads)

    tasks = make_tasks(args.batch_size, args.inference_list)
    data = {batch: _common.random_batch(batch, args.image_size, seed=batch)
            for batch in {t[3] for t in tasks}}

    progress("building the models ...")
    ours, fast, model = tinycnn_system(args, data, tasks)
    systems = [ours, fast]
    failed = dict(import_failed)
    builders = {"torch": lambda m: torch_systems(m, args, data, tasks),
                "keras": lambda m: [keras_system(m, args, data, tasks)],
                "onnxruntime": lambda m: [onnxruntime_system(m, args, data, tasks, model)]}
    for name in args.peer_list:
        if name not in modules:
            continue
        try:
            systems += builders[name](modules[name])
        except Exception as error:  # noqa: BLE001  (a peer that cannot build is reported, never fatal)
            failed[name] = f"{type(error).__name__}: {error}"

    # The first tinycnn step also starts Numba's pool, so that its threading layer can be reported.
    progress("first tinycnn training step (loads Numba's cached kernels) ...")
    first_step_s = time_steps(ours.steps[tasks[0][0]], 1)
    info = _common.machine_info(peer_modules=list(modules))
    print("=== tinycnn benchmark: training and inference throughput ===")
    _common.print_machine(info, threads_report)
    print(f"Workload   : {'reference CNN' if args.model == 'reference' else 'ResNet-18'}, {args.image_size}x{args.image_size}x3 float32 NHWC, training batch "
          f"{args.batch_size}, inference batches {', '.join(str(t[3]) for t in tasks[1:])}; "
          f"{args.warmup} warm-up steps, {args.repeats} repeats x {args.steps} steps, round-robin")
    print(f"Systems    : {', '.join(s.name for s in systems)}")
    print(f"tinycnn first training step in this process: {first_step_s:.2f} s")

    progress("measuring the GEMM ceiling ...")
    gemm = _common.measure_gemm()
    print(f"GEMM ceiling: float32 {gemm['n']}x{gemm['n']} @ {gemm['n']}x{gemm['n']} through NumPy: "
          f"{gemm['gflops_best']:.1f} GFLOP/s best, {gemm['gflops_median']:.1f} median of {gemm['repeats']}")
    sys.stdout.flush()

    results = {}
    for task in tasks:
        progress(f"task: {task[1]}")
        results[task[0]] = run_task(systems, task, args, failed)

    memory, startup = {}, []
    if not args.no_probes:
        progress("subprocess: peak RSS of a tinycnn training step ...")
        memory["tinycnn"] = run_probe("memory", args)
        if "torch" in modules and args.model == "reference":
            progress("subprocess: peak RSS of a PyTorch training step ...")
            memory["torch[channels_last]"] = run_probe("memory", args, ("--system", "torch"))
        # The parent has run every kernel, so Numba's cache is warm; two runs show whether it was.
        for name in ("warm cache, run 1", "warm cache, run 2"):
            progress(f"subprocess: tinycnn start-up, {name} ...")
            startup.append((name, run_probe("startup", args)))
        # What a new user waits for once: every kernel compiled, into a cache folder of its own.
        with tempfile.TemporaryDirectory(prefix="tinycnn-empty-cache-") as empty:
            progress("subprocess: tinycnn start-up with an empty Numba cache (compiles every kernel) ...")
            startup.append(("empty cache", run_probe("startup", args, env={"NUMBA_CACHE_DIR": empty})))
        print_probes(memory, startup, args.batch_size)

    forward_flops, train_flops = _common.model_flops(model, 1)
    for key, label, kind, _ in tasks:
        per_image = train_flops if kind == "train" else forward_flops
        print_task_table(label, results[key], per_image, gemm["gflops_best"])
    print(f"\n(GFLOP/s counts the convolution and dense products only: {forward_flops / 1e9:.3f} GFLOP per image "
          f"forward, {train_flops / 1e9:.3f} GFLOP per image for a training step)")

    notes = [note for s in systems for note in s.notes]
    if missing:
        print("\nPeers not installed (skipped):")
        for name in missing:
            print(f"  {name}: {INSTALL_HINTS[name]}")
    if failed:
        print("\nPeers that failed (skipped):")
        for name, error in failed.items():
            print(f"  {name}: {error}")
    for note in notes:
        print(f"Note: {note}")

    table, fast_table = ratios(results), ratios(results, FAST)
    if args.json:
        payload = {
            "benchmark": "bench_train",
            "machine": info,
            "threads": threads_report,
            "settings": {"batch_size": args.batch_size, "image_size": args.image_size, "threads": args.threads,
                         "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup,
                         "peers": args.peer_list, "inference_batch_sizes": [t[3] for t in tasks[1:]],
                         "settle_seconds": args.settle},
            "systems": [s.name for s in systems],
            "peers_missing": {name: INSTALL_HINTS[name] for name in missing},
            "peers_failed": failed,
            "notes": notes,
            "gemm": gemm,
            "flops_per_image": {"forward": forward_flops, "train_step": train_flops},
            "tinycnn_first_step_in_process_s": first_step_s,
            "memory": memory,
            "tinycnn_startup": dict(startup),
            "tasks": {key: {"label": label, "kind": kind, "batch": batch,
                            "images_per_s": {name: _common.summarize(v) for name, v in results[key].items()}}
                      for key, label, kind, batch in tasks},
            "ratios_tinycnn_over_peer": table,
            "ratios_fast_inference_over_peer": fast_table,
        }
        _common.write_json(args.json, payload)
        print(f"\nJSON written to {args.json}")

    print_ratios(table, fast_table, tasks)


if __name__ == "__main__":
    main()
