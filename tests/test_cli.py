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
    for command in ["demo", "train", "cv", "evaluate", "predict", "explain", "summary", "export"]:
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
    probs = [float(v) for v in lines[1].split("\t")[2:4]]
    assert abs(sum(probs) - 1) < 1e-3

    png = tmp_path / "why.png"
    assert main(["explain", model_path, images[0], "--out", str(png), "--class", "Lesion"]) == 0
    assert png.exists() and "class 'lesion'" in capsys.readouterr().out
    assert main(["summary", model_path]) == 0
    text = capsys.readouterr().out
    assert "Total params" in text and "random_flip" in text
    assert "classes: 2: ['healthy', 'lesion']" in text and "input: 16x16 grayscale images" in text
    assert "positive class: 'lesion' (index 1)" in text and "epochs 1, seed 0" in text
    assert "test: 16 images, the 'test' split of" in text and "accuracy" in text.split("test: 16 images")[1]


def lesion_folders(root, counts, seed=3):
    """``{split: n}`` -> folders root/split/{healthy,lesion}/*.png of 16x16 synthetic images."""
    for k, (split, n) in enumerate(counts.items()):
        x, y = make_lesion_images(n, image_size=16, seed=seed + k)
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / split / ("lesion" if label else "healthy")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return {split: str(root / split) for split in counts}


def test_train_on_folders_uses_the_splits_as_given(tmp_path, capsys):
    data = lesion_folders(tmp_path / "scans", {"train": 24, "valid": 8, "test": 10})
    (tmp_path / "scans" / "train" / "lesion" / "broken.png").write_bytes(b"")  # named and skipped
    out = tmp_path / "run"
    argv = ["train", "--data", data["train"], "--val-data", data["valid"], "--test-data", data["test"],
            "--image-size", "16", "--epochs", "1", "--out", str(out), "--verbose", "0"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "tinycnn: warning: image_folder(" in captured.err and "broken.png (empty file (0 bytes))" in captured.err
    assert "UserWarning" not in captured.err and ".py:" not in captured.err  # one plain line, no source line
    text = captured.out
    assert "24 training images" in text  # not re-split
    assert f"validation: 8 images, as given: --val-data {data['valid']}" in text
    assert f"test:       10 images, as given: --test-data {data['test']}" in text
    assert "positive class (for sensitivity): 'lesion', chosen because 'healthy' names a negative finding" in text
    report = json.loads((out / "report.json").read_text())
    assert report["n_samples"] == 10 and report["positive_class"] == "lesion"
    assert str(out.resolve()) in text
    # Refused before any work: a run already in --out, no epochs, a path that is not there.
    for extra, message in ((["--epochs", "1"], "already holds a run (model.npz, report.json)"),
                           (["--overwrite", "--epochs", "0"], "--epochs: expected a positive number, received 0"),
                           (["--overwrite", "--test-data", str(tmp_path / "nope")], "nope: no such file or folder")):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["evaluate", str(out / "model.npz"), "--data", data["test"]]) == 0
    assert "Positive class  lesion" in capsys.readouterr().out


def test_train_on_one_folder_splits_it_with_the_stated_fractions(tmp_path, capsys):
    data = lesion_folders(tmp_path / "scans", {"all": 40})
    assert main(["train", "--data", data["all"], "--image-size", "16", "--epochs", "1", "--out",
                 str(tmp_path / "run"), "--verbose", "0"]) == 0
    text = capsys.readouterr().out
    assert "--validation-fraction 0.15, stratified, seed 0" in text and "--test-fraction 0.15" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "for validation when no validation split is given (default 0.15)" in help_text
    assert "held out for the test report (default 0.15)" in help_text


def test_predict_a_folder_into_csv_listing_skipped_files(tmp_path, capsys):
    model = bright_dark_model(tmp_path / "model.npz")
    folder = write_folder(tmp_path / "images", {"a": 0, "b/deeper": 255})
    (tmp_path / "images" / "a" / "notes.png").write_text("not an image")
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    csv_path = tmp_path / "out.csv"
    assert main(["predict", model, folder, str(tmp_path / "missing.png"), "--out", str(csv_path)]) == 1
    captured = capsys.readouterr()
    assert "Predicted 6 image(s)" in captured.out
    assert "tinycnn: warning: skipped" in captured.err and "Skipped 3 file(s)" in captured.err
    for name in ("notes.png: not an image file", "empty.jpg: empty file (0 bytes)", "missing.png: no such file"):
        assert name in captured.err, name
    import csv
    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0]) == ["path", "predicted_class", "p_Parasitized", "p_Uninfected", "error"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6 and len(rows) == 8  # the missing path is not a file: listed on stderr only
    for row in good:
        expected = "Parasitized" if "deeper" in row["path"] else "Uninfected"  # bright images are class 0
        assert row["predicted_class"] == expected
        assert abs(float(row["p_Parasitized"]) + float(row["p_Uninfected"]) - 1) < 1e-5
    assert main(["predict", model, str(tmp_path / "images" / "a")]) == 1  # one bad file: exit status 1
    assert main(["predict", model, str(tmp_path / "images" / "b")]) == 0
    capsys.readouterr()


def test_explain_several_images_into_one_labelled_grid(tmp_path, capsys, monkeypatch):
    model = bright_dark_model(tmp_path / "model.npz")
    folder = write_folder(tmp_path / "images", {"a": 30, "b": 220})
    monkeypatch.chdir(tmp_path)
    assert main(["explain", model, folder, "--class", "uninfected"]) == 0  # default output path
    text = capsys.readouterr().out
    assert text.count("class 'Uninfected'") == 6 and "6 image(s) written to" in text
    picture = Image.open(tmp_path / "tinycnn-runs" / "explain" / "grad_cam.png")
    assert picture.mode == "RGB" and picture.width > 3 * picture.height / 2  # a grid of 4 + 2 panels
    assert main(["explain", model, folder, "--out", str(tmp_path / "cam.jpg")]) == 0
    assert Image.open(tmp_path / "cam.jpg").format == "JPEG"
    assert main(["explain", model, folder, "--out", str(tmp_path / "cam.xyz")]) == 2
    assert "cannot tell which picture format" in capsys.readouterr().err
    assert main(["explain", model, folder, "--class", "sick"]) == 2
    assert "--class: expected a class name ['Parasitized', 'Uninfected']" in capsys.readouterr().err


def bright_dark_model(path):
    """A saved model that calls a bright image 'Parasitized' (class 0) and a dark one 'Uninfected'."""
    from tinycnn.layers import Conv2D, Dense, GlobalAveragePooling2D
    from tinycnn.models import Sequential
    model = Sequential([Conv2D(1, 1, input_shape=(4, 4, 1)), GlobalAveragePooling2D(), Dense(2, activation="softmax")])
    model.build()
    model.set_weights([np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32),  # identity convolution
                       np.array([[10.0, -10.0]], np.float32), np.array([-5.0, 5.0], np.float32)])
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


def test_train_resnet18_with_sgd_cosine_warmup_weight_decay_and_clipping(tmp_path, tiny_npz):
    out = tmp_path / "resnet"
    assert main(["train", "--data", str(tiny_npz), "--model", "resnet18", "--epochs", "2", "--out", str(out),
                 "--verbose", "0", "--optimizer", "sgd", "--momentum", "0.9", "--schedule", "cosine",
                 "--warmup-epochs", "1", "--weight-decay", "5e-4", "--clipnorm", "1.0"]) == 0
    import tinycnn
    model = tinycnn.load_model(out / "model.npz")
    assert type(model).__name__ == "Model" and model.name == "resnet18"
    config = model.optimizer.get_config()
    assert type(model.optimizer).__name__ == "SGD" and config["nesterov"] and config["clipnorm"] == 1.0
    assert config["weight_decay"] == 5e-4 and config["learning_rate"]["class_name"] == "CosineDecay"
    assert model.metadata["training"]["model"] == "resnet18"
    assert model.metadata["training"]["optimizer"]["schedule"] == "cosine"


def test_cv_reports_folds_and_their_spread(tmp_path, tiny_npz, capsys):
    out = tmp_path / "cv"
    assert main(["cv", "--data", str(tiny_npz), "--folds", "3", "--epochs", "1", "--out", str(out),
                 "--verbose", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["folds"]) == 3 and 0 <= report["summary"]["roc_auc"]["mean"] <= 1
    assert "3 folds in" in capsys.readouterr().out
    assert main(["cv", "--data", str(tiny_npz), "--folds", "3", "--epochs", "1", "--out", str(out)]) == 2  # a run is there


def test_train_refuses_to_ignore_an_interrupted_runs_backup(tmp_path, tiny_npz, capsys):
    from tinycnn.callbacks import BackupAndRestore
    out = tmp_path / "run"
    (out / "backup").mkdir(parents=True)
    (out / "backup" / BackupAndRestore.LATEST).write_bytes(b"left by a killed run")
    argv = ["train", "--data", str(tiny_npz), "--epochs", "1", "--out", str(out), "--verbose", "0"]
    assert main(argv) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0                      # starts over, and the backup is gone at the end
    assert not (out / "backup" / BackupAndRestore.LATEST).exists() and (out / "model.npz").exists()
