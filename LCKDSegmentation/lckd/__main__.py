"""``python -m lckd``: the same as the ``lckd`` command."""

import sys

from .cli import main

sys.exit(main())
