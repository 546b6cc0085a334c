"""The panel's segmentation job without Qt: start, progress, cancel, finish.

Every way a run can end is an :class:`Outcome`: a result, or one message for the user (also logged)
with the job gone, so that the panel returns to Segment; failures and cancelling leave the scene as
it was (the logic removes what it started to add).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional

from .i18n import translator
from .logic import LCKDSegmentationLogic, OutOfMemoryError, SegmentationJob, SegmentationOptions, SegmentationResult

_ = translator(__file__)


@dataclass
class Progress:
    """What a poll found: new log lines, the overall percentage, whether the process has ended."""

    messages: List[str] = field(default_factory=list)
    percent: int = 0
    finished: bool = False


@dataclass
class Outcome:
    """How a run ended: ``result``, or ``error`` (a message for the user); ``offerCpu`` after a GPU ran
    out of memory."""

    job: Optional[SegmentationJob] = None
    result: Optional[SegmentationResult] = None
    error: Optional[str] = None
    offerCpu: bool = False


class SegmentationRun:
    """At most one running job; ``log(message)`` receives every line the panel shows in its log."""

    def __init__(self, logic: LCKDSegmentationLogic, log: Callable[[str], None]) -> None:
        self.logic = logic
        self.log = log
        self.job: Optional[SegmentationJob] = None

    @property
    def running(self) -> bool:
        return self.job is not None

    def _failed(self, error: BaseException, job: Optional[SegmentationJob] = None) -> Outcome:
        logging.error(f"LCKDSegmentation: segmentation failed: {type(error).__name__}: {error}")
        self.log(_("Failed: {error}").format(error=error))
        return Outcome(job=job, error=_("The segmentation failed: {error}").format(error=error))

    def start(self, volumes: Mapping[str, object], options: SegmentationOptions) -> Optional[str]:
        """Start a job; None when it runs, else the message to show (nothing was started or changed)."""
        if self.job is not None:
            return _("A segmentation is already running.")
        try:
            self.job = self.logic.start(volumes, options)
        except ValueError as error:  # unusable inputs or options: the user can fix them
            self.log(str(error))
            return str(error)
        except Exception as error:
            return self._failed(error).error
        self.log(_("Segmenting {sequences} with {model}...").format(
            sequences=" + ".join(self.job.sequences), model=Path(str(options.modelPath)).name))
        return None

    def poll(self) -> Progress:
        """New messages and progress of the running job (nothing when none runs)."""
        job = self.job
        if job is None:
            return Progress(finished=True)
        messages = [str(event["message"]) for event in job.process.poll()
                    if event.get("event") in ("stage", "log", "error") and event.get("message")]
        for message in messages:
            self.log(message)
        return Progress(messages, int(100 * job.process.overallFraction), job.process.finished)

    def finish(self, scene) -> Outcome:
        """Import the finished job's result into ``scene``; the job is gone afterwards, whatever happened."""
        job, self.job = self.job, None
        if job is None:
            return Outcome(error=_("No segmentation is running."))
        try:
            result = self.logic.finish(job, scene)
        except OutOfMemoryError as error:
            self.log(str(error))
            return Outcome(job=job, error=str(error), offerCpu=job.options.device != "cpu")
        except Exception as error:  # whatever it is, the panel must get back to Segment
            return self._failed(error, job)
        self.log(_("Done in {seconds:.1f} s: {name}.").format(seconds=result.seconds,
                                                              name=result.segmentationNode.GetName()))
        return Outcome(job=job, result=result)

    def cancel(self) -> None:
        """Stop the running job (its whole process tree) and remove its files; the scene is untouched."""
        job, self.job = self.job, None
        if job is None:
            return
        try:
            self.logic.cancel(job)
        except Exception as error:
            logging.error(f"LCKDSegmentation: cancelling failed: {error}")
        self.log(_("Cancelled; the scene was left as it was."))
