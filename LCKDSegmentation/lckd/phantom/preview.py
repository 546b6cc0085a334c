"""A PNG mosaic of a phantom case: the four sequences and the labels through the tumour centre."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io import atomic_path
from ..sequences import SEQUENCE_TITLES, SEQUENCES

if TYPE_CHECKING:  # pragma: no cover
    from .generator import PhantomCase


def write_preview(case: PhantomCase, path: Path) -> Path:
    """Axial (top row) and coronal (bottom row) slices through the tumour centre, shown in
    neurological convention (the patient's right on the image's right, anterior / superior up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    x, y, z = case.centre_voxel
    label_colours = ListedColormap(["black", "tab:red", "tab:green", "black", "gold"])
    figure, axes = plt.subplots(2, 5, figsize=(15, 6.4))
    views = [lambda a: np.rot90(a[:, :, z]), lambda a: np.rot90(a[:, y, :])]
    for row, view in enumerate(views):
        for column, name in enumerate(SEQUENCES):
            axes[row, column].imshow(view(case.images[name]), cmap="gray")
            axes[row, column].set_title(SEQUENCE_TITLES[name] if row == 0 else "")
        axes[row, 4].imshow(view(case.labels), cmap=label_colours, vmin=0, vmax=4, interpolation="nearest")
        axes[row, 4].set_title("labels: necrosis, oedema, ET" if row == 0 else "")
        for axis in axes[row]:
            axis.axis("off")
    figure.suptitle(f"synthetic phantom, tumour centre voxel {case.centre_voxel}")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)
    return Path(path)
