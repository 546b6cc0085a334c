"""`make demo`: show what the product does in a minute, honestly labelled.

* ``make demo CASE=DIR``: segment your own BraTS case folder with the default model (Dice and HD95
  when the folder has a label map, else the region volumes).
* With ``../shared/data`` beside the repository: a real case the default model never saw in training
  (a held-out BraTS 2018 case, else the clinical patient in BraTS space against its fusion reference).
* Otherwise (a fresh clone): a synthetic phantom made on the spot, segmented by the phantom-trained
  demo model, since the real-data default is trained on real scans and is not meant for phantoms.

Each case is segmented with all its sequences and with missing-sequence subsets; the demo prints
Dice, HD95 and seconds per subset and writes an overlay picture.
Run from the repository root with the project's virtual environment (``make demo`` does this).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
from real_data import BRATS2018, CLINICAL_BRATS_SPACE, CLINICAL_REFERENCE

from lckd.cli import default_model
from lckd.errors import LCKDError
from lckd.labels import regions_from_labels
from lckd.segmenter import Segmenter
from lckd.sequences import SEQUENCES
from LCKDSegmentationLib.modelCatalog import entryByName, loadCatalog, localPath
from training.evaluation import REGION_INDEX, REPORTED_REGIONS, dice, hd95

OUTPUT = Path("demo_output")
REAL_CASES = BRATS2018
SUBSETS = (("flair", "t1", "t1ce", "t2"), ("flair", "t2"), ("t1ce",))
#: The phantom model's subsets: it was trained for minutes and never learned T1ce alone (Dice 0.04-0.07
#: on its 8 validation phantoms), so its demo shows the missing sequences it handles
PHANTOM_SUBSETS = (("flair", "t1", "t1ce", "t2"), ("flair", "t1", "t2"), ("flair", "t2"))
PHANTOM_MODEL = "lckd-phantom-demo"
OWN_CASE_HINT = ("your own case: make demo CASE=path/to/case_folder (BraTS file names such as "
                 "<case>_flair.nii.gz ... <case>_t2.nii.gz; Dice is printed when <case>_seg.nii.gz is there)")


def overlay(path: Path, image: np.ndarray, truth: Optional[np.ndarray], predictions: dict, title: str,
            truth_title: str = "ground truth") -> None:
    """Axial slice through the tumour: the image, then the truth (if any) and each prediction as contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marked = truth if truth is not None else next(iter(predictions.values()))
    z = int(np.argmax((marked > 0).sum(axis=(0, 1))))
    panels = ([(truth_title, truth)] if truth is not None else []) + list(predictions.items())
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4), squeeze=False)
    colours = {1: "tab:red", 2: "tab:green", 3: "gold", 4: "gold"}
    for axis, (panel, labels) in zip(axes[0], panels):
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
    """The scans to segment, their label map (if any) and what they are."""

    sequences: Dict[str, Path]
    labels: Optional[Path]
    et_label: int
    what: str
    truth_title: str = "ground truth"
    subsets: Sequence[Tuple[str, ...]] = SUBSETS


def demo_case(card) -> DemoCase:
    """A real case the model was not trained on (a held-out BraTS case, else the clinical patient in
    BraTS space), else any real BraTS case (labelled as what it is for the model)."""
    from lckd.cases import read_case_folder

    held_out = [name for name in card.training.get("validation_cases") or [] if (REAL_CASES / name).is_dir()]
    if held_out:
        case = read_case_folder(REAL_CASES / held_out[0])
        return DemoCase(case.sequences, case.segmentation, case.et_label,
                        f"real BraTS 2018 case {held_out[0]}, held out from the model's training")
    if CLINICAL_BRATS_SPACE.is_dir():  # a model trained on every BraTS case: no model here saw this patient
        return DemoCase({name: CLINICAL_BRATS_SPACE / f"{name}.nii.gz" for name in SUBSETS[0]}, CLINICAL_REFERENCE, 4,
                        "patient TCGA-FG-6692 in BraTS space, never trained on",
                        "reference (fusion of 5 BraTS algorithms)")
    name = sorted(p.name for p in REAL_CASES.iterdir() if p.is_dir())[0]
    case = read_case_folder(REAL_CASES / name)
    trained = name in card.training.get("training_cases", [])
    seen = "a training case of the model" if trained else "may be a training case"
    return DemoCase(case.sequences, case.segmentation, case.et_label, f"real BraTS 2018 case {name}, {seen}")


def phantom_case() -> DemoCase:
    """A synthetic phantom written to ``demo_output/phantom`` (a new one each run, seed 2026)."""
    from lckd.cases import read_case_folder
    from lckd.phantom.generator import write_cases

    clock = time.perf_counter()
    case = read_case_folder(write_cases(OUTPUT / "phantom", n_cases=1, seed=2026)[0])
    print(f"phantom case written to {case.folder} in {time.perf_counter() - clock:.1f} s")
    return DemoCase(case.sequences, case.segmentation, case.et_label,
                    "synthetic phantom, segmented by the phantom-trained demo model", subsets=PHANTOM_SUBSETS)


def own_case(folder: Path) -> DemoCase:
    """The user's case folder (any BraTS naming; the label map is optional)."""
    from lckd.cases import read_case_folder

    case = read_case_folder(folder)
    return DemoCase(dict(case.sequences), case.segmentation, case.et_label, f"your case {case.name}")


def choose(case_folder: Optional[Path]) -> Tuple[Path, Optional[DemoCase]]:
    """The model file and, when it does not depend on the model's card, the case.

    A user's folder and the real data get the default model; a fresh clone without ``../shared/data``
    gets the phantom and the model trained on phantoms (the real-data default does not recognise them).
    """
    if case_folder is not None:
        return default_model(), own_case(case_folder)
    if REAL_CASES.is_dir():
        return default_model(), None
    entry = entryByName(loadCatalog(), PHANTOM_MODEL)
    model = localPath(entry) if entry is not None else None
    if model is None:
        raise LCKDError(f"the bundled {PHANTOM_MODEL} model is missing from LCKDSegmentation/Resources/Models")
    return model, phantom_case()


def subsets_of(case: DemoCase) -> List[Tuple[str, ...]]:
    """All the case's sequences first, then those of its missing-sequence subsets it can give."""
    have = tuple(name for name in SEQUENCES if name in case.sequences)
    return [have] + [subset for subset in case.subsets if subset != have and set(subset) <= set(have)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Segment a demo case with and without some of its sequences.")
    parser.add_argument("--case", type=Path, metavar="DIR", help="your own BraTS case folder (default model)")
    args = parser.parse_args(argv)
    try:
        model, case = choose(args.case)
        segmenter = Segmenter(model, device="auto")
        case = case or demo_case(segmenter.card)
    except LCKDError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 2
    OUTPUT.mkdir(exist_ok=True)
    card = segmenter.card
    truth = spacing = None
    if case.labels is not None:
        truth_image = nib.load(str(case.labels))
        truth = np.asarray(truth_image.dataobj).astype(np.uint8)
        spacing = truth_image.header.get_zooms()[:3]
    print(f"case: {case.what}")
    print(f"model: {card.name} ({card.method}, preset {card.preset}) on {segmenter.device}")
    if truth is not None:
        print(f"{'sequences':<22}" + "".join(f"{'Dice ' + r:>9}" for r in REPORTED_REGIONS)
              + "".join(f"{'HD95 ' + r:>9}" for r in REPORTED_REGIONS) + f"{'seconds':>9}")
    else:
        print(f"{'sequences':<22}" + "".join(f"{r + ' mL':>9}" for r in REPORTED_REGIONS) + f"{'seconds':>9}"
              + "   (no label map in the folder: volumes instead of Dice)")
    predictions = {}
    channels = [REGION_INDEX[r] for r in REPORTED_REGIONS]
    for subset in subsets_of(case):
        output = OUTPUT / f"segmentation_{'+'.join(subset)}.nii.gz"
        result = segmenter.segment_to_file({s: case.sequences[s] for s in subset}, output)
        seconds = sum(result.seconds.values())
        if truth is not None:
            found = regions_from_labels(result.labels)  # the output convention: ET = 4
            expected = regions_from_labels(truth, case.et_label)
            scores = [dice(found[i], expected[i]) for i in channels]
            distances = [hd95(found[i], expected[i], spacing) for i in channels]
            print(f"{'+'.join(subset):<22}" + "".join(f"{s:9.3f}" for s in scores)
                  + "".join(f"{d:9.1f}" for d in distances) + f"{seconds:9.1f}")
        else:
            print(f"{'+'.join(subset):<22}" + "".join(f"{result.volumes_ml[r]:9.1f}" for r in REPORTED_REGIONS)
                  + f"{seconds:9.1f}")
        predictions["+".join(subset)] = result.labels
    background = case.sequences.get("t1ce") or next(iter(case.sequences.values()))
    image = np.asarray(nib.load(str(background)).dataobj)
    overlay(OUTPUT / "overlay.png", image, truth, predictions, f"{case.what}; {card.name}", case.truth_title)
    print(f"overlay picture: {OUTPUT / 'overlay.png'}")
    if args.case is None:
        print(OWN_CASE_HINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
