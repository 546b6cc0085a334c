"""Model files: one ``.safetensors`` file whose metadata carries a JSON model card.

A file holds one network, or several of one architecture whose probabilities are averaged (an
ensemble, :class:`lckd.ensemble.NetworkEnsemble`: card field ``members``, tensors named
``members.K.<name>``, format version 2, which programs older than ensembles refuse by name).

Loading never unpickles anything: the file must be a safetensors file (an 8-byte header length,
a JSON header, raw tensor bytes). A pickle or a PyTorch zip checkpoint is refused whatever its
extension. :func:`read_card` parses only the header, with the standard library, so a program
without torch (the Slicer GUI) can show the card.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .errors import ModelFileError
from .io import PathLike, atomic_path
from .postprocessing import RULES as POSTPROCESSING_RULES
from .sequences import REGIONS, SEQUENCES

FORMAT = "lckd-model"
FORMAT_VERSION = 2  # the newest this program reads
SINGLE_NETWORK_VERSION = 1  # written for one network, so programs older than ensembles read it
CARD_KEY = "lckd_model_card"
#: a pickle starts with PROTO (0x80) and its protocol, 2-5 (a safetensors header length may start with 0x80)
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass
class ModelCard:
    """What a model is and how it must be used; stored as JSON inside the model file."""

    preset: str
    network: Dict[str, Any]
    tile_size: List[int]
    spacing_mm: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    normalisation: Dict[str, Any] = field(default_factory=dict)
    method: str = "lckd"
    teachers: Optional[Dict[str, Any]] = None
    importance: Optional[Dict[str, float]] = None
    validation: Optional[Dict[str, Any]] = None
    # per region (ET, TC, WT): a quality estimate below this flags the region for review, as measured for
    # this model (Testing/Benchmarks/uncertainty_calibration.py --write-card); None: lckd.uncertainty.REVIEW_BELOW
    review_below: Optional[Dict[str, float]] = None
    postprocessing: str = ""  # the rule `lckd segment` applies by default (lckd.postprocessing.RULES); "" none
    # network axes (0 z, 1 y, 2 x) that test-time mirroring flips by default (lckd.inference.mirror_flips)
    mirror_axes: List[int] = field(default_factory=list)
    training: Dict[str, Any] = field(default_factory=dict)
    members: int = 1  # networks in the file; more than one: an ensemble, probabilities averaged
    name: str = "unnamed"
    description: str = ""
    sequences: List[str] = field(default_factory=lambda: list(SEQUENCES))
    regions: List[str] = field(default_factory=lambda: list(REGIONS))
    axis_order: str = "zyx-ras"
    format: str = FORMAT
    format_version: int = SINGLE_NETWORK_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Dict[str, Any], source: str = "model card") -> ModelCard:
        if not isinstance(values, dict):
            raise ModelFileError(f"{source}: the model card is not a JSON object")
        if values.get("format") != FORMAT:
            raise ModelFileError(f"{source}: not an LCKD model card (format {values.get('format')!r})")
        version = values.get("format_version", -1)
        if not _is_int(version):
            raise ModelFileError(f"{source}: model card field format_version is {version!r}, not a whole number")
        if version > FORMAT_VERSION:
            raise ModelFileError(f"{source}: model format version {values.get('format_version')} is newer than "
                                 f"this program supports ({FORMAT_VERSION}); update LCKDSegmentation")
        known = set(cls.__dataclass_fields__)
        try:
            card = cls(**{key: value for key, value in values.items() if key in known})
        except TypeError as error:
            raise ModelFileError(f"{source}: incomplete model card ({error})") from None
        if card.sequences != list(SEQUENCES) or card.regions != list(REGIONS):
            raise ModelFileError(f"{source}: unsupported sequence or region order {card.sequences} / {card.regions}")
        _check_fields(card, source)
        if card.postprocessing and card.postprocessing not in POSTPROCESSING_RULES:
            raise ModelFileError(f"{source}: postprocessing {card.postprocessing!r} is not one of "
                                 f"{', '.join(POSTPROCESSING_RULES)}")
        return card

    def expected_dice(self, subset_key: str) -> Optional[Dict[str, float]]:
        """The validation Dice per region for a subset key (e.g. ``"flair+t1ce"``), if known."""
        if not self.validation:
            return None
        return self.validation.get("subsets", {}).get(subset_key)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _check_fields(card: ModelCard, source: str) -> None:
    """Refuse a card whose fields the code would trip over, with the field named."""

    def refuse(name: str, value: Any, expected: str) -> None:
        raise ModelFileError(f"{source}: model card field {name} is {value!r}; expected {expected}")

    if not isinstance(card.tile_size, list) or len(card.tile_size) != 3 or \
            not all(_is_int(v) and v > 0 for v in card.tile_size):
        refuse("tile_size", card.tile_size, "three positive whole numbers")
    if not isinstance(card.spacing_mm, list) or len(card.spacing_mm) != 3 or \
            not all(_is_number(v) and v > 0 for v in card.spacing_mm):
        refuse("spacing_mm", card.spacing_mm, "three positive numbers of millimetres")
    for name in ("preset", "method", "name", "description", "postprocessing", "axis_order"):
        if not isinstance(getattr(card, name), str):
            refuse(name, getattr(card, name), "a text")
    if not isinstance(card.mirror_axes, list) or len(set(card.mirror_axes)) != len(card.mirror_axes) or \
            not all(_is_int(v) and 0 <= v <= 2 for v in card.mirror_axes):
        refuse("mirror_axes", card.mirror_axes, "a list of distinct network axes 0, 1, 2")
    if not _is_int(card.members) or card.members < 1:
        refuse("members", card.members, "a whole number of networks, 1 or more")
    if card.axis_order != "zyx-ras":
        refuse("axis_order", card.axis_order, "'zyx-ras'")
    for name in ("network", "normalisation", "training"):
        if not isinstance(getattr(card, name), dict):
            refuse(name, getattr(card, name), "a JSON object")
    for name in ("teachers", "validation"):
        if getattr(card, name) is not None and not isinstance(getattr(card, name), dict):
            refuse(name, getattr(card, name), "a JSON object or null")
    if card.importance is not None and (not isinstance(card.importance, dict) or
                                        not all(_is_number(v) for v in card.importance.values())):
        refuse("importance", card.importance, "an object of numbers or null")
    if card.normalisation:
        from .preprocess import Normalisation

        try:
            settings = Normalisation.from_dict(card.normalisation)
        except (TypeError, ValueError) as error:
            raise ModelFileError(f"{source}: model card field normalisation is invalid ({error})") from None
        for name in ("histogram_bins", "min_bin_count"):
            value = getattr(settings, name)
            if not _is_int(value) or value < (1 if name == "histogram_bins" else 0):
                refuse(f"normalisation.{name}", value, "a positive whole number" if name == "histogram_bins"
                       else "a whole number >= 0")
    if card.review_below is not None and (
            not isinstance(card.review_below, dict) or sorted(card.review_below) != ["ET", "TC", "WT"]
            or not all(_is_number(v) and 0 <= v <= 1 for v in card.review_below.values())):
        refuse("review_below", card.review_below, "an object of ET, TC and WT thresholds between 0 and 1, or null")
    if card.validation is not None:
        subsets = card.validation.get("subsets", {})
        if not isinstance(subsets, dict) or not all(isinstance(v, dict) for v in subsets.values()):
            refuse("validation.subsets", subsets, "an object of per-subset Dice objects")


def _describe_foreign(head: bytes) -> Optional[str]:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a PyTorch .pt/.pth checkpoint?)"
    if head[:1] == b"\x80" and head[1:2] in PICKLE_PROTOCOLS:
        return "a Python pickle"
    return None


def _read_header(path: Path) -> Tuple[Dict[str, Any], int]:
    """Parse and validate the safetensors header; returns (header, data offset)."""
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file (give the .safetensors file)")
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    with open(path, "rb") as handle:
        head = handle.read(8)
        foreign = _describe_foreign(head)
        if foreign:
            raise ModelFileError(f"{path}: this is {foreign}, not an LCKD model; pickled files are never loaded "
                                 f"(LCKD models are .safetensors files)")
        if len(head) < 8:
            raise ModelFileError(f"{path}: not an LCKD model file (too short)")
        (length,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if length < 2 or length > min(_MAX_HEADER_BYTES, size - 8):
            raise ModelFileError(f"{path}: not an LCKD model file (no safetensors header)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: not an LCKD model file (damaged safetensors header)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not an LCKD model file (damaged safetensors header)")
    data_bytes = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not offsets or offsets[1] > data_bytes:
            raise ModelFileError(f"{path}: truncated or damaged model file (tensor {name!r} lies past the end)")
    return header, 8 + length


def read_card(path: PathLike) -> ModelCard:
    """The model card of a model file, without torch and without reading the weights."""
    path = Path(path)
    header, _ = _read_header(path)
    metadata = header.get("__metadata__") or {}
    if CARD_KEY not in metadata:
        raise ModelFileError(f"{path}: a safetensors file without an LCKD model card; not an LCKD model")
    try:
        values = json.loads(metadata[CARD_KEY])
    except json.JSONDecodeError:
        raise ModelFileError(f"{path}: the model card is not valid JSON") from None
    return ModelCard.from_dict(values, source=str(path))


def save_model(path: PathLike, model, card: ModelCard) -> Path:
    """Write the weights of ``model`` (an :class:`~lckd.network.LCKDNet` or a
    :class:`~lckd.ensemble.NetworkEnsemble`) and ``card`` atomically to ``path`` (``.safetensors``);
    the card's ``members`` and ``format_version`` are set from the model."""
    from safetensors.torch import save_file

    from .ensemble import networks_of
    from .network import NetworkConfig

    if NetworkConfig.from_dict(card.network) != model.config:
        raise ModelFileError(f"{path}: the card's network settings differ from the model's")
    members = len(networks_of(model))
    card = replace(card, members=members, format_version=SINGLE_NETWORK_VERSION if members == 1 else FORMAT_VERSION)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata={CARD_KEY: card.to_json()})
    return Path(path)


@contextlib.contextmanager
def _random_initialisation_skipped() -> Iterator[None]:
    """Build modules without drawing their random initial weights, when every weight is loaded
    next: torch.nn.init's random fills are no-ops meanwhile (as Hugging Face transformers does
    when it loads a checkpoint). Drawing them took 0.58 s of the paper preset's 0.60 s build."""
    from torch.nn import init

    names = ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_")
    saved = {name: getattr(init, name) for name in names}
    for name in names:
        setattr(init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def load_model(path: PathLike, device: str = "cpu"):
    """Build the network described by the card (a :class:`~lckd.ensemble.NetworkEnsemble` when it
    has several members) and load its weights; returns (model, card)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .ensemble import NetworkEnsemble
    from .network import PRESETS, LCKDNet, NetworkConfig

    path = Path(path)
    card = read_card(path)
    try:
        config = NetworkConfig.from_dict(card.network)
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: invalid network settings in the model card ({error})") from None
    if card.preset in PRESETS and PRESETS[card.preset] != config:
        raise ModelFileError(f"{path}: the card says preset {card.preset!r} but its network settings differ "
                             f"from that preset")
    factor = config.downsampling
    if any(int(t) % f for t, f in zip(card.tile_size, factor)):
        raise ModelFileError(f"{path}: tile size {card.tile_size} is not a multiple of {list(factor)}")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{path}: damaged model file ({error})") from None
    with _random_initialisation_skipped():
        networks = [LCKDNet(config) for _ in range(card.members)]
    model = networks[0] if card.members == 1 else NetworkEnsemble(networks)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:3]
        wrong = sorted(n for n in set(expected) & set(found) if expected[n] != found[n])[:3]
        raise ModelFileError(f"{path}: the weights do not match preset {card.preset!r} "
                             f"(missing {missing or 'none'}, wrong shape {wrong or 'none'})")
    model.load_state_dict(state)  # strict: every parameter is overwritten
    return model.to(device), card
