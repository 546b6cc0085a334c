"""The optional packages the DICOM routes need, checked before any work with one clear line."""

from __future__ import annotations

import importlib.util

from ..errors import LCKDError

#: import name -> distribution name
PACKAGES = {"pydicom": "pydicom", "highdicom": "highdicom", "dicomweb_client": "dicomweb-client"}
PIP_COMMAND = "pip install 'lckd-segmentation[dicom]'"


def require(*modules: str, what: str = "DICOM studies and DICOM SEG output") -> None:
    """Raise :class:`LCKDError` naming the missing packages and the pip command, if any is missing."""
    missing = [PACKAGES[name] for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise LCKDError(f"{what} need {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                        f"installed: {PIP_COMMAND}")
