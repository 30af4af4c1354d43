"""Train the reference medical-image classifier on built-in synthetic data.

This is the reference program of tinycnn (a 64x64x3, two-class CNN written for Keras) with only its
imports changed, trained on *synthetic* "tissue" images generated in code: half of them carry a
lesion-like blob, and every image has the same mean brightness, so the network must learn a local
structure. Nothing is downloaded.

    python examples/train_reference.py
    python examples/train_reference.py --epochs 10 --samples 1024 --save model.npz

Read it top to bottom: data, model, compile, fit, evaluate, as in Keras.
"""
import argparse
import time

import numpy as np

import tinycnn
from tinycnn.data import make_lesion_images
from tinycnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from tinycnn.models import Sequential


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=512, help="training images (default 512)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64, help="square image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, weights, shuffling, dropout")
    parser.add_argument("--save", metavar="PATH", help="save the trained model here (.npz)")
    args = parser.parse_args()

    # --- data: synthetic, generated with a seed ------------------------------------------------
    tinycnn.set_seed(args.seed)
    X_train, y_train = make_lesion_images(args.samples, image_size=args.image_size, seed=args.seed)
    X_val, y_val = make_lesion_images(128, image_size=args.image_size, seed=args.seed + 1)
    X_test, y_test = make_lesion_images(256, image_size=args.image_size, seed=args.seed + 2)
    y_train, y_val, y_test = (tinycnn.to_categorical(y, 2) for y in (y_train, y_val, y_test))
    print(f"Synthetic lesion images: {len(X_train)} train, {len(X_val)} validation, {len(X_test)} test, "
          f"shape {X_train.shape[1:]}")

    # --- the reference program -------------------------------------------------------------------
    s = args.image_size
    model = Sequential([
        Conv2D(filters=32, kernel_size=(3, 3), padding='same', activation='relu', input_shape=(s, s, 3)),
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
        Dense(units=2, activation='softmax')
    ])
    model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    model.summary()
    start = time.perf_counter()
    history = model.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(X_val, y_val))
    print(f"Trained in {time.perf_counter() - start:.1f} s")

    # With few training steps the batch-norm moving statistics (momentum 0.99) are still close to
    # their initial values; recompute them exactly from the training data before evaluating.
    print("Test accuracy before batch-norm recalibration:", model.evaluate(X_test, y_test, verbose=0)[1])
    model.recalibrate_batchnorm(X_train)
    score = model.evaluate(X_test, y_test)
    print('Test accuracy:', score[1])
    best = int(np.argmax(history.history["val_accuracy"]))
    print(f"Best validation accuracy {history.history['val_accuracy'][best]:.3f} at epoch {best + 1}")
    if args.save:
        model.save(args.save)
        print(f"Saved the model to {args.save} (reload with tinycnn.load_model)")


if __name__ == "__main__":
    main()
