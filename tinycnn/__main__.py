"""``python -m tinycnn ...``: the same as the ``tinycnn`` command."""
import sys

from .cli import main

sys.exit(main())
