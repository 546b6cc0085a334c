"""`make demo`: segment a real case from ``../shared/data`` that the default model never saw in
training (a held-out BraTS 2018 case, else the clinical patient in BraTS space against its fusion
reference), else a phantom made on the spot, with all four sequences and with two missing-sequence
subsets; print Dice, HD95 and seconds, and write an overlay picture.

Run from the repository root with the project's virtual environment (``make demo`` does this).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import nibabel as nib
import numpy as np
from real_data import BRATS2018, CLINICAL_BRATS_SPACE, CLINICAL_REFERENCE

from lckd.cli import default_model
from lckd.errors import LCKDError
from lckd.labels import regions_from_labels
from lckd.segmenter import Segmenter
from training.evaluation import REGION_INDEX, REPORTED_REGIONS, dice, hd95

OUTPUT = Path("demo_output")
REAL_CASES = BRATS2018
SUBSETS = (("flair", "t1", "t1ce", "t2"), ("flair", "t2"), ("t1ce",))


def overlay(path: Path, image: np.ndarray, truth: np.ndarray, predictions: dict, title: str,
            truth_title: str = "ground truth") -> None:
    """Axial slice through the tumour: the image, then truth and each prediction as contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax((truth > 0).sum(axis=(0, 1))))
    panels = [(truth_title, truth)] + list(predictions.items())
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    colours = {1: "tab:red", 2: "tab:green", 4: "gold"}
    for axis, (panel, labels) in zip(axes, panels):
        axis.imshow(np.rot90(image[:, :, z]), cmap="gray")
        for value, colour in colours.items():
            mask = np.rot90(labels[:, :, z] == value)
            if mask.any():
                axis.contour(mask, levels=[0.5], colors=colour, linewidths=1.2)
        axis.set_title(panel, fontsize=10)
        axis.axis("off")
    figure.suptitle(f"red: necrosis, green: oedema, yellow: enhancing tumour ({title})")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


@dataclass
class DemoCase:
    """The scans to segment, their label map and what they are."""

    sequences: Dict[str, Path]
    labels: Path
    et_label: int
    what: str
    truth_title: str = "ground truth"


def demo_case(card) -> DemoCase:
    """A real case the model was not trained on (a held-out BraTS case, else the clinical patient in
    BraTS space), else any real BraTS case, else a new phantom."""
    from lckd.cases import read_case_folder
    from lckd.phantom.generator import write_cases

    if REAL_CASES.is_dir():
        held_out = [name for name in card.training.get("validation_cases") or [] if (REAL_CASES / name).is_dir()]
        if held_out:
            case = read_case_folder(REAL_CASES / held_out[0])
            return DemoCase(case.sequences, case.segmentation, case.et_label,
                            f"real BraTS 2018 case {held_out[0]}, held out from the model's training")
    if CLINICAL_BRATS_SPACE.is_dir():  # a model trained on every BraTS case: no model here saw this patient
        return DemoCase({name: CLINICAL_BRATS_SPACE / f"{name}.nii.gz" for name in SUBSETS[0]}, CLINICAL_REFERENCE, 4,
                        "patient TCGA-FG-6692 in BraTS space, never trained on",
                        "reference (fusion of 5 BraTS algorithms)")
    if REAL_CASES.is_dir():
        name = sorted(p.name for p in REAL_CASES.iterdir() if p.is_dir())[0]
        case = read_case_folder(REAL_CASES / name)
        trained = name in card.training.get("training_cases", [])
        seen = "a training case of the model" if trained else "may be a training case"
        return DemoCase(case.sequences, case.segmentation, case.et_label, f"real BraTS 2018 case {name}, {seen}")
    clock = time.perf_counter()
    case = read_case_folder(write_cases(OUTPUT / "phantom", n_cases=1, seed=2026)[0])
    print(f"phantom case written to {case.folder} in {time.perf_counter() - clock:.1f} s")
    return DemoCase(case.sequences, case.segmentation, case.et_label, "synthetic phantom")


def main() -> int:
    try:
        model = default_model()
    except LCKDError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 2
    OUTPUT.mkdir(exist_ok=True)
    segmenter = Segmenter(model, device="auto")
    card = segmenter.card
    case = demo_case(card)
    truth_image = nib.load(str(case.labels))
    truth = np.asarray(truth_image.dataobj).astype(np.uint8)
    spacing = truth_image.header.get_zooms()[:3]
    print(f"case: {case.what}")
    print(f"model: {card.name} ({card.method}, preset {card.preset}) on {segmenter.device}")
    predictions = {}
    print(f"{'sequences':<22}" + "".join(f"{'Dice ' + r:>9}" for r in REPORTED_REGIONS)
          + "".join(f"{'HD95 ' + r:>9}" for r in REPORTED_REGIONS) + f"{'seconds':>9}")
    truth_regions = regions_from_labels(truth, case.et_label)
    for subset in SUBSETS:
        output = OUTPUT / f"segmentation_{'+'.join(subset)}.nii.gz"
        result = segmenter.segment_to_file({s: case.sequences[s] for s in subset}, output)
        found = regions_from_labels(result.labels)
        channels = [REGION_INDEX[r] for r in REPORTED_REGIONS]
        scores = [dice(found[i], truth_regions[i]) for i in channels]
        distances = [hd95(found[i], truth_regions[i], spacing) for i in channels]
        print(f"{'+'.join(subset):<22}" + "".join(f"{s:9.3f}" for s in scores)
              + "".join(f"{d:9.1f}" for d in distances) + f"{sum(result.seconds.values()):9.1f}")
        predictions["+".join(subset)] = result.labels
    t1ce = np.asarray(nib.load(str(case.sequences["t1ce"])).dataobj)
    overlay(OUTPUT / "overlay.png", t1ce, truth, predictions, f"{case.what}; {card.name}", case.truth_title)
    print(f"overlay picture: {OUTPUT / 'overlay.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
