"""Every Python snippet in README runs as written on the data it describes, scaled down: images of
16 pixels a side instead of 64 and 3 epochs instead of 10, on an easy task (dark against bright
images), where a network that trains must score well. A new snippet fails here until its data is
described in SETUP."""
import math
import pathlib
import re

import numpy as np
from PIL import Image

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SCALE = [("(64, 64, 3)", "(16, 16, 3)"), ("(64, 64, 1)", "(16, 16, 1)"), ("(64, 64)", "(16, 16)"),
         ("epochs=10", "epochs=3")]


def snippets():
    """``(section heading, index in section, code)`` for every ```python block of README."""
    found, heading, counts = [], None, {}
    for block in re.finditer(r"^(## [^\n]+)$|^```python\n(.*?)^```", README.read_text(), re.M | re.S):
        if block.group(1):
            heading = block.group(1)[3:]
            continue
        counts[heading] = counts.get(heading, 0) + 1
        found.append((heading, counts[heading], block.group(2)))
    return found


def dark_or_bright(n, channels, seed):
    """Images (n, 16, 16, channels) in [0, 1]: class 0 dark, class 1 bright, with noise; labels (n,)."""
    gen = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = 0.25 + 0.5 * labels[:, None, None, None] + 0.15 * gen.standard_normal((n, 16, 16, channels))
    return np.clip(x, 0, 1).astype(np.float32), labels


def write_classes(root, names, n, seed):
    x, y = dark_or_bright(n, 1, seed)
    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[..., 0] * 255).astype(np.uint8)).save(folder / f"{i}.png")


def reference_program(namespace, tmp_path):
    import tinycnn
    for split, n, seed in (("train", 48, 0), ("val", 16, 1), ("test", 32, 2)):
        x, y = dark_or_bright(n, 3, seed)
        namespace[f"X_{split}"], namespace[f"y_{split}"] = x, tinycnn.to_categorical(y, 2)

    def check(namespace):
        loss, accuracy = namespace["score"][:2]
        assert math.isfinite(loss) and 0 <= accuracy <= 1
    return check


def own_images(namespace, tmp_path):
    write_classes(tmp_path / "scans" / "train", ["benign", "malignant"], 48, 0)
    write_classes(tmp_path / "scans" / "val", ["Malignant", "BENIGN"][::-1], 16, 1)  # other case: matched by name
    x, y = dark_or_bright(48, 1, 2)
    np.savez(tmp_path / "breastmnist_64.npz", train_images=(x[..., 0] * 255).astype(np.uint8), train_labels=y[:, None])

    def check(namespace):
        history = namespace["model"].history.history
        assert all(math.isfinite(v) for v in history["loss"])
        if "val_accuracy" in history:  # the image-folder snippet: what was learnt shows in validation
            assert history["val_accuracy"][-1] >= 0.9, history
    return check


def how_it_works(namespace, tmp_path):
    printed = []
    namespace["print"] = printed.append  # the snippet prints check_layers' report: keep the object

    def check(namespace):
        reports = [p for p in printed if hasattr(p, "max_error")]
        assert reports and all(report.max_error() < 1e-6 for report in reports), printed
    return check


def branches(namespace, tmp_path):
    """The functional-API snippet makes its own data; it must train a two-input model with a skip."""
    def check(namespace):
        model = namespace["model"]
        assert [t.name for t in model.inputs] == ["image", "clinical"]
        assert all(math.isfinite(v) for v in model.history.history["loss"])
        assert any(type(layer).__name__ == "Add" for layer in model.layers)
    return check


def sklearn_and_dask(namespace, tmp_path):
    """Small dark/bright images for the estimator; the Dask part gets a grid, a model and a dask array."""
    import dask.array as da

    import tinycnn
    x, y = dark_or_bright(40, 3, 0)
    x_test, y_test = dark_or_bright(20, 3, 1)
    namespace.update(X=x, y=np.array(["benign", "malignant"])[y], X_test=x_test,
                     y_test=np.array(["benign", "malignant"])[y_test],
                     grid={"optimizer__learning_rate": [1e-3, 3e-4]},
                     model=tinycnn.models.reference_model((16, 16, 3), 2), images=da.from_array(x, chunks=16))
    namespace["model"].build()

    def check(namespace):
        assert math.isfinite(namespace["search"].best_score_)
        if "probs" in namespace:  # the Dask snippet
            assert namespace["probs"].compute().shape == (40, 2)
        else:
            assert namespace["calibrated"].predict_proba(namespace["X_test"]).shape == (20, 2)
    return check


def onnx_export(namespace, tmp_path):
    """The export snippet writes model.onnx in the working folder and runs it in ONNX Runtime."""
    def check(namespace):
        expected = namespace["model"].predict(namespace["images"])
        np.testing.assert_allclose(namespace["probabilities"], expected, rtol=1e-5, atol=1e-6)
    return check


def onnx_import(namespace, tmp_path):
    """The import snippet exports a model, reads it back and compiles it (its own assert checks the
    round trip is exact)."""
    def check(namespace):
        assert namespace["imported"].compiled and namespace["imported"].input_shape == (None, 16, 16, 3)
    return check


SETUP = {"The reference program": reference_program, "Your own images": own_images, "How it works": how_it_works,
         "Networks with branches": branches, "Cross-validation, scikit-learn and Dask": sklearn_and_dask,
         "Exporting to ONNX": onnx_export, "Importing ONNX models": onnx_import}


def test_every_snippet_has_its_data_described():
    missing = sorted({heading for heading, _, _ in snippets()} - set(SETUP))
    assert not missing, f"README sections with Python snippets but no data in SETUP: {missing}"


def test_every_snippet_runs_and_gives_a_sensible_result(tmp_path, monkeypatch, capsys):
    import tinycnn
    monkeypatch.chdir(tmp_path)
    namespaces = {}
    for heading, index, code in snippets():
        if heading not in SETUP:
            continue
        tinycnn.set_seed(0)
        namespace = namespaces.setdefault(heading, {})  # snippets of one section share their variables
        check = SETUP[heading](namespace, tmp_path) if index == 1 else namespace["__check__"]
        namespace["__check__"] = check
        for old, new in SCALE:
            code = code.replace(old, new)
        exec(compile(code, f"README.md ({heading}, snippet {index})", "exec"), namespace)
        check(namespace)
    assert "Test accuracy:" in capsys.readouterr().out
