"""``python -m lckd``: the same as the ``lckd`` command."""

from .cli import console_main

console_main()
