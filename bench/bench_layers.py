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
  time, which also holds im2col/col2im, bias and ReLU; ``%peak`` compares with the float32 GEMM
  ceiling (a square 2048 product through NumPy's BLAS, measured in the same run). A convolution at
  80% of the ceiling is close to as fast as it can be done this way; one at 20% loses its time
  outside the product or runs a product of an awkward shape.
* The totals: GEMM-bearing layers (Conv2D, Dense) against everything else (normalisation,
  pooling, dropout, loss, optimizer), the time the products would take at the GEMM ceiling, and
  the sum of the rows against a measured ``train_on_batch`` (the difference is input validation,
  copies and Python glue outside the layers).

Convolution breakdown
---------------------
A second table takes each Conv2D apart the way ``Conv2D.forward``/``backward`` run it, chunk by
chunk with the layer's own chunk size, and times each piece over the whole batch: ``im2col``
(forward and again in backward), the three products (forward ``cols @ W``, weight gradient
``cols.T @ dz``, input gradient ``dz @ W.T``) with their GFLOP/s and % of the GEMM ceiling,
``col2im``, and the bias/ReLU epilogues. It answers "is a convolution slow in its products or
around them?".

Internal names used: ``model.layers``, ``model._loss``, ``model._fused``, ``model._trainable``,
``layer.backward_from_logits``, ``layer.input_grad_needed`` and Conv2D's ``_chunk_images``,
``_columns``, ``_pad_h``/``_pad_w``, ``_bias``.
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
    a = x
    for layer in model.layers:
        start = clock()
        a = layer.forward(a, training=True)
        forward[layer.name] = clock() - start

    start = clock()
    model._loss(a, y, None)
    extra[LOSS_ROW] = clock() - start

    g = grad_out
    for i, layer in enumerate(reversed(model.layers)):
        start = clock()
        g = layer.backward_from_logits(g) if i == 0 and from_logits else layer.backward(g)
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
    for layer in model.layers:
        fwd = forward[layer.name]
        bwd = backward.get(layer.name, 0.0)
        row = {"name": layer.name, "type": type(layer).__name__, "output_shape": [batch, *layer.output_shape],
               "forward_ms": 1e3 * fwd, "backward_ms": 1e3 * bwd, "gemm": False}
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
        print(f"(no input gradient computed for {', '.join(note)}: its backward counts the weight-gradient product only)")


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
          f"({t['gemm_flops'] / 1e9:.2f} GFLOP)")
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
    from_logits = bool(getattr(model, "_fused", False)) and hasattr(head, "backward_from_logits")

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
    print_conv_breakdown(breakdown)

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
    from tinycnn.kernels import conv as K
    from tinycnn.layers import Conv2D

    rows = []
    h = x
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            rows.append(_time_conv_pieces(layer, np.ascontiguousarray(h), repeats, peak, K))
        h = layer.forward(h, training=True)
    return rows


def _time_conv_pieces(layer, x, repeats, peak, K):
    import numpy as np
    n = x.shape[0]
    oh, ow, f = layer.output_shape
    pix = oh * ow
    kh, kw = layer.kernel_size
    w2d = layer.params["kernel"].reshape(-1, f)
    step = layer._chunk_images(n)
    buf = np.empty((step * pix, w2d.shape[0]), dtype=layer.dtype)
    y2d = np.empty((n * pix, f), dtype=layer.dtype)
    dz2d = np.random.default_rng(0).standard_normal(y2d.shape).astype(layer.dtype)
    dx = np.empty_like(x)
    dz_out = np.empty_like(dz2d)
    dw = np.empty_like(w2d)
    part = np.empty_like(w2d)
    chunks = [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]
    relu = layer.activation.name == "relu"

    def im2col_all():
        for n0, n1 in chunks:
            layer._columns(x[n0:n1], buf)

    def gemm(kind):
        timings = {"im2col": 0.0, kind: 0.0}
        for n0, n1 in chunks:
            t0 = time.perf_counter()
            cols = layer._columns(x[n0:n1], buf)
            t1 = time.perf_counter()
            rows_ = slice(n0 * pix, n1 * pix)
            if kind == "fwd GEMM":
                np.matmul(cols, w2d, out=y2d[rows_])
            elif kind == "dW GEMM":
                np.matmul(cols.T, dz2d[rows_], out=part)
                dw[...] += part
            else:
                np.matmul(dz2d[rows_], w2d.T, out=buf[: (n1 - n0) * pix])
            timings["im2col"] += t1 - t0
            timings[kind] += time.perf_counter() - t1
        return timings

    def col2im_all():
        for n0, n1 in chunks:
            if not layer._pointwise:
                K.col2im(buf[: (n1 - n0) * pix], kh, kw, layer.strides[0], layer.strides[1], layer._pad_h,
                         layer._pad_w, oh, ow, dx[n0:n1])

    pieces = {}
    for _ in range(repeats + 1):  # the first round warms up
        for kind in ("fwd GEMM", "dW GEMM", "dX GEMM"):
            if kind == "dX GEMM" and not layer.input_grad_needed:
                continue
            for key, seconds in gemm(kind).items():
                pieces.setdefault(key if key != "im2col" else f"im2col ({kind})", []).append(seconds)
        t0 = time.perf_counter()
        col2im_all()
        t1 = time.perf_counter()
        K.bias_act_forward(y2d, layer._bias(), relu)
        K.bias_act_backward(dz2d, y2d, relu, dz_out)
        t3 = time.perf_counter()
        if layer.input_grad_needed and not layer._pointwise:
            pieces.setdefault("col2im", []).append(t1 - t0)
        pieces.setdefault("epilogues", []).append(t3 - t1)
    ms = {k: 1e3 * statistics.median(v[1:]) for k, v in pieces.items()}
    flop = 2.0 * n * pix * w2d.shape[0] * f
    row = {"layer": layer.name, "chunk_images": step, "ms": ms,
           "gemm_gflops": {k: flop / (ms[k] * 1e6) for k in ("fwd GEMM", "dW GEMM", "dX GEMM") if k in ms}}
    # im2col runs once in forward and once in backward in the real layer (not once per product).
    im2col_ms = statistics.median([ms[k] for k in ms if k.startswith("im2col")])
    gemm_ms = sum(ms[k] for k in row["gemm_gflops"])
    copies_ms = 2 * im2col_ms + ms.get("col2im", 0.0) + ms["epilogues"]
    row.update(im2col_ms=im2col_ms, gemm_ms=gemm_ms, copies_ms=copies_ms,
               gemm_pct_peak={k: 100 * v / peak for k, v in row["gemm_gflops"].items()})
    return row


def print_conv_breakdown(rows):
    print("\nConvolution breakdown (whole batch, ms; im2col counted twice: forward and backward)")
    header = ["layer", "chunk", "im2col", "fwd GEMM", "dW GEMM", "dX GEMM", "col2im", "epilogues",
              "GEMMs", "around them"]
    table = []
    for r in rows:
        ms, pct = r["ms"], r["gemm_pct_peak"]

        def g(k):
            return f"{ms[k]:.1f} ({pct[k]:.0f}%)" if k in ms else "-"
        table.append([r["layer"], f"{r['chunk_images']} img", f"{r['im2col_ms']:.1f}", g("fwd GEMM"), g("dW GEMM"),
                      g("dX GEMM"), f"{ms['col2im']:.1f}" if "col2im" in ms else "-", f"{ms['epilogues']:.1f}",
                      f"{r['gemm_ms']:.1f}", f"{r['copies_ms']:.1f}"])
    print(_common.format_table(header, table))
    gemm = sum(r["gemm_ms"] for r in rows)
    copies = sum(r["copies_ms"] for r in rows)
    print(f"(percentages: GFLOP/s of that product against the GEMM ceiling; all convolutions: {gemm:.1f} ms in "
          f"products, {copies:.1f} ms around them)")


if __name__ == "__main__":
    main()
