"""The reference model learns spatial features: a few epochs on the synthetic lesion images (the
classes have the same mean brightness, so only a local structure separates them) take held-out
accuracy clearly above chance, and Grad-CAM then points at the lesions."""
import numpy as np

import tinycnn
from test_model import reference_model
from tinycnn.data import make_lesion_images
from tinycnn.explain import grad_cam


def test_reference_model_learns_the_synthetic_lesion_task():
    tinycnn.set_seed(0)
    size = 32  # the reference architecture at 32x32 keeps the test quick; 64x64 is the example's job
    x, y = make_lesion_images(384, image_size=size, seed=1)
    x_val, y_val, masks = make_lesion_images(200, image_size=size, seed=2, return_masks=True)
    assert abs(y_val.mean() - 0.5) < 0.1
    # A pixel-level linear model is at chance on this data: the signal is spatial.
    from sklearn.linear_model import LogisticRegression
    linear = LogisticRegression(max_iter=2000).fit(x.reshape(len(x), -1), y)
    assert linear.score(x_val.reshape(len(x_val), -1), y_val) < 0.6
    model = reference_model(input_shape=(size, size, 3))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, tinycnn.to_categorical(y, 2), epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # Keras's batch-norm momentum (0.99) needs hundreds of steps; 48 are not enough, so the
    # population statistics are recomputed before evaluating (see Sequential.recalibrate_batchnorm).
    model.recalibrate_batchnorm(x)
    loss, accuracy = model.evaluate(x_val, tinycnn.to_categorical(y_val, 2), verbose=0)
    assert accuracy >= 0.7, f"held-out accuracy {accuracy:.3f} after 4 epochs"
    assert np.isfinite(loss)

    # Where did it look? For lesion images it calls positive, the heatmap is hotter on the lesion.
    probs = model.predict(x_val)[:, 1]
    hits = [i for i in np.flatnonzero(y_val == 1) if probs[i] > 0.5][:20]
    assert len(hits) >= 10
    inside_hotter = []
    for i in hits:
        heat = grad_cam(model, x_val[i], class_index=1).heatmap
        inside_hotter.append(heat[masks[i]].mean() > heat[~masks[i]].mean())
    assert np.mean(inside_hotter) >= 0.8, f"Grad-CAM hotter on the lesion in {np.mean(inside_hotter):.0%} of cases"
