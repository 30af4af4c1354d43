"""What every lesson shares: quick mode, where pictures go, and how a figure is saved.

Quick mode (``TINYCNN_QUICK=1`` in the environment, or ``--quick`` on the command line) shrinks
sizes and epochs so that ``tests/test_course.py`` can run every lesson in seconds. Pictures go to
``examples/course/output/`` unless ``TINYCNN_COURSE_OUT`` names another folder (the test uses a
temporary one).
"""
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a plain script: draw into files, never open a window
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

QUICK = os.environ.get("TINYCNN_QUICK", "") not in ("", "0") or "--quick" in sys.argv
OUT = Path(os.environ.get("TINYCNN_COURSE_OUT") or Path(__file__).resolve().parent / "output")


def pick(full, quick):
    """``full`` normally, ``quick`` in quick mode."""
    return quick if QUICK else full


def save(fig, name):
    """Save ``fig`` as ``OUT/name`` (PNG) and say where; returns the path."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    if "ipykernel" not in sys.modules:
        plt.close(fig)
    print(f"picture: {path}")
    return path
