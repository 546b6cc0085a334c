"""Which series of a study is FLAIR, T1, T1ce or T2, decided from the series' own attributes.

Rules, in order (each decision carries the reason that is printed):

1. *Not usable*: not MR, not an image (a segmentation, a report...), enhanced multi-frame images,
   a localiser (ImageType LOCALIZER, or a description such as "loc", "scout", "survey"), a derived or
   reformatted series (ImageType DERIVED, MPR, REFORMATTED, PROJECTION IMAGE; descriptions such as
   "MPR", "MIP", "reformat"), or a kind of MR the model does not read (diffusion, perfusion,
   susceptibility, angiography, spectroscopy, functional): skipped, with the reason.
2. *Names*: SeriesDescription and ProtocolName. FLAIR ("flair", "dark-fluid", "tirm", "t2f"; but a
   "T1 FLAIR" is T1-weighted), T1 ("t1", "mprage", "spgr", "bravo", "tfe", "vibe"...), T2 ("t2", not
   T2*). A T1 series is T1ce when its name says after contrast ("post", "+c", "gd", "contrast",
   "t1c", "t1ce"...), T1 when it says before ("pre", "native", "t1n"...), and otherwise T1ce exactly
   when the series records a contrast agent (ContrastBolusAgent, ContrastBolusAgentSequence or
   ContrastBolusVolume).
3. *Sequence parameters*, when the names say nothing: inversion recovery with TI >= 1500 ms and
   TR >= 4000 ms is FLAIR; TE >= 60 ms with TR >= 2000 ms (no long inversion) is T2; TR <= 1000 ms
   with TE <= 30 ms, or an inversion-prepared gradient echo (TI 600-1300 ms, TE <= 10 ms, TR <= 3000
   ms) is T1, and T1ce with a contrast agent.

:func:`select_series` then takes one series per sequence: the user's choice (``--t1ce-series UID``)
where given, else the one candidate; two candidates for one sequence are an error listing them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import InputError
from ..sequences import SEQUENCE_TITLES, SEQUENCES
from .study import Series, Study

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3")

_LOCALISER = re.compile(r"\b(loc\b|locali[sz]er|scout|survey|3[\s_-]?pl(ane)?|tri[\s_-]?pilot|aahead|plane[\s_-]?loc)")
_DERIVED_TYPES = ("DERIVED", "MPR", "REFORMATTED", "PROJECTION IMAGE", "MIP", "SUBTRACTION", "SECONDARY")
_REFORMAT = re.compile(r"(\bmpr\b|\bmip\b|reformat|subtract|\bsub\b)")
_OTHER_KINDS = (
    ("diffusion-weighted", re.compile(r"(dwi|diff|dti|\badc\b|trace|\bb[\s_-]?\d{3,4}\b|tensor)")),
    ("perfusion", re.compile(r"(perf|\bdsc\b|\bdce\b|\basl\b|\bpwi\b|pcasl)")),
    ("susceptibility-weighted", re.compile(r"(swi|\bswan\b|t2\s*\*|t2[\s_-]?star|\bhemo|\bgre[\s_-]?t2|suscept)")),
    ("angiography", re.compile(r"(\btof\b|\bmra\b|angio)")),
    ("spectroscopy", re.compile(r"(spectro|\bmrs\b|\bsvs\b|\bcsi\b)")),
    ("functional", re.compile(r"(\bbold\b|fmri|resting)")),
)
_FLAIR = re.compile(r"(flair|dark[\s_-]?fluid|\btirm|(?<![a-z0-9])t2[\s_-]?f(?![a-z0-9]))")
_T1_FLAIR = re.compile(r"(?<![a-z0-9])t1[\s_-]*(w[\s_-]*)?flair")
_T1 = re.compile(r"((?<![a-z0-9])t1(?!\d)|mp[\s_-]?rage|mp2rage|\bspgr|\bbravo|\btfe\b|\bvibe\b|\bflash\b|\bfspgr)")
_T2 = re.compile(r"(?<![a-z0-9])t2(?!\d)")
_POST = re.compile(r"(post|\+\s*c\b|\bc\s*\+|\+\s*gd|\bgd\b|\bgad|gado|contrast|kontrast|\bce\b|enhanc|"
                   r"(?<![a-z0-9])t1[\s_-]?(c|ce|gd|km)(?![a-z0-9])|\bkm\b)")
_PRE = re.compile(r"(\bpre\b|pre[\s_-]?(contrast|gd|gad|c\b)|precontrast|\bnative?\b|nativ|\bplain\b|"
                  r"non[\s_-]?contrast|w/?o[\s_-]?contrast|(?<![a-z0-9])t1[\s_-]?n(?![a-z0-9]))")
_NO_AGENT = ("", "none", "no", "0", "n/a", "na", "nil")


@dataclass
class Recognition:
    """What a series is: ``sequence`` (one of :data:`lckd.sequences.SEQUENCES`) or None, and why."""

    sequence: Optional[str]
    reason: str


def _text(series: Series) -> str:
    """SeriesDescription and ProtocolName in lower case, underscores as spaces (``t1_se_tra_KM``: words)."""
    names = " ".join(str(series.attribute(keyword)).strip() for keyword in ("SeriesDescription", "ProtocolName"))
    return names.lower().replace("_", " ")


def _names(series: Series) -> str:
    """The series' names as a reason quotes them."""
    values = {keyword: str(series.attribute(keyword)).strip() for keyword in ("SeriesDescription", "ProtocolName")}
    parts = [f"{keyword} {value!r}" for keyword, value in values.items() if value]
    return ", ".join(parts) if parts else "no SeriesDescription or ProtocolName"


def _image_type(series: Series) -> Tuple[str, ...]:
    value = series.attribute("ImageType", ())
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in values)


def _number(series: Series, keyword: str) -> Optional[float]:
    try:
        value = float(series.attribute(keyword, None))
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # NaN: absent


def contrast_agent(series: Series) -> str:
    """What the series records of a contrast agent ('' when nothing)."""
    agent = str(series.attribute("ContrastBolusAgent")).strip()
    if agent.lower() not in _NO_AGENT:
        return f"ContrastBolusAgent {agent!r}"
    if series.attribute("ContrastBolusAgentSequence", None):
        return "a ContrastBolusAgentSequence"
    volume = _number(series, "ContrastBolusVolume")
    if volume:
        return f"ContrastBolusVolume {volume:g} mL"
    return ""


def _unusable(series: Series) -> str:
    """Why the series cannot be a sequence input ('' when it can)."""
    modality = str(series.attribute("Modality")).strip().upper()
    sop_class = str(series.attribute("SOPClassUID"))
    if sop_class in ENHANCED_MR_STORAGE:
        return "enhanced multi-frame MR images (lckd reads series of single-frame MR images)"
    if modality != "MR":
        return f"modality {modality or 'unknown'}, not MR"
    if sop_class != MR_IMAGE_STORAGE:
        from pydicom.uid import UID

        return f"not an MR image ({UID(sop_class).name})"
    text = _text(series)
    image_type = _image_type(series)
    if "LOCALIZER" in image_type or _LOCALISER.search(text):
        return f"a localiser ({'ImageType LOCALIZER' if 'LOCALIZER' in image_type else _names(series)})"
    derived = [value for value in image_type if value in _DERIVED_TYPES]
    if derived:
        return f"derived or reformatted (ImageType {chr(92).join(image_type)})"
    if _REFORMAT.search(text):
        return f"derived or reformatted ({_names(series)})"
    for kind, pattern in _OTHER_KINDS:
        if pattern.search(text):
            return f"{kind} ({_names(series)}), not FLAIR, T1, T1ce or T2"
    return ""


def _t1_or_t1ce(series: Series, named: str) -> Recognition:
    """A T1-weighted series: before or after contrast, by its names, else by its contrast attributes."""
    text = _text(series)
    pre = _PRE.search(text)
    post = _POST.search(_PRE.sub(" ", text))  # "precontrast", "non-contrast" say nothing of after
    agent = contrast_agent(series)
    if post and pre:
        return Recognition(None, f"{named}, but its names say both before and after contrast")
    if post:
        return Recognition("t1ce", f"{named}, after contrast ({post.group(0).strip()!r})")
    if pre:
        ignored = f"; {agent} ignored" if agent else ""
        return Recognition("t1", f"{named}, before contrast ({pre.group(0).strip()!r}{ignored})")
    if agent:
        return Recognition("t1ce", f"{named}, with {agent}")
    return Recognition("t1", f"{named}, no contrast agent recorded")


def _by_parameters(series: Series) -> Recognition:
    """Recognition from TR, TE and TI when the names say nothing."""
    tr, te, ti = (_number(series, k) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    shown = ", ".join(f"{name} {value:g} ms" for name, value in (("TR", tr), ("TE", te), ("TI", ti))
                      if value is not None) or "no TR, TE or TI"
    what = f"{_names(series)}; {shown}"
    if tr is None or te is None:
        return Recognition(None, f"not recognised: {what}")
    long_inversion = ti is not None and ti >= 1500
    if long_inversion and tr >= 4000:
        return Recognition("flair", f"{what}: fluid-attenuated inversion recovery (TI >= 1500 ms)")
    if te >= 60 and tr >= 2000 and not long_inversion:
        return Recognition("t2", f"{what}: T2-weighted (long TE and TR)")
    short = tr <= 1000 and te <= 30
    prepared = ti is not None and 600 <= ti <= 1300 and te <= 10 and tr <= 3000
    if short or prepared:
        return _t1_or_t1ce(series, f"{what}: T1-weighted ({'short TR and TE' if short else 'inversion-prepared'})")
    return Recognition(None, f"not recognised: {what}")


def recognise(series: Series) -> Recognition:
    """The sequence a series holds, or None, with the reason (see the module's rules)."""
    problem = _unusable(series)
    if problem:
        return Recognition(None, problem)
    text = _text(series)
    names = _names(series)
    t1_flair = _T1_FLAIR.search(text)
    if _FLAIR.search(text) and not t1_flair:
        return Recognition("flair", f"named FLAIR ({names})")
    if t1_flair or _T1.search(text):
        return _t1_or_t1ce(series, f"named T1 ({names})")
    if _T2.search(text):
        return Recognition("t2", f"named T2 ({names})")
    return _by_parameters(series)


@dataclass
class Selection:
    """The series taken for each sequence and why, and what became of the others."""

    chosen: Dict[str, Series] = field(default_factory=dict)
    reasons: Dict[str, str] = field(default_factory=dict)
    passed_over: List[Tuple[Series, str]] = field(default_factory=list)

    def lines(self) -> List[str]:
        """The report printed before segmenting: one line per sequence taken, one per series not taken."""
        lines = [f"{SEQUENCE_TITLES[name]:6s} <- {self.chosen[name].label()}: {self.reasons[name]}"
                 for name in SEQUENCES if name in self.chosen]
        lines += [f"skipped   {series.label()}: {reason}" for series, reason in self.passed_over]
        return lines


def select_series(study: Study, overrides: Optional[Dict[str, str]] = None,
                  wanted: Optional[Sequence[str]] = None) -> Selection:
    """One series per sequence: ``overrides`` ({sequence: SeriesInstanceUID}) first, then the one
    recognised candidate. ``wanted`` limits the sequences taken (``--sequences``). Raises
    :class:`InputError` for an override naming no series of the study, two candidates for one
    sequence (listing them), or a study where no sequence is recognised (listing every series)."""
    overrides = dict(overrides or {})
    wanted = list(wanted) if wanted else list(SEQUENCES)
    selection = Selection()
    taken = set()
    for name, uid in overrides.items():
        series = study.find(uid)
        if series is None:
            listed = "; ".join(s.label() for s in study.series)
            raise InputError(f"{study.folder}: --{name}-series {uid}: no such series in the study (it holds {listed})")
        if series.uid in taken:
            raise InputError(f"--{name}-series {uid}: the same series is given for two sequences")
        if name not in wanted:
            raise InputError(f"--{name}-series {uid}: {SEQUENCE_TITLES[name]} is left out by --sequences")
        taken.add(series.uid)
        selection.chosen[name] = series
        selection.reasons[name] = f"chosen with --{name}-series (recognised as: {recognise(series).reason})"
    candidates: Dict[str, List[Tuple[Series, str]]] = {name: [] for name in SEQUENCES}
    for series in study.series:
        if series.uid in taken:
            continue
        recognition = recognise(series)
        if recognition.sequence is None:
            selection.passed_over.append((series, recognition.reason))
        elif recognition.sequence in selection.chosen:
            selection.passed_over.append((series, f"{recognition.reason}; --{recognition.sequence}-series "
                                                  f"chose another"))
        elif recognition.sequence not in wanted:
            selection.passed_over.append((series, f"{recognition.reason}; not asked for (--sequences)"))
        else:
            candidates[recognition.sequence].append((series, recognition.reason))
    for name in SEQUENCES:
        found = candidates[name]
        if len(found) > 1:
            listed = "; ".join(f"{series.label()}: {reason}" for series, reason in found)
            raise InputError(f"{study.folder}: {len(found)} series could be {SEQUENCE_TITLES[name]} ({listed}); "
                             f"choose one with --{name}-series UID, or leave {SEQUENCE_TITLES[name]} out with "
                             f"--sequences")
        if found:
            selection.chosen[name], selection.reasons[name] = found[0]
    if not selection.chosen:
        listed = "; ".join(f"{series.label()}: {reason}" for series, reason in selection.passed_over)
        raise InputError(f"{study.folder}: no series recognised as FLAIR, T1, T1ce or T2 ({listed}); name them with "
                         f"--flair-series, --t1-series, --t1ce-series or --t2-series UID")
    return selection
