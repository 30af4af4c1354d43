"""A cross-validated study with scikit-learn: k-fold AUC with a spread, a grid search, calibration.

    python examples/cross_validation.py                          # synthetic lesion images, 28x28
    python examples/cross_validation.py --data breastmnist.npz --positive-class 0
    python examples/cross_validation.py --data breastmnist.npz --scheduler local:2 --threads 1
    python examples/cross_validation.py --grid --calibrate       # the other two parts of the study

What it does, each step a few lines of scikit-learn around ``tinycnn.sklearn.CNNClassifier``:

1. Stratified k-fold cross-validation (``tinycnn.sklearn.cross_validate_report``) of the reference
   model on the training images (a MedMNIST file's train and val splits together): per-fold ROC
   AUC, accuracy, sensitivity and specificity, their mean ± standard deviation, and the test split
   scored by the mean of the k fold models' probabilities. ``--scheduler`` runs the folds on Dask.
2. ``--grid``: ``GridSearchCV`` over two learning rates (``optimizer__learning_rate``), scored by
   cross-validated AUC on the same folds.
3. ``--calibrate``: ``CalibratedClassifierCV(ensemble=False)``: one network trained on all
   training images, scored on the test split by the Brier score as it is and through a sigmoid
   (Platt) map fitted on cross-validated predictions of the same model.

Without ``--data`` the images are tinycnn's synthetic "lesion" set: generated in code, not medical,
and saying nothing clinical.
"""
import argparse
import json
import time

import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from tinycnn.data import load_npz, make_lesion_images
from tinycnn.sklearn import CNNClassifier, cross_validate_report


def load(args):
    """(x, y, x_test, y_test): training images (train + val) and the held-out test split."""
    if args.data:
        data = load_npz(args.data)
        x = np.concatenate([data.x_train] + ([data.x_val] if data.x_val is not None else []))
        y = np.concatenate([data.y_train] + ([data.y_val] if data.y_val is not None else []))
        return x, y, data.x_test, data.y_test
    x, y = make_lesion_images(args.samples, image_size=args.image_size, channels=1, seed=args.seed)
    x_test, y_test = make_lesion_images(args.samples // 4, image_size=args.image_size, channels=1, seed=args.seed + 1)
    return x, y, x_test, y_test


def brier(estimator, x, y, positive):
    column = list(estimator.classes_).index(positive)
    return brier_score_loss(y == positive, estimator.predict_proba(x)[:, column])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="MedMNIST-style .npz (default: synthetic lesion images)")
    parser.add_argument("--samples", type=int, default=600, help="synthetic training images (default 600)")
    parser.add_argument("--image-size", type=int, default=28, help="synthetic image side (default 28)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--positive-class", type=int, default=1,
                        help="label whose recall is the sensitivity (BreastMNIST: 0 = malignant)")
    parser.add_argument("--threads", type=int, help="Numba threads per fold (1 to compare with a Dask run)")
    parser.add_argument("--scheduler", help="'local:N' or 'tcp://HOST:8786': run the folds on Dask")
    parser.add_argument("--grid", action="store_true", help="also run GridSearchCV over two learning rates")
    parser.add_argument("--calibrate", action="store_true", help="also compare CalibratedClassifierCV")
    parser.add_argument("--out", help="write the cross-validation report here as JSON")
    args = parser.parse_args()

    x, y, x_test, y_test = load(args)
    print(f"{args.data or 'synthetic lesion images'}: {len(x)} training images {x.shape[1:]}, "
          f"{len(x_test)} test images, classes {np.unique(y).tolist()}")
    estimator = CNNClassifier(epochs=args.epochs, optimizer__learning_rate=args.learning_rate)

    start = time.perf_counter()
    if args.scheduler:
        import tinycnn.dask
        with tinycnn.dask.scheduler(args.scheduler):
            report = cross_validate_report(estimator, x, y, folds=args.folds, seed=args.seed, X_test=x_test,
                                           y_test=y_test, positive_class=args.positive_class, threads=args.threads,
                                           n_jobs=-1)
    else:
        report = cross_validate_report(estimator, x, y, folds=args.folds, seed=args.seed, X_test=x_test, y_test=y_test,
                                       positive_class=args.positive_class, threads=args.threads)
    print(f"\n{report}\n\n{args.folds}-fold cross-validation took {time.perf_counter() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report.to_dict(), f, indent=2)

    folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
    if args.grid:
        rates = [args.learning_rate, args.learning_rate / 3]
        search = GridSearchCV(clone(estimator).set_params(random_state=args.seed), {"optimizer__learning_rate": rates},
                              cv=folds, scoring="roc_auc")
        search.fit(x, y)
        print("\nGridSearchCV, cross-validated AUC (mean ± sd, scikit-learn's sd divides by n):")
        for params, mean, sd in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"],
                                    search.cv_results_["std_test_score"]):
            print(f"  learning rate {params['optimizer__learning_rate']:.2g}: {mean:.3f} ± {sd:.3f}")
        test_auc = roc_auc_score(y_test, search.predict_proba(x_test)[:, 1])
        best = search.best_params_["optimizer__learning_rate"]
        print(f"  best: learning rate {best:.2g}, refitted on all training images: test AUC {test_auc:.3f}")

    if args.calibrate:
        seeded = clone(estimator).set_params(random_state=args.seed)
        calibrated = CalibratedClassifierCV(seeded, method="sigmoid", cv=folds, ensemble=False).fit(x, y)
        plain = calibrated.calibrated_classifiers_[0].estimator  # the same network, before the sigmoid map
        print(f"\nBrier score on the test split (lower is better; positive class {args.positive_class}):\n"
              f"  plain model:             {brier(plain, x_test, y_test, args.positive_class):.4f}\n"
              f"  CalibratedClassifierCV:  {brier(calibrated, x_test, y_test, args.positive_class):.4f}")


if __name__ == "__main__":
    main()
