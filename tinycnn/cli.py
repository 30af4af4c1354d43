"""The command line: ``tinycnn demo | train | cv | evaluate | predict | explain | summary | export``.

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

from .callbacks import BackupAndRestore, RecalibrateBatchNorm
from .data import train_val_split
from .models import reference_model, resnet18
from .onnx_export import OPSET, OPSETS

DEFAULT_OUT = "tinycnn-runs"


# --- building blocks ------------------------------------------------------------------------------

def _warn(message):
    """A warning as one plain line on stderr, as the command line shows every warning."""
    print(f"tinycnn: warning: {message}", file=sys.stderr)


def _optimizer(args, steps_per_epoch):
    """The optimizer the training options ask for: Adam by default; AdamW, RMSprop or SGD with
    Nesterov momentum; decoupled weight decay (not on biases or batch norm); a cosine schedule over
    the whole run after a linear warm-up; gradient-norm clipping."""
    from . import optimizers
    from .optimizers import schedules
    lr = args.learning_rate
    if args.schedule == "cosine":
        warmup = args.warmup_epochs * steps_per_epoch
        decay = max(1, args.epochs * steps_per_epoch - warmup)
        lr = (schedules.CosineDecay(0.0, decay, warmup_target=lr, warmup_steps=warmup) if warmup
              else schedules.CosineDecay(lr, decay))
    kwargs = {"clipnorm": args.clipnorm}
    if args.weight_decay is not None:
        kwargs["weight_decay"] = args.weight_decay
    if args.optimizer == "sgd":
        kwargs.update(momentum=args.momentum, nesterov=args.momentum > 0)
    names = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}
    optimizer = optimizers.OPTIMIZER_CLASSES[names[args.optimizer]](lr, **kwargs)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def _loss(args, num_classes):
    from . import losses
    if args.loss == "categorical_focal_crossentropy":
        alpha = args.focal_alpha
        return losses.CategoricalFocalCrossentropy(alpha=alpha[0] if len(alpha) == 1 else alpha, gamma=args.focal_gamma,
                                                   label_smoothing=args.label_smoothing)
    return losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)


def _positive_class(value, names):
    """Binary tasks: ``(index, reason)`` of the positive class from ``--positive-class`` (a class name
    or an index), or by :func:`tinycnn.report.default_positive_class`; ``(None, None)`` otherwise."""
    from .report import default_positive_class
    if len(names) != 2:
        if value is not None:
            raise ValueError(f"--positive-class applies to two-class tasks; this one has {len(names)} classes")
        return None, None
    if value is None:
        try:
            return default_positive_class(names)
        except ValueError:
            raise ValueError(f"both classes {names} name a negative finding: say which is positive with "
                             f"--positive-class NAME") from None
    folded = [n.casefold() for n in names]
    if value.casefold() in folded:
        return folded.index(value.casefold()), "given"
    if value.isdigit() and int(value) < len(names):
        return int(value), "given"
    raise ValueError(f"invalid value for --positive-class: expected a class name {names} or an index in "
                     f"[0, {len(names)}), received {value!r}")


def _class_names(given, default):
    if not given:
        return list(default)
    if len(given) != len(default):
        raise ValueError(f"--class-names: the data has {len(default)} classes, received {len(given)} names {given}")
    return list(given)


def _existing(path, option):
    """``path`` if it exists; else the error a user expects ("no such file or folder")."""
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(f"{option} {path}: no such file or folder")
    return path


def _check_out_folder(out, overwrite):
    """Refuse to write a run over an earlier one, unless --overwrite (checked before any work)."""
    earlier = [name for name in ("model.npz", "report.json") if os.path.exists(os.path.join(out, name))]
    if earlier and not overwrite:
        raise ValueError(f"--out {out}: the folder already holds a run ({', '.join(earlier)}); choose another --out, "
                         f"or pass --overwrite to replace it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out}: this is a file, not a folder")


def _is_source(data):
    return not isinstance(data, tuple)


def _count(data):
    return len(data) if _is_source(data) else len(data[1])


def _predict(model, data):
    """``(probabilities (N, K), labels (N,))`` of a split: arrays ``(x, y)`` or a batch source."""
    if _is_source(data):
        return model.predict(data, batch_size=32), data.labels
    return model.predict(data[0], batch_size=32), data[1]


def _fit_input(data, k):
    """``(x, y)`` as ``fit`` takes them: a source with no targets, or images with one-hot targets."""
    import tinycnn
    return (data, None) if _is_source(data) else (data[0], tinycnn.to_categorical(data[1], k))


def _images_for_batchnorm(data, n, seed=0):
    """Training images for batch-norm statistics: a random sample of at most ``n`` from a source
    (nothing is read), the first ``n`` of arrays (``n=None``: all of them)."""
    if _is_source(data):
        return data.sample(n, seed) if n else data
    return data[0][:n]


def _explain_best(model, test, probs, names, path):
    """Grad-CAM picture of the test image the model is surest is positive (or of its surest one)."""
    from .explain import grad_cam, save_grad_cam
    pos = model.metadata.get("positive_class")
    predicted = np.argmax(probs, axis=1)
    if pos is None:
        index = int(np.argmax(probs.max(axis=1)))
    else:
        candidates = np.flatnonzero(predicted == pos)
        index = int(candidates[np.argmax(probs[candidates, pos])]) if candidates.size else 0
    image = test.read(index) if _is_source(test) else test[0][index]
    title = os.path.basename(test.file_paths[index]) if _is_source(test) else f"test image {index}"
    cam = grad_cam(model, image)
    save_grad_cam(image, cam, path, class_names=names, title=title)
    print(f"Grad-CAM of {title} (class {names[cam.class_index]!r}, p = {cam.probabilities[cam.class_index]:.3f}) "
          f"written to {path}: the image beside where the model looked")


def _finish_training(model, train, test, names, out_dir, history, title):
    """Recalibrate batch norm, report, save model, curves and one Grad-CAM picture; return the report."""
    from .report import report_from_predictions
    sample = _images_for_batchnorm(train, 4096 if _is_source(train) else None)  # arrays: all, already in memory
    print(f"\nRecomputing batch-norm statistics from {len(sample)} training images (see "
          f"Sequential.recalibrate_batchnorm)")
    model.recalibrate_batchnorm(sample)
    os.makedirs(out_dir, exist_ok=True)
    probs, labels = _predict(model, test)
    positive = model.metadata.get("positive_class")
    report = report_from_predictions(labels, probs.reshape(len(probs), -1), class_names=names,
                                     positive_class=positive)
    if positive is not None:
        report.positive_reason = model.metadata.get("positive_class_reason", report.positive_reason)
    print(f"\n{title}\n{report}")
    figures = report.to_dict()
    model.metadata["test"] = {"on": title, "samples": figures["n_samples"], "accuracy": figures["accuracy"],
                              "roc_auc": figures["roc_auc"], **{key: figures[key] for key in
                                                                ("sensitivity", "specificity") if key in figures}}
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump({"data": model.metadata.get("training", {}).get("splits"), "test_set": title, **figures}, f,
                  indent=2)
    model_path = os.path.join(out_dir, "model.npz")
    model.save(model_path)
    _save_curves(history, os.path.join(out_dir, "curves.png"))
    _explain_best(model, test, probs, names, os.path.join(out_dir, "grad_cam.png"))
    print(f"\nWrote model.npz, report.json, curves.png and grad_cam.png to {os.path.abspath(out_dir)}\n"
          f"Next: tinycnn evaluate {model_path} --data ...; tinycnn predict {model_path} IMAGES_OR_FOLDERS")
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
    _check_positive(args, "epochs", "samples", "image_size")
    _check_out_folder(args.out, args.overwrite)
    tinycnn.set_seed(args.seed)
    s = args.image_size
    print(f"tinycnn demo: SYNTHETIC two-class 'tissue' images ({s}x{s}x3), class 1 carries a lesion-like blob.\n"
          f"Generated in code with seed {args.seed}; this is not medical data and says nothing clinical.\n")
    x_train, y_train = make_lesion_images(args.samples, image_size=s, seed=args.seed)
    x_val, y_val = make_lesion_images(max(64, args.samples // 4), image_size=s, seed=args.seed + 1)
    x_test, y_test = make_lesion_images(max(128, args.samples // 2), image_size=s, seed=args.seed + 2)
    model = reference_model((s, s, 3), 2)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy", "auc"])
    names = ["no lesion", "lesion"]
    positive, reason = _positive_class(None, names)
    model.metadata = {"class_names": names, "image_size": [s, s], "color_mode": "rgb",
                      "dataset": "tinycnn synthetic lesion images", "positive_class": positive,
                      "positive_class_reason": reason,
                      "training": {"model": "reference", "epochs": args.epochs, "seed": args.seed,
                                       "loss": "categorical_crossentropy",
                                   "splits": {key: {"images": n, "how": f"generated with seed {args.seed + i}"}
                                              for i, (key, n) in enumerate((("train", len(x_train)),
                                                                            ("validation", len(x_val)),
                                                                            ("test", len(x_test))))}}}
    model.summary()
    start = time.perf_counter()
    history = model.fit(x_train, tinycnn.to_categorical(y_train, 2), epochs=args.epochs, batch_size=32,
                        validation_data=(x_val, tinycnn.to_categorical(y_val, 2)), verbose=args.verbose,
                        callbacks=[RecalibrateBatchNorm(x_train, max_samples=256)])
    print(f"Trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
    _finish_training(model, (x_train, y_train), (x_test, y_test), names, args.out, history, "Test set (synthetic):")
    return 0


def _held_out(path, role, option, names, size, color, shape):
    """A validation or test split given on its own: a folder (matched to the training classes by name)
    or an .npz (its ``role`` split, else its training split)."""
    from .data import image_folder, load_npz
    if os.path.isdir(path):
        return image_folder(path, image_size=size, color_mode=color).with_class_names(names)
    data = load_npz(path, num_classes=len(names))
    split = role if getattr(data, f"x_{role}") is not None else "train"
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if x.shape[1:] != tuple(shape):
        raise ValueError(f"{option} {path}: its '{split}' images have shape {x.shape[1:]}, the training images "
                         f"{tuple(shape)}")
    return x, y


def _load_training_data(args):
    """Train, validation and test splits (arrays ``(x, y)``, sources, or None), class names, colour mode
    and how the splits were made, from --data, --val-data and --test-data."""
    from .data import image_folder, load_npz
    own = args.val_data is not None or args.test_data is not None
    val_how = (f"carved from the training data: --validation-fraction {args.validation_fraction}, stratified, "
               f"seed {args.seed}")
    if os.path.isdir(args.data):
        size, color = (args.image_size, args.image_size), args.color_mode
        folder = image_folder(args.data, image_size=size, color_mode=color, shuffle=True, seed=args.seed)
        names = _class_names(args.class_names, folder.class_names)
        if names != folder.class_names:
            folder = folder.with_class_names(names, dict(zip(folder.class_names, names)))
        print(folder.summary())
        if own:
            train, val, test = folder, None, None
            how = {"validation": "none given", "test": "none given"}
        else:
            rest, test = folder.split(args.test_fraction, seed=args.seed)
            train, val = rest.split(args.validation_fraction, seed=args.seed)
            how = {"validation": val_how, "test": (f"carved from the training data: --test-fraction "
                                                   f"{args.test_fraction}, stratified, seed {args.seed}")}
        shape = folder.element_shape
    else:
        data = load_npz(args.data)
        names = _class_names(args.class_names, data.class_names or [str(k) for k in range(data.num_classes)])
        train = (data.x_train, data.y_train)
        val = None if data.x_val is None else (data.x_val, data.y_val)
        test = None if data.x_test is None else (data.x_test, data.y_test)
        how = {"validation": f"the 'val' split of {args.data}", "test": f"the 'test' split of {args.data}"}
        if val is None and not own:
            (x, y), val = train_val_split(data.x_train, data.y_train, validation_fraction=args.validation_fraction,
                                          seed=args.seed)
            train = (x, y)
            how["validation"] = val_how
        shape = data.element_shape
        size, color = shape[:2], "rgb" if shape[-1] == 3 else "grayscale"
    if args.val_data is not None:
        val = _held_out(args.val_data, "val", "--val-data", names, size, color, shape)
        how["validation"] = f"as given: --val-data {args.val_data}"
    if args.test_data is not None:
        test = _held_out(args.test_data, "test", "--test-data", names, size, color, shape)
        how["test"] = f"as given: --test-data {args.test_data}"
    return train, val, test, names, color, shape, how


def _check_positive(args, *names):
    for name in names:
        if getattr(args, name) <= 0:
            raise ValueError(f"invalid value for --{name.replace('_', '-')}: expected a positive number, received "
                             f"{getattr(args, name)}")


def _backup(args):
    """``train``'s BackupAndRestore: every epoch's end is backed up in ``--out/backup``, so that an
    interrupted run continues with ``--resume`` and ends as it would have; deleted when the run ends."""
    folder = os.path.join(args.out, "backup")
    names = (BackupAndRestore.LATEST, BackupAndRestore.PREVIOUS, BackupAndRestore.DAMAGED)
    left = [os.path.join(folder, name) for name in names if os.path.exists(os.path.join(folder, name))]
    if left and not args.resume:
        if not args.overwrite:
            raise ValueError(f"--out {args.out}: an interrupted run left its backup in {folder}; pass --resume to "
                             f"continue it (the same command and options), or --overwrite to start over")
        for path in left:
            os.unlink(path)
    return BackupAndRestore(folder)


def cmd_train(args):
    """Train the reference model on a MedMNIST-style .npz or a folder of class subfolders."""
    import tinycnn
    _check_positive(args, "epochs", "batch_size", "image_size", "learning_rate")
    for option in ("validation_fraction", "test_fraction"):
        if not 0 < getattr(args, option) < 1:
            raise ValueError(f"invalid value for --{option.replace('_', '-')}: expected a fraction in (0, 1), "
                             f"received {getattr(args, option)}")
    for path, option in ((args.data, "--data"), (args.val_data, "--val-data"), (args.test_data, "--test-data")):
        _existing(path, option)
    _check_out_folder(args.out, args.overwrite)
    backup = _backup(args)
    tinycnn.set_seed(args.seed)
    train, val, test, names, color, shape, how = _load_training_data(args)
    k = len(names)
    positive, reason = _positive_class(args.positive_class, names)
    splits = {"train": {"images": _count(train), "how": f"--data {args.data}"}}
    for key, data in (("validation", val), ("test", test)):
        splits[key] = {"images": 0 if data is None else _count(data), "how": how[key]}
    print(f"Data {args.data}: {_count(train)} training images of shape {shape}, {k} classes {names}\n"
          f"  validation: {splits['validation']['images']} images, {how['validation']}\n"
          f"  test:       {splits['test']['images']} images, {how['test']}")
    if positive is not None:
        print(f"  positive class (for sensitivity): {names[positive]!r}" +
              ("" if reason == "given" else f", {reason}; --positive-class to choose"))
    build = resnet18 if args.model == "resnet18" else reference_model
    model = build(shape, k, augment=args.augment, seed=args.seed)
    model.compile(optimizer=_optimizer(args, -(-_count(train) // args.batch_size)), loss=_loss(args, k),
                  metrics=["accuracy", "auc"])
    model.metadata = {"class_names": names, "image_size": list(shape[:2]), "color_mode": color,
                      "dataset": os.path.abspath(args.data), "positive_class": positive,
                      "positive_class_reason": reason,
                      "training": {"model": args.model, "epochs": args.epochs, "seed": args.seed, "batch_size": args.batch_size,
                                   "learning_rate": args.learning_rate, "loss": model.loss.get_config(),
                                   "optimizer": {"name": args.optimizer, "weight_decay": args.weight_decay,
                                                 "schedule": args.schedule, "warmup_epochs": args.warmup_epochs,
                                                 "clipnorm": args.clipnorm},
                                   "class_weight": args.class_weight, "augment": args.augment, "splits": splits}}
    model.summary()
    x, y = _fit_input(train, k)
    history = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=None if val is None else val if _is_source(val) else _fit_input(val, k),
                        class_weight=None if args.class_weight == "none" else "balanced", verbose=args.verbose,
                        callbacks=[RecalibrateBatchNorm(_images_for_batchnorm(train, 512, args.seed),
                                                        max_samples=None), backup])
    title = f"Test set ({how['test']}):" if test is not None else \
        f"Validation set ({how['validation']}; no test set given, so these figures are not an independent test):"
    _finish_training(model, train, test if test is not None else val, names, args.out, history, title)
    return 0


def cmd_cv(args):
    """Stratified k-fold cross-validation of the reference model on a MedMNIST-style .npz (train + val
    splits) or a folder of class subfolders (all its images): ROC AUC, accuracy, sensitivity and
    specificity per fold and as mean ± sd; a test split, when the file has one, is scored by each
    fold's model and by the mean of their probabilities."""
    from .data import image_folder, load_npz
    from .sklearn import CNNClassifier, cross_validate_report
    _check_positive(args, "epochs", "folds")
    _check_out_folder(args.out, args.overwrite)
    if os.path.isdir(args.data):
        folder = image_folder(args.data, image_size=(args.image_size, args.image_size), color_mode=args.color_mode)
        print(folder)
        x, y = folder.load()
        x_test = y_test = None
        default_names = list(folder.class_names)
    else:
        data = load_npz(_existing(args.data, "data"))
        x = data.x_train if data.x_val is None else np.concatenate([data.x_train, data.x_val])
        y = data.y_train if data.y_val is None else np.concatenate([data.y_train, data.y_val])
        x_test, y_test = data.x_test, data.y_test
        default_names = list(data.class_names) if data.class_names else [str(k) for k in range(data.num_classes)]
    names = _class_names(args.class_names, default_names)
    k = len(names)
    builder = resnet18 if args.model == "resnet18" else reference_model
    estimator = CNNClassifier(builder, epochs=args.epochs, batch_size=args.batch_size, loss=_loss(args, k),
                              optimizer__learning_rate=args.learning_rate, model__augment=args.augment,
                              class_weight=None if args.class_weight == "none" else "balanced", verbose=0)
    print(f"Data {args.data}: {len(x)} images of shape {x.shape[1:]} in {args.folds} stratified folds"
          + (f", {len(x_test)} test images" if x_test is not None else "") + f", {k} classes {names}")
    positive = _positive_class(args.positive_class, names)[0] if k == 2 else None
    options = dict(folds=args.folds, seed=args.seed, X_test=x_test, y_test=y_test, class_names=names,
                   positive_class=positive, threads=args.threads)
    start = time.perf_counter()
    if args.scheduler:
        from .dask import scheduler
        with scheduler(args.scheduler, threads=args.threads or 1):
            report = cross_validate_report(estimator, x, y, n_jobs=-1, **options)
    else:
        report = cross_validate_report(estimator, x, y, **options)
    seconds = time.perf_counter() - start
    print(f"\n{report}\n\n{args.folds} folds in {seconds:.0f} s")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "report.json")
    with open(path, "w") as f:
        json.dump({**report.to_dict(), "data": os.path.abspath(args.data), "seconds": round(seconds, 1),
                   "scheduler": args.scheduler}, f, indent=2)
    print(f"Report written to {path}")
    return 0


def _load_model(path):
    from .saving import load_model
    return load_model(_existing(path, "model"))


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
    positive = (_positive_class(args.positive_class, names)[0] if args.positive_class is not None
                else model.metadata.get("positive_class"))
    class_map = _parse_class_map(args.class_map)
    if os.path.isdir(args.data):
        source = _folder_for_model(args.data, model, names, class_map)
        probs, y = model.predict(source, batch_size=32), source.labels
    else:
        if class_map:
            raise ValueError("--class-map applies to folders (it maps subfolder names to classes); an .npz holds "
                             "class indices")
        data = load_npz(_existing(args.data, "--data"))
        x, y = getattr(data, f"x_{args.split}"), getattr(data, f"y_{args.split}")
        if x is None:
            raise ValueError(f"{args.data}: has no '{args.split}' split")
        probs = model.predict(x, batch_size=32)
    report = report_from_predictions(y, probs.reshape(len(probs), -1), class_names=names, positive_class=positive)
    if args.positive_class is None and model.metadata.get("positive_class_reason"):
        report.positive_reason = f"as trained: {model.metadata['positive_class_reason']}"
    print(report)
    return 0


def _image_files(paths):
    """Every file named or inside the folders named (recursively, sorted, hidden names skipped), and
    ``(path, reason)`` for each path that is not there or cannot be listed."""
    from .data._imaging import listing_problem
    files, missing = [], []
    for path in paths:
        if os.path.isdir(path):
            def unlisted(error):
                missing.append((error.filename, listing_problem(error)))
            for root, dirs, names in os.walk(path, onerror=unlisted):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        elif os.path.lexists(path):
            files.append(path)
        else:
            missing.append((path, "no such file or folder"))
    return files, missing


def _read_images(files, model):
    """Read ``files`` at the model's input size, 32 at a time. Yields ``(paths, images (B, H, W, C), None)``
    for each batch of readable files and ``(None, None, UnreadableImage)`` for each file that is not."""
    from .data._imaging import UnreadableImage, read_image
    size, color = _model_input(model)
    batch, paths = [], []
    for path in files:
        try:
            batch.append(read_image(path, size, color))
            paths.append(path)
        except UnreadableImage as e:
            yield None, None, e
        if len(batch) == 32:
            yield paths, np.stack(batch), None
            batch, paths = [], []
    if batch:
        yield paths, np.stack(batch), None


def cmd_predict(args):
    """Class probabilities for image files and folders (searched recursively), as a table or a CSV file.

    A file that cannot be read as an image is skipped with one warning line; the others are still
    predicted. Exit status 0 when every file was predicted, 1 when some were skipped.
    """
    import csv
    model = _load_model(args.model)
    names = model.metadata.get("class_names") or [str(k) for k in range(model.layers[-1].output_shape[-1])]
    files, skipped = _image_files(args.paths)
    for path, reason in skipped:
        _warn(f"skipped {path}: {reason}")
    out = open(args.out, "w", newline="") if args.out else None
    try:
        writer = csv.writer(out) if out else None
        if writer:
            writer.writerow(["path", "predicted_class"] + [f"p_{n}" for n in names] + ["error"])
        else:
            print("\t".join(["file", "prediction"] + names))
        predicted = 0
        for paths, x, unreadable in _read_images(files, model):
            if unreadable:
                path, reason = unreadable.path, unreadable.reason
                _warn(f"skipped {path}: {reason}")
                skipped.append((path, reason))
                if writer:
                    writer.writerow([path, ""] + [""] * len(names) + [reason])
                continue
            for path, p in zip(paths, model.predict(x, batch_size=len(x))):
                row = [path, names[int(np.argmax(p))]] + [f"{v:.6f}" for v in p]
                if writer:
                    writer.writerow(row + [""])
                else:
                    print("\t".join(row))
            predicted += len(paths)
    finally:
        if out:
            out.close()
    if out:
        print(f"Predicted {predicted} image(s), wrote {os.path.abspath(args.out)}")
    if skipped:
        where = " (their reasons are in the CSV's error column)" if out else ""
        print(f"Skipped {len(skipped)} file(s) that could not be read as images, named above{where}",
              file=sys.stderr)
    if predicted == 0:
        raise ValueError("no image could be read from the paths given")
    return 1 if skipped else 0


def _class_index(value, names):
    """``--class`` as an index: a class name (any case) or a number."""
    if value is None:
        return None
    folded = [n.casefold() for n in names]
    if value.casefold() in folded:
        return folded.index(value.casefold())
    if value.isdigit() and int(value) < len(names):
        return int(value)
    raise ValueError(f"invalid value for --class: expected a class name {names} or an index in [0, {len(names)}), "
                     f"received {value!r}")


def cmd_explain(args):
    """Grad-CAM pictures: where the model looked, for one image or several in one grid."""
    from .data._imaging import UnreadableImage, read_image
    from .explain import _image_format, grad_cam, save_grad_cam_grid
    _image_format(args.out, "--out")  # refuse an unknown suffix before any work
    model = _load_model(args.model)
    k = model.layers[-1].output_shape[-1]
    names = model.metadata.get("class_names") or [str(i) for i in range(k)]
    class_index = _class_index(args.class_name, names)
    files, skipped = _image_files(args.images)
    size, color = _model_input(model)
    images, cams, titles = [], [], []
    for path in files:
        try:
            image = read_image(path, size, color)
        except UnreadableImage as e:
            skipped.append((path, e.reason))
            continue
        cam = grad_cam(model, image, class_index=class_index)
        images.append(image)
        cams.append(cam)
        titles.append(os.path.basename(path))
        print(f"{path}: class {names[cam.class_index]!r} (p = {cam.probabilities[cam.class_index]:.3f}), "
              f"predicted {names[int(np.argmax(cam.probabilities))]!r}")
    for path, reason in skipped:
        _warn(f"skipped {path}: {reason}")
    if not images:
        raise ValueError("no image could be read from the paths given")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_grad_cam_grid(images, cams, args.out, class_names=names, titles=titles)
    print(f"Grad-CAM from layer '{cams[0].layer}' of {len(images)} image(s) written to {os.path.abspath(args.out)}")
    return 1 if skipped else 0


def cmd_summary(args):
    """The layer table of a saved model, and what a reader of it needs: classes, input, how it was trained."""
    model = _load_model(args.model)
    model.summary()
    meta = dict(model.metadata)
    names = meta.pop("class_names", None)
    k = model.layers[-1].output_shape[-1]
    size, color = _model_input(model)
    print(f"classes: {k}: {names if names else 'unnamed (indices 0..' + str(k - 1) + ')'}")
    print(f"input: {size[0]}x{size[1]} {meta.pop('color_mode', color)} images, values in [0, 1]")
    positive, reason = meta.pop("positive_class", None), meta.pop("positive_class_reason", None)
    if positive is not None:
        name = names[positive] if names else str(positive)
        print(f"positive class: {name!r} (index {positive}" + ("" if reason in (None, "given") else f"; {reason}")
              + ")")
    training = meta.pop("training", None)
    if training:
        splits = training.pop("splits", {})
        print("trained: " + ", ".join(f"{key} {value}" for key, value in training.items()))
        for key, split in splits.items():
            print(f"  {key}: {split['images']} images, {split['how']}")
    test = meta.pop("test", None)
    if test:
        figures = ", ".join(f"{key} {value:.3f}" for key, value in test.items()
                            if isinstance(value, float))
        print(f"{test.get('on', 'test')} {test.get('samples')} images: {figures}")
    for key, value in meta.items():
        print(f"{key}: {value}")
    if model.compiled:
        print(f"optimizer: {type(model.optimizer).__name__} {model.optimizer.get_config()}, "
              f"{model.optimizer.iterations} steps; loss: {model.loss!r}")
    return 0


def cmd_export(args):
    """Write a saved model as an ONNX file for ONNX Runtime and other engines (Model.export).

    The file takes NHWC images, as predict does (a Transpose to NCHW comes first inside), or NCHW
    images with --channels-first; the batch size is free. The class names, input and output names go
    into its metadata. Needs the onnx package: pip install "tinycnn[onnx]".
    """
    from .onnx_export import require_onnx
    model = _load_model(args.model)
    out = args.out or os.path.splitext(args.model)[0] + ".onnx"
    try:
        model.export(out, channels_first=args.channels_first, opset=args.opset)
        graph = require_onnx().load(out).graph  # what was written, read back for the summary line
    except ImportError as e:
        print(f"tinycnn export: error: {e}", file=sys.stderr)
        return 2
    shapes = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input]
    print(f"ONNX model written to {out}: {len(graph.node)} nodes, opset {args.opset}, inputs "
          + ", ".join(f"{v.name} {shape}" for v, shape in zip(graph.input, shapes))
          + f" ({'NCHW' if args.channels_first else 'NHWC'}), output {graph.output[0].name}")
    return 0


# --- argument parsing -----------------------------------------------------------------------------

def _training_options(p):
    p.add_argument("--model", choices=["reference", "resnet18"], default="reference",
                   help="the network: the reference CNN of README, or ResNet-18 (the MedMNIST baseline; a 3x3 "
                        "stem without max pooling for images up to 32 pixels) (default reference)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "rmsprop", "sgd"], default="adam",
                   help="optimizer (default adam); sgd uses Nesterov momentum --momentum")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="decoupled weight decay, biases and batch norm excluded (default: none; AdamW's 0.004)")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="learning-rate schedule over the whole run (default constant)")
    p.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up from 0 before the cosine (default 0)")
    p.add_argument("--clipnorm", type=float, default=None, help="clip each gradient's norm to this (default: off)")
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


def _out_options(p, command):
    p.add_argument("--out", default=os.path.join(DEFAULT_OUT, command),
                   help="output folder (default %(default)s, in the current folder)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")


def _report_options(p):
    p.add_argument("--class-names", nargs="+", metavar="NAME",
                   help="names of the classes in label order (e.g. --class-names malignant benign)")
    p.add_argument("--positive-class", metavar="NAME_OR_INDEX",
                   help="binary tasks: the class whose recall is the sensitivity (default: the class whose name "
                        "is not a negative finding such as normal/benign/healthy/uninfected, else class 1; the "
                        "report says which and why)")


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
    _out_options(p, "demo")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1, help="progress display (default 1)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train on a MedMNIST-style .npz or a folder with one subfolder per class",
                       description=cmd_train.__doc__ + " With --val-data or --test-data, the splits are used as "
                       "given and the training data is not split. Without them, a folder is split (stratified, "
                       "--seed) into train, validation (--validation-fraction) and test (--test-fraction) images, "
                       "and an .npz uses its own val and test splits (a missing val split is carved from train). "
                       "The folder is read a batch at a time, so it may be larger than memory.")
    p.add_argument("--data", required=True, help=".npz file (train_images, train_labels, val_*, test_*) or folder "
                                                 "with one subfolder per class")
    p.add_argument("--val-data", metavar="PATH", help="validation images, used as given: a folder (subfolders matched "
                                                      "to the classes by name) or an .npz (its val split)")
    p.add_argument("--test-data", metavar="PATH", help="test images for the final report, used as given: a folder or "
                                                       "an .npz (its test split)")
    p.add_argument("--image-size", type=int, default=64, help="folder images are resized to this side (default 64)")
    p.add_argument("--color-mode", choices=["rgb", "grayscale"], default="rgb", help="for folders (default rgb)")
    p.add_argument("--validation-fraction", type=float, default=0.15,
                   help="share of the training data held out for validation when no validation split is given "
                        "(default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.15,
                   help="folders without --val-data/--test-data: share held out for the test report "
                        "(default %(default)s)")
    _out_options(p, "train")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out that was interrupted (killed, out of memory, power cut) from its "
                        "backup in --out/backup, made at every epoch's end; give the same options as the first time: "
                        "the run ends as it would have without the interruption")
    _training_options(p)
    _report_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", help="k-fold cross-validated AUC (mean ± sd) on a .npz or a folder",
                       description=cmd_cv.__doc__)
    p.add_argument("--data", required=True, help=".npz file (train_images, ..., test_*) or folder")
    p.add_argument("--folds", type=int, default=5, help="number of stratified folds (default 5)")
    p.add_argument("--image-size", type=int, default=64, help="folder images are resized to this side (default 64)")
    p.add_argument("--color-mode", choices=["rgb", "grayscale"], default="rgb", help="for folders (default rgb)")
    p.add_argument("--threads", type=int, default=None,
                   help="Numba threads per fold (default: all here, 1 on Dask workers); equal thread "
                        "counts give bit-identical results")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the folds on Dask: 'local:N' (N worker processes here) or 'tcp://HOST:8786'")
    _out_options(p, "cv")
    _training_options(p)
    _report_options(p)
    p.set_defaults(func=cmd_cv)

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

    p = sub.add_parser("predict", help="class probabilities for image files and folders",
                       description=cmd_predict.__doc__)
    p.add_argument("model", help="model file written by tinycnn")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files (any format Pillow reads) and folders")
    p.add_argument("--out", metavar="FILE.csv", help="write a CSV file: path, predicted_class, one probability column "
                                                     "per class, error (the reason a file was skipped)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="Grad-CAM pictures for images, in one grid", description=cmd_explain.__doc__)
    p.add_argument("model", help="model file written by tinycnn")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--out", default=os.path.join(DEFAULT_OUT, "explain", "grad_cam.png"),
                   help="picture to write; its suffix names the format (.png, .jpg, .tif, ...) (default %(default)s)")
    p.add_argument("--class", dest="class_name", metavar="NAME_OR_INDEX",
                   help="class to explain, by name or index (default: each image's predicted class)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("summary", help="layers and training facts of a saved model", description=cmd_summary.__doc__)
    p.add_argument("model", help="model file written by tinycnn")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("export", help="write a saved model as an ONNX file", description=cmd_export.__doc__)
    p.add_argument("model", help="model file written by tinycnn (model.npz)")
    p.add_argument("--out", metavar="FILE.onnx", help="ONNX file to write (default: the model's path with .onnx)")
    p.add_argument("--channels-first", action="store_true",
                   help="the file takes NCHW images (batch, channels, height, width), as PyTorch pipelines feed "
                        "them (default: NHWC, as tinycnn's predict)")
    p.add_argument("--opset", type=int, default=OPSET,
                   help=f"ONNX opset version, {OPSETS[0]} to {OPSETS[-1]} (default %(default)s)")
    p.set_defaults(func=cmd_export)
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
