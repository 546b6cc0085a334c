"""BraTS case folders: detect the 2018 / 2021 / 2023 file naming and list a case's files.

* BraTS 2018-2021: ``<case>/<case>_flair.nii.gz``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg`` (ET = 4).
* BraTS 2023: ``<case>/<case>-t2f.nii.gz`` (FLAIR), ``-t1n``, ``-t1c``, ``-t2w``, ``-seg`` (ET = 3).

Both ``.nii.gz`` and ``.nii`` are accepted. A folder that holds two files for one sequence (``.nii.gz``
and ``.nii``, or a 2018 and a 2023 name) is refused with both named: choosing one silently could
segment the wrong scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .errors import InputError
from .sequences import SEQUENCE_TITLES, SEQUENCES

#: File-name suffix of each sequence (and the label map) per layout.
LAYOUT_SUFFIXES: Dict[str, Dict[str, str]] = {
    "brats2018": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "brats2021": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "brats2023": {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg"},
}
#: The label value of enhancing tumour in each layout's ground truth.
LAYOUT_ET_LABEL = {"brats2018": 4, "brats2021": 4, "brats2023": 3}
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: present sequences (channel-order keys) and the label map if any."""

    name: str
    folder: Path
    layout: str
    sequences: Dict[str, Path]
    segmentation: Optional[Path]

    @property
    def et_label(self) -> int:
        return LAYOUT_ET_LABEL[self.layout]


class AmbiguousCaseError(InputError):
    """A case folder holds two files for one sequence or label map."""


def _find_all(folder: Path, stem: str) -> List[Path]:
    return [folder / f"{stem}{extension}" for extension in NIFTI_EXTENSIONS
            if (folder / f"{stem}{extension}").is_file()]


def _one(folder: Path, candidates: List[Path], what: str) -> Optional[Path]:
    if len(candidates) > 1:
        raise AmbiguousCaseError(f"{folder}: two files for the {what}: {' and '.join(p.name for p in candidates)}; "
                                 f"move one of them away")
    return candidates[0] if candidates else None


def case_paths(folder: Path, name: str, layout: str) -> Dict[str, Path]:
    """Where each file of a case named ``name`` goes in ``layout`` (``.nii.gz``), for writers."""
    suffixes = LAYOUT_SUFFIXES[layout]
    return {key: folder / f"{name}{suffix}.nii.gz" for key, suffix in suffixes.items()}


def read_case_folder(folder: Path | str) -> CaseFiles:
    """Detect the layout of one case folder and list its files.

    The case name is the folder name (as in every BraTS release). Raises :class:`InputError`
    naming the folder when no sequence file of a known layout is found, and
    :class:`AmbiguousCaseError` naming both files when a sequence or the label map has two.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    name = folder.name
    found: Dict[str, Dict[str, List[Path]]] = {}
    for layout in ("brats2018", "brats2023"):  # 2021 uses the 2018 names
        suffixes = LAYOUT_SUFFIXES[layout]
        found[layout] = {key: _find_all(folder, name + suffix) for key, suffix in suffixes.items()}
    for key in list(SEQUENCES) + ["seg"]:
        what = SEQUENCE_TITLES.get(key, "label map")
        both = found["brats2018"][key] + found["brats2023"][key]
        _one(folder, both, what)  # refuses two spellings of one file as well as two layouts
    best: Optional[CaseFiles] = None
    for layout, files in found.items():
        sequences = {seq: files[seq][0] for seq in SEQUENCES if files[seq]}
        if sequences and (best is None or len(sequences) > len(best.sequences)):
            best = CaseFiles(name=name, folder=folder, layout=layout, sequences=sequences,
                             segmentation=files["seg"][0] if files["seg"] else None)
    if best is not None:
        other = "brats2023" if best.layout == "brats2018" else "brats2018"
        mixed = [path for paths in found[other].values() for path in paths]
        if mixed:
            raise AmbiguousCaseError(f"{folder}: mixes BraTS {best.layout[5:]} and {other[5:]} file names "
                                     f"({best.sequences[next(iter(best.sequences))].name} and {mixed[0].name}); "
                                     f"keep one naming")
    if best is None:
        expected = ", ".join(f"{name}{s}.nii.gz" for s in LAYOUT_SUFFIXES["brats2018"].values())
        raise InputError(f"{folder}: no BraTS sequence files found (expected names like {expected}, "
                         f"or the BraTS 2023 names -t2f, -t1n, -t1c, -t2w)")
    if best.layout == "brats2018" and name.startswith("BraTS2021"):
        best = CaseFiles(best.name, best.folder, "brats2021", best.sequences, best.segmentation)
    return best


@dataclass(frozen=True)
class ScannedFolder:
    """One folder below a batch root: a case, or why it is not one (``case`` None, ``reason`` set).

    ``failed`` marks a folder that looks like a case but cannot be used (two files for one
    sequence); the other non-cases hold no BraTS file names at all.
    """

    folder: Path
    relative: str
    case: Optional[CaseFiles]
    reason: str = ""
    failed: bool = False


def scan_folders(root: Path | str) -> List[ScannedFolder]:
    """Every folder below ``root`` (any depth), sorted: each case, and each folder that is not a case
    but could have been one (it holds files, or no sub-folders); pure containers such as BraTS 2018
    ``HGG/`` and ``LGG/`` are not listed."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    scanned = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        relative = folder.relative_to(root).as_posix()
        try:
            scanned.append(ScannedFolder(folder, relative, read_case_folder(folder)))
        except AmbiguousCaseError as error:
            scanned.append(ScannedFolder(folder, relative, None, _reason(error, folder), failed=True))
        except InputError as error:
            children = list(folder.iterdir())
            if any(child.is_file() for child in children) or not any(child.is_dir() for child in children):
                scanned.append(ScannedFolder(folder, relative, None, _reason(error, folder)))
    return scanned


def _reason(error: InputError, folder: Path) -> str:
    message = str(error)
    prefix = f"{folder}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def find_cases(root: Path | str) -> List[CaseFiles]:
    """Every case folder below ``root`` (any depth, e.g. BraTS 2018 ``HGG/`` and ``LGG/``), sorted.

    A folder with two files for one sequence stops the search with that error; folders without
    BraTS files are passed over."""
    cases = []
    for entry in scan_folders(root):
        if entry.failed:
            raise AmbiguousCaseError(f"{entry.folder}: {entry.reason}")
        if entry.case is not None:
            cases.append(entry.case)
    if not cases:
        raise InputError(f"{root}: no BraTS case folders found")
    return cases
