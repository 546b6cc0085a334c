"""Translation in the file that owns the text.

``slicer.i18n.tr`` takes its context from the file that calls it, and Slicer's string extraction
reads the literal ``_("...")`` calls of each file with that file's context. So each file of this
package that shows text makes its own ``_`` with ``_ = translator(__file__)`` and passes only
literal strings to it. Outside Slicer (no ``slicer.i18n``), text is returned unchanged.
"""

from __future__ import annotations

import re
from typing import Callable

_PLACEHOLDER = re.compile(r"(?<!\{)\{([^{}]+)\}(?!\})")


def translator(sourceFile: str) -> Callable[[str], str]:
    """The ``_`` function of ``sourceFile``: Slicer's translation in that file's context."""

    def translate(text: str) -> str:
        try:
            from slicer.i18n import getContext
            from slicer.i18n import translate as slicerTranslate
        except ImportError:
            return text
        translated = slicerTranslate(getContext(sourceFile), text)
        # a translation that lost or renamed a placeholder would fail in format(): keep the original
        if set(_PLACEHOLDER.findall(text)) != set(_PLACEHOLDER.findall(translated)):
            return text
        return translated

    return translate
