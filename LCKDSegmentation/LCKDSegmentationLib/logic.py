"""LCKDSegmentationLogic without Qt: export the inputs, run the segmenter process, import the result.

The scene is changed only when a finished run is imported: checking the inputs, exporting them,
running, failing and cancelling leave it exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

from lckd.sequences import SEQUENCE_TITLES, SEQUENCES

from .i18n import translator
from .modelCard import ModelSummary, readModelSummary
from .regionVolumes import regionVolumesMl
from .segmentationImport import ensureConverterRules, importLabelMap, removeNode
from .segmenterProcess import EventCallback, SegmenterProcess, pythonExecutable
from .sequenceAssignment import checkAssignment
from .uncertaintyOverlay import importUncertaintyMap
from .volumeExport import exportVolume

_ = translator(__file__)

#: How the segmenter's refusal of raw scans ends (lckd.input_check's fix), and what this module says instead.
CLI_PREPROCESS_FIX = "; run with --preprocess"

LIBRARY_FOLDER = Path(__file__).resolve().parent.parent  # holds the lckd package
#: Reference input when none is chosen: the same order as ``lckd segment``.
REFERENCE_ORDER = ("t1ce", "t1", "flair", "t2")
DEVICES = ("auto", "cuda", "cpu")
LABEL_CONVENTIONS = ("brats2018", "brats2023")
#: The uncertainty map's file name in a job's folder, beside the label map.
UNCERTAINTY_FILE = "uncertainty.nii"

ProgressCallback = Callable[[float, str], None]


class SegmentationError(RuntimeError):
    """The segmenter failed; the message is one line for the user."""


class OutOfMemoryError(SegmentationError):
    """The GPU ran out of memory; running on the CPU may work."""


@dataclass
class SegmentationOptions:
    modelPath: Path
    device: str = "auto"
    labels: str = "brats2018"
    postprocess: bool = False
    #: co-register and skull-strip raw scans first (``lckd segment --preprocess``)
    preprocess: bool = False
    #: skip the test-time mirroring the model card asks for (``lckd segment --no-tta``)
    skipMirroring: bool = False
    #: also make the voxel uncertainty map (``lckd segment --uncertainty``) and show it as an overlay
    uncertaintyMap: bool = False
    threads: Optional[int] = None
    reference: Optional[str] = None

    def check(self) -> None:
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"Unknown device '{self.device}'; choose from {', '.join(DEVICES)}.")
        if self.labels not in LABEL_CONVENTIONS:
            raise ValueError(f"Unknown label convention '{self.labels}'.")
        if self.reference is not None and self.reference not in SEQUENCES:
            raise ValueError(f"Unknown reference sequence '{self.reference}'.")
        if not Path(self.modelPath).is_file():
            raise ValueError(f"Model file not found: {self.modelPath}")
        if self.uncertaintyMap and readModelSummary(self.modelPath).averagedMembers(self.skipMirroring) < 2:
            raise ValueError(_("The uncertainty map shows where the networks and mirror images a model averages "
                               "disagree; this model averages only one here (one network without test-time "
                               "mirroring, or 'Faster: segment once' ticked)."))


@dataclass
class SegmentationJob:
    """A running segmentation: its process, its temporary folder and its inputs."""

    process: SegmenterProcess
    folder: Path
    output: Path
    volumes: Dict[str, object]
    reference: str
    options: SegmentationOptions
    started: float = field(default_factory=time.monotonic)

    @property
    def uncertaintyOutput(self) -> Optional[Path]:
        """Where the segmenter writes the uncertainty map, when asked for one."""
        return self.output.with_name(UNCERTAINTY_FILE) if self.options.uncertaintyMap else None

    @property
    def sequences(self) -> List[str]:
        return [sequence for sequence in SEQUENCES if sequence in self.volumes]


@dataclass
class SegmentationResult:
    """A finished run: the new segmentation node and what was measured."""

    segmentationNode: object
    volumesMl: Dict[str, float]
    segmenterVolumesMl: Dict[str, float]
    sequences: List[str]
    reference: str
    seconds: float
    event: Dict = field(default_factory=dict)
    #: the segmenter's quality estimate per region (ET, TC, WT; empty when it had no spread to measure)
    quality: Dict[str, float] = field(default_factory=dict)
    #: the regions it flagged for review
    review: List[str] = field(default_factory=list)
    #: the uncertainty map's volume node, when one was asked for
    uncertaintyNode: object = None


def inSlicerTerms(message: str, job: SegmentationJob) -> str:
    """The segmenter's message with the exported files named by their volumes, and its advice on
    raw scans given as this module's checkbox instead of the command-line option."""
    for sequence, node in job.volumes.items():
        message = message.replace(str(job.folder / f"{sequence}.nii"), node.GetName())
    if CLI_PREPROCESS_FIX in message:
        message = message.split(CLI_PREPROCESS_FIX)[0] + ". " + _(
            "Tick 'Preprocess raw scans (co-register, skull-strip)' in Inputs and segment again, or use "
            "scans that are already BraTS-ready (skull-stripped, co-registered, at most 3 mm slices).")
    return message


def referenceSequence(present, requested: Optional[str] = None) -> str:
    """The input whose grid the result uses."""
    if requested is not None:
        if requested not in present:
            raise ValueError(f"The reference {SEQUENCE_TITLES[requested]} is not among the inputs.")
        return requested
    return next(sequence for sequence in REFERENCE_ORDER if sequence in present)


class LCKDSegmentationLogic:
    """Segments any subset of FLAIR/T1/T1ce/T2 volume nodes into a segmentation node."""

    def __init__(self, python: Optional[str] = None, libraryFolder: Path = LIBRARY_FOLDER) -> None:
        self.python = python or pythonExecutable()
        self.libraryFolder = Path(libraryFolder)

    # -- model card --------------------------------------------------------------------------------

    @staticmethod
    def modelSummary(modelPath) -> ModelSummary:
        return readModelSummary(modelPath)

    # -- running -----------------------------------------------------------------------------------

    def command(self, inputs: Mapping[str, Path], output: Path, options: SegmentationOptions,
                reference: str) -> List[str]:
        """The ``lckd segment`` command line for exported inputs."""
        command = [self.python, "-m", "lckd", "segment"]
        for sequence in SEQUENCES:
            if sequence in inputs:
                command += [f"--{sequence}", str(inputs[sequence])]
        command += ["-o", str(output), "--model", str(Path(options.modelPath).resolve()), "--device", options.device,
                    "--reference", reference, "--labels", options.labels, "--progress", "json"]
        if options.postprocess:
            command.append("--postprocess")
        if options.preprocess:
            command.append("--preprocess")
        if options.skipMirroring:
            command.append("--no-tta")
        if options.uncertaintyMap:
            command += ["--uncertainty", str(Path(output).with_name(UNCERTAINTY_FILE))]
        if options.threads:
            command += ["--threads", str(int(options.threads))]
        return command

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.libraryFolder), env.get("PYTHONPATH")]))
        return env

    def start(self, volumes: Mapping[str, object], options: SegmentationOptions,
              onEvent: Optional[EventCallback] = None) -> SegmentationJob:
        """Check the inputs, export them in world space to a temporary folder, start the segmenter.

        Raises ValueError for unusable inputs or options (nothing is left behind).
        """
        chosen = checkAssignment(volumes)
        options.check()
        reference = referenceSequence(chosen, options.reference)
        folder = Path(tempfile.mkdtemp(prefix="LCKDSegmentation-"))
        try:
            # uncompressed: writing is fast (the application waits for it) and the files are temporary
            inputs = {sequence: exportVolume(node, folder / f"{sequence}.nii") for sequence, node in chosen.items()}
            output = folder / "segmentation.nii"
            process = SegmenterProcess(self.command(inputs, output, options, reference), env=self.environment(),
                                       cwd=str(self.libraryFolder), onEvent=onEvent)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return SegmentationJob(process=process, folder=folder, output=output, volumes=dict(chosen),
                               reference=reference, options=options)

    @staticmethod
    def cancel(job: SegmentationJob) -> None:
        """Kill the process tree and remove the temporary files; the scene is untouched."""
        job.process.cancel()
        shutil.rmtree(job.folder, ignore_errors=True)

    @staticmethod
    def failure(job: SegmentationJob) -> Optional[SegmentationError]:
        """The error of a finished job, or None when it produced a label map."""
        process = job.process
        if process.cancelled:
            return SegmentationError("The segmentation was cancelled.")
        outputs = [job.output] + ([job.uncertaintyOutput] if job.uncertaintyOutput is not None else [])
        if process.result is not None and process.process.returncode == 0 and all(path.is_file() for path in outputs):
            return None
        message = inSlicerTerms(process.error or "The segmenter produced no result.", job)
        if process.process.returncode == 3 or "out of memory" in message.lower():
            return OutOfMemoryError(message)
        return SegmentationError(message)

    def defaultName(self, job: SegmentationJob) -> str:
        referenceNode = job.volumes[job.reference]
        return f"{referenceNode.GetName()} tumour"

    def finish(self, job: SegmentationJob, scene, name: Optional[str] = None) -> SegmentationResult:
        """Import a finished job's label map as a new segmentation node; the temporary folder is removed.

        Raises SegmentationError (OutOfMemoryError for a GPU out of memory) when the run failed, and
        whatever reading or importing the result raised; the scene is then left as it was.
        """
        try:
            job.process.wait()
            error = self.failure(job)
            if error is not None:
                raise error
            event = job.process.result
            summary = readModelSummary(job.options.modelPath)
            quality = {region: float(value) for region, value in (event.get("quality") or {}).items()}
            review = [str(region) for region in event.get("review") or []]
            attributes = {"LCKDSegmentation.Sequences": "+".join(job.sequences),
                          "LCKDSegmentation.Reference": job.reference,
                          "LCKDSegmentation.Model": summary.name,
                          "LCKDSegmentation.Labels": job.options.labels,
                          "LCKDSegmentation.Quality": json.dumps(quality),
                          "LCKDSegmentation.Review": " ".join(review)}
            name = name or self.defaultName(job)
            referenceNode = job.volumes[job.reference]
            node = importLabelMap(scene, job.output, name, referenceVolumeNode=referenceNode, attributes=attributes)
            try:
                volumesMl = regionVolumesMl(node)
                uncertaintyNode = None if job.uncertaintyOutput is None else importUncertaintyMap(
                    scene, job.uncertaintyOutput, f"{name} uncertainty", referenceVolumeNode=referenceNode)
            except Exception:
                removeNode(scene, node)  # a result that cannot be measured is not left half-made in the scene
                raise
            return SegmentationResult(
                segmentationNode=node, volumesMl=volumesMl,
                segmenterVolumesMl=dict(event.get("volumes_ml") or {}), sequences=job.sequences,
                reference=job.reference, seconds=time.monotonic() - job.started, event=event,
                quality=quality, review=review, uncertaintyNode=uncertaintyNode)
        finally:
            shutil.rmtree(job.folder, ignore_errors=True)

    @staticmethod
    def showIn3D(segmentationNode, show: bool = True) -> None:
        """Build the segments' closed surfaces (once) and show or hide them in 3-D views."""
        if show:
            ensureConverterRules()
            if not segmentationNode.CreateClosedSurfaceRepresentation():
                raise RuntimeError("Could not build the segments' surfaces.")
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility3D(bool(show))

    def segment(self, scene, volumes: Mapping[str, object], options: SegmentationOptions,
                onProgress: Optional[ProgressCallback] = None, name: Optional[str] = None,
                timeout: Optional[float] = None) -> SegmentationResult:
        """Blocking: start, wait (``onProgress(fraction, message)`` on each event), import."""
        holder: Dict[str, SegmentationJob] = {}

        def report(event: Dict) -> None:
            if onProgress is not None and "job" in holder:
                process = holder["job"].process
                onProgress(process.overallFraction, str(event.get("message", "")))

        job = self.start(volumes, options, onEvent=report)
        holder["job"] = job
        try:
            job.process.wait(timeout=timeout)
        except BaseException:
            self.cancel(job)
            raise
        return self.finish(job, scene, name)
