"""Outputs that would replace a user's file are refused before any work starts.

An output may reach an input through another spelling (``d/./t1.nii.gz``, ``d/../d/t1.nii.gz``), a
symbolic link or a hard link; it is compared with every input, every file of the case folder (its
label map included) and the model file by resolved path, and by device and inode where it exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Optional

from .errors import OutputError
from .io import PathLike, check_writable
from .sequences import SEQUENCE_TITLES


def protected_files(inputs: Mapping[str, PathLike], case_folder: Optional[PathLike] = None,
                    model: Optional[PathLike] = None) -> Dict[str, str]:
    """``{resolved path: what it is}`` for the files an output must never replace."""
    protected: Dict[str, str] = {}

    def add(path: Path, what: str) -> None:
        protected.setdefault(os.path.realpath(path), what)

    for name, path in inputs.items():
        path = Path(path)
        title = SEQUENCE_TITLES.get(name, name)
        if path.is_dir():  # a DICOM series folder: each of its files
            for child in path.iterdir():
                add(child, f"a file of the {title} DICOM series folder {path}")
        add(path, f"the {title} input")
    if case_folder is not None and Path(case_folder).is_dir():
        for child in Path(case_folder).iterdir():
            if child.is_file():
                add(child, f"a file of the case folder {case_folder}")
    if model is not None:
        add(Path(model), "the model file")
    return protected


def check_output(output: PathLike, protected: Mapping[str, str]) -> None:
    """Refuse ``output`` if it is one of the ``protected`` files, or if it cannot be created."""
    output = Path(output)
    what = protected.get(os.path.realpath(output))
    if what is None and output.exists():
        what = next((description for path, description in protected.items()
                     if os.path.exists(path) and os.path.samefile(output, path)), None)
    if what is not None:
        raise OutputError(f"{output}: is {what}; it would be overwritten, give another output name")
    check_writable(output)
