"""Where a tinycnn training step spends its time: per-layer forward and backward milliseconds.

Run from the repository root, with tinycnn installed::

    python bench/bench_layers.py
    python bench/bench_layers.py --batch-size 64 --threads 1 --json results/layers.json

What is measured
----------------
The reference model of ``bench_train.py`` (four 3x3 convolutions with batch norm and max pooling,
then Flatten, Dropout and a 2-way softmax Dense; Adam, categorical cross-entropy) at batch B on
random 64x64x3 float32 images. One repeat is one training step taken apart:

1. forward in training mode through ``model.layers`` one at a time, timing each
   ``layer.forward(x, training=True)``;
2. the loss value and its gradient (``model._loss``), timed as its own row;
3. backward through the layers in reverse, timing each ``layer.backward(g)``. It starts from a
   random gradient of the output's shape. The softmax head is entered through
   ``layer.backward_from_logits(g)``, as in training, where the loss folds the softmax in and hands
   the gradient of the logits. The first layer computes no input gradient (nothing below it
   learns), exactly as in ``train_on_batch``;
4. the optimizer update, ``model.optimizer.apply(model._trainable())``, as its own row;
5. for comparison, one whole ``model.train_on_batch(x, y)``.

Every figure is the median over ``--repeats`` repeats, after ``--warmup`` untimed ones.

Reading the output
------------------
* ``fwd ms`` / ``bwd ms``: median milliseconds of the layer's forward and backward.
* ``share``: the layer's forward + backward as a part of the sum of all rows (the whole step).
* For Conv2D and Dense, the matrix-product FLOPs: forward ``2*N*OH*OW*KH*KW*Cin*F``; backward the
  same for the weight gradient plus the same again for the input gradient, unless
  ``layer.input_grad_needed`` is False (the first layer). ``GFLOP/s`` divides those by the layer's
  time, which also holds im2col/col2im (or Winograd's transforms), bias and ReLU. ``%peak`` compares
  with the float32 GEMM ceiling (a square 2048 product through NumPy's BLAS, measured in the same
  run). Winograd layers do 2.25x fewer multiplications than these FLOPs, so their "effective"
  GFLOP/s can pass the ceiling. An im2col convolution at 80% of the ceiling is close to as fast as it
  can be done that way; one at 20% loses its time outside the product or runs a product of an
  awkward shape.
* The totals: GEMM-bearing layers (Conv2D, Dense) against everything else (normalisation,
  pooling, dropout, loss, optimizer), the time the products would take at the GEMM ceiling, and
  the sum of the rows against a measured ``train_on_batch`` (the difference is input validation,
  copies and Python glue outside the layers).

Convolution breakdown
---------------------
A second table takes each Conv2D apart: it runs the layer's implementation object
(``layer.implementation``: ``Im2col``, ``Pointwise`` or ``Winograd`` from tinycnn/layers/conv.py)
forward and backward over the whole batch, its own batch split and chunk loops included, with
every kernel it calls timed (the implementation looks its kernels up by role in ``kernels``; the
benchmark shadows that table with timed versions, so no loop is copied here). For an im2col
layer: ``im2col`` (forward and again in backward), the three products (forward ``cols @ W``,
weight gradient ``cols.T @ dz``, input gradient ``dz @ W.T``), ``col2im`` and the layer's
bias/ReLU epilogues. For a Winograd layer (3x3, stride 1, 16+ channels): the input transform
(forward and again in backward), the 16 batched products of each kind, the output transform (with
bias and ReLU inside, and the next layer's 2x2 max pooling when the plan puts it there), the
adjoints of both transforms (the ReLU mask and the bias gradient, and the pooling, inside the
output one) and the kernel transforms. ``rest`` is the implementation's wall-clock time outside
its kernels (batch split, chunk loop, summing the slices' gradients). Products are shown with
their real GFLOP/s and % of the GEMM ceiling. It answers "is a convolution slow in its products or
around them?", and the last line gives everything outside the products as a share of the step.

Internal names used: ``model.layers``, ``model._loss``, ``model._reads_logits``, ``model._trainable``,
``model._fusion_plan``, ``layer.backward_from_logits``, ``layer.input_grad_needed``, and Conv2D's
``implementation`` (its ``kernels``, ``chunk_images``, ``forward``/``backward``,
``forward_pooled``/``backward_pooled``), ``_implementation_epilogue`` and ``_bias``.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
from _common import progress  # noqa: E402

LOSS_ROW = "loss (value + gradient)"
OPTIMIZER_ROW = "optimizer.apply"


def one_step(model, x, y, grad_out, from_logits):
    """One training step taken apart; returns ``(forward, backward, extra)`` dicts of seconds.

    ``forward[name]`` and ``backward[name]`` per layer; ``extra`` holds the loss, the optimizer
    and a whole ``train_on_batch`` for comparison.
    """
    clock = time.perf_counter
    forward, backward, extra = {}, {}, {}
    fused = model._fusion_plan()  # Conv2D + 2x2 max pooling run as one pass, as train_on_batch does
    a = x
    for i, layer in enumerate(model.layers):
        if i - 1 in fused:
            forward[layer.name] = 0.0  # ran inside the convolution before it
            continue
        start = clock()
        a = layer.forward_pooled(a, training=True) if i in fused else layer.forward(a, training=True)
        forward[layer.name] = clock() - start

    start = clock()
    model._loss(a, y, None)
    extra[LOSS_ROW] = clock() - start

    g = grad_out
    last = len(model.layers) - 1
    for i in reversed(range(len(model.layers))):
        layer = model.layers[i]
        if i - 1 in fused:
            backward[layer.name] = 0.0
            continue
        start = clock()
        if i == last and from_logits:
            g = layer.backward_from_logits(g)
        else:
            g = layer.backward_pooled(g) if i in fused else layer.backward(g)
        backward[layer.name] = clock() - start
        if g is None:  # the first layer needs no input gradient, and returns none
            break

    start = clock()
    model.optimizer.apply(model._trainable())
    extra[OPTIMIZER_ROW] = clock() - start

    start = clock()
    model.train_on_batch(x, y)
    extra["train_on_batch"] = clock() - start
    return forward, backward, extra


def collect(model, x, y, grad_out, from_logits, repeats):
    """Median seconds of every row over ``repeats`` steps: ``(forward, backward, extra)``."""
    samples = [one_step(model, x, y, grad_out, from_logits) for _ in range(repeats)]

    def median_of(index):
        keys = samples[0][index].keys()
        return {k: statistics.median(s[index][k] for s in samples) for k in keys}

    return median_of(0), median_of(1), median_of(2)


def build_rows(model, batch, forward, backward, extra, peak):
    """One dict per layer (plus loss and optimizer rows), with times, FLOPs and shares."""
    rows = []
    fused = model._fusion_plan()
    for i, layer in enumerate(model.layers):
        fwd = forward[layer.name]
        bwd = backward.get(layer.name, 0.0)
        row = {"name": layer.name, "type": type(layer).__name__, "output_shape": [batch, *layer.output_shape],
               "forward_ms": 1e3 * fwd, "backward_ms": 1e3 * bwd, "gemm": False,
               "algorithm": getattr(layer, "algorithm", None),
               "fused_into": model.layers[i - 1].name if i - 1 in fused else None}
        flops = _common.layer_flops(layer, batch)
        if flops is not None:
            row.update(gemm=True, forward_flops=flops[0], backward_flops=flops[1],
                       forward_gflops=flops[0] / fwd / 1e9, backward_gflops=flops[1] / bwd / 1e9 if bwd else None,
                       input_grad_needed=bool(layer.input_grad_needed))
            row["forward_pct_peak"] = 100.0 * row["forward_gflops"] / peak
            row["backward_pct_peak"] = (100.0 * row["backward_gflops"] / peak
                                        if row["backward_gflops"] is not None else None)
        rows.append(row)
    for name in (LOSS_ROW, OPTIMIZER_ROW):
        rows.append({"name": name, "type": "-", "output_shape": None, "forward_ms": 1e3 * extra[name],
                     "backward_ms": 0.0, "gemm": False})
    total = sum(r["forward_ms"] + r["backward_ms"] for r in rows)
    for r in rows:
        r["total_ms"] = r["forward_ms"] + r["backward_ms"]
        r["share_pct"] = 100.0 * r["total_ms"] / total
    return rows, total


def print_rows(rows):
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    table = []
    for r in rows:
        shape = "x".join(str(d) for d in r["output_shape"]) if r["output_shape"] else "-"
        bwd = "-" if r["type"] == "-" else f"{r['backward_ms']:.2f}"
        table.append([r["name"], r["type"], shape, f"{r['forward_ms']:.2f}", bwd, f"{r['total_ms']:.2f}",
                      f"{r['share_pct']:.1f}%",
                      fmt(r.get("forward_gflops"), ".1f"), fmt(r.get("backward_gflops"), ".1f"),
                      fmt(r.get("forward_pct_peak"), ".0f"), fmt(r.get("backward_pct_peak"), ".0f")])
    headers = ["layer", "type", "output", "fwd ms", "bwd ms", "total ms", "share",
               "fwd GFLOP/s", "bwd GFLOP/s", "fwd %peak", "bwd %peak"]
    print(_common.format_table(headers, table, align="lll" + "r" * 8))
    note = [r["name"] for r in rows if r["gemm"] and not r["input_grad_needed"]]
    if note:
        print(f"(no input gradient computed for {', '.join(note)}: its backward counts the weight-gradient "
              f"product only)")
    fused = [r["name"] for r in rows if r.get("fused_into")]
    if fused:
        print(f"({', '.join(fused)}: computed inside the Winograd layer before it, whose row holds its "
              f"time)")
    winograd = [r["name"] for r in rows if r.get("algorithm") == "winograd"]
    if winograd:
        print(f"(Winograd layers {', '.join(winograd)}: GFLOP/s counts the FLOPs of the direct convolution, 2.25x "
              f"what Winograd multiplies, so it can pass 100% of the ceiling; the breakdown below counts real FLOPs)")


def summarize_totals(rows, total_ms, whole_ms, peak):
    """Totals: by layer type, GEMM-bearing against the rest, and the ideal time at the ceiling."""
    by_type = {}
    for r in rows:
        kind = r["type"] if r["type"] != "-" else r["name"]
        by_type[kind] = by_type.get(kind, 0.0) + r["total_ms"]
    gemm_rows = [r for r in rows if r["gemm"]]
    gemm_ms = sum(r["total_ms"] for r in gemm_rows)
    gemm_flops = sum(r["forward_flops"] + r["backward_flops"] for r in gemm_rows)
    ideal_ms = 1e3 * gemm_flops / (peak * 1e9)
    return {
        "by_type_ms": by_type,
        "sum_of_rows_ms": total_ms,
        "gemm_bearing_ms": gemm_ms,
        "gemm_bearing_share_pct": 100.0 * gemm_ms / total_ms,
        "other_ms": total_ms - gemm_ms,
        "other_share_pct": 100.0 * (total_ms - gemm_ms) / total_ms,
        "gemm_flops": gemm_flops,
        "gemm_bearing_gflops": gemm_flops / (gemm_ms / 1e3) / 1e9,
        "gemm_bearing_pct_peak": 100.0 * gemm_flops / (gemm_ms / 1e3) / 1e9 / peak,
        "gemm_at_peak_ms": ideal_ms,
        "train_on_batch_ms": whole_ms,
        "outside_layers_ms": whole_ms - total_ms,
    }


def print_totals(t):
    print("\nBy layer type (forward + backward, ms; share of the step):")
    width = max(len(k) for k in t["by_type_ms"])
    for kind, ms in sorted(t["by_type_ms"].items(), key=lambda kv: -kv[1]):
        print(f"  {kind.ljust(width)}  {ms:9.2f}  {100.0 * ms / t['sum_of_rows_ms']:5.1f}%")
    print("\nTotals")
    print(f"  GEMM-bearing layers (Conv2D, Dense): {t['gemm_bearing_ms']:9.2f} ms  "
          f"({t['gemm_bearing_share_pct']:.1f}% of the step), {t['gemm_bearing_gflops']:.1f} GFLOP/s = "
          f"{t['gemm_bearing_pct_peak']:.0f}% of the GEMM ceiling")
    print(f"  everything else (norm, pool, dropout, flatten, loss, optimizer): {t['other_ms']:9.2f} ms  "
          f"({t['other_share_pct']:.1f}%)")
    print(f"  the same products at the GEMM ceiling would take {t['gemm_at_peak_ms']:.2f} ms "
          f"({t['gemm_flops'] / 1e9:.2f} GFLOP, counted as direct convolutions: Winograd layers multiply less)")
    print(f"  sum of the rows: {t['sum_of_rows_ms']:.2f} ms; one whole train_on_batch: {t['train_on_batch_ms']:.2f} ms; "
          f"difference {t['outside_layers_ms']:+.2f} ms\n"
          f"  (a positive difference is spent outside the layers: input checks, copies, Python glue; a negative "
          f"one means the repeats were too few or the machine too noisy to tell)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="bench_layers.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_common_arguments(parser, repeats=7, warmup=2)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import tinycnn  # noqa: F401  (before configure_threads: it picks Numba's threading layer)

    limiter, threads_report = _common.configure_threads(args.threads)  # noqa: F841  (keeps the limit alive)
    model = _common.build_tinycnn_model(args.image_size)
    x, y, _ = _common.random_batch(args.batch_size, args.image_size)
    head = model.layers[-1]
    grad_out = np.random.default_rng(1).standard_normal((args.batch_size, *head.output_shape)).astype(np.float32)
    # Training folds a softmax head into the loss; the step then enters the head from its logits.
    from_logits = bool(getattr(model, "_reads_logits", False)) and hasattr(head, "backward_from_logits")

    progress(f"warming up ({args.warmup} steps; the first loads Numba's cached kernels) ...")
    collect(model, x, y, grad_out, from_logits, max(1, args.warmup))
    progress("measuring the GEMM ceiling ...")
    gemm = _common.measure_gemm()
    progress(f"timing {args.repeats} steps ...")
    forward, backward, extra = collect(model, x, y, grad_out, from_logits, args.repeats)

    info = _common.machine_info()
    print("=== tinycnn benchmark: per-layer time of one training step ===")
    _common.print_machine(info, threads_report)
    print(f"Workload   : reference CNN, batch {args.batch_size}, {args.image_size}x{args.image_size}x3 float32 NHWC; "
          f"median of {args.repeats} steps after {args.warmup} warm-up steps")
    print(f"GEMM ceiling: float32 {gemm['n']}x{gemm['n']} product through NumPy: {gemm['gflops_best']:.1f} GFLOP/s "
          f"best, {gemm['gflops_median']:.1f} median of {gemm['repeats']}  (the '%peak' columns use the best)\n")

    peak = gemm["gflops_best"]
    rows, total_ms = build_rows(model, args.batch_size, forward, backward, extra, peak)
    print_rows(rows)
    totals = summarize_totals(rows, total_ms, 1e3 * extra["train_on_batch"], peak)
    print_totals(totals)
    progress("taking the convolutions apart ...")
    breakdown = conv_breakdown(model, x, args.repeats, peak)
    print_conv_breakdown(breakdown, totals["sum_of_rows_ms"], totals["other_ms"])

    if args.json:
        payload = {
            "benchmark": "bench_layers",
            "machine": info,
            "threads": threads_report,
            "settings": {"batch_size": args.batch_size, "image_size": args.image_size, "threads": args.threads,
                         "repeats": args.repeats, "warmup": args.warmup, "softmax_from_logits": from_logits},
            "gemm": gemm,
            "rows": rows,
            "totals": totals,
            "conv_breakdown": breakdown,
        }
        _common.write_json(args.json, payload)
        print(f"\nJSON written to {args.json}")


def conv_breakdown(model, x, repeats, peak):
    """Time the pieces of every Conv2D's forward and backward (see the module docstring)."""
    import numpy as np
    from tinycnn.layers import Conv2D

    rows = []
    h = x
    fused = model._fusion_plan()
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Conv2D):
            rows.append(_time_conv_pieces(layer, np.ascontiguousarray(h), repeats, peak, pooled=i in fused))
        h = layer.forward(h, training=True)
    return rows


#: How the breakdown names the kernels an implementation calls (``Im2col.kernels`` and
#: ``Winograd.kernels`` in tinycnn/layers/conv.py, by role).
PIECE_NAMES = {
    "im2col": "im2col", "col2im": "col2im",
    "forward_product": "fwd GEMM", "weight_product": "dW GEMM", "input_product": "dX GEMM",
    "input_transform": "input transform", "input_adjoint": "input adjoint",
    "output_transform": "output transform (+bias, ReLU)",
    "output_transform_pool": "output transform (+bias, ReLU, 2x2 max pool)",
    "output_adjoint": "output adjoint (+ReLU mask, bias grad)",
    "output_pool_adjoint": "output adjoint (+2x2 max pool, ReLU mask, bias grad)",
    "kernel_transform": "kernel transforms", "kernel_adjoint": "kernel transforms",
}
REST = "rest (thread split, chunk loop, sums)"


def _time_conv_pieces(layer, x, repeats, peak, pooled=False):
    """Run one Conv2D's implementation (``layer.implementation``: Im2col, Pointwise or Winograd)
    forward and backward, as the layer does, with every kernel it calls timed.

    The implementation looks its kernels up by role in ``implementation.kernels``; here that table
    is shadowed on the instance by timed versions, so the layer's own chunk loops and batch split
    run. A piece's time is the mean over threads of its accumulated seconds: the threads run the
    same pieces side by side, so that is its share of the layer's wall-clock time. ``REST`` is the
    wall-clock time of the implementation's calls minus the pieces."""
    import threading

    import numpy as np
    from tinycnn.kernels import conv as K
    from tinycnn.kernels import winograd as WG

    impl = layer.implementation
    n = x.shape[0]
    oh, ow, f = layer.output_shape
    c = layer.input_shape[2]
    relu = layer.activation.name == "relu"
    gen = np.random.default_rng(0)
    y = np.empty((n, oh, ow, f), dtype=layer.dtype)
    y2d = y.reshape(-1, f)
    dz2d = gen.standard_normal(y2d.shape).astype(layer.dtype)
    dz_out = np.empty_like(dz2d)
    epilogue = layer._implementation_epilogue()  # bias and ReLU inside the implementation, as the layer runs it
    if pooled:  # the next layer's 2x2 max pooling computed inside: pooled output, winners, their gradient
        p = np.empty((n, oh // 2, ow // 2, f), dtype=layer.dtype)
        win = np.zeros(p.shape, dtype=np.int32)
        dp = gen.standard_normal(p.shape).astype(layer.dtype)
    if impl.algorithm == "winograd":
        th, tw = WG.tile_grid(oh, ow)
        product_flop = 2.0 * 16 * n * th * tw * c * f  # the products of the 16 transformed planes
    else:
        product_flop = 2.0 * n * oh * ow * int(np.prod(layer.kernel_size)) * c * f

    def run_once():
        acc = {}

        def timed(role, fn):
            name = PIECE_NAMES[role]

            def call(*args, **kwargs):
                t0 = time.perf_counter()
                result = fn(*args, **kwargs)
                per_thread = acc.setdefault(name, {})
                key = threading.get_ident()
                per_thread[key] = per_thread.get(key, 0.0) + time.perf_counter() - t0
                return result
            return call

        table = type(impl).kernels
        impl.kernels = type(table)(**{role: timed(role, fn) for role, fn in vars(table).items()})
        try:
            t0 = time.perf_counter()
            if pooled:
                impl.forward_pooled(x, p, win, epilogue)
                impl.backward_pooled(dp, epilogue)
            else:
                impl.forward(x, y, True, epilogue)
                impl.backward(dz2d, epilogue)
            wall = time.perf_counter() - t0
        finally:
            del impl.kernels  # back to the class's table
        ms = {name: sum(per_thread.values()) / len(per_thread) for name, per_thread in acc.items()}
        ms[REST] = max(0.0, wall - sum(ms.values()))
        if epilogue is None:  # bias and activation in the layer, after the implementation
            t0 = time.perf_counter()
            K.bias_act_forward(y2d, layer._bias(), relu, layer._no_affine(), layer._no_affine())
            K.bias_act_backward(dz2d, y2d, relu, dz_out)
            ms["epilogues"] = time.perf_counter() - t0
        return ms

    samples = [run_once() for _ in range(repeats + 1)][1:]  # the first round warms up
    ms = {k: 1e3 * statistics.median(sample[k] for sample in samples) for k in samples[0]}
    products = [k for k in ("fwd GEMM", "dW GEMM", "dX GEMM") if k in ms]
    row = {"layer": layer.name, "algorithm": layer.algorithm, "implementation": type(impl).__name__,
           "chunk": impl.chunk_label(n), "ms": ms, "product_gflop": product_flop / 1e9,
           "gemm_gflops": {k: product_flop / (ms[k] * 1e6) for k in products}}
    row["gemm_ms"] = sum(ms[k] for k in products)
    row["copies_ms"] = sum(v for k, v in ms.items() if k not in products)
    row["gemm_pct_peak"] = {k: 100 * v / peak for k, v in row["gemm_gflops"].items()}
    return row


def print_conv_breakdown(rows, step_ms=None, other_ms=None):
    print("\nConvolution breakdown (whole batch, ms, summed over chunks; the batch is split over the threads)")
    header = ["layer", "implementation", "chunk", "fwd GEMM", "dW GEMM", "dX GEMM", "GEMMs", "around them"]
    table = []
    for r in rows:
        ms, pct = r["ms"], r["gemm_pct_peak"]

        def g(k):
            return f"{ms[k]:.1f} ({pct[k]:.0f}%)" if k in ms else "-"
        table.append([r["layer"], r["implementation"], r["chunk"], g("fwd GEMM"), g("dW GEMM"),
                      g("dX GEMM"), f"{r['gemm_ms']:.1f}", f"{r['copies_ms']:.1f}"])
    print(_common.format_table(header, table))
    print("around them, piece by piece:")
    for r in rows:
        pieces = ", ".join(f"{k} {v:.1f}" for k, v in r["ms"].items() if k not in r["gemm_gflops"])
        print(f"  {r['layer']:<10s} {pieces}")
    gemm = sum(r["gemm_ms"] for r in rows)
    copies = sum(r["copies_ms"] for r in rows)
    print("(percentages: GFLOP/s of that product, counting the multiplications it really does, against the "
          "GEMM ceiling.\n Winograd layers multiply 16 transformed 4x4 tiles instead of 36 products per 2x2 "
          "outputs: 2.25x fewer FLOPs than im2col for the same convolution.)")
    print(f"all convolutions: {gemm:.1f} ms in products, {copies:.1f} ms around them")
    if step_ms and other_ms is not None:
        outside = copies + other_ms
        print(f"outside the products (around the convolutions' products + every other layer, loss and optimizer): "
              f"{outside:.1f} ms = {100 * outside / step_ms:.0f}% of the {step_ms:.1f} ms step")


if __name__ == "__main__":
    main()
