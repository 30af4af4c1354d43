"""A folder of image files, one subfolder per class, read from disk a batch at a time.

    data/
        benign/      img001.png  img002.jpg  ...
        malignant/   scan_17.bmp  ...

``image_folder('data', image_size=(64, 64))`` scans the folder once: class names are the sorted
subfolder names (label = index), files are found recursively inside each class folder, and every
file is opened with Pillow (so any format Pillow reads works, whatever its extension). A file that
cannot be read as an image (not an image, truncated, empty, a symlink loop, a FIFO, a header
declaring more than 50 megapixels: see ``_imaging.py``) or a folder that cannot be listed is skipped
with a warning naming it, and listed in ``source.skipped``. Hidden files and folders (names starting
with '.') are ignored. Subfolders named like data splits (``train/``, ``valid/``, ``test/``) are
refused as classes.

The returned :class:`ImageFolder` is a *batch source*: ``model.fit(source, epochs=...)`` reads only one
batch of images at a time, so the folder may be larger than memory. Small folders can also be loaded
whole with ``x, y = source.load()``.
"""
import copy
import os
import warnings

import numpy as np

from .. import rng
from ._imaging import (COLOR_MODES, INTERPOLATIONS, check_choice, check_image_size, image_problem, is_int,
                       listing_problem, read_image)

#: At most this many skipped files are named in a warning; ``source.skipped`` lists them all.
_NAMED_IN_WARNING = 10

#: Subfolder names that mean a data split, not a class: refused as classes (see ``_find_classes``).
SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")


def _visible(name):
    return not name.startswith(".")


def _check_bool(value, argument, where):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: invalid value for argument `{argument}`: expected True or False, "
                         f"received {value!r}")
    return bool(value)


def _check_seed(seed, where):
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ValueError(f"{where}: invalid value for argument `seed`: expected None or a non-negative int, "
                         f"received {seed!r}")
    return None if seed is None else int(seed)


def _check_batch_size(batch_size, where):
    if not is_int(batch_size) or batch_size <= 0:
        raise ValueError(f"{where}: invalid value for argument `batch_size`: expected a positive int, "
                         f"received {batch_size!r}")
    return int(batch_size)


def _refuse_split_folders(folders, path, where):
    """A folder holding ``train/`` and ``valid/`` is a data set's splits, not two classes named so.

    Taken as classes, every image would be labelled by the split it sits in and the model would
    learn (and report on) nothing real, so this is refused with the way to say what was meant.
    """
    splits = [f for f in folders if f.lower() in SPLIT_NAMES]
    if not splits:
        return
    train = next((f for f in folders if f.lower() in ("train", "training")), "train")
    val = next((f for f in folders if f.lower() in ("val", "valid", "validation")), "valid")
    raise ValueError(f"{where}: subfolder(s) {splits} are named like data splits, not classes; point at one split "
                     f"at a time, whose subfolders are the classes: image_folder('{os.path.join(path, train)}') "
                     f"for fit and image_folder('{os.path.join(path, val)}') as validation_data (on the command "
                     f"line: --data {os.path.join(path, train)} --val-data {os.path.join(path, val)}). To use "
                     f"such folders as classes after all, pass class_names={splits!r}")


def _match_class_names(folders, class_names, class_map, where):
    """For each subfolder, the index of its class in ``class_names``; or ValueError listing both sets.

    A subfolder matches the class of the same name, ignoring case (an exact match wins when two
    names differ only in case); ``class_map`` {subfolder: class name} overrides the name of the
    subfolders it lists (its keys and values are matched the same way).
    """
    if (not isinstance(class_names, (list, tuple)) or len(class_names) < 2
            or not all(isinstance(n, str) for n in class_names) or len(set(class_names)) != len(class_names)):
        raise ValueError(f"{where}: invalid value for argument `class_names`: expected a list of at least two "
                         f"distinct str (the model's classes in label order), received {class_names!r}")
    if class_map is None:
        class_map = {}
    if not isinstance(class_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in class_map.items()):
        raise ValueError(f"{where}: invalid value for argument `class_map`: expected a dict {{subfolder: class "
                         f"name}} of str, received {class_map!r}")

    def find(name, names):
        if name in names:
            return names.index(name)
        folded = [k for k, n in enumerate(names) if n.casefold() == name.casefold()]
        return folded[0] if len(folded) == 1 else None

    mapped = {}
    for key, value in class_map.items():
        folder = find(key, folders)
        if folder is None:
            raise ValueError(f"{where}: `class_map` names subfolder {key!r}, but the subfolders are {folders}")
        if find(value, list(class_names)) is None:
            raise ValueError(f"{where}: `class_map` maps {key!r} to {value!r}, which is not one of the model's "
                             f"classes {list(class_names)}")
        mapped[folders[folder]] = value
    index = [find(mapped.get(f, f), list(class_names)) for f in folders]
    unmatched = [f for f, k in zip(folders, index) if k is None]
    if unmatched:
        as_dict = ", ".join(f"{f!r}: ..." for f in unmatched)
        raise ValueError(f"{where}: the subfolders {folders} do not match the model's classes {list(class_names)} "
                         f"(no class for {unmatched}); subfolders are matched to classes by name, ignoring case. "
                         f"Rename the folders, or map them: class_map={{{as_dict}}} (on the command line: "
                         f"--class-map {','.join(f + '=CLASS' for f in unmatched)})")
    for k in set(index):
        twice = [f for f, j in zip(folders, index) if j == k]
        if len(twice) > 1:
            raise ValueError(f"{where}: the subfolders {twice} all match the model's class {class_names[k]!r}; each "
                             f"class may come from one subfolder only")
    return index


class ImageFolder:
    """Images in one subfolder per class, streamed from disk; made by :func:`image_folder`.

    The batch-source protocol that ``Sequential.fit``/``evaluate``/``predict`` accept:
    ``len(source)`` (number of images), ``source.num_classes``, ``source.element_shape``
    ``(H, W, C)`` and ``source.iter_batches(batch_size, shuffle, seed)``.

    Attributes
    ----------
    path : str
        The folder.
    class_names : list of str
        Class ``k`` is ``class_names[k]``.
    class_folders : list of str or None
        The subfolder class ``k``'s images come from: its own name, unless :meth:`with_class_names`
        matched the folders to a model's classes (None for a class with no subfolder).
    file_paths : list of str
        Every readable image, class by class, each class's files in sorted order.
    labels : ndarray (N,) int64
        ``labels[i]`` is the class of ``file_paths[i]``.
    num_classes : int
    element_shape : (int, int, int)
        ``(height, width, channels)`` of every image it yields.
    class_counts : ndarray (num_classes,) int64
        Images per class.
    skipped : list of (str, str)
        ``(path, reason)`` for each file that cannot be read as an image (or folder that cannot be listed).
    batch_size, shuffle, seed
        Defaults for :meth:`iter_batches`.
    """

    def __init__(self, path, image_size=(64, 64), color_mode="rgb", batch_size=32, shuffle=False, seed=None,
                 class_names=None, interpolation="bilinear", verify=True):
        path = os.fspath(path)
        where = f"image_folder('{path}')"
        self.path = path
        self.image_size = check_image_size(image_size, where)
        self.color_mode = check_choice(color_mode, COLOR_MODES, "color_mode", where)
        self.interpolation = check_choice(interpolation, INTERPOLATIONS, "interpolation", where)
        self.batch_size = _check_batch_size(batch_size, where)
        self.shuffle = _check_bool(shuffle, "shuffle", where)
        self.seed = _check_seed(seed, where)
        self.verify = _check_bool(verify, "verify", where)
        self.subset = None
        self._shuffle_rng = rng.generator(self.seed)
        self._where = where
        self.class_names = self._find_classes(class_names)
        self.class_folders = list(self.class_names)
        self.file_paths, self.labels, self.skipped = self._scan()

    # --- scanning ---------------------------------------------------------------------------------

    def _find_classes(self, class_names):
        where, path = self._where, self.path
        if not os.path.exists(path):
            raise FileNotFoundError(f"{where}: the folder does not exist")
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{where}: this is a file, not a folder; expected a folder with one "
                                     f"subfolder of images per class")
        entries = sorted(e for e in os.listdir(path) if _visible(e))
        folders = [e for e in entries if os.path.isdir(os.path.join(path, e))]
        if class_names is not None:
            if (not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names)
                    or len(set(class_names)) != len(class_names)):
                raise ValueError(f"{where}: invalid value for argument `class_names`: expected a list of distinct "
                                 f"subfolder names, received {class_names!r}")
            missing = [n for n in class_names if n not in folders]
            if missing:
                raise ValueError(f"{where}: `class_names` {missing} are not subfolders of the folder "
                                 f"(its subfolders: {folders})")
            folders = list(class_names)
        else:
            _refuse_split_folders(folders, path, where)
        if not folders:
            files = [e for e in entries if os.path.isfile(os.path.join(path, e))]
            found = f"only {len(files)} file(s) directly in it" if files else "it is empty"
            raise ValueError(f"{where}: no class subfolders ({found}); put each class's images in a subfolder "
                             f"named after the class, e.g. {path}/benign/, {path}/malignant/")
        if len(folders) < 2:
            raise ValueError(f"{where}: only one class subfolder ('{folders[0]}'); a classifier needs at least two "
                             f"classes, one subfolder each")
        return folders

    def _scan(self):
        """Walk every class folder; keep the files Pillow reads, report the others."""
        file_paths, labels, skipped = [], [], []
        for label, name in enumerate(self.class_names):
            class_dir = os.path.join(self.path, name)
            found = 0
            class_skipped = []
            def unlisted(error, into=class_skipped):  # os.walk would pass over an unreadable folder silently
                into.append((error.filename, listing_problem(error)))

            for root, dirs, files in os.walk(class_dir, onerror=unlisted):
                dirs[:] = sorted(d for d in dirs if _visible(d))
                for file in sorted(f for f in files if _visible(f)):
                    file_path = os.path.join(root, file)
                    reason = image_problem(file_path, self.verify)
                    if reason is None:
                        file_paths.append(file_path)
                        labels.append(label)
                        found += 1
                    else:
                        class_skipped.append((file_path, reason))
            skipped += class_skipped
            if found == 0:
                detail = (f"; {len(class_skipped)} file(s) could not be read, e.g. {class_skipped[0][0]} "
                          f"({class_skipped[0][1]})" if class_skipped else "; it is empty")
                raise ValueError(f"{self._where}: class folder '{class_dir}' holds no readable images{detail}")
        if skipped:
            named = "; ".join(f"{p} ({reason})" for p, reason in skipped[:_NAMED_IN_WARNING])
            more = f"; and {len(skipped) - _NAMED_IN_WARNING} more" if len(skipped) > _NAMED_IN_WARNING else ""
            warnings.warn(f"{self._where}: skipped {len(skipped)} file(s) that cannot be read as images: {named}{more} "
                          f"(all are listed in .skipped)", stacklevel=4)
        return file_paths, np.asarray(labels, dtype=np.int64), skipped

    # --- what it holds ----------------------------------------------------------------------------

    def __len__(self):
        return len(self.file_paths)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def element_shape(self):
        return self.image_size + (COLOR_MODES[self.color_mode][1],)

    @property
    def class_counts(self):
        return np.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self):
        h, w, c = self.element_shape
        names = self.class_names if self.num_classes <= 6 else self.class_names[:5] + ["..."]
        subset = f" ({self.subset} subset)" if self.subset else ""
        return (f"<ImageFolder '{self.path}'{subset}: {len(self)} images, {self.num_classes} classes {names}, "
                f"{h}x{w}x{c}, {len(self.skipped)} skipped>")

    def summary(self):
        """A few lines describing the source: classes with their counts, the image shape, skipped files.

        Returns
        -------
        str
        """
        h, w, c = self.element_shape
        lines = [f"ImageFolder '{self.path}'" + (f" ({self.subset} subset)" if self.subset else ""),
                 f"  images:   {len(self)}, resized to {h}x{w} ({self.interpolation}), color_mode "
                 f"'{self.color_mode}' -> element_shape {self.element_shape}",
                 f"  classes:  {self.num_classes}"]
        for k, (name, folder, count) in enumerate(zip(self.class_names, self.class_folders, self.class_counts)):
            origin = "" if folder == name else ("  (no subfolder)" if folder is None else f"  (subfolder '{folder}')")
            lines.append(f"    {k}: {name:<20s} {count} images{origin}")
        lines.append(f"  skipped:  {len(self.skipped)} file(s) that cannot be read as images")
        for path, reason in self.skipped:
            lines.append(f"    {path}: {reason}")
        return "\n".join(lines)

    # --- reading ----------------------------------------------------------------------------------

    def read(self, index):
        """Image ``index`` (of ``file_paths``) as float32 ``(H, W, C)`` in [0, 1]."""
        return self._read(index)

    def _read(self, index):
        path = self.file_paths[index]
        try:
            return read_image(path, self.image_size, self.color_mode, self.interpolation)
        except OSError as e:
            checked = ("it decoded when the folder was scanned" if self.verify
                       else "the scan (verify=False) only read its header")
            raise OSError(f"{self._where}: cannot read {e}; {checked}. Has it changed since? Call image_folder "
                          f"again to rescan.") from None

    def iter_batches(self, batch_size=None, shuffle=None, seed=None):
        """Read the images a batch at a time.

        Parameters
        ----------
        batch_size : int, optional
            Default: the source's ``batch_size``. The last batch may be smaller.
        shuffle : bool, optional
            Default: the source's ``shuffle``. Without shuffling, batches follow ``file_paths``.
        seed : int, optional
            Seeds this pass's order. Without it, each pass draws a new order from the source's own
            generator (seeded by ``image_folder(..., seed=)`` or ``tinycnn.set_seed``).

        Yields
        ------
        x : ndarray (B, H, W, C) float32 in [0, 1]
        y : ndarray (B,) int64
        """
        batch_size = self.batch_size if batch_size is None else _check_batch_size(batch_size, "iter_batches")
        shuffle = self.shuffle if shuffle is None else _check_bool(shuffle, "shuffle", "iter_batches")
        seed = _check_seed(seed, "iter_batches")
        if shuffle:
            order = (np.random.default_rng(seed) if seed is not None else self._shuffle_rng).permutation(len(self))
        else:
            order = np.arange(len(self))
        return self._batches(order, batch_size)

    def _batches(self, order, batch_size):
        for lo in range(0, len(order), batch_size):
            index = order[lo:lo + batch_size]
            x = np.empty((len(index),) + self.element_shape, dtype=np.float32)
            for k, i in enumerate(index):
                x[k] = self._read(i)
            yield x, self.labels[index]

    def load(self):
        """Every image in memory, in ``file_paths`` order (for folders that fit in memory).

        Returns
        -------
        x : ndarray (N, H, W, C) float32 in [0, 1]
        y : ndarray (N,) int64
        """
        x = np.empty((len(self),) + self.element_shape, dtype=np.float32)
        for i in range(len(self)):
            x[i] = self._read(i)
        return x, self.labels.copy()

    def split(self, validation_fraction=0.2, seed=0, stratify=True):
        """Two sources over disjoint files, for training and validation (nothing is read).

        Parameters
        ----------
        validation_fraction : float in (0, 1)
        seed : int
        stratify : bool
            Keep the class proportions in both parts (see :func:`tinycnn.data.train_val_split`).

        Returns
        -------
        train, val : ImageFolder
        """
        from .preprocessing import train_val_split

        (train_index, _), (val_index, _) = train_val_split(np.arange(len(self)), self.labels, validation_fraction,
                                                           seed, stratify)
        return self._subset(np.sort(train_index), "training"), self._subset(np.sort(val_index), "validation")

    def sample(self, n, seed=0):
        """A source over ``n`` files drawn at random without replacement (all of them if ``n >= len``).

        For what needs a representative few hundred images rather than the whole folder, e.g. the
        ``RecalibrateBatchNorm`` callback. Nothing is read.
        """
        if not is_int(n) or n < 1:
            raise ValueError(f"{self._where}.sample: invalid value for argument `n`: expected a positive int, "
                             f"received {n!r}")
        if n >= len(self):
            return self
        index = np.sort(np.random.default_rng(_check_seed(seed, "sample")).choice(len(self), int(n), replace=False))
        return self._subset(index, f"{n} sampled" if self.subset is None else f"{self.subset}, {n} sampled")

    def with_class_names(self, class_names, class_map=None):
        """The same images, labelled in the order of ``class_names``: a trained model's classes.

        A folder's labels are its sorted subfolder names; a model's are the order it was trained in.
        Scoring a model on a folder whose subfolders sort differently (``healthy/``, ``parasitized/``
        against a model of ``['Parasitized', 'Uninfected']``) would swap every label and report a
        confidently wrong accuracy, so ``fit``/``evaluate`` on a model that knows its classes should
        go through this method. Subfolders match classes by name, ignoring case; ``class_map`` maps
        the ones named otherwise. Every subfolder must match a class. A class may have no subfolder
        (a test folder without one of the classes still scores the others correctly); its count is 0.

        Parameters
        ----------
        class_names : list of str
            The classes in label order, e.g. ``model.metadata['class_names']``.
        class_map : dict {str: str}, optional
            ``{subfolder: class name}``, e.g. ``{'healthy': 'Uninfected'}``.

        Returns
        -------
        ImageFolder
            Same files (grouped class by class in the new order), ``class_names`` as given,
            ``labels`` remapped, ``class_folders`` naming where each class came from. Nothing is read.

        Raises
        ------
        ValueError
            A subfolder that matches no class (the message lists both sets), two subfolders matching
            one class, a ``class_map`` naming an unknown subfolder or class, bad arguments.
        """
        where = f"{self._where}.with_class_names"
        index = _match_class_names(self.class_names, class_names, class_map, where)
        folders = [None] * len(class_names)
        for folder, k in zip(self.class_folders, index):
            folders[k] = folder
        labels = np.asarray(index, dtype=np.int64)[self.labels]
        order = np.argsort(labels, kind="stable")
        part = self._subset(order, self.subset)
        part.labels = labels[order]
        part.class_names, part.class_folders = list(class_names), folders
        return part

    def _subset(self, index, name):
        part = copy.copy(self)
        part.file_paths = [self.file_paths[i] for i in index]
        part.labels = self.labels[index]
        part.subset = name
        part._shuffle_rng = np.random.default_rng(self._shuffle_rng.integers(0, 2**63))
        return part


def image_folder(path, image_size=(64, 64), color_mode="rgb", batch_size=32, shuffle=False, seed=None,
                 class_names=None, interpolation="bilinear", verify=True):
    """Scan a folder of images with one subfolder per class (Keras's ``image_dataset_from_directory``).

    Parameters
    ----------
    path : str or os.PathLike
        The folder; its (non-hidden) subfolders are the classes, in sorted order.
    image_size : (int, int) or int, default (64, 64)
        ``(height, width)`` every image is resized to (Pillow, after colour conversion).
    color_mode : {'rgb', 'grayscale', 'rgba'}, default 'rgb'
        3, 1 or 4 channels, whatever the files hold.
    batch_size : int, default 32
        Default batch size of :meth:`ImageFolder.iter_batches`.
    shuffle : bool, default False
        Default for :meth:`ImageFolder.iter_batches` (``fit`` passes its own).
    seed : int, optional
        Seeds the shuffling order.
    class_names : list of str, optional
        Use only these subfolders, with these labels (index in the list).
    interpolation : {'bilinear', 'nearest', 'bicubic', 'lanczos', 'box', 'hamming'}, default 'bilinear'
        Pillow's resampling filter.
    verify : bool, default True
        Decode every image once while scanning, so that truncated or corrupt files are found (and
        skipped) up front. With False only each file's header is read: a faster scan, but a damaged
        image then raises an error when a batch reaches it.

    Returns
    -------
    ImageFolder
        A batch source for ``model.fit``/``evaluate``/``predict``, with ``class_names``,
        ``file_paths``, ``labels``, ``skipped``, ``load()``, ``split()`` and ``summary()``.

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        The folder does not exist, or is a file.
    ValueError
        No class subfolders, only one, subfolders named like data splits (``train``, ``valid``,
        ``test``...; pass ``class_names`` to use them as classes all the same), a class folder without
        a readable image, a bad argument. The message names the folder and the problem.

    Warns
    -----
    UserWarning
        Naming the files that were skipped because they cannot be read as images.
    """
    return ImageFolder(path, image_size=image_size, color_mode=color_mode, batch_size=batch_size, shuffle=shuffle,
                       seed=seed, class_names=class_names, interpolation=interpolation, verify=verify)
