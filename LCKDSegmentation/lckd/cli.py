"""The ``lckd`` command: ``segment``, ``phantom``, and (with the training package) ``train``, ``evaluate``."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import __version__
from .errors import LCKDError
from .progress import JsonReporter, Reporter, make_reporter
from .sequences import SEQUENCE_TITLES, SEQUENCES

#: Where the bundled demo model lies, relative to the ``lckd`` package (the module's Resources).
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "Resources" / "Models" / "lckd-phantom-demo.safetensors"
MODEL_ENVIRONMENT_VARIABLE = "LCKD_MODEL"


def default_model() -> Path:
    """``$LCKD_MODEL`` if set, else the bundled demo model; a clear error when neither exists."""
    from .errors import ModelFileError

    configured = os.environ.get(MODEL_ENVIRONMENT_VARIABLE)
    path = Path(configured) if configured else BUNDLED_MODEL
    if not path.is_file():
        raise ModelFileError(f"{path}: no default model is installed; pass --model FILE "
                             f"(or set {MODEL_ENVIRONMENT_VARIABLE})")
    return path


def _add_segment_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment a brain tumour from any subset of FLAIR, T1, T1ce, T2",
        description="Segment a brain tumour from whichever MRI sequences you have. Writes a BraTS label map "
                    "(1 necrosis/non-enhancing core, 2 oedema, 4 enhancing tumour) on the reference input's grid.")
    inputs = parser.add_argument_group("inputs (one of: sequence files, --case, --batch)")
    for name in SEQUENCES:
        inputs.add_argument(f"--{name}", type=Path, metavar="FILE", help=f"{SEQUENCE_TITLES[name]} NIfTI image")
    inputs.add_argument("--case", type=Path, metavar="DIR",
                        help="a BraTS case folder (2018/2021/2023 file names are detected)")
    inputs.add_argument("--batch", type=Path, metavar="IN_DIR", help="segment every case folder below IN_DIR")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT.nii.gz", help="output label map (single case)")
    parser.add_argument("--out-dir", type=Path, metavar="OUT_DIR", help="output folder (with --batch)")
    parser.add_argument("--model", type=Path, metavar="FILE",
                        help=f"model file (.safetensors); default: ${MODEL_ENVIRONMENT_VARIABLE} or the bundled model")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="network arithmetic (default auto: bf16 on a CPU with native bf16, "
                             "AVX-512-BF16 or AMX; fp32 elsewhere, GPUs included)")
    parser.add_argument("--reference", choices=SEQUENCES,
                        help="the input whose grid the output uses (default: t1ce, else t1, flair, t2)")
    parser.add_argument("--labels", choices=("brats2018", "brats2023"), default="brats2018",
                        help="output convention: enhancing tumour = 4 (brats2018) or 3 (brats2023)")
    parser.add_argument("--postprocess", action="store_true",
                        help="relabel enhancing tumour as necrosis when it has fewer than 500 voxels")
    parser.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                        help="progress display; json prints one JSON object per line (default: bar on a terminal)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    parser.set_defaults(func=run_segment)


def _single_case_files(args: argparse.Namespace) -> Dict[str, Path]:
    from .cases import read_case_folder

    files = {name: getattr(args, name) for name in SEQUENCES if getattr(args, name) is not None}
    if args.case is not None:
        if files:
            raise LCKDError("give either --case or sequence files (--flair/--t1/--t1ce/--t2), not both")
        files = dict(read_case_folder(args.case).sequences)
    if not files:
        raise LCKDError("no input sequence given: give at least one of --flair, --t1, --t1ce, --t2 "
                        "(or --case DIR, or --batch IN_DIR --out-dir OUT_DIR)")
    return files


def _print_result(output: Path, result) -> None:
    volumes = ", ".join(f"{region} {ml:.1f} mL" for region, ml in result.volumes_ml.items())
    sys.stdout.write(f"{output}: {volumes}; {sum(result.seconds.values()):.1f} s "
                 f"({'+'.join(result.sequences)}, reference {result.reference})\n")


def run_segment(args: argparse.Namespace) -> int:
    """``lckd segment``: one case, or a folder of cases with ``--batch``."""
    from .allocator import keep_freed_memory
    from .segmenter import Segmenter

    keep_freed_memory()  # this process exits after its cases: trade its peak memory for fewer page faults
    progress = args.progress
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "none"
    reporter = make_reporter(progress)
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        options = dict(reference=args.reference, labels=args.labels, postprocess=args.postprocess)
        if args.batch is not None:
            return _run_batch(args, reporter, options)
        files = _single_case_files(args)
        if args.output is None:
            raise LCKDError("give the output file with -o OUT.nii.gz")
        segmenter = Segmenter(args.model or default_model(), device=args.device, precision=args.precision)
        result = segmenter.segment_to_file(files, args.output, reporter=reporter, **options)
    except LCKDError as error:
        reporter.error(str(error))
        raise
    if progress == "json":
        reporter.done(dict(output=str(args.output), **result.summary()))
    else:
        reporter.done({})
        _print_result(args.output, result)
    return 0


def _run_batch(args: argparse.Namespace, reporter: Reporter, options: dict) -> int:
    from .cases import find_cases
    from .segmenter import Segmenter

    if args.out_dir is None:
        raise LCKDError("--batch needs --out-dir OUT_DIR")
    if any(getattr(args, name) for name in SEQUENCES) or args.case or args.output:
        raise LCKDError("--batch takes no sequence files, --case or -o (outputs go to --out-dir)")
    cases = find_cases(args.batch)
    segmenter = Segmenter(args.model or default_model(), device=args.device, precision=args.precision)
    rows: List[Dict[str, object]] = []
    failures = 0
    for case in cases:
        output = args.out_dir / f"{case.name}.nii.gz"
        try:
            result = segmenter.segment_to_file(case.sequences, output, reporter=reporter, **options)
        except LCKDError as error:
            failures += 1
            reporter.error(f"{case.name}: {error}")
            sys.stderr.write(f"lckd: error: {case.name}: {error}\n")
            continue
        if isinstance(reporter, JsonReporter):
            reporter.done(dict(case=case.name, output=str(output), **result.summary()))
        else:
            _print_result(output, result)
        volumes = {f"{region}_ml": round(v, 3) for region, v in result.volumes_ml.items()}
        rows.append(dict(case=case.name, sequences="+".join(result.sequences),
                         seconds=round(sum(result.seconds.values()), 2), **volumes))
    if rows:
        from .io import atomic_path

        with atomic_path(args.out_dir / "volumes.csv") as temporary, open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    sys.stderr.write(f"lckd: {len(rows)} of {len(cases)} cases segmented into {args.out_dir}\n")
    return 1 if failures else 0


def _add_optional_commands(subparsers) -> None:
    """``phantom`` from lckd.phantom, ``train``/``evaluate`` from the training package, when present."""
    from .phantom.command import add_phantom_command

    add_phantom_command(subparsers)
    try:
        from training.command import add_training_commands
    except ImportError as error:
        _add_unavailable(subparsers, ["train", "evaluate"],
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
    return _run(build_parser().parse_args(argv))


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
    args = build_parser().parse_args()
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
