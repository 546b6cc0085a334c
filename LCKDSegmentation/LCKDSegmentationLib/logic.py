"""LCKDSegmentationLogic without Qt: export inputs, run the segmenter process, import the result."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from lckd.sequences import SEQUENCES

from .segmentationImport import importLabelMap
from .segmenterProcess import SegmenterProcess, pythonExecutable
from .sequenceAssignment import checkAssignment
from .volumeExport import exportVolume

LIBRARY_FOLDER = Path(__file__).resolve().parent.parent  # holds the lckd package


@dataclass
class SegmentationOptions:
    modelPath: Path
    device: str = "auto"
    labels: str = "brats2018"
    postprocess: bool = False


@dataclass
class SegmentationJob:
    """A running segmentation: its process, its temporary folder and its inputs."""

    process: SegmenterProcess
    folder: Path
    output: Path
    volumes: Dict[str, object]
    reference: str
    log: List[str] = field(default_factory=list)


class LCKDSegmentationLogic:
    """Segments any subset of FLAIR/T1/T1ce/T2 volume nodes into a segmentation node."""

    def __init__(self, python: Optional[str] = None) -> None:
        self.python = python or pythonExecutable()

    def expectationText(self, modelPath: Path, present: List[str]) -> str:
        """What the chosen subset costs, from the model card's validation table (Dice per region)."""
        from lckd.model_file import read_card
        from lckd.sequences import SEQUENCE_TITLES, subset_key

        card = read_card(modelPath)
        chosen = card.expected_dice(subset_key(present))
        full = card.expected_dice(subset_key(SEQUENCES))
        missing = [SEQUENCE_TITLES[s] for s in SEQUENCES if s not in present]
        if chosen is None:
            return "This model has no validation table for this combination of sequences."

        def scores(values):
            return ", ".join(f"{region} {values[region]:.2f}" for region in ("ET", "TC", "WT"))

        text = f"Expected Dice with these inputs: {scores(chosen)}"
        if missing and full is not None:
            text += f" (missing {', '.join(missing)}; with all four: {scores(full)})"
        return text + "."

    def command(self, inputs: Mapping[str, Path], output: Path, options: SegmentationOptions,
                reference: str) -> List[str]:
        command = [self.python, "-m", "lckd", "segment", "-o", str(output), "--model", str(options.modelPath),
                   "--device", options.device, "--labels", options.labels, "--reference", reference,
                   "--progress", "json"]
        for sequence, path in inputs.items():
            command += [f"--{sequence}", str(path)]
        if options.postprocess:
            command.append("--postprocess")
        return command

    def start(self, volumes: Mapping[str, object], options: SegmentationOptions) -> SegmentationJob:
        """Check the inputs, export them in world space to a temporary folder, start the segmenter."""
        chosen = checkAssignment(volumes)
        reference = next(s for s in ("t1ce", "t1", "flair", "t2") if s in chosen)
        folder = Path(tempfile.mkdtemp(prefix="LCKDSegmentation-"))
        try:
            inputs = {sequence: exportVolume(chosen[sequence], folder / f"{sequence}.nii.gz")
                      for sequence in SEQUENCES if sequence in chosen}
            output = folder / "segmentation.nii.gz"
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LIBRARY_FOLDER), env.get("PYTHONPATH")]))
            process = SegmenterProcess(self.command(inputs, output, options, reference), env=env)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return SegmentationJob(process=process, folder=folder, output=output, volumes=dict(chosen),
                               reference=reference)

    def cancel(self, job: SegmentationJob) -> None:
        """Kill the process tree and remove the temporary files; the scene is untouched."""
        job.process.cancel()
        shutil.rmtree(job.folder, ignore_errors=True)

    def finish(self, job: SegmentationJob, scene, name: str = "Brain tumour"):
        """Import the finished job's label map; returns (segmentation node, done event)."""
        try:
            if job.process.cancelled:
                raise RuntimeError("The segmentation was cancelled.")
            if job.process.result is None or not job.output.is_file():
                raise RuntimeError(job.process.error or "The segmenter produced no result.")
            node = importLabelMap(scene, job.output, name, referenceVolumeNode=job.volumes[job.reference])
            return node, job.process.result
        finally:
            shutil.rmtree(job.folder, ignore_errors=True)

    def segment(self, scene, volumes: Mapping[str, object], options: SegmentationOptions, onEvent=None,
                name: str = "Brain tumour"):
        """Blocking convenience: start, wait (events to ``onEvent``), import."""
        job = self.start(volumes, options)
        job.process.wait(onEvent)
        if job.process.cancelled:
            self.cancel(job)
            return None, None
        return self.finish(job, scene, name)
