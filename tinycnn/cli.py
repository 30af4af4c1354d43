"""The command line: ``tinycnn demo | train | evaluate | predict | explain | summary``.

Thin on purpose: it parses arguments and calls the library, so everything it does can also be done
in a few lines of Python (see each command's function below).
"""
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

from .callbacks import RecalibrateBatchNorm
from .models import reference_model

DEFAULT_OUT = "tinycnn-runs"


# --- building blocks ------------------------------------------------------------------------------

def _warn(message):
    """A warning as one plain line on stderr, as the command line shows every warning."""
    print(f"tinycnn: warning: {message}", file=sys.stderr)


def _loss(args, num_classes):
    from . import losses
    if args.loss == "categorical_focal_crossentropy":
        alpha = args.focal_alpha
        return losses.CategoricalFocalCrossentropy(alpha=alpha[0] if len(alpha) == 1 else alpha, gamma=args.focal_gamma,
                                                   label_smoothing=args.label_smoothing)
    return losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)


def _positive_class(value, names):
    """``--positive-class`` as an index: a class name or a number; default 1 (binary tasks)."""
    if value is None:
        return 1
    if value in names:
        return names.index(value)
    if value.isdigit() and int(value) < len(names):
        return int(value)
    raise ValueError(f"invalid value for --positive-class: expected a class name {names} or an index in "
                     f"[0, {len(names)}), received {value!r}")


def _class_names(given, default):
    if not given:
        return list(default)
    if len(given) != len(default):
        raise ValueError(f"--class-names: the data has {len(default)} classes, received {len(given)} names {given}")
    return list(given)


def _finish_training(model, x_train, x_test, y_test, class_names, out_dir, history, title):
    """Recalibrate batch norm, report, save model, curves and one Grad-CAM picture."""
    from .explain import grad_cam, save_grad_cam
    from .report import classification_report

    print("\nRecomputing batch-norm statistics from all training data (see Sequential.recalibrate_batchnorm)")
    model.recalibrate_batchnorm(x_train)
    os.makedirs(out_dir, exist_ok=True)
    report = classification_report(model, x_test, y_test, class_names=class_names,
                                   positive_class=model.metadata.get("positive_class", 1))
    print(f"\n{title}\n{report}")
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report.to_dict(), f, indent=2)
    model_path = os.path.join(out_dir, "model.npz")
    model.save(model_path)
    print(f"\nSaved the model to {model_path} (tinycnn.load_model, or `tinycnn evaluate {model_path} --data ...`)")
    _save_curves(history, os.path.join(out_dir, "curves.png"))
    probs = model.predict(x_test)
    pos = model.metadata.get("positive_class", 1)
    positive = np.flatnonzero(np.argmax(probs, axis=1) == pos)
    index = int(positive[np.argmax(probs[positive, pos])]) if positive.size else 0
    cam = grad_cam(model, x_test[index])
    cam_path = os.path.join(out_dir, "grad_cam.png")
    save_grad_cam(x_test[index], cam, cam_path)
    print(f"Grad-CAM of test image {index} (class {class_names[cam.class_index]!r}, "
          f"p = {cam.probabilities[cam.class_index]:.3f}) written to {cam_path}: the image beside where the "
          f"model looked")
    return report


def _save_curves(history, path):
    from .plotting import plot_history
    try:
        plot_history(history, path)
        print(f"Training curves written to {path}")
    except ImportError as e:
        print(f"Training curves skipped: {e}")


# --- commands -------------------------------------------------------------------------------------

def cmd_demo(args):
    """Train the reference model on built-in synthetic lesion images and show every result."""
    import tinycnn
    from .data import make_lesion_images
    tinycnn.set_seed(args.seed)
    s = args.image_size
    print(f"tinycnn demo: SYNTHETIC two-class 'tissue' images ({s}x{s}x3), class 1 carries a lesion-like blob.\n"
          f"Generated in code with seed {args.seed}; this is not medical data and says nothing clinical.\n")
    x_train, y_train = make_lesion_images(args.samples, image_size=s, seed=args.seed)
    x_val, y_val = make_lesion_images(max(64, args.samples // 4), image_size=s, seed=args.seed + 1)
    x_test, y_test = make_lesion_images(max(128, args.samples // 2), image_size=s, seed=args.seed + 2)
    model = reference_model((s, s, 3), 2)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy", "auc"])
    model.metadata = {"class_names": ["no lesion", "lesion"], "image_size": [s, s], "color_mode": "rgb",
                      "dataset": "tinycnn synthetic lesion images"}
    model.summary()
    start = time.perf_counter()
    history = model.fit(x_train, tinycnn.to_categorical(y_train, 2), epochs=args.epochs, batch_size=32,
                        validation_data=(x_val, tinycnn.to_categorical(y_val, 2)), verbose=args.verbose,
                        callbacks=[RecalibrateBatchNorm(x_train, max_samples=256)])
    print(f"Trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
    _finish_training(model, x_train, x_test, y_test, model.metadata["class_names"], args.out, history,
                     "Test set (synthetic):")
    return 0


def _load_training_data(args):
    """(x_train, y_train, x_val, y_val, x_test, y_test, class_names, color_mode) from --data."""
    from .data import image_folder, load_npz, train_val_split
    path = args.data
    if os.path.isdir(path):
        folder = image_folder(path, image_size=(args.image_size, args.image_size), color_mode=args.color_mode)
        print(folder)
        x, y = folder.load()
        (x_rest, y_rest), (x_test, y_test) = train_val_split(x, y, validation_fraction=args.test_fraction,
                                                             seed=args.seed)
        (x_train, y_train), (x_val, y_val) = train_val_split(x_rest, y_rest,
                                                             validation_fraction=args.validation_fraction,
                                                             seed=args.seed)
        return x_train, y_train, x_val, y_val, x_test, y_test, list(folder.class_names), args.color_mode
    data = load_npz(path)
    x_train, y_train = data.x_train, data.y_train
    if data.x_val is None:
        (x_train, y_train), (x_val, y_val) = train_val_split(x_train, y_train,
                                                             validation_fraction=args.validation_fraction,
                                                             seed=args.seed)
    else:
        x_val, y_val = data.x_val, data.y_val
    x_test, y_test = (data.x_test, data.y_test) if data.x_test is not None else (x_val, y_val)
    names = list(data.class_names) if data.class_names else [str(k) for k in range(data.num_classes)]
    color = "rgb" if x_train.shape[-1] == 3 else "grayscale"
    return x_train, y_train, x_val, y_val, x_test, y_test, names, color


def cmd_train(args):
    """Train the reference model on a MedMNIST-style .npz or a folder of class subfolders."""
    import tinycnn
    tinycnn.set_seed(args.seed)
    x_train, y_train, x_val, y_val, x_test, y_test, names, color = _load_training_data(args)
    names = _class_names(args.class_names, names)
    k = len(names)
    print(f"Data {args.data}: {len(x_train)} train, {len(x_val)} validation, {len(x_test)} test images of "
          f"shape {x_train.shape[1:]}, {k} classes {names}")
    model = reference_model(x_train.shape[1:], k, augment=args.augment, seed=args.seed)
    model.compile(optimizer=tinycnn.optimizers.Adam(learning_rate=args.learning_rate), loss=_loss(args, k),
                  metrics=["accuracy", "auc"])
    model.metadata = {"class_names": names, "image_size": list(x_train.shape[1:3]), "color_mode": color,
                      "dataset": os.path.abspath(args.data), "positive_class": _positive_class(args.positive_class, names)}
    model.summary()
    history = model.fit(x_train, tinycnn.to_categorical(y_train, k), epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(x_val, tinycnn.to_categorical(y_val, k)),
                        class_weight=None if args.class_weight == "none" else "balanced", verbose=args.verbose,
                        callbacks=[RecalibrateBatchNorm(x_train, max_samples=512)])
    _finish_training(model, x_train, x_test, y_test, names, args.out, history, f"Test set of {args.data}:")
    return 0


def _load_model(path):
    from .saving import load_model
    return load_model(path)


def _parse_class_map(items):
    """``--class-map healthy=Uninfected,sick=Parasitized`` (repeatable) -> {'healthy': 'Uninfected', ...}."""
    mapping = {}
    for item in items or []:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            folder, sep, name = (part.strip() for part in pair.partition("="))
            if not sep or not folder or not name:
                raise ValueError(f"invalid value for --class-map: expected SUBFOLDER=CLASS pairs separated by commas "
                                 f"(e.g. --class-map healthy=Uninfected,sick=Parasitized), received {pair!r}")
            if folder in mapping and mapping[folder] != name:
                raise ValueError(f"invalid value for --class-map: subfolder {folder!r} mapped twice")
            mapping[folder] = name
    return mapping


def _model_input(model):
    """``(height, width)`` and the color_mode of the images ``model`` takes."""
    h, w, c = model.layers[0].input_shape
    return (h, w), {1: "grayscale", 3: "rgb", 4: "rgba"}[c]


def _folder_for_model(path, model, names, class_map):
    """An image folder read at the model's size, labelled in the model's class order (by name)."""
    from .data import image_folder
    size, color = _model_input(model)
    source = image_folder(path, image_size=size, color_mode=color)
    if model.metadata.get("class_names") or class_map:
        source = source.with_class_names(names, class_map)
    else:
        _warn(f"the model carries no class names, so subfolders {source.class_names} are taken as classes "
              f"0..{len(names) - 1} in sorted order; check that this is the order it was trained in")
    print(source.summary())
    return source


def cmd_evaluate(args):
    """Report accuracy, AUC, sensitivity, specificity and the confusion matrix of a saved model.

    On a folder, subfolders are matched to the model's class names (ignoring case), never taken in
    alphabetical order: a mismatch is refused, and --class-map says which subfolder is which class.
    """
    from .data import load_npz
    from .report import report_from_predictions
    model = _load_model(args.model)
    k = model.layers[-1].output_shape[-1]
    names = _class_names(args.class_names, model.metadata.get("class_names") or [str(i) for i in range(k)])
    positive = (_positive_class(args.positive_class, names) if args.positive_class is not None
                else model.metadata.get("positive_class", 1))
    class_map = _parse_class_map(args.class_map)
    if os.path.isdir(args.data):
        source = _folder_for_model(args.data, model, names, class_map)
        probs, y = model.predict(source, batch_size=32), source.labels
    else:
        if class_map:
            raise ValueError("--class-map applies to folders (it maps subfolder names to classes); an .npz holds "
                             "class indices")
        data = load_npz(args.data)
        x, y = getattr(data, f"x_{args.split}"), getattr(data, f"y_{args.split}")
        if x is None:
            raise ValueError(f"{args.data}: has no '{args.split}' split")
        probs = model.predict(x, batch_size=32)
    print(report_from_predictions(y, probs.reshape(len(probs), -1), class_names=names, positive_class=positive))
    return 0


def _read_image(path, model):
    from PIL import Image
    h, w, c = model.layers[0].input_shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read this image ({e})") from None
    return arr.reshape(h, w, c)


def cmd_predict(args):
    """Class probabilities for each image file."""
    model = _load_model(args.model)
    names = model.metadata.get("class_names") or [str(k) for k in range(model.layers[-1].output_shape[-1])]
    x = np.stack([_read_image(p, model) for p in args.files])
    probs = model.predict(x, batch_size=32)
    width = max(len(p) for p in args.files)
    print(f"{'file'.ljust(width)}  " + "  ".join(f"{n:>12s}" for n in names) + "  prediction")
    for path, p in zip(args.files, probs):
        print(f"{path.ljust(width)}  " + "  ".join(f"{v:12.4f}" for v in p) + f"  {names[int(np.argmax(p))]}")
    return 0


def cmd_explain(args):
    """Grad-CAM picture of one image: where the model looked for the class."""
    from .explain import grad_cam, save_grad_cam
    model = _load_model(args.model)
    image = _read_image(args.image, model)
    cam = grad_cam(model, image, class_index=args.class_index)
    save_grad_cam(image, cam, args.out)
    names = model.metadata.get("class_names") or [str(k) for k in range(len(cam.probabilities))]
    print(f"{args.image}: class {names[cam.class_index]!r} (p = {cam.probabilities[cam.class_index]:.3f}); "
          f"Grad-CAM from layer '{cam.layer}' written to {args.out}")
    return 0


def cmd_summary(args):
    """The layer table of a saved model, and what it was trained on."""
    model = _load_model(args.model)
    model.summary()
    for key, value in model.metadata.items():
        print(f"{key}: {value}")
    if model.compiled:
        print(f"optimizer: {type(model.optimizer).__name__} {model.optimizer.get_config()}, "
              f"{model.optimizer.iterations} steps; loss: {model.loss!r}")
    return 0


# --- argument parsing -----------------------------------------------------------------------------

def _training_options(p):
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--loss", choices=["categorical_crossentropy", "categorical_focal_crossentropy"],
                   default="categorical_crossentropy", help="loss (default categorical_crossentropy)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing in [0, 1] (default 0)")
    p.add_argument("--focal-gamma", type=float, default=2.0, help="focal loss gamma (default 2)")
    p.add_argument("--focal-alpha", type=float, nargs="+", default=[0.25],
                   help="focal loss alpha: one value, or one per class (default 0.25)")
    p.add_argument("--class-weight", choices=["none", "balanced"], default="none",
                   help="'balanced' weighs classes by inverse frequency (default none)")
    p.add_argument("--augment", action="store_true", help="random flips and small rotations during training")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling, dropout, splits (default 0)")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1, help="progress display (default 1)")


def _report_options(p):
    p.add_argument("--class-names", nargs="+", metavar="NAME",
                   help="names of the classes in label order (e.g. --class-names malignant benign)")
    p.add_argument("--positive-class", metavar="NAME_OR_INDEX",
                   help="binary tasks: the class whose recall is the sensitivity (default: class 1)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tinycnn", description="Train, evaluate and explain small CNN image classifiers on the CPU.",
        epilog="Run `tinycnn COMMAND --help` for the options of each command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="train the reference model on built-in synthetic data and show everything",
                       description=cmd_demo.__doc__ + " Writes the model, report, curves and a Grad-CAM "
                                                      "picture to --out.")
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    p.add_argument("--samples", type=int, default=640, help="synthetic training images (default 640)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, weights, shuffling, dropout (default 0)")
    p.add_argument("--out", default=os.path.join(DEFAULT_OUT, "demo"), help="output folder (default %(default)s)")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1, help="progress display (default 1)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train on a MedMNIST-style .npz or a folder with one subfolder per class",
                       description=cmd_train.__doc__ + " A folder is split (stratified) into train, validation "
                                                       "and test sets; an .npz uses its own splits.")
    p.add_argument("--data", required=True, help=".npz file (train_images, train_labels, val_*, test_*) or folder")
    p.add_argument("--image-size", type=int, default=64, help="folder images are resized to this side (default 64)")
    p.add_argument("--color-mode", choices=["rgb", "grayscale"], default="rgb", help="for folders (default rgb)")
    p.add_argument("--validation-fraction", type=float, default=0.15, help="for data without a validation split")
    p.add_argument("--test-fraction", type=float, default=0.15, help="for folders: share held out for the test report")
    p.add_argument("--out", default=os.path.join(DEFAULT_OUT, "train"), help="output folder (default %(default)s)")
    _training_options(p)
    _report_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluation report of a saved model on data", description=cmd_evaluate.__doc__)
    p.add_argument("model", help="model file written by tinycnn (model.npz)")
    p.add_argument("--data", required=True, help=".npz file or folder with one subfolder per class")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split of an .npz (default test)")
    p.add_argument("--class-map", action="append", metavar="SUBFOLDER=CLASS,...",
                   help="folders: which subfolder holds which of the model's classes, for subfolders not named "
                        "like them (e.g. --class-map healthy=Uninfected,sick=Parasitized); others match by name, "
                        "ignoring case")
    _report_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities for image files", description=cmd_predict.__doc__)
    p.add_argument("model", help="model file written by tinycnn")
    p.add_argument("files", nargs="+", help="image files (any format Pillow reads)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="Grad-CAM picture for one image", description=cmd_explain.__doc__)
    p.add_argument("model", help="model file written by tinycnn")
    p.add_argument("image", help="image file")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--class-index", type=int, default=None, help="class to explain (default: the predicted one)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("summary", help="layers and training facts of a saved model", description=cmd_summary.__doc__)
    p.add_argument("model", help="model file written by tinycnn")
    p.set_defaults(func=cmd_summary)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    _warn(message)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one plain line, not a file path and a source line
            return args.func(args)
    except (ValueError, TypeError, OSError) as e:
        # Bad input: one clear line, not a traceback (TINYCNN_DEBUG=1 shows the traceback).
        if os.environ.get("TINYCNN_DEBUG"):
            raise
        print(f"tinycnn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
