"""The DICOM routes through the segmenter: a study folder in, a DICOM SEG (or NIfTI) out, and the
round trip through a DICOMweb server. No argparse here (:mod:`.command` wires these to ``lckd segment``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, LCKDError
from ..io import save_nifti
from ..labels import et_label_of
from ..progress import Reporter
from ..segmenter import SegmentationResult, Segmenter
from ..sequences import SEQUENCE_TITLES
from .command import DICOM_SEG, NIFTI
from .dicomweb import DicomWebServer
from .recognition import select_series
from .segmentation_object import Algorithm, build_segmentation, model_version, write_segmentation
from .study import headers_of, read_series_volume, read_study

_NIFTI_ENDINGS = (".nii.gz", ".nii")


def output_format(output: Path, requested: Optional[str]) -> str:
    """The format of ``output``: ``requested`` (``--output-format``), else its name's ending (``.dcm``
    DICOM SEG, ``.nii.gz``/``.nii`` NIfTI); a name that contradicts the request is refused."""
    name = output.name.lower()
    implied = NIFTI if name.endswith(_NIFTI_ENDINGS) else DICOM_SEG if name.endswith(".dcm") else None
    if requested and implied and requested != implied:
        raise LCKDError(f"{output}: the name says {implied} but --output-format {requested} was asked; "
                        f"name it {'FILE.dcm' if requested == DICOM_SEG else 'FILE.nii.gz'}")
    chosen = requested or implied
    if chosen is None:
        raise LCKDError(f"{output}: say what to write: a name ending in .nii.gz (label map) or .dcm (DICOM SEG), "
                        f"or --output-format dicom-seg")
    if chosen == NIFTI and implied is None:
        raise LCKDError(f"{output}: a label map is written as NIfTI; name it FILE.nii.gz")
    return chosen


@dataclass
class DicomResult:
    """A segmentation and what its DICOM SEG needs: the reference series' headers, how messages name that
    series, and the series numbers the study already uses."""

    result: SegmentationResult
    source_images: List
    reference_name: str
    series_numbers: List[int]


def reference_source_images(files: Dict[str, Path], reference: Optional[str]) -> List:
    """The headers of the reference input's DICOM series; refuses a reference that is not a DICOM series
    folder (a DICOM SEG is written on the source instances)."""
    from ..preparation import choose_reference

    reference = choose_reference(list(files), reference)
    folder = Path(files[reference])
    source_images = headers_of(sorted(p for p in folder.iterdir() if p.is_file())) if folder.is_dir() else []
    if not source_images:
        raise InputError(f"{folder}: a DICOM SEG needs the source DICOM instances, and the reference input "
                         f"({SEQUENCE_TITLES[reference]}) is not a DICOM series folder; write a label map "
                         f"(-o OUT.nii.gz) or give the {SEQUENCE_TITLES[reference]} series as DICOM")
    return source_images


class DicomSegmenter:
    """A :class:`Segmenter` with what a DICOM SEG says about it: the model's name and version."""

    def __init__(self, segmenter: Segmenter, model_path: Path, options: Dict[str, object]) -> None:
        self.segmenter = segmenter
        self.options = dict(options)
        self.model_name = segmenter.card.name
        self.version = model_version(model_path)

    def segment_study(self, folder: Path, overrides: Dict[str, str], wanted: Optional[Sequence[str]],
                      reporter: Reporter, log: Callable[[str], None]) -> DicomResult:
        """Read a study folder, choose its series (printing which and why), segment them."""
        started = time.perf_counter()
        reporter.stage("load", f"reading the study in {folder}")
        study = read_study(folder)
        selection = select_series(study, overrides, wanted)
        log(f"study {study.uid} ({len(study.series)} series) in {folder}:")
        for line in selection.lines():
            log(f"  {line}")
        reporter.stage("load", "reading " + ", ".join(SEQUENCE_TITLES[s] for s in selection.chosen))
        volumes = {name: read_series_volume(series, Path(folder)) for name, series in selection.chosen.items()}
        result = self.segmenter.segment_loaded(volumes, reporter=reporter, **self.options)
        result.seconds = dict(load=time.perf_counter() - started - sum(result.seconds.values()), **result.seconds)
        reference = selection.chosen[result.reference]
        numbers = [series.number for series in study.series if series.number is not None]
        return DicomResult(result=result, source_images=reference.datasets, reference_name=reference.label(),
                           series_numbers=numbers)

    def segment_files(self, files: Dict[str, Path], source_images: List, reporter: Reporter) -> DicomResult:
        """Sequence inputs whose reference is a DICOM series folder (``--t1ce DIR -o OUT.dcm``), with that
        series' headers (:func:`reference_source_images`)."""
        result = self.segmenter.segment_files(files, reporter=reporter, **self.options)
        folder = Path(files[result.reference])
        numbers = sorted({int(d.SeriesNumber) for d in source_images if getattr(d, "SeriesNumber", None) is not None})
        return DicomResult(result=result, source_images=source_images, reference_name=str(folder),
                           series_numbers=numbers)

    def segmentation(self, done: DicomResult):
        """The DICOM SEG instance of a segmented study (new series, numbered after the study's last)."""
        result = done.result
        algorithm = Algorithm(name=self.model_name, version=self.version,
                              parameters={"sequences": "+".join(result.sequences), "reference": result.reference})
        sequences = "+".join(SEQUENCE_TITLES[name] for name in result.sequences)
        return build_segmentation(result.labels.astype(np.uint8), result.affine, done.source_images, algorithm,
                                  et_label=et_label_of(str(self.options.get("labels", "brats2018"))),
                                  series_number=max(done.series_numbers, default=0) + 1,
                                  reference_name=done.reference_name,
                                  description=f"LCKD brain tumour from {sequences}")

    def write(self, done: DicomResult, output: Path, fmt: str, reporter: Reporter, segmentation=None) -> None:
        """Write the result as a label map or a DICOM SEG (atomically); times the step as ``write``."""
        clock = time.perf_counter()
        reporter.stage("write", f"writing {output}")
        if fmt == DICOM_SEG:
            write_segmentation(segmentation if segmentation is not None else self.segmentation(done), output)
        else:
            save_nifti(output, done.result.labels.astype(np.uint8), done.result.affine)
        done.result.seconds["write"] = done.result.seconds.get("write", 0.0) + time.perf_counter() - clock

    def round_trip(self, server: DicomWebServer, study_uid: str, reporter: Reporter, log: Callable[[str], None],
                   overrides: Optional[Dict[str, str]] = None, wanted: Optional[Sequence[str]] = None,
                   local: Optional[Path] = None, local_format: Optional[str] = None) -> Tuple[DicomResult, str]:
        """Retrieve a study (WADO-RS), segment it, store the DICOM SEG (STOW-RS); returns the result and
        where the SEG was stored. ``local``: also write the result there (``local_format``, by default a DICOM
        SEG) after the store succeeded."""
        clock = time.perf_counter()
        reporter.stage("retrieve", f"retrieving study {study_uid} from {server.url}")
        with tempfile.TemporaryDirectory(prefix="lckd-study-") as folder:
            count = server.retrieve_study(study_uid, Path(folder))
            retrieved = time.perf_counter() - clock
            log(f"retrieved {count} instances of study {study_uid} from {server.url} in {retrieved:.1f} s")
            where = f"{server.url}/studies/{study_uid}"  # what messages name instead of the temporary folder
            try:
                done = self.segment_study(Path(folder), overrides or {}, wanted, reporter,
                                          lambda line: log(line.replace(folder, where)))
            except InputError as error:
                raise InputError(str(error).replace(folder, where)) from None
        done.result.seconds = dict(retrieve=retrieved, **done.result.seconds)
        clock = time.perf_counter()
        reporter.stage("store", f"storing the DICOM SEG on {server.url}")
        segmentation = self.segmentation(done)
        location = server.store(segmentation)
        done.result.seconds["store"] = time.perf_counter() - clock
        if local is not None:
            self.write(done, local, local_format or DICOM_SEG, reporter, segmentation)
        return done, location
