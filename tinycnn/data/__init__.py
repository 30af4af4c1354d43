"""Floor 3: data. Image sets from ``.npz`` files and from folders of image files, splitting,
per-channel standardisation, and two built-in sets that need no download: synthetic "tissue" images
and scikit-learn's handwritten digits.

* :func:`load_npz`            MedMNIST-style ``.npz`` (train/val/test images and labels) -> :class:`NpzDataset`
* :func:`image_folder`        one subfolder per class, any format Pillow reads -> :class:`ImageFolder`, a
  batch source that ``model.fit`` reads a batch at a time
* :func:`train_val_split`     stratified split (scikit-learn)
* :class:`Normalizer`         per-channel mean/std fitted on training images, saved as plain JSON
* :func:`load_digits_images`  8x8 digits, 10 classes, 1797 images
* :func:`make_lesion_images`  the synthetic two-class set used by the examples and tests
"""
from .digits import load_digits_images
from .folder import ImageFolder, image_folder
from .npz import NpzDataset, load_npz
from .preprocessing import Normalizer, train_val_split
from .synthetic import make_lesion_images

__all__ = ["make_lesion_images", "load_npz", "NpzDataset", "image_folder", "ImageFolder", "train_val_split",
           "Normalizer", "load_digits_images"]
