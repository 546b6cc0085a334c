"""``lckd ensemble``: trained model files of one architecture joined into one model file whose
networks' probabilities are averaged (:class:`lckd.ensemble.NetworkEnsemble`).

The ensemble's card keeps what every network shares (architecture, tile, spacing, normalisation),
lists each network's own card (method, teachers or importance weights, training, validation
averages) under ``training.members``, and has no validation table until ``lckd evaluate
--write-card`` measures the ensemble itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from lckd.errors import LCKDError
from lckd.model_file import ModelCard, load_model, read_card, save_model

from .trainer import describe_model_file

#: card fields the networks of one ensemble must share (one sliding window runs them all)
SHARED_FIELDS = ("preset", "network", "tile_size", "spacing_mm", "normalisation", "sequences", "regions",
                 "axis_order")


def _member(path: Path, card: ModelCard) -> Dict[str, Any]:
    """What the ensemble's card records of one network: its file and its own card's essentials."""
    return {**describe_model_file(path), "method": card.method, "teachers": card.teachers,
            "importance": card.importance, "validation_average": (card.validation or {}).get("average"),
            "training": card.training}


def _common(cards: Sequence[ModelCard], paths: Sequence[Path], name: str, remedy: str):
    """The value of card field ``name`` that every card shares; refused (saying ``remedy``) if they differ."""
    values = [getattr(card, name) for card in cards]
    for path, value in zip(paths[1:], values[1:]):
        if value != values[0]:
            raise LCKDError(f"{path}: its {name} differs from {paths[0].name}'s ({value!r} against {values[0]!r}); "
                            f"{remedy}")
    return values[0]


def ensemble_card(paths: Sequence[Path], cards: Sequence[ModelCard], name: str, description: str = "",
                  mirror_axes: Optional[List[int]] = None, postprocessing: Optional[str] = None,
                  command: str = "", review_below: Optional[Dict[str, float]] = None) -> ModelCard:
    """The card of the ensemble of the networks in ``paths`` (with their ``cards``).

    ``mirror_axes`` and ``postprocessing`` default to the networks' common ones. ``review_below`` (the
    review thresholds) is never taken from the networks: their members, so their agreement, differ. The
    training cases are every network's; the validation cases those that every network held out and none
    trained on.
    """
    for field_name in SHARED_FIELDS:
        _common(cards, paths, field_name, f"the networks of an ensemble must share {', '.join(SHARED_FIELDS)}")
    if mirror_axes is None:
        mirror_axes = _common(cards, paths, "mirror_axes", "give --mirror-axes")
    if postprocessing is None:
        postprocessing = _common(cards, paths, "postprocessing", "give --postprocess")
    trained = sorted({case for card in cards for case in card.training.get("training_cases") or []})
    held_out = [case for case in cards[0].training.get("validation_cases") or []
                if all(case in (card.training.get("validation_cases") or []) for card in cards) and case not in trained]
    methods = sorted({card.method for card in cards})
    first = cards[0]
    return ModelCard(preset=first.preset, network=first.network, tile_size=first.tile_size,
                     spacing_mm=first.spacing_mm, normalisation=first.normalisation, method="+".join(methods),
                     postprocessing=postprocessing, mirror_axes=list(mirror_axes), name=name,
                     description=description, review_below=review_below,
                     training={"members": [_member(path, card) for path, card in zip(paths, cards)],
                               "training_cases": trained, "validation_cases": held_out, "command": command})


def build_ensemble(paths: Sequence[Path], out: Path, name: Optional[str] = None, description: str = "",
                   mirror_axes: Optional[List[int]] = None, postprocessing: Optional[str] = None,
                   command: str = "", review_below: Optional[Dict[str, float]] = None) -> Path:
    """Write the ensemble of the model files ``paths`` to ``out`` (a new file, written atomically). One
    file gives that network alone with the card written here (name, description, mirroring, rule), as a
    single network ships."""
    from lckd.ensemble import NetworkEnsemble

    paths = [Path(p) for p in paths]
    out = Path(out)
    if not paths:
        raise LCKDError("give one or more model files")
    if len({p.resolve() for p in paths}) != len(paths):
        raise LCKDError("the same model file is given twice; an ensemble averages different networks")
    if out.exists():
        raise LCKDError(f"{out}: exists; give a new file name (nothing is overwritten)")
    if not out.name.endswith(".safetensors"):
        raise LCKDError(f"{out}: the ensemble's file name must end in .safetensors")
    cards = [read_card(path) for path in paths]
    for path, card in zip(paths, cards):
        if card.members != 1:
            raise LCKDError(f"{path}: is already an ensemble of {card.members} networks; give its networks' files")
    card = ensemble_card(paths, cards, name or out.name[:-len(".safetensors")], description, mirror_axes,
                         postprocessing, command, review_below)
    networks = [load_model(path)[0] for path in paths]
    return save_model(out, networks[0] if len(networks) == 1 else NetworkEnsemble(networks), card)
