"""The whole inference pipeline for one case: files in, label map on the reference grid out."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch

from .errors import InputError
from .geometry import Grid, resample
from .inference import (
    count_windows,
    cpu_has_native_bf16,
    inference_dtype,
    mirror_flips,
    resolve_device,
    sliding_window_probabilities,
)
from .input_check import check_inputs
from .io import PathLike, Volume, load_volume, save_niftis
from .labels import et_label_of, labels_from_regions, region_volumes_ml
from .model_file import ModelCard, load_model
from .postprocessing import parse_rule
from .postprocessing import postprocess as apply_postprocessing
from .preparation import prepare_case, probabilities_to_reference
from .preprocess import Normalisation
from .progress import Reporter
from .sequences import SEQUENCE_TITLES, SEQUENCES, ordered
from .uncertainty import MemberSpread, member_count, needs_review, uncertainty_map


@dataclass
class SegmentationResult:
    """A label map on the reference input's grid, and what was measured on the way."""

    labels: np.ndarray
    affine: np.ndarray
    reference: str
    sequences: List[str]
    volumes_ml: Dict[str, float]
    seconds: Dict[str, float] = field(default_factory=dict)
    #: the quality estimate per region (ET, TC, WT), None when one member was averaged (lckd.uncertainty)
    quality: Optional[Dict[str, float]] = None
    #: the regions flagged for review (estimate below the card's review_below, else lckd.uncertainty.REVIEW_BELOW)
    review: List[str] = field(default_factory=list)
    #: how many members were averaged (networks x mirror images)
    members: int = 1
    #: the voxel uncertainty map on the label map's grid, when asked for
    uncertainty: Optional[np.ndarray] = None

    def summary(self) -> Dict[str, object]:
        return {"reference": self.reference, "sequences": self.sequences,
                "volumes_ml": {k: round(v, 3) for k, v in self.volumes_ml.items()},
                "quality": None if self.quality is None else {k: round(v, 3) for k, v in self.quality.items()},
                "review": list(self.review), "members": self.members,
                "seconds": round(sum(self.seconds.values()), 3),
                "stage_seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def check_distinct_files(files: Mapping[str, PathLike]) -> None:
    """Refuse one file given for two sequences."""
    seen: Dict[str, str] = {}
    for name, path in files.items():
        key = os.path.realpath(path)
        if key in seen:
            raise InputError(f"{path}: the same file is given for {SEQUENCE_TITLES[seen[key]]} and "
                             f"{SEQUENCE_TITLES[name]}")
        seen[key] = name


class Segmenter:
    """Loads a model once; segments cases given as files or volumes."""

    def __init__(self, model_path: PathLike, device: str = "auto", precision: str = "auto",
                 reuse_absent: bool = True, sw_batch_size: int = 1, mirroring: bool = True) -> None:
        """``mirroring`` False turns off the test-time mirroring the model card asks for."""
        self.device = resolve_device(device)
        self.dtype = inference_dtype(self.device, precision)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu" and not cpu_has_native_bf16():
            logging.getLogger(__name__).warning(
                "this CPU has no native bf16 (AVX-512-BF16/AMX): bf16 is emulated and much slower than fp32")
        model, card = load_model(model_path, device="cpu")
        # channels-last on the CPU (oneDNN's fastest layout); the GPU keeps the layout measured there
        self.model = model.freeze_for_inference(self.dtype, channels_last=self.device.type == "cpu").to(self.device)
        self.card: ModelCard = card
        self.reuse_absent = reuse_absent
        self.sw_batch_size = sw_batch_size
        self.mirror_axes = list(card.mirror_axes) if mirroring else []
        self.members = member_count(card.members, len(mirror_flips(self.mirror_axes)))
        self.normalisation = Normalisation.from_dict(card.normalisation) if card.normalisation else Normalisation()

    def segment_files(self, files: Mapping[str, PathLike], reference: Optional[str] = None,
                      labels: str = "brats2018", postprocess: str = "model",
                      reporter: Optional[Reporter] = None, preprocess: bool = False,
                      assume_preprocessed: bool = False, uncertainty: bool = False) -> SegmentationResult:
        """Segment a case given as ``{sequence: path}`` (any non-empty subset).

        Input the model cannot read (:func:`lckd.input_check.check_inputs`) is refused unless
        ``preprocess`` (co-register, brain-extract, resample: :mod:`lckd.raw_preprocessing`) or
        ``assume_preprocessed`` is given. ``uncertainty`` adds the voxel uncertainty map to the result.
        """
        reporter = reporter or Reporter()
        if not files:
            raise InputError("no input sequence given: give at least one of --flair, --t1, --t1ce, --t2")
        check_distinct_files(files)
        started = time.perf_counter()
        reporter.stage("load", "reading " + ", ".join(SEQUENCE_TITLES[s] for s in ordered(list(files))))
        volumes = {name: load_volume(path) for name, path in files.items()}
        result = self.segment_loaded(volumes, reference, labels, postprocess, reporter, preprocess, assume_preprocessed,
                                     uncertainty)
        result.seconds = dict(load=time.perf_counter() - started - sum(result.seconds.values()), **result.seconds)
        return result

    def segment_loaded(self, volumes: Mapping[str, Volume], reference: Optional[str] = None,
                       labels: str = "brats2018", postprocess: str = "model", reporter: Optional[Reporter] = None,
                       preprocess: bool = False, assume_preprocessed: bool = False,
                       uncertainty: bool = False) -> SegmentationResult:
        """Segment volumes read elsewhere (a DICOM study's series) as :meth:`segment_files` segments files:
        checked first, or preprocessed."""
        reporter = reporter or Reporter()
        if uncertainty:
            self.check_spread()
        preprocessing: Dict[str, float] = {}
        output_grid: Optional[Grid] = None
        if preprocess:
            from .raw_preprocessing import preprocess_case

            reporter.stage("preprocess", "co-registering, extracting the brain, resampling to 1 mm")
            case = preprocess_case(volumes, reference, use_gpu=self.device.type == "cuda")
            volumes, output_grid, preprocessing = case.volumes, case.reference_grid, case.seconds
            reference = case.reference
        elif not assume_preprocessed:
            problems = check_inputs(volumes, reference)
            if problems:
                others = sorted({p.file for p in problems[1:]} - {problems[0].file})
                more = f" (also: {', '.join(others)})" if others else ""
                raise InputError(problems[0].line() + more)
        result = self.segment_volumes(volumes, reference, labels, postprocess, reporter, output_grid=output_grid,
                                      uncertainty=uncertainty)
        result.seconds = dict(preprocessing, **result.seconds)
        return result

    def segment_volumes(self, volumes: Mapping[str, Volume], reference: Optional[str] = None,
                        labels: str = "brats2018", postprocess: str = "model",
                        reporter: Optional[Reporter] = None, output_grid: Optional[Grid] = None,
                        uncertainty: bool = False) -> SegmentationResult:
        """Segment already-loaded volumes; ``postprocess`` is a rule of :data:`lckd.postprocessing.RULES`
        or ``"model"`` (the rule the model card recommends, none if it names none). The label map
        lies on ``output_grid`` if given (``--preprocess``: the raw reference's grid), else on the
        reference volume's grid, and so does the voxel uncertainty map (with ``uncertainty``). The
        quality estimate comes from the members' spread, collected on the same passes."""
        reporter = reporter or Reporter()
        et_label = et_label_of(labels)
        seconds: Dict[str, float] = {}
        clock = time.perf_counter()
        reporter.stage("prepare", "resampling and normalising")
        prepared = prepare_case(dict(volumes), self.card.spacing_mm, self.normalisation, reference)
        if output_grid is not None:
            prepared = replace(prepared, reference_grid=output_grid)
        seconds["prepare"] = time.perf_counter() - clock

        clock = time.perf_counter()
        present = prepared.present
        missing = [SEQUENCE_TITLES[s] for s, p in zip(SEQUENCES, present) if not p]
        reporter.stage("infer", "segmenting" + (f" (missing: {', '.join(missing)})" if missing else ""))
        reporter.start_tiles(count_windows(prepared.images.shape[1:], self.card.tile_size)
                             * len(mirror_flips(self.mirror_axes)))
        images = torch.from_numpy(prepared.images).to(self.device)
        spread = MemberSpread() if self.members > 1 else None
        probabilities = sliding_window_probabilities(
            self.model, images, present, self.card.tile_size, sw_batch_size=self.sw_batch_size,
            reuse_absent=self.reuse_absent, on_tile=reporter.advance, mirror_axes=self.mirror_axes,
            on_member=spread)
        quality = spread.quality(probabilities) if spread is not None else None
        voxel_map = uncertainty_map(probabilities).cpu().numpy() if uncertainty else None
        probabilities = probabilities.cpu().numpy()
        seconds["infer"] = time.perf_counter() - clock

        clock = time.perf_counter()
        reporter.stage("finish", "mapping labels onto the reference grid")
        on_reference = probabilities_to_reference(probabilities, prepared)
        label_map = labels_from_regions(on_reference, threshold=0.5, et_label=et_label)
        grid: Grid = prepared.reference_grid
        rule = (self.card.postprocessing or "none") if postprocess == "model" else postprocess
        t1ce = None
        if "released" in parse_rule(rule) and "t1ce" in volumes:  # the released rule clusters oedema on T1ce
            t1ce = resample(volumes["t1ce"].data, volumes["t1ce"].affine, grid, order=1)
        label_map = apply_postprocessing(label_map, rule, grid.voxel_volume_mm3, et_label,
                                         spacing_mm=np.linalg.norm(grid.affine[:3, :3], axis=0), t1ce=t1ce)
        if voxel_map is not None:
            voxel_map = probabilities_to_reference(voxel_map[None], prepared)[0]
        seconds["finish"] = time.perf_counter() - clock
        return SegmentationResult(labels=label_map, affine=grid.affine, reference=prepared.reference,
                                  sequences=[s for s, p in zip(SEQUENCES, present) if p],
                                  volumes_ml=region_volumes_ml(label_map, grid.voxel_volume_mm3, et_label),
                                  seconds=seconds, quality=quality,
                                  review=needs_review(quality, self.card.review_below),
                                  members=self.members, uncertainty=voxel_map)

    def check_spread(self) -> None:
        """Refuse an uncertainty map where one member is averaged: it has no spread to map."""
        if self.members < 2:
            raise InputError(f"{self.card.name}: the model averages a single member here (one network, no "
                             f"test-time mirroring), so there is no spread to map; the uncertainty map needs a "
                             f"model with several networks or test-time mirroring (not with --no-tta)")

    def segment_to_file(self, files: Mapping[str, PathLike], output: PathLike, reporter: Optional[Reporter] = None,
                        uncertainty_output: Optional[PathLike] = None, **options) -> SegmentationResult:
        """Segment and write the label map (uint8 NIfTI) to ``output`` and, if given, the voxel uncertainty
        map (float32, same grid) to ``uncertainty_output``: both or neither."""
        reporter = reporter or Reporter()
        outputs = [Path(output)] + ([Path(uncertainty_output)] if uncertainty_output is not None else [])
        for path in outputs:
            if path.exists() and path.is_dir():
                raise InputError(f"{path}: the output path is a folder; give a file name such as tumour.nii.gz")
            if not (path.name.endswith(".nii.gz") or path.name.endswith(".nii")):
                raise InputError(f"{path}: the output must be a NIfTI file name ending in .nii.gz or .nii")
        result = self.segment_files(files, reporter=reporter, uncertainty=uncertainty_output is not None, **options)
        clock = time.perf_counter()
        reporter.stage("write", "writing " + " and ".join(str(path) for path in outputs))
        images = [(outputs[0], result.labels.astype(np.uint8))]
        if uncertainty_output is not None:
            images.append((outputs[1], result.uncertainty.astype(np.float32)))
        save_niftis([(path, data, result.affine) for path, data in images])
        result.seconds["write"] = time.perf_counter() - clock
        return result
