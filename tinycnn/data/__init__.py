"""Floor 3: data. Today: the built-in synthetic "tissue" dataset used by the examples and tests."""
from .synthetic import make_lesion_images

__all__ = ["make_lesion_images"]
