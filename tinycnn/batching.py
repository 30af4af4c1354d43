"""How ``fit``, ``evaluate`` and ``predict`` walk over their data, batch by batch.

Two kinds of data are accepted:

* arrays ``x`` (and ``y``, ``sample_weight``), validated once at the entry point;
* a *batch source*: any object with ``len(source)`` (number of samples), ``source.element_shape``
  (per-sample shape, e.g. ``(64, 64, 3)``), ``source.num_classes`` and
  ``source.iter_batches(batch_size, shuffle, seed)`` yielding ``(x_batch, labels_batch)`` with
  integer class labels. ``tinycnn.data.image_folder`` returns one; it reads images from disk a batch
  at a time, so a folder larger than memory still trains. Optional: ``source.labels`` (all labels,
  for ``class_weight='balanced'``).

Both yield ``(x, y, w)`` batches with ``x`` C-contiguous in the model's dtype, ``y`` in the form the
loss wants, and ``w`` the per-sample weights (or None).
"""
import numpy as np


def is_batch_source(obj):
    """True for objects that follow the batch-source protocol above."""
    return hasattr(obj, "iter_batches") and hasattr(obj, "__len__") and hasattr(obj, "element_shape")


class ArrayBatches:
    """Batches cut from validated arrays. ``shuffle`` permutes the sample order every pass."""

    def __init__(self, x, y, sample_weight, dtype):
        self.x, self.y, self.sample_weight, self.dtype = x, y, sample_weight, dtype
        self.class_weights = None  # per-class table, set by fit's class_weight

    def __len__(self):
        return self.x.shape[0]

    def labels(self, model):
        return model._class_labels(self.y)

    def batches(self, batch_size, shuffle=False, rng=None):
        n = len(self)
        order = rng.permutation(n) if shuffle else None
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            index = order[lo:hi] if shuffle else slice(lo, hi)
            xb = np.ascontiguousarray(self.x[index], dtype=self.dtype)
            yb = None if self.y is None else self.y[index]
            wb = None if self.sample_weight is None else self.sample_weight[index]
            yield xb, yb, wb


class SourceBatches:
    """Batches from a batch source; each batch is checked (shape, finiteness, labels) as it comes."""

    def __init__(self, source, model, where, need_targets=True):
        self.source, self.model, self.where, self.need_targets = source, model, where, need_targets
        self.class_weights = None

    def __len__(self):
        return len(self.source)

    def labels(self, model):
        labels = getattr(self.source, "labels", None)
        if labels is None:
            raise ValueError(f"{self.where}: class_weight='balanced' needs the source's `labels`; this batch "
                             f"source has none, so pass a dict {{class_index: weight}} instead")
        return np.asarray(labels, dtype=np.int64).reshape(-1)

    def batches(self, batch_size, shuffle=False, rng=None):
        seed = int(rng.integers(0, 2**63)) if (shuffle and rng is not None) else None
        model = self.model
        for xb, lb in self.source.iter_batches(batch_size=batch_size, shuffle=shuffle, seed=seed):
            xb = model._check_x(xb, self.where, "a batch from the source")
            xb = np.ascontiguousarray(xb, dtype=model.dtype)
            if not self.need_targets:
                yield xb, None, None
                continue
            labels = np.asarray(lb).reshape(-1)
            yb = model._check_y(model._targets_from_labels(labels, self.where), xb.shape[0], self.where,
                                "the source's labels")
            wb = None if self.class_weights is None else self.class_weights[labels.astype(np.int64)]
            yield xb, yb, wb
