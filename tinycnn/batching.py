"""Data adapters: how ``fit``, ``evaluate`` and ``predict`` walk over their data, batch by batch.

Two kinds of data are accepted:

* arrays: one array per model input (``xs``), targets ``y`` and per-sample weights, validated once
  by the model at its entry point;
* a *batch source*: any object with ``len(source)`` (number of samples), ``source.element_shape``
  (per-sample shape, e.g. ``(64, 64, 3)``), ``source.num_classes`` and
  ``source.iter_batches(batch_size, shuffle, seed)`` yielding ``(x_batch, labels_batch)`` with
  integer class labels. ``tinycnn.data.image_folder`` returns one; it reads images from disk a batch
  at a time, so a folder larger than memory still trains. Optional: ``source.labels`` (all labels,
  for ``class_weight='balanced'``); ``source.class_names`` and ``source.with_class_names(names)``
  (the same samples labelled in the order of ``names``: ``fit``/``evaluate`` use it to match a
  folder's subfolders to the model's classes by name).

Both adapters yield ``(xs, y, w)``: ``xs`` a list of C-contiguous arrays in the model's dtype (one
per input), ``y`` the targets in the form the loss wants, ``w`` the per-sample weights or None.
Class weights work the same way for both: a table indexed by each sample's class label, multiplied
into the sample weights batch by batch. The adapters know no model: what a batch from a source must
look like is checked by a function the model hands over.
"""
import numpy as np


def is_batch_source(obj):
    """True for objects that follow the batch-source protocol above."""
    return hasattr(obj, "iter_batches") and hasattr(obj, "__len__") and hasattr(obj, "element_shape")


class _Adapter:
    #: Per-class weight table (``class_weight`` of ``fit``), or None.
    class_weights = None

    def _weights(self, sample_weight, labels):
        if self.class_weights is None:
            return sample_weight
        per_class = self.class_weights[labels]
        return per_class if sample_weight is None else sample_weight * per_class


class ArrayAdapter(_Adapter):
    """Batches cut from validated arrays. ``labels`` (integer class per sample) serve the class
    weights; ``shuffle`` permutes the sample order every pass."""

    def __init__(self, xs, y, sample_weight, dtype, labels=None):
        self.xs, self.y, self.sample_weight, self.dtype, self.labels = list(xs), y, sample_weight, dtype, labels

    def __len__(self):
        return self.xs[0].shape[0]

    def split(self, cut):
        """Two adapters: samples ``[:cut]`` and ``[cut:]`` (``validation_split`` takes the last part)."""
        def part(index):
            pick = (lambda a: None if a is None else a[index])
            return ArrayAdapter([x[index] for x in self.xs], pick(self.y), pick(self.sample_weight), self.dtype,
                                pick(self.labels))
        return part(slice(None, cut)), part(slice(cut, None))

    def batches(self, batch_size, shuffle=False, rng=None):
        n = len(self)
        order = rng.permutation(n) if shuffle else None
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            index = order[lo:hi] if shuffle else slice(lo, hi)
            xs = [np.ascontiguousarray(x[index], dtype=self.dtype) for x in self.xs]
            yb = None if self.y is None else self.y[index]
            wb = None if self.sample_weight is None else self.sample_weight[index]
            if self.class_weights is not None:
                wb = self._weights(wb, self.labels[index])
            yield xs, yb, wb


class SourceAdapter(_Adapter):
    """Batches from a batch source. ``prepare(x, labels)`` (from the model) checks each batch as it
    comes and returns ``(x, y)`` ready for the model, ``y`` None when no targets are needed."""

    def __init__(self, source, prepare, where):
        self.source, self.prepare, self.where = source, prepare, where

    def __len__(self):
        return len(self.source)

    @property
    def labels(self):
        labels = getattr(self.source, "labels", None)
        if labels is None:
            raise ValueError(f"{self.where}: class_weight='balanced' needs the source's `labels`; this batch "
                             f"source has none, so pass a dict {{class_index: weight}} instead")
        return np.asarray(labels, dtype=np.int64).reshape(-1)

    def batches(self, batch_size, shuffle=False, rng=None):
        seed = int(rng.integers(0, 2**63)) if (shuffle and rng is not None) else None
        for xb, lb in self.source.iter_batches(batch_size=batch_size, shuffle=shuffle, seed=seed):
            xb, yb = self.prepare(xb, lb)
            wb = None
            if self.class_weights is not None:
                wb = self._weights(None, np.asarray(lb).reshape(-1).astype(np.int64))
            yield [xb], yb, wb
