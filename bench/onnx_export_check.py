"""How exactly an exported model runs elsewhere: the reference model and ResNet-18 exported to ONNX,
checked with ``onnx.checker`` (full check), and run in ONNX Runtime (1 thread) beside tinycnn's
``predict``, both also against a float64 copy of the model (the exact answer up to float64
rounding). Prints node counts and the largest differences at batch 1 and 32. No timings (those are
bench_train.py's). Needs the ``onnx`` extra. Run from the repository root::

    python bench/onnx_export_check.py
"""
import collections
import json
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

import tinycnn
from tinycnn.model import model_from_config
from tinycnn.models import reference_model, resnet18


def float64_twin(model):
    twin = model_from_config(json.loads(json.dumps(model.get_config()).replace('"float32"', '"float64"')))
    twin.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return twin


def errors(got, truth):
    diff = np.abs(got.astype(np.float64) - truth)
    return f"max abs {diff.max():.1e}, max rel {(diff / np.abs(truth)).max():.1e}"


def check(name, model, batches=(1, 32), seed=0):
    model.build()
    gen = np.random.default_rng(seed)
    # batch-norm statistics from data (as after training), not the initial 0 and 1
    model.recalibrate_batchnorm(gen.random((64,) + model.inputs[0].sample_shape, dtype=np.float32))
    exact = float64_twin(model)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        model.export(path)
        size = os.path.getsize(path)
        proto = onnx.load(path)
        onnx.checker.check_model(proto, full_check=True)  # raises if anything is wrong
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        ops = collections.Counter(node.op_type for node in proto.graph.node)
        print(f"{name}: {model.count_params():,} parameters, file {size / 2**20:.1f} MiB, opset "
              f"{proto.opset_import[0].version}, IR {proto.ir_version}; onnx.checker full_check: clean")
        print(f"  {len(proto.graph.node)} nodes: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
        for n in batches:
            x = gen.random((n,) + model.inputs[0].sample_shape, dtype=np.float32)
            expected = model.predict(x, batch_size=n)
            got = session.run(None, {model.inputs[0].name: x})[0]
            truth = exact.predict(x.astype(np.float64), batch_size=n)
            print(f"  batch {n:>2}: ORT vs predict {errors(got, expected)} | vs float64: predict "
                  f"{errors(expected, truth)}, ORT {errors(got, truth)} | outputs in [{truth.min():.3f}, "
                  f"{truth.max():.3f}]")


tinycnn.set_seed(0)
print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, tinycnn {tinycnn.__version__}")
check("reference model 64x64x3", reference_model((64, 64, 3), num_classes=2))
check("ResNet-18 28x28x1 (3x3 stem)", resnet18((28, 28, 1), num_classes=2))
check("ResNet-18 64x64x3 (7x7 stride-2 stem + max pooling)", resnet18((64, 64, 3), num_classes=2))
