"""Threading arrangement, decided once at import time.

The convolution products run in OpenBLAS's threads and everything around them in Numba's
``prange`` loops. Numba's OpenMP layer keeps its workers spinning after a parallel loop ends, and
those spinning workers steal the cores from the very next BLAS call (measured on a 2-core machine:
chunked im2col + GEMM ran 3-8x slower). The ``workqueue`` layer parks its workers instead, so the two
pools take turns. We therefore pick ``workqueue`` unless the user chose a layer explicitly with the
``NUMBA_THREADING_LAYER`` environment variable.

This module must be imported before any parallel kernel first runs; ``tinycnn/__init__.py`` does so.
"""
import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
