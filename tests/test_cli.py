"""The command line, end to end on tiny data: demo, train (npz and folder), evaluate, predict,
explain, summary, and one-line errors for bad input."""
import json

import numpy as np
import pytest
from PIL import Image

from tinycnn.cli import build_parser, main
from tinycnn.data import make_lesion_images


@pytest.fixture
def tiny_npz(tmp_path):
    x, y = make_lesion_images(96, image_size=16, channels=1, seed=0)
    images = (x[..., 0] * 255).astype(np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(path, train_images=images[:64], train_labels=y[:64, None], val_images=images[64:80],
             val_labels=y[64:80, None], test_images=images[80:], test_labels=y[80:, None])
    return path


def test_every_command_has_complete_help(capsys):
    parser = build_parser()
    for command in ["demo", "train", "evaluate", "predict", "explain", "summary"]:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "usage: tinycnn " + command in text


def test_demo_writes_model_report_curves_and_grad_cam(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--samples", "64", "--epochs", "1", "--image-size", "16", "--out", str(out),
                 "--verbose", "0"]) == 0
    text = capsys.readouterr().out
    assert "SYNTHETIC" in text and "Sensitivity" in text and "Specificity" in text and "ROC AUC" in text
    for name in ["model.npz", "report.json", "curves.png", "grad_cam.png"]:
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert list(report["classes"]) == ["no lesion", "lesion"] and report["sensitivity"] is not None


def test_train_evaluate_predict_explain_summary(tmp_path, tiny_npz, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_npz), "--epochs", "1", "--out", str(out), "--verbose", "0",
                 "--loss", "categorical_focal_crossentropy", "--label-smoothing", "0.1",
                 "--class-weight", "balanced", "--augment", "--class-names", "healthy", "lesion",
                 "--positive-class", "lesion"]) == 0
    model_path = str(out / "model.npz")
    assert main(["evaluate", model_path, "--data", str(tiny_npz)]) == 0
    text = capsys.readouterr().out
    assert "Confusion matrix" in text and "lesion samples recognised as lesion" in text
    assert main(["evaluate", model_path, "--data", str(tiny_npz), "--positive-class", "0"]) == 0
    assert "healthy samples recognised as healthy" in capsys.readouterr().out.split("Sensitivity")[1]
    assert main(["evaluate", model_path, "--data", str(tiny_npz), "--positive-class", "tumour"]) == 2
    assert "--positive-class" in capsys.readouterr().err

    images = []
    for i, arr in enumerate(np.load(tiny_npz)["test_images"][:2]):
        path = tmp_path / f"scan{i}.png"
        Image.fromarray(arr).resize((40, 40)).convert("RGB").save(path)  # other size and mode: converted
        images.append(str(path))
    assert main(["predict", model_path, *images]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and images[0] in lines[1]
    probs = [float(v) for v in lines[1].split()[1:3]]
    assert abs(sum(probs) - 1) < 1e-3

    png = tmp_path / "why.png"
    assert main(["explain", model_path, images[0], "--out", str(png), "--class-index", "1"]) == 0
    assert png.exists() and "Grad-CAM" in capsys.readouterr().out
    assert main(["summary", model_path]) == 0
    text = capsys.readouterr().out
    assert "Total params" in text and "class_names" in text and "random_flip" in text


def test_train_on_a_folder(tmp_path, capsys):
    x, y = make_lesion_images(40, image_size=16, seed=3)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = tmp_path / "scans" / ("lesion" if label else "healthy")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "scans"), "--image-size", "16", "--epochs", "1",
                 "--out", str(out), "--verbose", "0"]) == 0
    assert "healthy" in capsys.readouterr().out
    assert main(["evaluate", str(out / "model.npz"), "--data", str(tmp_path / "scans")]) == 0


def bright_dark_model(path):
    """A saved model that calls a bright image 'Parasitized' (class 0) and a dark one 'Uninfected'."""
    from tinycnn.layers import Dense, GlobalAveragePooling2D
    from tinycnn.models import Sequential
    model = Sequential([GlobalAveragePooling2D(input_shape=(4, 4, 1)), Dense(2, activation="softmax")])
    model.build()
    model.set_weights([np.array([[10.0, -10.0]], np.float32), np.array([-5.0, 5.0], np.float32)])
    model.compile(loss="categorical_crossentropy")
    model.metadata = {"class_names": ["Parasitized", "Uninfected"], "positive_class": 0}
    model.save(path)
    return str(path)


def write_folder(root, classes):
    """``{subfolder: pixel value}`` -> three 4x4 grayscale PNGs per subfolder."""
    for name, value in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4), value, np.uint8)).save(root / name / f"{i}.png")
    return str(root)


def test_evaluate_matches_subfolders_to_the_models_classes_by_name(tmp_path, capsys):
    model = bright_dark_model(tmp_path / "model.npz")
    # Subfolders named otherwise, sorted the other way round: refused, not scored with swapped labels.
    swapped = write_folder(tmp_path / "renamed", {"healthy": 0, "parasitized": 255})
    assert main(["evaluate", model, "--data", swapped]) == 2
    err = capsys.readouterr().err
    assert "['healthy', 'parasitized'] do not match the model's classes ['Parasitized', 'Uninfected']" in err
    assert "--class-map healthy=CLASS" in err
    assert main(["evaluate", model, "--data", swapped, "--class-map", "healthy=Uninfected"]) == 0
    text = capsys.readouterr().out
    assert "(subfolder 'healthy')" in text
    assert text.split("accuracy")[1].split()[0] == "1.000"  # every image right, as the model is built
    # Same names in another case: matched without a map.
    same = write_folder(tmp_path / "lower", {"uninfected": 0, "parasitized": 255})
    assert main(["evaluate", model, "--data", same]) == 0
    assert capsys.readouterr().out.split("accuracy")[1].split()[0] == "1.000"
    assert main(["evaluate", model, "--data", same, "--class-map", "uninfected"]) == 2
    assert "expected SUBFOLDER=CLASS pairs" in capsys.readouterr().err


def test_split_folders_are_refused_with_the_way_to_say_it(tmp_path, capsys):
    root = tmp_path / "study"
    for split in ("train", "valid"):
        write_folder(root / split, {"benign": 0, "malignant": 255})
    model = bright_dark_model(tmp_path / "model.npz")
    for argv in (["train", "--data", str(root), "--epochs", "1", "--out", str(tmp_path / "run")],
                 ["evaluate", model, "--data", str(root)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "named like data splits" in err and f"--data {root}/train --val-data {root}/valid" in err


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinycnn summary: error:") and "missing.npz" in err and "Traceback" not in err
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((4, 8, 8), np.uint8))
    assert main(["train", "--data", str(bad), "--epochs", "1", "--out", str(tmp_path / "o")]) == 2
    assert "train_labels" in capsys.readouterr().err
