"""``lckd segment``'s DICOM options and what they run:

* ``--study DIR -o OUT.dcm|OUT.nii.gz``: a folder holding one study (series recognised, overridable
  with ``--flair-series UID`` ...);
* sequence inputs whose reference is a DICOM series folder, ``-o OUT.dcm``: a DICOM SEG on it;
* ``--dicomweb URL --study UID``: retrieve, segment, store the DICOM SEG back (``-o`` keeps a copy);
* ``--batch DIR --studies`` (one study per sub-folder) and ``--dicomweb URL --batch UIDS.txt``: one
  row per study in ``OUT_DIR/volumes.csv``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from ..errors import LCKDError
from ..progress import JsonReporter, Reporter
from ..sequences import SEQUENCE_TITLES, SEQUENCES

DICOM_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
#: The output formats (``--output-format``).
NIFTI, DICOM_SEG = "nifti", "dicom-seg"


def add_dicom_options(inputs, parser: argparse.ArgumentParser) -> None:
    """Add the DICOM inputs to the ``inputs`` group of ``lckd segment`` and ``--output-format`` to it."""
    inputs.add_argument("--study", metavar="DIR|UID",
                        help="a folder holding one DICOM study, its series in any arrangement (the sequences are "
                             "recognised from the series' attributes); with --dicomweb, the StudyInstanceUID")
    for name in SEQUENCES:
        inputs.add_argument(f"--{name}-series", metavar="UID", dest=f"{name}_series",
                            help=f"with --study: take this SeriesInstanceUID as {SEQUENCE_TITLES[name]}")
    inputs.add_argument("--studies", action="store_true",
                        help="with --batch IN_DIR: each sub-folder of IN_DIR is one DICOM study")
    inputs.add_argument("--dicomweb", metavar="URL",
                        help="a DICOMweb server (e.g. http://localhost:8042/dicom-web): retrieve --study UID "
                             "(WADO-RS), segment it, store the DICOM SEG back (STOW-RS); with --batch FILE, the "
                             "study UIDs listed in FILE, one per line")
    parser.add_argument("--output-format", choices=(NIFTI, DICOM_SEG),
                        help="nifti (label map) or dicom-seg (a DICOM Segmentation on the reference series; needs "
                             "DICOM input); default: from the output name (.nii.gz or .dcm), nifti with --batch")


def _overrides(args: argparse.Namespace) -> Dict[str, str]:
    return {name: getattr(args, f"{name}_series") for name in SEQUENCES if getattr(args, f"{name}_series")}


def wants_dicom(args: argparse.Namespace) -> bool:
    """Whether the command takes a DICOM route (a study, DICOMweb, or a DICOM SEG output)."""
    seg_output = args.output is not None and args.output.name.lower().endswith(".dcm")
    return bool(args.study or args.dicomweb or args.studies or _overrides(args) or seg_output
                or args.output_format == DICOM_SEG)


def _check_combinations(args: argparse.Namespace, batch: bool) -> None:
    sequence_files = [f"--{name}" for name in SEQUENCES if getattr(args, name) is not None]
    if args.studies and (args.dicomweb or not batch):
        raise LCKDError("--studies says that the sub-folders of --batch IN_DIR are DICOM studies; "
                        + ("with --dicomweb, --batch FILE lists study UIDs" if args.dicomweb else "give --batch too"))
    if (args.study or args.dicomweb) and (sequence_files or args.case):
        raise LCKDError(f"give either --study{' (with --dicomweb)' if args.dicomweb else ''} or sequence inputs "
                        f"({', '.join(sequence_files) or '--case'}), not both")
    if _overrides(args) and (batch or not args.study):
        raise LCKDError(f"{', '.join('--' + n + '-series' for n in _overrides(args))} chooses a series of one "
                        f"--study; it cannot be used {'with --batch' if batch else 'without --study'}")
    if args.uncertainty is not None:
        raise LCKDError("--uncertainty writes a NIfTI map beside a single case's NIfTI label map; it is not "
                        "available with --study or --dicomweb (the quality estimate is printed all the same)")
    if args.dicomweb and not (args.study or batch):
        raise LCKDError("--dicomweb URL needs --study UID (or --batch FILE listing study UIDs)")


def _check_uid(uid: str) -> None:
    if not DICOM_UID.fullmatch(uid) or len(uid) > 64:
        raise LCKDError(f"{uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")


def _log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _dicom_segmenter(args: argparse.Namespace, options: dict, model: Path):
    from ..segmenter import Segmenter
    from .routes import DicomSegmenter

    segmenter = Segmenter(model, device=args.device, precision=args.precision, mirroring=not args.no_tta)
    return DicomSegmenter(segmenter, model, options)


def _study_protected(folder: Path, model: Path) -> Dict[str, str]:
    from ..output_safety import protected_files

    protected = protected_files({}, model=model)
    for root, _, files in os.walk(folder):
        for name in files:
            protected.setdefault(os.path.realpath(os.path.join(root, name)), f"a file of the study folder {folder}")
    return protected


def segment_dicom(args: argparse.Namespace, files: Dict[str, Path], reporter: Reporter, progress: str,
                  options: dict) -> int:
    """One case through a DICOM route: ``--study DIR``, ``--dicomweb URL --study UID``, or sequence
    ``files`` whose reference is a DICOM series, written as a DICOM SEG."""
    from ..cli import default_model
    from ..output_safety import check_output, protected_files
    from .dependencies import require
    from .routes import output_format, reference_source_images

    _check_combinations(args, batch=False)
    model = args.model or default_model()
    if args.dicomweb:
        require("pydicom", "highdicom", "dicomweb_client", what="--dicomweb")
        from .dicomweb import DicomWebServer

        _check_uid(args.study)
        fmt = output_format(args.output, args.output_format) if args.output is not None else None
        if args.output is not None:
            check_output(args.output, protected_files({}, model=model))
        server = DicomWebServer(args.dicomweb)
        runner = _dicom_segmenter(args, options, model)
        done, location = runner.round_trip(server, args.study, reporter, _log, _overrides(args), args.sequences,
                                           local=args.output, local_format=fmt)
        where = location + (f" and {args.output}" if args.output is not None else "")
        return _finish(reporter, progress, where, done.result, stored=location)
    if args.output is None:
        raise LCKDError("give the output file with -o OUT.dcm (DICOM SEG) or -o OUT.nii.gz (label map)")
    fmt = output_format(args.output, args.output_format)
    require("pydicom", "highdicom")
    if args.study:
        study = Path(args.study)
        protected = _study_protected(study, model) if study.is_dir() else protected_files({}, model=model)
        check_output(args.output, protected)
        runner = _dicom_segmenter(args, options, model)
        done = runner.segment_study(study, _overrides(args), args.sequences, reporter, _log)
    else:
        check_output(args.output, protected_files(files, case_folder=args.case, model=model))
        source_images = reference_source_images(files, args.reference)
        runner = _dicom_segmenter(args, options, model)
        done = runner.segment_files(files, source_images, reporter)
    runner.write(done, args.output, fmt, reporter)
    return _finish(reporter, progress, str(args.output), done.result)


def _finish(reporter: Reporter, progress: str, where: str, result, **extra) -> int:
    from ..cli import print_result

    if progress == "json":
        reporter.done(dict(output=where, **extra, **result.summary()))
    else:
        reporter.done({})
        print_result(where, result)
    return 0


def _study_folders(root: Path, out_dir: Path) -> List[Path]:
    if not root.is_dir():
        raise LCKDError(f"{root}: not a folder (--batch --studies takes a folder of study folders)")
    out = os.path.realpath(out_dir) + os.sep
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not (os.path.realpath(p) + os.sep).startswith(out))
    if not folders:
        raise LCKDError(f"{root}: holds no study folders (--batch --studies takes a folder with one sub-folder per "
                        f"study; for one study, use --study DIR)")
    return folders


def _study_uids(path: Path) -> List[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise LCKDError(f"{path}: cannot read the list of study UIDs ({getattr(error, 'strerror', None) or error})") \
            from None
    uids = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not uids:
        raise LCKDError(f"{path}: lists no study UID (one StudyInstanceUID per line)")
    return uids


def study_batch_rows(args: argparse.Namespace, reporter: Reporter, options: dict) -> Tuple[List[dict], Path]:
    """Segment every study of ``--batch`` (sub-folders with ``--studies``, UIDs with ``--dicomweb``);
    returns one ``volumes.csv`` row per study, whatever became of it, and the table's path."""
    from ..cli import default_model, print_result, result_row
    from ..output_safety import check_output, protected_files
    from .dependencies import require

    _check_combinations(args, batch=True)
    if not (args.studies or args.dicomweb):
        raise LCKDError("--batch of DICOM studies needs --studies (a folder of study folders) or --dicomweb URL")
    if args.out_dir is None:
        raise LCKDError("--batch needs --out-dir OUT_DIR")
    if args.output is not None or args.study:
        raise LCKDError("--batch takes no -o or --study (outputs go to --out-dir)")
    require("pydicom", "highdicom", *(("dicomweb_client",) if args.dicomweb else ()),
            what="--dicomweb" if args.dicomweb else "DICOM studies")
    model = args.model or default_model()
    table = args.out_dir / "volumes.csv"
    fmt = args.output_format or (None if args.dicomweb else NIFTI)
    extension = {NIFTI: ".nii.gz", DICOM_SEG: ".dcm", None: ""}[fmt]
    if args.dicomweb:
        from .dicomweb import DicomWebServer

        server = DicomWebServer(args.dicomweb)
        studies = [(uid, uid) for uid in _study_uids(args.batch)]
        check_output(table, protected_files({}, model=model))
    else:
        folders = _study_folders(args.batch, args.out_dir)
        studies = [(folder.name, folder) for folder in folders]
        protected = protected_files({}, model=model)
        for folder in folders:
            protected.update(_study_protected(folder, model))
        check_output(table, protected)
    runner = _dicom_segmenter(args, options, model)
    rows: List[dict] = []
    for name, study in studies:
        output = args.out_dir / f"{name}{extension}" if extension else None
        row: Dict[str, object] = dict(case=name)
        try:
            if args.dicomweb:
                _check_uid(name)
                if output is not None:
                    check_output(output, protected_files({}, model=model))
                done, location = runner.round_trip(server, name, reporter, _log, wanted=args.sequences,
                                                   local=output, local_format=fmt)
                where = location
            else:
                check_output(output, protected)
                done = runner.segment_study(study, {}, args.sequences, reporter, _log)
                runner.write(done, output, fmt, reporter)
                where = str(output)
        except LCKDError as error:
            reporter.error(f"{name}: {error}")
            _log(f"lckd: error: {name}: {error}")
            rows.append(dict(row, status="failed", reason=str(error)))
            continue
        result = done.result
        if isinstance(reporter, JsonReporter):
            reporter.done(dict(case=name, output=where, **result.summary()))
        else:
            print_result(where, result)
        rows.append(dict(row, **result_row(result), status="segmented", output=where))
    return rows, table
