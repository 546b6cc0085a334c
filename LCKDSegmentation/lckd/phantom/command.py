"""``lckd phantom OUT_DIR --cases N --seed S``: write synthetic BraTS-layout cases."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cases import LAYOUT_SUFFIXES
from ..errors import LCKDError


def add_phantom_command(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``phantom`` sub-command on an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "phantom", help="write synthetic BraTS-like cases (four sequences and labels)",
        description="Write synthetic brain-tumour cases on real brain anatomy (MNI ICBM152 2009), in BraTS "
                    "layout, for tests, demos and training smoke runs. The same seed gives the same files.")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--cases", type=int, default=1, metavar="N", help="number of cases (default 1)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed, >= 0 (default 0)")
    parser.add_argument("--layout", choices=tuple(LAYOUT_SUFFIXES), default="brats2018",
                        help="file naming: brats2018 (default), brats2021, brats2023 (t2f/t1n/t1c/t2w, ET=3)")
    parser.add_argument("--spacing", type=float, default=1.0, metavar="MM",
                        help="voxel size in mm (default 1: 240x240x155; 2 gives 120x120x78 for fast tests)")
    parser.add_argument("--no-mass-effect", action="store_true", help="do not displace tissue around the tumour")
    parser.add_argument("--preview", action="store_true", help="also write a PNG mosaic per case")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_phantom)


def run_phantom(args: argparse.Namespace) -> int:
    """Run ``lckd phantom``; bad arguments raise :class:`LCKDError` (one line, printed by the CLI)."""
    from .generator import write_cases  # here, not at parser building: every `lckd segment` builds the parser
    if args.cases < 1:
        raise LCKDError(f"--cases {args.cases}: give at least 1")
    if args.seed < 0:
        raise LCKDError(f"--seed {args.seed}: give a non-negative integer")
    if not 0.5 <= args.spacing <= 4.0:  # also refuses nan
        raise LCKDError(f"--spacing {args.spacing}: choose a voxel size between 0.5 and 4 mm")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise LCKDError(f"{args.out_dir}: exists and is not a folder")
    try:
        folders = write_cases(args.out_dir, n_cases=args.cases, seed=args.seed, layout=args.layout,
                              spacing=args.spacing, preview=args.preview, mass_effect=not args.no_mass_effect,
                              progress=not args.no_progress and sys.stderr.isatty())
    except OSError as error:  # e.g. a read-only or full disk: name the file, no traceback
        where = f"{error.filename}: " if error.filename else f"{args.out_dir}: "
        raise LCKDError(f"{where}cannot write ({error.strerror or error})") from None
    sys.stdout.write(f"wrote {len(folders)} case(s) to {args.out_dir}\n")
    return 0
