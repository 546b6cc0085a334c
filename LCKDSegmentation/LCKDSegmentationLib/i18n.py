"""Translation in the file that owns the text.

``slicer.i18n.tr`` takes its context from the file that calls it, and Slicer's string extraction
reads the literal ``_("...")`` calls of each file with that file's context. So each file of this
package that shows text makes its own ``_`` with ``_ = translator(__file__)`` and passes only
literal strings to it. Outside Slicer (no ``slicer.i18n``), text is returned unchanged.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Callable

_PLACEHOLDER = re.compile(r"(?<!\{)\{([^{}]+)\}(?!\})")


def _slicerI18n():
    """``slicer.i18n`` inside Slicer; None elsewhere (``slicer`` is never imported from here just for this)."""
    if "slicer.i18n" in sys.modules or "slicer" in sys.modules:
        try:
            return importlib.import_module("slicer.i18n")
        except ImportError:
            return None
    return None


def translator(sourceFile: str) -> Callable[[str], str]:
    """The ``_`` function of ``sourceFile``: Slicer's translation in that file's context."""

    def translate(text: str) -> str:
        i18n = _slicerI18n()
        if i18n is None:
            return text
        translated = i18n.translate(i18n.getContext(sourceFile), text)
        # a translation that lost or renamed a placeholder would fail in format(): keep the original
        if set(_PLACEHOLDER.findall(text)) != set(_PLACEHOLDER.findall(translated)):
            return text
        return translated

    return translate
