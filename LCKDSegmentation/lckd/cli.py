"""The ``lckd`` command: ``segment``, ``phantom``, and (with the training package) ``train``, ``evaluate``."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import __version__
from .errors import InputError, LCKDError
from .postprocessing import RULES as POSTPROCESSING_RULES
from .progress import JsonReporter, Reporter, make_reporter
from .sequences import REGIONS, SEQUENCE_TITLES, SEQUENCES

#: The bundled default model (trained on real BraTS 2018 cases), relative to the ``lckd`` package (the
#: module's Resources; its catalogue, Models.json, marks the same file as the default).
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "Resources" / "Models" / "lckd-brats2018-cpu.safetensors"
MODEL_ENVIRONMENT_VARIABLE = "LCKD_MODEL"


def default_model() -> Path:
    """``$LCKD_MODEL`` if set, else the bundled default model; a clear error when neither exists."""
    from .errors import ModelFileError

    configured = os.environ.get(MODEL_ENVIRONMENT_VARIABLE)
    if configured:
        path = Path(configured)
        if not path.is_file():
            what = "a folder, not a model file" if path.is_dir() else "a missing file"
            raise ModelFileError(f"{path}: ${MODEL_ENVIRONMENT_VARIABLE} points to {what}; fix the variable "
                                 f"or pass --model FILE")
        return path
    if not BUNDLED_MODEL.is_file():
        raise ModelFileError(f"{BUNDLED_MODEL}: no default model is installed; pass --model FILE "
                             f"(or set {MODEL_ENVIRONMENT_VARIABLE})")
    return BUNDLED_MODEL


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of threads")
    return value


def _device(text: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N (whether a GPU is there is checked when it is used)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; choose auto, cpu, cuda or cuda:N")
    return text


def _sequence_list(text: str) -> List[str]:
    """argparse type: a comma-separated subset of the sequences, e.g. ``flair,t1``."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SEQUENCES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated subset of {', '.join(SEQUENCES)}")
    return [name for name in SEQUENCES if name in names]


def _add_segment_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment a brain tumour from any subset of FLAIR, T1, T1ce, T2",
        description="Segment a brain tumour from whichever MRI sequences you have. Writes a BraTS label map "
                    "(1 necrosis/non-enhancing core, 2 oedema, 4 enhancing tumour) on the reference input's grid.")
    inputs = parser.add_argument_group("inputs (one of: sequence files, --case, --study, --batch)")
    for name in SEQUENCES:
        inputs.add_argument(f"--{name}", type=Path, metavar="FILE",
                            help=f"{SEQUENCE_TITLES[name]} image: NIfTI, NRRD, MetaImage, or a DICOM series folder")
    inputs.add_argument("--case", type=Path, metavar="DIR",
                        help="a BraTS case folder (2018/2021/2023 file names are detected)")
    inputs.add_argument("--batch", type=Path, metavar="IN_DIR",
                        help="segment every case folder below IN_DIR into OUT_DIR/<its path below IN_DIR>.nii.gz; "
                             "volumes.csv lists every folder with its status")
    inputs.add_argument("--sequences", type=_sequence_list, metavar="LIST",
                        help="with --case, --study or --batch: use only these sequences of each case, e.g. flair,t1")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT.nii.gz",
                        help="output label map (single case); OUT.dcm: a DICOM SEG (DICOM input)")
    from .dicom.command import add_dicom_options

    add_dicom_options(inputs, parser)
    parser.add_argument("--out-dir", type=Path, metavar="OUT_DIR", help="output folder (with --batch)")
    parser.add_argument("--uncertainty", type=Path, metavar="FILE.nii.gz",
                        help="also write the voxel uncertainty map (single case): float, 0 where the averaged "
                             "members (networks x mirror images) agree to 1, on the label map's grid")
    parser.add_argument("--model", type=Path, metavar="FILE",
                        help=f"model file (.safetensors); default: ${MODEL_ENVIRONMENT_VARIABLE} or the bundled model")
    parser.add_argument("--device", default="auto", type=_device, help="auto (GPU if available), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="network arithmetic (default auto: bf16 on a CPU with native bf16, "
                             "AVX-512-BF16 or AMX; fp32 elsewhere, GPUs included)")
    parser.add_argument("--reference", choices=SEQUENCES,
                        help="the input whose grid the output uses (default: t1ce, else t1, flair, t2)")
    parser.add_argument("--labels", choices=("brats2018", "brats2023"), default="brats2018",
                        help="output convention: enhancing tumour = 4 (brats2018) or 3 (brats2023)")
    parser.add_argument("--postprocess", nargs="?", const="specks+et500", default="model",
                        choices=("model",) + POSTPROCESSING_RULES, metavar="RULE",
                        help="model (default: the rule the model card names), none, specks (drop tumour "
                             "components under 2 mL), largest (keep only the largest tumour component), et500 (BraTS: "
                             "under 0.5 mL of enhancing tumour becomes necrosis), specks+et500 (both; also what "
                             "--postprocess alone means), largest+et500, released "
                             "(the LCKD authors' postprocess.py: small and border components, oedema clustered on "
                             "T1ce when given, et500)")
    parser.add_argument("--no-tta", action="store_true",
                        help="skip the test-time mirroring the model card asks for (the case segmented once, not "
                             "averaged over its mirror images): faster, slightly less accurate")
    raw = parser.add_mutually_exclusive_group()
    raw.add_argument("--preprocess", action="store_true",
                     help="raw scans (not skull-stripped, not co-registered, thick slices): co-register every "
                          "sequence to the reference, extract the brain (deepbet), resample to 1 mm, then segment; "
                          "the label map is on the reference input's own grid")
    raw.add_argument("--assume-preprocessed", action="store_true",
                     help="segment as given, without checking that the inputs are skull-stripped, co-registered "
                          "and at most 3 mm thick")
    parser.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                        help="progress display; json prints one JSON object per line (default: bar on a terminal)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU threads for torch (default: torch's choice)")
    parser.set_defaults(func=run_segment)


def _single_case_files(args: argparse.Namespace) -> Dict[str, Path]:
    from .cases import read_case_folder

    files = {name: getattr(args, name) for name in SEQUENCES if getattr(args, name) is not None}
    if args.case is not None:
        if files:
            raise LCKDError("give either --case or sequence files (--flair/--t1/--t1ce/--t2), not both")
        files = dict(read_case_folder(args.case).sequences)
        if args.sequences:
            files = _subset(files, args.sequences, args.case)
    elif args.sequences:
        raise LCKDError("--sequences selects from a case folder; with sequence files, give only the ones to use")
    if not files:
        raise LCKDError("no input sequence given: give at least one of --flair, --t1, --t1ce, --t2 "
                        "(or --case DIR, or --batch IN_DIR --out-dir OUT_DIR)")
    return files


def _subset(files: Dict[str, Path], wanted: Sequence[str], folder: Path) -> Dict[str, Path]:
    missing = [SEQUENCE_TITLES[name] for name in wanted if name not in files]
    if missing:
        raise InputError(f"{folder}: no {', '.join(missing)} file (asked for by --sequences)")
    return {name: files[name] for name in wanted}


def print_result(output: object, result) -> None:
    """The result's line (volumes, quality estimate, time) and a line per region flagged for review."""
    from .uncertainty import review_message

    volumes = ", ".join(f"{region} {ml:.1f} mL" for region, ml in result.volumes_ml.items())
    quality = "no quality estimate (one member averaged)" if result.quality is None else \
        "quality " + ", ".join(f"{region} {value:.2f}" for region, value in result.quality.items())
    sys.stdout.write(f"{output}: {volumes}; {quality}; {sum(result.seconds.values()):.1f} s "
                     f"({'+'.join(result.sequences)}, reference {result.reference})\n")
    for region in result.review:
        sys.stdout.write(f"{output}: {review_message(region)}\n")


def run_segment(args: argparse.Namespace) -> int:
    """``lckd segment``: one case, or a folder of cases with ``--batch``.

    With ``--progress json`` every failure, expected or not, ends the stream with an ``error`` event.
    """
    progress = args.progress
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "none"
    reporter = make_reporter(progress)
    try:
        return _segment(args, reporter, progress)
    except BaseException as error:
        reporter.error(_failure_message(error))
        raise


def _failure_message(error: BaseException) -> str:
    if isinstance(error, LCKDError):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted; nothing was written"
    return f"unexpected failure ({type(error).__name__}: {error})"


def _segment(args: argparse.Namespace, reporter: Reporter, progress: str) -> int:
    from .allocator import keep_freed_memory
    from .output_safety import check_output, protected_files
    from .segmenter import Segmenter

    keep_freed_memory()  # this process exits after its cases: trade its peak memory for fewer page faults
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = dict(reference=args.reference, labels=args.labels, postprocess=args.postprocess,
                   preprocess=args.preprocess, assume_preprocessed=args.assume_preprocessed)
    if args.batch is not None:
        return _run_batch(args, reporter, options)
    from .dicom.command import segment_dicom, wants_dicom

    if wants_dicom(args):
        files = {} if args.study or args.dicomweb else _single_case_files(args)
        return segment_dicom(args, files, reporter, progress, options)
    files = _single_case_files(args)
    if args.output is None:
        raise LCKDError("give the output file with -o OUT.nii.gz")
    model = args.model or default_model()
    protected = protected_files(files, case_folder=args.case, model=model)
    check_output(args.output, protected)
    if args.uncertainty is not None:
        check_output(args.uncertainty, dict(protected, **{os.path.realpath(args.output): "the label map (-o)"}))
    segmenter = Segmenter(model, device=args.device, precision=args.precision, mirroring=not args.no_tta)
    result = segmenter.segment_to_file(files, args.output, reporter=reporter, uncertainty_output=args.uncertainty,
                                       **options)
    written = dict(output=str(args.output), **({"uncertainty": str(args.uncertainty)} if args.uncertainty else {}))
    if progress == "json":
        reporter.done(dict(written, **result.summary()))
    else:
        reporter.done({})
        print_result(args.output, result)
    return 0


#: Columns of ``volumes.csv``: one row per folder of the batch, whatever became of it.
BATCH_COLUMNS = ["case", "sequences", "seconds"] + [f"{region}_ml" for region in REGIONS] + \
    [f"{region}_quality" for region in REGIONS] + ["review", "status", "reason", "output"]


def result_row(result) -> Dict[str, object]:
    """A segmented case's columns of ``volumes.csv``: sequences, seconds, volumes, quality, review."""
    row: Dict[str, object] = {"sequences": "+".join(result.sequences),
                              "seconds": round(sum(result.seconds.values()), 2)}
    row.update({f"{region}_ml": round(v, 3) for region, v in result.volumes_ml.items()})
    row.update({f"{region}_quality": round(v, 3) for region, v in (result.quality or {}).items()})
    row["review"] = " ".join(result.review)
    return row


def _run_batch(args: argparse.Namespace, reporter: Reporter, options: dict) -> int:
    """Every folder below ``--batch``: segmented, failed (with the reason) or skipped (not a case).

    Outputs keep each case folder's path below the batch folder (``HGG/X`` -> ``OUT/HGG/X.nii.gz``),
    so two cases of one name never share an output. ``volumes.csv`` has a row per folder; the exit
    code is 0 only when every folder was segmented.
    """
    from .cases import scan_folders
    from .dicom.command import study_batch_rows, wants_dicom
    from .output_safety import check_output, protected_files
    from .segmenter import Segmenter

    if wants_dicom(args):
        rows, table = study_batch_rows(args, reporter, options)
        return _write_batch(rows, args.out_dir, table, reporter)
    if args.out_dir is None:
        raise LCKDError("--batch needs --out-dir OUT_DIR")
    if any(getattr(args, name) for name in SEQUENCES) or args.case or args.output or args.uncertainty:
        raise LCKDError("--batch takes no sequence files, --case, -o or --uncertainty (outputs go to --out-dir)")
    out_dir = os.path.realpath(args.out_dir)
    scanned = [entry for entry in scan_folders(args.batch)  # a results folder inside the batch folder is no case
               if not (os.path.realpath(entry.folder) + os.sep).startswith(out_dir + os.sep)]
    if not any(entry.case is not None for entry in scanned):
        raise InputError(f"{args.batch}: no BraTS case folders found (a folder of DICOM studies: add --studies)")
    model = args.model or default_model()
    every_input: Dict[str, str] = protected_files({}, model=model)
    for entry in scanned:
        every_input.update(protected_files({}, case_folder=entry.folder))
    table = args.out_dir / "volumes.csv"
    check_output(table, every_input)
    segmenter = Segmenter(model, device=args.device, precision=args.precision, mirroring=not args.no_tta)
    rows: List[Dict[str, object]] = []
    for entry in scanned:
        row: Dict[str, object] = dict(case=entry.relative)
        if entry.case is None:
            row.update(status="failed" if entry.failed else "skipped", reason=entry.reason)
            if entry.failed:
                sys.stderr.write(f"lckd: error: {entry.relative}: {entry.reason}\n")
            rows.append(row)
            continue
        output = args.out_dir / f"{entry.relative}.nii.gz"
        try:
            files = entry.case.sequences
            if args.sequences:
                files = _subset(dict(files), args.sequences, entry.folder)
            check_output(output, protected_files(files, case_folder=entry.folder, model=model))
            result = segmenter.segment_to_file(files, output, reporter=reporter, **options)
        except LCKDError as error:
            reporter.error(f"{entry.relative}: {error}")
            sys.stderr.write(f"lckd: error: {entry.relative}: {error}\n")
            rows.append(dict(row, status="failed", reason=str(error)))
            continue
        if isinstance(reporter, JsonReporter):
            reporter.done(dict(case=entry.relative, output=str(output), **result.summary()))
        else:
            print_result(output, result)
        rows.append(dict(row, **result_row(result), status="segmented", output=str(output)))
    return _write_batch(rows, args.out_dir, table, reporter)


def _write_batch(rows: List[Dict[str, object]], out_dir: Path, table: Path, reporter: Reporter) -> int:
    """Write ``volumes.csv`` (atomically) and report the batch."""
    from .io import atomic_path

    with atomic_path(table) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=BATCH_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return _report_batch(rows, out_dir, table, reporter)


def _report_batch(rows: List[Dict[str, object]], out_dir: Path, table: Path, reporter: Reporter) -> int:
    """The summary line (and the JSON stream's last event); the exit code: 0 only if all were segmented."""
    counts = {status: sum(row["status"] == status for row in rows) for status in ("segmented", "failed", "skipped")}
    others = "; ".join(f"{row['case']} {row['status']} ({row['reason']})" for row in rows
                       if row["status"] != "segmented")
    summary = (f"{counts['segmented']} of {len(rows)} folders segmented into {out_dir}, {counts['failed']} failed, "
               f"{counts['skipped']} skipped; table {table}")
    sys.stderr.write(f"lckd: {summary}\n" + (f"lckd: not segmented: {others}\n" if others else ""))
    folders = [dict(case=row["case"], status=row["status"], reason=row.get("reason", "")) for row in rows]
    if counts["segmented"] == len(rows):
        reporter.done(dict(batch=str(out_dir), table=str(table), folders=folders, **counts))
        return 0
    reporter.error(summary)
    return 1


def _add_optional_commands(subparsers) -> None:
    """``phantom`` from lckd.phantom, ``train``/``evaluate`` from the training package, when present."""
    from .phantom.command import add_phantom_command

    add_phantom_command(subparsers)
    try:
        from training.command import add_training_commands
    except ImportError as error:
        _add_unavailable(subparsers, ["train", "evaluate", "ensemble"],
                         f"the training package is not installed ({error}); install the project with "
                         f"`pip install -e '.[train]'` from a source checkout")
    else:
        add_training_commands(subparsers)


def _add_unavailable(subparsers, names: Sequence[str], message: str) -> None:
    for name in names:
        parser = subparsers.add_parser(name, help="(unavailable)", add_help=False)
        parser.set_defaults(func=lambda args, message=message: _unavailable(message))


def _unavailable(message: str) -> int:
    raise LCKDError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lckd", description="LCKD brain-tumour segmentation from any MRI sequences.")
    parser.add_argument("--version", action="version", version=f"lckd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_segment_command(subparsers)
    _add_optional_commands(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; user errors print one line (no traceback) and return a non-zero code."""
    return _run(_parse(argv))


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line; a refused one still ends a ``--progress json`` stream with an error event."""
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        return build_parser().parse_args(words)
    except SystemExit as stop:
        json_requested = any(word in ("--progress=json",) or (word == "--progress" and following == "json")
                             for word, following in zip(words, words[1:] + [""]))
        if stop.code not in (0, None) and json_requested:
            JsonReporter().error("invalid command line (see the message on stderr)")
        raise


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except LCKDError as error:
        sys.stderr.write(f"lckd: error: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("lckd: interrupted; nothing was written\n")
        return 130
    except RuntimeError as error:
        if "out of memory" in str(error).lower():
            sys.stderr.write("lckd: error: the GPU ran out of memory; retry with --device cpu\n")
            return 3
        raise


def console_main() -> None:
    """The ``lckd`` command and ``python -m lckd``: :func:`main` in a process of its own.

    ``segment`` ends the process with ``os._exit`` once the streams are flushed: its outputs are
    written and closed by then, and the interpreter's teardown of the torch and MONAI modules took
    1.0 s of every run (0.05 s with ``os._exit``; Resources/Docs/Benchmarks.md). The other commands
    (training writes TensorBoard files and may hold a process group) exit normally, and so does a
    profiled or traced run.
    """
    args = _parse(None)
    code = _run(args)
    profiled = sys.getprofile() is not None or sys.gettrace() is not None  # cProfile, coverage: let them write
    if args.command == "segment" and not profiled:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    console_main()
