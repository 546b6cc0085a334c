"""The sample data set shipped with the module: one synthetic phantom case (2 mm, four sequences),
made offline by the project's generator (``lckd phantom OUT --cases 1 --seed 0 --spacing 2``).

The files lie in ``Resources/SampleData``; Slicer's Sample Data module copies them through its
cache (``file://`` addresses) and checks their SHA-256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from lckd.sequences import SEQUENCES

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
CATEGORY = "LCKDSegmentation"
SAMPLE_NAME = "LCKDPhantom"
#: SHA-256 of each shipped file (a test keeps them equal to the files).
CHECKSUMS = {
    "flair": "58d1debc7911b2b5704691dcfeeec8d7cec5a50959cc345e336ef6e9ac549b9d",
    "t1": "327e2c9ccc5a05180af48bd5c7a69965fe562b7c12fee819f8a04802ca3e5322",
    "t1ce": "f53aa78d9f940d14c96ca4f4863f1e740f484743beccd068f8c48843a1342210",
    "t2": "87b78bfa5843e1e89bbe43360d0389dce77ef9369a700af5a3ed7e5488f108fe",
}


def nodeName(sequence: str) -> str:
    return f"Phantom_{sequence}"


def sampleFile(sequence: str, resources: Path = RESOURCES) -> Path:
    return resources / "SampleData" / f"{nodeName(sequence)}.nii.gz"


def sampleDataSourceArguments(resources: Path = RESOURCES) -> Dict[str, object]:
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource``."""
    return dict(
        category=CATEGORY, sampleName=SAMPLE_NAME,
        thumbnailFileName=str(resources / "Icons" / "LCKDSegmentation.png"),
        uris=[sampleFile(sequence, resources).as_uri() for sequence in SEQUENCES],
        fileNames=[sampleFile(sequence, resources).name for sequence in SEQUENCES],
        nodeNames=[nodeName(sequence) for sequence in SEQUENCES],
        checksums=[f"SHA256:{CHECKSUMS[sequence]}" for sequence in SEQUENCES],
        loadFileTypes=["VolumeFile"] * len(SEQUENCES))


def registerSampleData(sampleDataModule, resources: Path = RESOURCES) -> None:
    """Register the phantom with Slicer's Sample Data module (pass the imported ``SampleData``)."""
    arguments = sampleDataSourceArguments(resources)
    if not all(Path(path).is_file() for path in [sampleFile(s, resources) for s in SEQUENCES]):
        return
    sampleDataModule.SampleDataLogic.registerCustomSampleDataSource(**arguments)
