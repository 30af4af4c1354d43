"""A network trained in PyTorch comes into tinycnn through ONNX: a small CNN trained briefly on
BreastMNIST (28x28x1), exported with ``torch.onnx.export``, imported with ``tinycnn.load_onnx``,
compared with PyTorch on the test set, then fine-tuned for one epoch in tinycnn.

Needs the bench extra (PyTorch, onnx, onnxscript for the dynamo exporter) and a MedMNIST
``breastmnist.npz`` (the MedMNIST v2 layout, as ``tinycnn.data.load_npz`` reads it); nothing is
downloaded. Run from the repository root::

    python bench/onnx_from_pytorch.py [torchscript|dynamo] [path/to/breastmnist.npz]

(dynamo: PyTorch's default exporter since 2.9.) Prints the exporter's operators, tinycnn's summary,
the largest logit difference from PyTorch, and the losses before and after fine-tuning.
"""
import os
import sys
import tempfile
import warnings

import numpy as np
import torch

import tinycnn

torch.set_num_threads(1)
torch.manual_seed(0)
tinycnn.set_seed(0)
exporter = sys.argv[1] if len(sys.argv) > 1 else "torchscript"
path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                          "shared", "data", "breastmnist.npz")
if not os.path.exists(path):
    sys.exit(f"onnx_from_pytorch.py: no MedMNIST file at {path}; give the path of a breastmnist.npz")
data = np.load(path, allow_pickle=False)


def split(name):
    x = data[f"{name}_images"].astype(np.float32)[..., None] / 255.0  # (N, 28, 28, 1), NHWC as tinycnn takes it
    return x, data[f"{name}_labels"].reshape(-1).astype(np.int64)


(x_train, y_train), (x_val, y_val), (x_test, y_test) = split("train"), split("val"), split("test")
print(f"BreastMNIST 28x28: train {len(x_train)}, val {len(x_val)}, test {len(x_test)}")

nn = torch.nn
net = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(32),
    nn.Flatten(), nn.Linear(32 * 7 * 7, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))

# --- a few epochs in PyTorch (NCHW) -----------------------------------------------------------------------
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
xt, yt = torch.from_numpy(x_train.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y_train)
for epoch in range(3):
    net.train()
    order = torch.randperm(len(xt))
    for i in range(0, len(xt), 32):
        batch = order[i:i + 32]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(xt[batch]), yt[batch])
        loss.backward()
        optimizer.step()
net.eval()

with tempfile.TemporaryDirectory() as folder:
    onnx_path = os.path.join(folder, "torch_cnn.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter (dynamo=False)
        if exporter == "dynamo":
            torch.onnx.export(net, (torch.zeros(2, 1, 28, 28),), onnx_path, dynamo=True, input_names=["image"],
                              output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), onnx_path, dynamo=False, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    import onnx
    proto = onnx.load(onnx_path)
    print(f"torch.onnx.export ({exporter}): opset {proto.opset_import[0].version}, {len(proto.graph.node)} nodes: "
          f"{', '.join(n.op_type for n in proto.graph.node)}")
    model = tinycnn.load_onnx(onnx_path)
model.summary()

# --- the same numbers as PyTorch ----------------------------------------------------------------------------
with torch.no_grad():
    expected = net(torch.from_numpy(x_test.transpose(0, 3, 1, 2).copy())).numpy()
got = model.predict(x_test)
diff = np.abs(got - expected).max()
print(f"test set ({len(x_test)} images): max |tinycnn - PyTorch| = {diff:.3g} on logits of max |{np.abs(expected).max():.3g}|"
      f" (relative {diff / np.abs(expected).max():.2g}); same class for "
      f"{(got.argmax(1) == expected.argmax(1)).sum()}/{len(x_test)}")

# --- one epoch of fine-tuning in tinycnn --------------------------------------------------------------------
model.compile(optimizer=tinycnn.optimizers.Adam(learning_rate=3e-4),
              loss=tinycnn.losses.CategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
train_y, val_y = tinycnn.to_categorical(y_train, 2), tinycnn.to_categorical(y_val, 2)
before_train = model.evaluate(x_train, train_y, verbose=0)
before_val = model.evaluate(x_val, val_y, verbose=0)
history = model.fit(x_train, train_y, batch_size=32, epochs=1, validation_data=(x_val, val_y), verbose=0)
after_train = model.evaluate(x_train, train_y, verbose=0)
after_val = model.evaluate(x_val, val_y, verbose=0)
print(f"before fine-tuning: train loss {before_train[0]:.4f} acc {before_train[1]:.3f}; "
      f"val loss {before_val[0]:.4f} acc {before_val[1]:.3f}")
print(f"fit, 1 epoch: running train loss {history.history['loss'][0]:.4f}")
print(f"after fine-tuning:  train loss {after_train[0]:.4f} acc {after_train[1]:.3f}; "
      f"val loss {after_val[0]:.4f} acc {after_val[1]:.3f}")
