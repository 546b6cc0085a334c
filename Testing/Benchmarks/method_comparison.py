"""Compare training methods on the same validation cases: the Markdown tables of Training.md from the
``evaluation.json`` that ``lckd evaluate`` wrote for each run.

    python Testing/Benchmarks/method_comparison.py LCKD=eval-lckd MetaKD=eval-metakd baseline=eval-baseline

Prints the 15-subset averages (Dice %, HD95 mm), issue 12's two goal figures (the mean of ET / TC / WT
with all four sequences, and its average over the single sequences and pairs without T1ce) and the
Dice of every subset side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from lckd.sequences import SEQUENCES, all_subsets, subset_key

REGIONS = ("ET", "TC", "WT")
ALL_FOUR = subset_key(SEQUENCES)
# The subsets of issue 12's second goal: one or two sequences, none of them T1ce.
WITHOUT_T1CE = tuple(subset_key(s) for s in all_subsets() if len(s) <= 2 and "t1ce" not in s)


def region_mean(scores: Dict[str, float]) -> float:
    """Mean Dice over ET, TC and WT."""
    return sum(scores[r] for r in REGIONS) / len(REGIONS)


def goal_figures(evaluation: Dict[str, object]) -> Tuple[float, float]:
    """(mean Dice with all four sequences, the same averaged over the subsets without T1ce)."""
    subsets = evaluation["subsets"]
    without = [region_mean(subsets[k]) for k in WITHOUT_T1CE]
    return region_mean(subsets[ALL_FOUR]), sum(without) / len(without)


def markdown(evaluations: Dict[str, Dict[str, object]]) -> str:
    """The averages table (with the goal figures) and the per-subset Dice table."""
    lines: List[str] = [
        "| method | Dice ET | Dice TC | Dice WT | HD95 ET | HD95 TC | HD95 WT | all four | without T1ce |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, result in evaluations.items():
        average, hd = result["average"], result["hd95_average"]
        four, without = goal_figures(result)
        lines.append(f"| {label} | " + " | ".join(f"{100 * average[r]:.1f}" for r in REGIONS) + " | "
                     + " | ".join(f"{hd[r]:.1f}" for r in REGIONS) + f" | {four:.3f} | {without:.3f} |")
    header = " | ".join(f"{label} {r}" if r == "ET" else r for label in evaluations for r in REGIONS)
    lines += ["", "| sequences | " + header + " |",
              "| --- |" + " ---: |" * (len(REGIONS) * len(evaluations))]
    for subset in all_subsets():
        key = subset_key(subset)
        cells = [f"{100 * result['subsets'][key][r]:.1f}" for result in evaluations.values() for r in REGIONS]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_runs(pairs: Sequence[str]) -> Dict[str, Dict[str, object]]:
    """``["LCKD=eval-lckd", ...]`` -> ``{"LCKD": evaluation.json's content, ...}`` (folder or file)."""
    evaluations: Dict[str, Dict[str, object]] = {}
    for pair in pairs:
        label, sep, place = pair.partition("=")
        if not sep or not label:
            raise SystemExit(f"{pair}: expected LABEL=FOLDER (a folder written by lckd evaluate)")
        path = Path(place)
        if path.is_dir():
            path = path / "evaluation.json"
        if not path.is_file():
            raise SystemExit(f"{path}: no evaluation.json (run lckd evaluate --out {place} first)")
        evaluations[label] = json.loads(path.read_text())
    cases = {label: result["cases"] for label, result in evaluations.items()}
    if len(set(cases.values())) > 1:
        raise SystemExit(f"the evaluations cover different numbers of cases: {cases}")
    return evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=FOLDER", help="a method's lckd evaluate folder")
    print(markdown(parse_runs(parser.parse_args().runs)), end="")


if __name__ == "__main__":
    main()
