"""Measure the uncertainty map and the quality estimate on labelled cases the model never trained on.

For every case and sequence subset, the model's averaged members (every network on every mirror
image of the model card) are run once, as ``lckd segment`` runs them, and their region probabilities
cached in ``--cache`` (uint8, on the network's working grid); a later run reads them back, so the
measures can be compared without running the networks again. Everything is then measured on the
working grid, as ``lckd evaluate`` scores (the expert label map resampled onto it, the model card's
post-processing applied there):

* voxel measures: how well each candidate map tells wrong voxels (label differs from the expert's)
  from right ones inside the brain (AUROC per case and subset, averaged);
* case measures per region (ET, TC, WT): Spearman's rank correlation with the true Dice;
* the review flag: the threshold per region chosen on these cases (the highest catches minus costs),
  what it catches (share of case-subsets with true Dice below 0.5 flagged) and costs (share above
  0.8 flagged), and the same with each case's threshold chosen on the other cases only;
* the voxel map's mean over the predicted tumour with all four sequences, without T1ce, FLAIR alone.

``--write-card`` stores the thresholds chosen here (rounded to two decimals) in the model card's
``review_below``, which ``lckd segment`` then flags with.

    nice -n 15 python Testing/Benchmarks/uncertainty_calibration.py \\
        LCKDSegmentation/Resources/Models/lckd-brats2018-cpu.safetensors --data ../shared/data/brats2018 \\
        --cases Brats18_2013_2_1,Brats18_CBICA_AOZ_1,... --cache ~/uncertainty-work/cache \\
        --out ~/uncertainty-work/uncertainty.json --figure Resources/UncertaintyCalibration.png

Without ``--cases`` the model card's validation cases are used; a case the model trained on is refused.
``--subsets`` defaults to the five of :data:`DEFAULT_SUBSETS` (``all``: the 15).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from lckd.cases import CaseFiles, read_case_folder
from lckd.geometry import Grid, resample, to_network_axes
from lckd.inference import sliding_window_probabilities
from lckd.io import Volume, atomic_path, load_volume
from lckd.labels import labels_from_regions, regions_from_labels
from lckd.model_file import load_model, save_model
from lckd.postprocessing import postprocess
from lckd.preparation import PreparedCase, labels_on_network_grid, prepare_case
from lckd.preprocess import crop
from lckd.segmenter import Segmenter
from lckd.sequences import all_subsets, subset_key
from lckd.uncertainty import REVIEW_BELOW, MemberSpread, uncertainty_map
from training.evaluation import REGION_INDEX, REPORTED_REGIONS, dice

#: Probabilities are cached as round(p * QUANTUM) in uint8.
QUANTUM = 255.0
#: The subsets measured by default: all four, without T1ce, FLAIR alone (the removal table), and two more of
#: the weak and strong single and paired inputs.
DEFAULT_SUBSETS = ("flair+t1+t1ce+t2", "flair+t1+t2", "flair+t2", "t1ce", "flair")


def parse_subsets(text: str) -> List[Tuple[str, ...]]:
    """``all`` or comma-separated subset keys such as ``flair+t2,t1ce``."""
    if text == "all":
        return all_subsets()
    known = {subset_key(subset): subset for subset in all_subsets()}
    keys = [key.strip() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in known]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'all' or subset keys such as flair+t1+t1ce+t2,t1ce")
    return [known[key] for key in keys]


def model_digest(path: Path) -> str:
    """The first 12 hex digits of the model file's SHA-256: the cache of one model file never serves another."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def chosen_cases(segmenter: Segmenter, data: Path, names: Sequence[str]) -> List[CaseFiles]:
    """The named case folders (default: the card's validation cases), refusing any the model trained on."""
    training = set(segmenter.card.training.get("training_cases") or [])
    names = list(names) or list(segmenter.card.training.get("validation_cases") or [])
    if not names:
        raise SystemExit("the model card names no validation cases: give --cases")
    seen = sorted(set(names) & training)
    if seen:
        raise SystemExit(f"the model trained on {', '.join(seen)}: measure on cases it never saw")
    cases = [read_case_folder(data / name) for name in names]
    unlabelled = [case.name for case in cases if case.segmentation is None]
    if unlabelled:
        raise SystemExit(f"no expert label map for {', '.join(unlabelled)}")
    return cases


def cache_members(segmenter: Segmenter, volumes: Dict[str, Volume], path: Path) -> None:
    """Run the model's members on one case and subset, as lckd segment does, and cache their probabilities."""
    prepared = prepare_case(volumes, segmenter.card.spacing_mm, segmenter.normalisation)
    members: List[np.ndarray] = []

    def record(probabilities: torch.Tensor) -> None:
        members.append(torch.round(probabilities * QUANTUM).to(torch.uint8).cpu().numpy())

    sliding_window_probabilities(segmenter.model, torch.from_numpy(prepared.images), prepared.present,
                                 segmenter.card.tile_size, mirror_axes=segmenter.mirror_axes, on_member=record)
    box = np.array([[s.start, s.stop] for s in prepared.box])
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, members=np.stack(members), networks=segmenter.card.members, box=box,
                            present=np.array(prepared.present), reference=prepared.reference,
                            grid_shape=np.array(prepared.grid.shape), grid_affine=prepared.grid.affine,
                            reference_shape=np.array(prepared.reference_grid.shape),
                            reference_affine=prepared.reference_grid.affine)


def read_members(path: Path):
    """Cached members ``(M, 3, Z, Y, X)`` as float32 probabilities, the number of networks, and the
    geometry of the prepared case (a :class:`PreparedCase` without its images)."""
    with np.load(path) as data:
        members = data["members"].astype(np.float32) / QUANTUM
        prepared = PreparedCase(
            images=np.empty((0,)), present=[bool(p) for p in data["present"]],
            grid=Grid(shape=tuple(int(n) for n in data["grid_shape"]), affine=data["grid_affine"]),
            box=tuple(slice(int(a), int(b)) for a, b in data["box"]), reference=str(data["reference"]),
            reference_grid=Grid(shape=tuple(int(n) for n in data["reference_shape"]), affine=data["reference_affine"]))
        return members, int(data["networks"]), prepared


def fill_cache(segmenter: Segmenter, cases: Sequence[CaseFiles], subsets: Sequence[Tuple[str, ...]],
               folder: Path) -> None:
    """Cache every case and subset that is not cached yet (a cached file is complete: it is written atomically)."""
    for case in cases:
        volumes = None
        for subset in subsets:
            path = folder / case.name / f"{subset_key(subset)}.npz"
            if path.is_file():
                continue
            volumes = volumes or {name: load_volume(file) for name, file in case.sequences.items()}
            clock = time.perf_counter()
            cache_members(segmenter, {name: volumes[name] for name in subset}, path)
            print(f"{case.name} {subset_key(subset)}: members cached in {time.perf_counter() - clock:.1f} s",
                  flush=True)


# -- candidate measures (members: (M, 3, Z, Y, X) region probabilities in the order ET, WT, TC) -----------

#: The candidates lckd.uncertainty implements (computed here with its own code): the voxel map and the
#: quality estimate that lckd segment reports.
SHIPPED_VOXEL, SHIPPED_CASE = "entropy", "member_dice"

def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a Bernoulli probability (0 at 0 and 1, 1 at 0.5)."""
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


def voxel_candidates(members: np.ndarray) -> Dict[str, np.ndarray]:
    """Each candidate voxel map ``(Z, Y, X)``: the regions' largest value of a per-region measure."""
    mean = members.mean(axis=0)
    votes = (members > 0.5).mean(axis=0)
    entropy = binary_entropy(mean)
    shipped = uncertainty_map(torch.from_numpy(mean)).numpy()
    return {"std": members.std(axis=0).max(axis=0),
            SHIPPED_VOXEL: shipped,
            "mutual_information": (entropy - binary_entropy(members).mean(axis=0)).max(axis=0),
            "vote_disagreement": (4 * votes * (1 - votes)).max(axis=0)}


def mean_pairwise_dice(masks: np.ndarray) -> float:
    """The mean Dice over every pair of the members' masks ``(M, ...)`` (both empty: 1)."""
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    overlap = flat @ flat.T
    sizes = np.diag(overlap)
    totals = sizes[:, None] + sizes[None, :]
    pairwise = np.where(totals > 0, 2 * overlap / np.maximum(totals, 1), 1.0)
    upper = np.triu_indices(len(masks), k=1)
    return float(pairwise[upper].mean()) if len(masks) > 1 else 1.0


def case_candidates(members: np.ndarray) -> Dict[str, Dict[str, float]]:
    """Each candidate case measure per region (ET, TC, WT), from the members on the network grid."""
    mean = members.mean(axis=0)
    masks = members > 0.5
    spread = MemberSpread()
    for member in members:
        spread(torch.from_numpy(member))
    result: Dict[str, Dict[str, float]] = {SHIPPED_CASE: spread.quality(torch.from_numpy(mean))}
    for region in REPORTED_REGIONS:
        index = REGION_INDEX[region]
        chosen = mean[index] > 0.5
        votes = masks[:, index].mean(axis=0)
        size = float(chosen.sum())
        deviation = members[:, index].std(axis=0)
        scores = {
            "pairwise_dice": mean_pairwise_dice(masks[:, index]),
            "vote_dice": 1.0 if size + votes.sum() == 0 else float(2 * votes[chosen].sum() / (votes.sum() + size)),
            "soft_dice": 1.0 if size + mean[index].sum() == 0 else
            float(2 * mean[index][chosen].sum() / (mean[index].sum() + size)),
            "inside_certainty": 1.0 if size == 0 else float(1 - 2 * deviation[chosen].mean())}
        for name, value in scores.items():
            result.setdefault(name, {})[region] = value
    return result


def auroc(scores: np.ndarray, wrong: np.ndarray, bins: int = 4096) -> float:
    """Area under the ROC curve of ``scores`` telling ``wrong`` voxels from right ones (ties count half)."""
    edges = np.linspace(0.0, max(float(scores.max()), 1e-9), bins + 1)
    bad, _ = np.histogram(scores[wrong], edges)
    good, _ = np.histogram(scores[~wrong], edges)
    if bad.sum() == 0 or good.sum() == 0:
        return float("nan")
    below = np.concatenate([[0], np.cumsum(good)[:-1]])
    return float((bad * (below + 0.5 * good)).sum() / (bad.sum() * good.sum()))


# -- scoring one case and subset on the working grid ------------------------------------------------

class CaseOnGrid:
    """A case's expert label map and brain mask on the working grid of a prepared subset, made once per grid."""

    def __init__(self, case: CaseFiles) -> None:
        self.case = case
        self.volumes = {name: load_volume(file) for name, file in case.sequences.items()}
        self.labels = load_volume(case.segmentation, allow_empty=True)
        self._grids: Dict[bytes, Tuple[np.ndarray, np.ndarray]] = {}

    def truth_and_brain(self, prepared: PreparedCase) -> Tuple[np.ndarray, np.ndarray]:
        """The expert labels (ET = 4) and the brain (any sequence non-zero), cropped like ``prepared``."""
        key = prepared.grid.affine.tobytes() + np.array(prepared.grid.shape).tobytes()
        if key not in self._grids:
            uncropped = PreparedCase(images=np.empty((0,)), present=prepared.present, grid=prepared.grid,
                                     box=tuple(slice(0, n) for n in prepared.network_shape),
                                     reference=prepared.reference, reference_grid=prepared.reference_grid)
            truth = labels_on_network_grid(self.labels, uncropped)
            truth[truth == self.case.et_label] = 4
            brain = np.any([to_network_axes(resample(volume.data, volume.affine, prepared.grid, order=1)) != 0
                            for volume in self.volumes.values()], axis=0)
            self._grids[key] = (truth, brain)
        truth, brain = self._grids[key]
        return crop(truth, prepared.box), crop(brain, prepared.box)


def score(members: np.ndarray, prepared: PreparedCase, truth: np.ndarray, brain: np.ndarray,
          rule: str) -> Dict[str, object]:
    """True Dice per region, every case candidate, each voxel candidate's AUROC and its mean over
    the predicted tumour, for one set of members (all on the working grid)."""
    grid = prepared.grid
    labels = postprocess(labels_from_regions(members.mean(axis=0), threshold=0.5), rule, grid.voxel_volume_mm3,
                         spacing_mm=np.linalg.norm(grid.affine[:3, :3], axis=0))
    found, expected = regions_from_labels(labels), regions_from_labels(truth)
    wrong = (labels != truth)[brain]
    tumour = labels > 0
    row: Dict[str, object] = {
        "dice": {r: round(dice(found[REGION_INDEX[r]], expected[REGION_INDEX[r]]), 4) for r in REPORTED_REGIONS},
        "estimate": case_candidates(members), "auroc": {}, "tumour_mean": {}}
    for name, voxel_map in voxel_candidates(members).items():
        row["auroc"][name] = auroc(voxel_map[brain], wrong)
        row["tumour_mean"][name] = float(voxel_map[tumour].mean()) if tumour.any() else 0.0
    return row


#: Bump when what :func:`score` measures changes: older score files are then measured again.
SCORE_VERSION = 2


def score_cases(cases: Sequence[CaseFiles], subsets: Sequence[Tuple[str, ...]], folder: Path,
                rule: str) -> List[Dict[str, object]]:
    """One row per case, subset and member set: the model's members, and for an ensemble its first
    network alone (its mirror images only). Each case and subset's rows are kept beside its members."""
    rows = []
    for case in cases:
        on_grid = None
        for subset in subsets:
            stored = folder / case.name / f"{subset_key(subset)}.score.json"
            if stored.is_file() and json.loads(stored.read_text())["version"] == SCORE_VERSION:
                rows += json.loads(stored.read_text())["rows"]
                continue
            on_grid = on_grid or CaseOnGrid(case)
            clock = time.perf_counter()
            members, networks, prepared = read_members(folder / case.name / f"{subset_key(subset)}.npz")
            truth, brain = on_grid.truth_and_brain(prepared)
            sets = {"model": members} if networks == 1 else {"model": members, "first network": members[::networks]}
            scored = [dict(case=case.name, subset=subset_key(subset), members=name, size=len(chosen),
                           **score(chosen, prepared, truth, brain, rule)) for name, chosen in sets.items()]
            with atomic_path(stored) as temporary:
                temporary.write_text(json.dumps({"version": SCORE_VERSION, "rows": scored}))
            rows += scored
            print(f"{case.name} {subset_key(subset)}: scored in {time.perf_counter() - clock:.1f} s", flush=True)
    return rows


# -- the figures ----------------------------------------------------------------------------------

#: True Dice below which a flag should fire, and above which it should not.
POOR_DICE, GOOD_DICE = 0.5, 0.8
#: The subsets of the "missing sequences raise uncertainty" table.
REMOVAL_STEPS = (("all four", "flair+t1+t1ce+t2"), ("without T1ce", "flair+t1+t2"), ("FLAIR alone", "flair"))


def flag_rates(flagged: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    """What a flag catches (share of true Dice < 0.5 flagged) and costs (share of true Dice > 0.8 flagged),
    with the counts."""
    poor, good = truth < POOR_DICE, truth > GOOD_DICE
    return {"catches": float(flagged[poor].mean()) if poor.any() else float("nan"),
            "costs": float(flagged[good].mean()) if good.any() else float("nan"),
            "poor": int(poor.sum()), "good": int(good.sum()), "flagged": int(flagged.sum())}


def choose_threshold(estimates: np.ndarray, truth: np.ndarray) -> float:
    """The threshold (flag below it) with the highest catches minus costs (Youden's J), half-way between two
    estimates; ties: the lowest."""
    values = np.unique(estimates)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    rates = [flag_rates(estimates < t, truth) for t in candidates]
    gains = [np.nan_to_num(r["catches"]) - np.nan_to_num(r["costs"]) for r in rates]
    return float(candidates[int(np.argmax(gains))])


def left_one_case_out(estimate: np.ndarray, truth: np.ndarray, cases: np.ndarray) -> np.ndarray:
    """The flags when each case's threshold is chosen on the other cases only."""
    flagged = np.zeros(len(estimate), dtype=bool)
    for case in np.unique(cases):
        inside = cases == case
        if (~inside).any():
            flagged[inside] = estimate[inside] < choose_threshold(estimate[~inside], truth[~inside])
    return flagged


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


#: The review flags compared: the threshold chosen on the measured cases, the same chosen without the case it
#: is applied to, and the thresholds lckd segment flags with (the card's review_below, else REVIEW_BELOW).
FLAGS = ("chosen", "left_one_case_out", "shipped")


def summarise(rows: List[Dict[str, object]], shipped: Dict[str, float]) -> Dict[str, object]:
    """Per member set: voxel AUROCs and removal tables of each voxel measure; for each case measure its
    correlation with the true Dice per region and its review flags per region and pooled over the regions
    (``shipped``: the thresholds lckd segment applies)."""
    summary: Dict[str, object] = {}
    for members in sorted({row["members"] for row in rows}):
        chosen = [row for row in rows if row["members"] == members]
        cases = np.array([row["case"] for row in chosen])
        voxel = {name: {"auroc": float(np.nanmean([row["auroc"][name] for row in chosen])),
                        "removal": removal_table(chosen, name)} for name in chosen[0]["auroc"]}
        case_level = {}
        for name in chosen[0]["estimate"]:
            per_region: Dict[str, Dict[str, object]] = {}
            pooled: Dict[str, List[np.ndarray]] = {flag: [] for flag in FLAGS + ("truth",)}
            for region in REPORTED_REGIONS:
                estimate = np.array([row["estimate"][name][region] for row in chosen])
                truth = np.array([row["dice"][region] for row in chosen])
                threshold = choose_threshold(estimate, truth)
                flags = {"chosen": estimate < threshold,
                         "left_one_case_out": left_one_case_out(estimate, truth, cases),
                         "shipped": estimate < shipped[region]}
                per_region[region] = dict({flag: flag_rates(flagged, truth) for flag, flagged in flags.items()},
                                          spearman=spearman(estimate, truth), threshold=threshold,
                                          shipped_threshold=shipped[region])
                for flag, flagged in dict(flags, truth=truth).items():
                    pooled[flag].append(flagged)
            truth = np.concatenate(pooled["truth"])
            per_region["pooled"] = {flag: flag_rates(np.concatenate(pooled[flag]), truth) for flag in FLAGS}
            case_level[name] = per_region
        summary[members] = {"voxel": voxel, "case": case_level, "rows": len(chosen)}
    return summary


def removal_table(rows: List[Dict[str, object]], measure: str) -> Dict[str, object]:
    """The voxel measure's mean over the predicted tumour per case, for each step of :data:`REMOVAL_STEPS`."""
    by_case: Dict[str, Dict[str, float]] = {}
    for row in rows:
        for title, key in REMOVAL_STEPS:
            if row["subset"] == key:
                by_case.setdefault(row["case"], {})[title] = row["tumour_mean"][measure]
    steps = [title for title, _ in REMOVAL_STEPS]
    complete = {case: values for case, values in by_case.items() if len(values) == len(steps)}
    grows = sum(all(values[a] < values[b] for a, b in zip(steps, steps[1:])) for values in complete.values())
    return {"mean": {step: float(np.mean([v[step] for v in complete.values()])) for step in steps},
            "per_case": complete, "grows_at_each_step": grows, "cases": len(complete)}


def markdown(summary: Dict[str, object], subsets: Sequence[Tuple[str, ...]], cases: int) -> str:
    """The tables of Resources/Docs/Inference.md, "Uncertainty"."""
    model, single = summary["model"], summary.get("first network")
    steps = [title for title, _ in REMOVAL_STEPS]
    lines = [f"{cases} cases x {len(subsets)} subsets ({', '.join(subset_key(s) for s in subsets)})", "",
             "| voxel measure | AUROC, model | AUROC, first network alone | "
             + " | ".join(f"mean over the predicted tumour, {step}" for step in steps) + " | grows at each step |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in steps) + " | ---: |"]
    for name, part in model["voxel"].items():
        removal = part["removal"]
        alone = f"{single['voxel'][name]['auroc']:.3f}" if single else ""
        lines.append(f"| {name}{' (shipped)' if name == SHIPPED_VOXEL else ''} | {part['auroc']:.3f} | {alone} | "
                     + " | ".join(f"{removal['mean'][step]:.3f}" if removal["cases"] else "" for step in steps)
                     + f" | {removal['grows_at_each_step']} of {removal['cases']} |")
    lines += ["", "| case measure | Spearman ET | TC | WT | first network alone: ET | TC | WT |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, per in model["case"].items():
        alone = [f"{single['case'][name][r]['spearman']:.2f}" if single else "" for r in REPORTED_REGIONS]
        lines.append(f"| {name}{' (shipped)' if name == SHIPPED_CASE else ''} | "
                     + " | ".join(f"{per[r]['spearman']:.2f}" for r in REPORTED_REGIONS) + " | " + " | ".join(alone)
                     + " |")
    lines += ["", f"Review flag ({SHIPPED_CASE}, model): a region is flagged when its estimate is below the threshold",
              "", "| region | threshold chosen here | Dice < 0.5 flagged | Dice > 0.8 flagged | "
              "left one case out: < 0.5 flagged | > 0.8 flagged | applied now | < 0.5 flagged | > 0.8 flagged |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for region, part in model["case"][SHIPPED_CASE].items():
        cells = [f"{part['threshold']:.3f}" if "threshold" in part else ""]
        for flag in FLAGS:
            if flag == "shipped":
                cells.append(f"{part['shipped_threshold']:.2f}" if "shipped_threshold" in part else "")
            rates = part[flag]
            cells += [share(rates["catches"], rates["poor"]), share(rates["costs"], rates["good"])]
        lines.append(f"| {region} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def share(fraction: float, count: int) -> str:
    """``"83 % of 12"``, or ``"none"`` when there is nothing to count."""
    return "none" if not count else f"{100 * fraction:.0f} % of {count}"


def plot(rows: List[Dict[str, object]], summary: Dict[str, object], path: Path) -> None:
    """The shipped quality estimate against the true Dice per region, with the review threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [row for row in rows if row["members"] == "model"]
    sizes = np.array([len(row["subset"].split("+")) for row in chosen])
    figure, axes = plt.subplots(1, len(REPORTED_REGIONS), figsize=(10.5, 3.6), sharey=True)
    for axis, region in zip(axes, REPORTED_REGIONS):
        part = summary["model"]["case"][SHIPPED_CASE][region]
        estimate = np.array([row["estimate"][SHIPPED_CASE][region] for row in chosen])
        truth = np.array([row["dice"][region] for row in chosen])
        for count, colour in zip(range(1, 5), ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4")):
            inside = sizes == count
            if inside.any():
                axis.scatter(estimate[inside], truth[inside], s=14, color=colour, alpha=0.8,
                             label=f"{count} sequence{'s' if count > 1 else ''}")
        axis.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8)
        for level in (POOR_DICE, GOOD_DICE):
            axis.axhline(level, color="#888888", linestyle=":", linewidth=0.8)
        axis.axvline(part["shipped_threshold"], color="#c0392b", linestyle="--", linewidth=1.0)
        axis.set(xlim=(0, 1.02), ylim=(-0.02, 1.02), xlabel="quality estimate (members' mean Dice)",
                 title=f"{region}: Spearman {part['spearman']:.2f}")
    axes[0].set_ylabel("true Dice")
    axes[0].legend(loc="upper left", fontsize=7, frameon=False)
    cases = len({row["case"] for row in chosen})
    figure.suptitle(f"Quality estimate against the true Dice: {cases} unseen cases x "
                    f"{len({row['subset'] for row in chosen})} sequence subsets; dashed: review below", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the model file (a single network or an ensemble)")
    parser.add_argument("--data", type=Path, required=True, help="the folder of labelled case folders")
    parser.add_argument("--cases", default="", help="comma-separated case folder names (default: the card's "
                                                    "validation cases)")
    parser.add_argument("--subsets", type=parse_subsets, default=",".join(DEFAULT_SUBSETS),
                        help=f"'all' (the 15) or comma-separated subset keys (default: {','.join(DEFAULT_SUBSETS)})")
    parser.add_argument("--cache", type=Path, required=True, help="folder for the members' cached probabilities")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="JSON file: every figure, per case and subset too")
    parser.add_argument("--figure", type=Path, help="PNG: the quality estimate against the true Dice")
    parser.add_argument("--write-card", action="store_true",
                        help="store the thresholds chosen here in the model card (review_below)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = Segmenter(args.model, device="cpu", precision="fp32")
    if segmenter.members < 2:
        raise SystemExit(f"{args.model}: the model averages one member (one network, no mirroring): no spread")
    cases = chosen_cases(segmenter, args.data, [name for name in args.cases.split(",") if name])
    folder = args.cache.expanduser() / model_digest(args.model)
    print(f"{len(cases)} cases, {segmenter.card.members} network(s) x {2 ** len(segmenter.mirror_axes)} mirror "
          f"images; cache {folder}; {torch.get_num_threads()} torch threads, pid {os.getpid()}", flush=True)
    fill_cache(segmenter, cases, args.subsets, folder)
    rows = score_cases(cases, args.subsets, folder, segmenter.card.postprocessing or "none")
    summary = summarise(rows, segmenter.card.review_below or REVIEW_BELOW)
    print(markdown(summary, args.subsets, len(cases)))
    if args.out:
        with atomic_path(args.out) as temporary:
            temporary.write_text(json.dumps({"model": str(args.model), "cases": [c.name for c in cases],
                                             "subsets": [subset_key(s) for s in args.subsets],
                                             "summary": summary, "rows": rows}, indent=1))
    if args.figure:
        with atomic_path(args.figure) as temporary:
            plot(rows, summary, temporary)
    if args.write_card:
        print(f"review_below {write_thresholds(args.model, summary)} stored in {args.model}'s card")


def write_thresholds(path: Path, summary: Dict[str, object]) -> Dict[str, float]:
    """Store the thresholds chosen for the whole model (rounded to two decimals) as its card's review_below."""
    chosen = summary["model"]["case"][SHIPPED_CASE]
    thresholds = {region: round(float(chosen[region]["threshold"]), 2) for region in REPORTED_REGIONS}
    model, card = load_model(path)
    card.review_below = thresholds
    save_model(path, model, card)
    return thresholds


if __name__ == "__main__":
    main()
