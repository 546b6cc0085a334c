"""``lckd train``, ``lckd evaluate`` and ``lckd ensemble``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from lckd.errors import LCKDError
from lckd.postprocessing import RULES as POSTPROCESSING_RULES

from .config import METHODS, PRESETS, build_config, parse_overrides


def add_training_commands(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train a model with LCKD, MetaKD or the no-KD baseline",
        description="Train the LCKD network on BraTS-layout cases (2018-2020 HGG/LGG, 2021, 2023, or phantoms). "
                    "Checkpoints are written atomically; --resume continues a killed run exactly. "
                    "Multi-GPU / multi-node: start with torchrun --nproc_per_node N -m lckd train ...")
    train.add_argument("--data", type=Path, required=True, metavar="DIR", help="folder of case folders")
    train.add_argument("--method", choices=METHODS, required=True)
    train.add_argument("--preset", choices=sorted(PRESETS),
                       help="paper (the papers' settings; default), paper-protocol (the papers' data protocol: no "
                            "local validation), brats-cpu (the 14 real BraTS cases on a 2-core CPU), brats-gpu (the "
                            "same on one GPU), phantom (the phantom demo model), tiny (tests)")
    train.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    train.add_argument("--iterations", type=int, metavar="N", help="total iterations (stage 1 scales with it)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in RUN_DIR from its last checkpoint, with its saved settings")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda (each torchrun process takes its GPU)")
    train.add_argument("--cache", type=Path, metavar="DIR", help="preprocessing cache (default RUN_DIR/cache)")
    train.add_argument("--init", type=Path, metavar="FILE",
                       help="start from this model file's weights (same network; none of its training cases may be "
                            "among this run's validation cases)")
    train.add_argument("--split", type=Path, metavar="FILE",
                       help="the split to use instead of the seeded one: JSON with lists 'train' and 'validation' "
                            "(optionally 'election', 'meta'; absent: the training cases) of case names, or a list "
                            "of such splits (cross-validation folds; choose one with --fold)")
    train.add_argument("--fold", type=int, metavar="K", help="the fold K (from 0) of a --split file of folds")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any training setting, e.g. --set learning_rate=0.005 (repeatable)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="evaluate a model on all 15 subsets of sequences",
        description="Dice and HD95 (BraTS convention) per region for every non-empty subset of the four "
                    "sequences; writes evaluation.json, evaluation.md and evaluation.png.")
    evaluate.add_argument("--data", type=Path, required=True, metavar="DIR", help="folder of labelled case folders")
    evaluate.add_argument("--model", type=Path, required=True, metavar="FILE")
    evaluate.add_argument("--out", type=Path, required=True, metavar="OUT_DIR")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--postprocess", default="none", choices=POSTPROCESSING_RULES, metavar="RULE",
                          help="post-processing before scoring, as lckd segment --postprocess RULE: "
                               f"{', '.join(POSTPROCESSING_RULES)} (default none)")
    evaluate.add_argument("--mirror-axes", type=parse_mirror_axes, default="model", metavar="AXES",
                          help="test-time mirroring: model (default: the model card's axes, as lckd segment), "
                               "none (as lckd segment --no-tta), or network axes to flip, e.g. 2 or 0,1,2")
    evaluate.add_argument("--split", type=Path, metavar="FILE",
                          help="score only the 'validation' cases of this split file (as lckd train --split)")
    evaluate.add_argument("--fold", type=int, metavar="K", help="the fold K (from 0) of a --split file of folds")
    evaluate.add_argument("--write-card", action="store_true", help="store the table in the model file's card")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(func=run_evaluate)

    ensemble = subparsers.add_parser(
        "ensemble", help="join trained model files into one model that averages their probabilities",
        description="Write one model file holding several trained networks of one architecture (e.g. the "
                    "seeds or folds of one recipe); lckd segment and lckd evaluate average their region "
                    "probabilities tile by tile. Its card has no validation table until lckd evaluate "
                    "--write-card measures the ensemble.")
    ensemble.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                          help="one or more model files (one: that network, shipped with the card written here)")
    ensemble.add_argument("--out", type=Path, required=True, metavar="FILE", help="the new .safetensors file")
    ensemble.add_argument("--name", help="the model's name (default: the file name without .safetensors)")
    ensemble.add_argument("--description", default="", help="one paragraph for the model card")
    ensemble.add_argument("--mirror-axes", type=parse_mirror_axes, default="model", metavar="AXES",
                          help="test-time mirroring lckd segment applies: model (default: the networks' common "
                               "axes), none, or network axes, e.g. 2 or 0,1,2")
    ensemble.add_argument("--postprocess", choices=("model",) + tuple(POSTPROCESSING_RULES), default="model",
                          metavar="RULE", help="the rule lckd segment applies by default: model (the networks' "
                                               f"common rule) or one of {', '.join(POSTPROCESSING_RULES)}")
    ensemble.add_argument("--review-below", type=parse_review_thresholds, metavar="ET=X,TC=Y,WT=Z",
                          help="the review thresholds of the quality estimate, measured for these members (e.g. "
                               "by uncertainty_calibration.py on the recipe's held-out network); default: none in "
                               "the card, so lckd segment uses lckd.uncertainty.REVIEW_BELOW")
    ensemble.set_defaults(func=run_ensemble)


def parse_mirror_axes(text: str):
    """argparse type of ``--mirror-axes``: ``model``, ``none`` or distinct network axes 0-2."""
    if text in ("model", "none"):
        return text
    try:
        axes = [int(a) for a in text.split(",")]
    except ValueError:
        axes = []
    if not axes or len(set(axes)) != len(axes) or not all(0 <= a <= 2 for a in axes):
        raise argparse.ArgumentTypeError(f"{text!r}: give model, none, or distinct axes of 0, 1, 2 (e.g. 0,1,2)")
    return axes


def parse_review_thresholds(text: str) -> Dict[str, float]:
    """argparse type of ``--review-below``: ``ET=X,TC=Y,WT=Z``, each between 0 and 1."""
    thresholds: Dict[str, float] = {}
    for item in text.split(","):
        region, _, value = item.partition("=")
        try:
            thresholds[region.strip()] = float(value)
        except ValueError:
            break
    if sorted(thresholds) != ["ET", "TC", "WT"] or not all(0 <= v <= 1 for v in thresholds.values()):
        raise argparse.ArgumentTypeError(f"{text!r}: give ET=X,TC=Y,WT=Z with each threshold between 0 and 1")
    return thresholds


def chosen_mirror_axes(choice, card_axes: Sequence[int]) -> List[int]:
    """The axes a parsed ``--mirror-axes`` stands for, given the model card's."""
    return list(card_axes) if choice == "model" else [] if choice == "none" else list(choice)


def run_train(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    if not args.data.is_dir():
        raise LCKDError(f"{args.data}: not a folder")
    _check_fold(args)
    overrides = parse_overrides(args.set)
    preset = args.preset or "paper"
    if args.iterations is not None:
        if args.iterations < 1:
            raise LCKDError(f"--iterations {args.iterations}: give a positive number")
        defaults = PRESETS[preset]
        overrides.setdefault("stage1_iterations",
                             max(1, round(args.iterations * defaults.stage1_iterations / defaults.iterations)))
        overrides["iterations"] = args.iterations
    config = build_config(preset, overrides)
    if args.resume and args.preset is None and not overrides and (args.out / "config.json").is_file():
        config = None  # resume with the run's saved settings
    command = "lckd " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["train"] else ""
    trainer = Trainer(config, args.method, args.data, args.out, device=args.device, resume=args.resume,
                      command=command, cache_dir=args.cache, progress=not args.no_progress, split_file=args.split,
                      init_file=args.init, fold=args.fold)
    path = trainer.run()
    if trainer.context.is_main:
        sys.stdout.write(f"model written to {path}\n")
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
    from .ensembling import build_ensemble

    mirror_axes = None if args.mirror_axes == "model" else chosen_mirror_axes(args.mirror_axes, [])
    postprocessing = None if args.postprocess == "model" else "" if args.postprocess == "none" else args.postprocess
    command = "lckd " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["ensemble"] else ""
    path = build_ensemble(args.models, args.out, args.name, args.description, mirror_axes, postprocessing, command,
                          args.review_below)
    what = f"ensemble of {len(args.models)} networks" if len(args.models) > 1 else "one network"
    sys.stdout.write(f"{what} written to {path}; measure it with "
                     f"lckd evaluate --model {path} --write-card\n")
    return 0


def _check_fold(args: argparse.Namespace) -> None:
    if args.fold is not None and args.split is None:
        raise LCKDError(f"--fold {args.fold} needs --split FILE (a JSON list of cross-validation folds)")


def _check_label_map_shape(case) -> None:
    """Refuse a label map whose array shape differs from its case's images (read from the headers)."""
    import nibabel as nib

    from lckd.errors import InputError
    from lckd.preparation import choose_reference

    reference = case.sequences[choose_reference(list(case.sequences))]
    try:
        label_shape = tuple(nib.load(str(case.segmentation)).shape[:3])
        image_shape = tuple(nib.load(str(reference)).shape[:3])
    except Exception as error:  # nibabel raises many types for damaged files
        raise InputError(f"{case.folder}: unreadable header ({type(error).__name__}: {error})") from None
    if label_shape != image_shape:
        raise InputError(f"{case.segmentation}: the label map's shape {label_shape} differs from the images' "
                         f"{image_shape} ({reference.name}); it is not this case's label map")


def run_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lckd.cases import find_cases
    from lckd.inference import resolve_device
    from lckd.model_file import load_model, save_model
    from lckd.preprocess import Normalisation

    from .data import cache_case, cache_folder, load_cached, read_split_file
    from .evaluation import evaluate
    from .trainer import write_evaluation

    _check_fold(args)
    device = resolve_device(args.device)
    model, card = load_model(args.model, device=str(device))
    normalisation = Normalisation.from_dict(card.normalisation) if card.normalisation else Normalisation()
    found = find_cases(args.data)
    cases = [c for c in found if c.segmentation is not None]
    if args.split is not None:
        chosen = set(read_split_file(args.split, cases, args.fold)["validation"])
        if not chosen:
            raise LCKDError(f"{args.split}: the split has no validation cases to evaluate")
        cases, found = [c for c in cases if c.name in chosen], [c for c in found if c.name in chosen]
    if not cases:
        raise LCKDError(f"{args.data}: no labelled cases (…_seg.nii.gz) to evaluate on")
    unlabelled = [c.name for c in found if c.segmentation is None]
    if unlabelled:
        shown = ", ".join(unlabelled[:10]) + (", ..." if len(unlabelled) > 10 else "")
        sys.stderr.write(f"lckd: warning: {len(unlabelled)} case folder(s) without a label map are skipped: "
                         f"{shown}\n")
    for case in cases:
        _check_label_map_shape(case)
    cache = cache_folder(args.out / "cache", card.spacing_mm[0], normalisation)
    cache.mkdir(parents=True, exist_ok=True)
    prepared = [load_cached(cache_case(c, cache, card.spacing_mm[0], normalisation)) for c in cases]
    mirror_axes = chosen_mirror_axes(args.mirror_axes, card.mirror_axes)
    with tqdm(total=15 * len(prepared), desc="evaluating", unit="run", disable=args.no_progress,
              file=sys.stderr) as bar:
        result = evaluate(model, prepared, card.tile_size, card.spacing_mm[0], device, on_step=lambda: bar.update(1),
                          postprocess=args.postprocess, mirror_axes=mirror_axes)
    title = f"{card.name} on {len(prepared)} cases of {args.data.name}"
    if args.postprocess != "none":
        title += f", post-processed ({args.postprocess})"
    if result["mirror_axes"]:
        title += f", test-time mirroring along network axes {result['mirror_axes']}"
    write_evaluation(result, args.out, title=title)
    average = result["average"]
    sys.stdout.write(f"15-subset average Dice: ET {average['ET']:.3f}, TC {average['TC']:.3f}, "
                     f"WT {average['WT']:.3f}; written to {args.out}\n")
    if args.write_card:
        card.validation = result
        save_model(args.model, model.cpu(), card)
    return 0
