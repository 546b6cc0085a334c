"""Checkpoints: written atomically (temporary file + rename), read without unpickling code.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``. A run killed at any moment (SIGKILL included) leaves either the
previous or the new ``last.pt``, never a partial one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from lckd.errors import LCKDError
from lckd.io import atomic_path

LAST = "last.pt"


def save_checkpoint(run_dir: Path, state: Dict[str, Any]) -> Path:
    path = run_dir / LAST
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    return path


def load_checkpoint(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The run's last checkpoint, or None when there is none yet."""
    path = run_dir / LAST
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file cannot come from an atomic write; say so plainly
        raise LCKDError(f"{path}: unreadable checkpoint ({error})") from None
