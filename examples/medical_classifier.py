"""The reference program on real medical images: a MedMNIST-style .npz (e.g. BreastMNIST).

    python examples/medical_classifier.py --data path/to/breastmnist_64.npz --class-names malignant "normal or benign"
    python examples/medical_classifier.py --data breastmnist.npz --epochs 20 --loss focal

The file must hold ``train_images``, ``train_labels``, ``val_images``, ``val_labels``,
``test_images``, ``test_labels`` (the MedMNIST layout; grayscale images get a channel axis). The
program trains the reference CNN, recomputes the batch-norm statistics from the training data,
and prints the evaluation report (accuracy, ROC AUC, sensitivity, specificity, confusion matrix).
"""
import argparse
import time

import tinycnn
from tinycnn.data import load_npz
from tinycnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from tinycnn.losses import CategoricalCrossentropy, CategoricalFocalCrossentropy
from tinycnn.models import Sequential
from tinycnn.report import classification_report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="MedMNIST-style .npz file")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loss", choices=["crossentropy", "smoothing", "focal"], default="crossentropy",
                        help="cross-entropy, cross-entropy with label smoothing 0.1, or focal loss")
    parser.add_argument("--class-weight", choices=["none", "balanced"], default="none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-names", nargs="+", metavar="NAME",
                        help="class names in label order (BreastMNIST: malignant 'normal or benign')")
    parser.add_argument("--positive-class", type=int, default=None,
                        help="class index whose recall is reported as sensitivity (default: the class not named as "
                             "a negative finding such as normal/benign, else 1; BreastMNIST: 0 = malignant)")
    parser.add_argument("--save", metavar="PATH", help="save the trained model here")
    args = parser.parse_args()

    tinycnn.set_seed(args.seed)
    data = load_npz(args.data, class_names=args.class_names)
    k = data.num_classes
    X_train, y_train = data.x_train, tinycnn.to_categorical(data.y_train, k)
    X_val, y_val = data.x_val, tinycnn.to_categorical(data.y_val, k)
    print(f"{args.data}: {len(X_train)} train, {len(X_val)} validation, {len(data.x_test)} test images, "
          f"shape {X_train.shape[1:]}, {k} classes")

    model = Sequential([
        Conv2D(filters=32, kernel_size=(3, 3), padding='same', activation='relu', input_shape=X_train.shape[1:]),
        BatchNormalization(),
        Conv2D(filters=64, kernel_size=(3, 3), padding='same', activation='relu'),
        MaxPooling2D(pool_size=(2, 2)),
        BatchNormalization(),
        Conv2D(filters=128, kernel_size=(3, 3), padding='same', activation='relu'),
        MaxPooling2D(pool_size=(2, 2)),
        BatchNormalization(),
        Conv2D(filters=256, kernel_size=(3, 3), padding='same', activation='relu'),
        MaxPooling2D(pool_size=(2, 2)),
        Flatten(),
        Dropout(rate=0.5),
        Dense(units=k, activation='softmax')
    ])
    loss = {"crossentropy": CategoricalCrossentropy(),
            "smoothing": CategoricalCrossentropy(label_smoothing=0.1),
            "focal": CategoricalFocalCrossentropy()}[args.loss]
    model.compile(optimizer='adam', loss=loss, metrics=['accuracy', 'auc'])
    start = time.perf_counter()
    model.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size, validation_data=(X_val, y_val),
              class_weight=None if args.class_weight == "none" else "balanced", verbose=2)
    print(f"Trained in {time.perf_counter() - start:.0f} s")
    names = data.class_names or [str(i) for i in range(k)]
    before = classification_report(model, data.x_test, data.y_test, class_names=names,
                                   positive_class=args.positive_class)
    print(f"With the moving batch-norm statistics: test AUC {before.roc_auc:.3f}, accuracy {before.accuracy:.3f}")
    model.recalibrate_batchnorm(X_train)
    print("After recalibrating them from the training data:")
    print(classification_report(model, data.x_test, data.y_test, class_names=names,
                                positive_class=args.positive_class))
    if args.save:
        model.save(args.save)
        print(f"Saved to {args.save}")


if __name__ == "__main__":
    main()
