"""`make demo`: make a phantom case, segment it with all four sequences and with a missing subset,
print Dice per region and seconds, and write an overlay picture.

Run from the repository root with the project's virtual environment (``make demo`` does this).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from lckd.cli import default_model
from lckd.errors import LCKDError
from lckd.labels import regions_from_labels
from lckd.segmenter import Segmenter
from training.evaluation import REGION_INDEX, REPORTED_REGIONS, dice

OUTPUT = Path("demo_output")
SUBSETS = (("flair", "t1", "t1ce", "t2"), ("flair", "t2"), ("t1ce",))


def overlay(path: Path, image: np.ndarray, truth: np.ndarray, predictions: dict) -> None:
    """Axial slice through the tumour: the image, then truth and each prediction as contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
    panels = [("ground truth", truth)] + list(predictions.items())
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    colours = {1: "tab:red", 2: "tab:green", 4: "gold"}
    for axis, (title, labels) in zip(axes, panels):
        axis.imshow(np.rot90(image[:, :, z]), cmap="gray")
        for value, colour in colours.items():
            mask = np.rot90(labels[:, :, z] == value)
            if mask.any():
                axis.contour(mask, levels=[0.5], colors=colour, linewidths=1.2)
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    figure.suptitle("red: necrosis, green: oedema, yellow: enhancing tumour (synthetic phantom, demo model)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> int:
    from lckd.phantom.generator import write_cases

    try:
        model = default_model()
    except LCKDError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 2
    OUTPUT.mkdir(exist_ok=True)
    clock = time.perf_counter()
    case_dir = write_cases(OUTPUT / "phantom", n_cases=1, seed=2026)[0]
    print(f"phantom case written to {case_dir} in {time.perf_counter() - clock:.1f} s")
    from lckd.cases import read_case_folder

    case = read_case_folder(case_dir)
    truth = np.asarray(nib.load(str(case.segmentation)).dataobj).astype(np.uint8)
    segmenter = Segmenter(model, device="auto")
    card = segmenter.card
    print(f"model: {card.name} ({card.method}, preset {card.preset}) on {segmenter.device}")
    predictions = {}
    print(f"{'sequences':<22}" + "".join(f"{r:>8}" for r in REPORTED_REGIONS) + f"{'seconds':>10}")
    for subset in SUBSETS:
        output = OUTPUT / f"segmentation_{'+'.join(subset)}.nii.gz"
        result = segmenter.segment_to_file({s: case.sequences[s] for s in subset}, output)
        truth_regions, found = regions_from_labels(truth), regions_from_labels(result.labels)
        scores = [dice(found[i], truth_regions[i]) for i in (REGION_INDEX[r] for r in REPORTED_REGIONS)]
        print(f"{'+'.join(subset):<22}" + "".join(f"{s:8.3f}" for s in scores)
              + f"{sum(result.seconds.values()):10.1f}")
        predictions["+".join(subset)] = result.labels
    t1ce = np.asarray(nib.load(str(case.sequences["t1ce"])).dataobj)
    overlay(OUTPUT / "overlay.png", t1ce, truth, predictions)
    print(f"overlay picture: {OUTPUT / 'overlay.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
