"""Compare training methods on the same validation cases: the Markdown tables of Training.md and
TrainingHistory.md from the ``evaluation.json`` that ``lckd evaluate`` wrote for each run.

    python Testing/Benchmarks/method_comparison.py LCKD=eval-lckd MetaKD=eval-metakd baseline=eval-baseline
    python Testing/Benchmarks/method_comparison.py --per-case CV=eval-fold0,eval-fold1,eval-fold2,eval-fold3,eval-fold4

Several folders for one label (the validation folds of a cross-validation) are pooled into one
table over all their cases, each fold weighted by its number of cases. ``--per-case`` adds each
label's table of every case (from the ``per_case`` figures that ``lckd evaluate`` writes).

Prints the 15-subset averages (Dice %, HD95 mm), issue 12's goal figures (the mean of ET / TC / WT
with all four sequences; its average over the single sequences and pairs without T1ce; and, as the
issue words it, over the four single sequences and the pairs without T1ce) and the Dice of every
subset side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from lckd.sequences import all_subsets, subset_key
from training.report import ALL_FOUR, REGIONS, per_case_table

# The subsets of issue 12's second goal: one or two sequences, none of them T1ce (the strict reading;
# the words, "the four single sequences and the pairs without T1ce", also include T1ce alone).
WITHOUT_T1CE = tuple(subset_key(s) for s in all_subsets() if len(s) <= 2 and "t1ce" not in s)
SINGLES_AND_PAIRS_WITHOUT_T1CE = tuple(subset_key(s) for s in all_subsets()
                                       if len(s) == 1 or (len(s) == 2 and "t1ce" not in s))


def region_mean(scores: Dict[str, float]) -> float:
    """Mean Dice over ET, TC and WT."""
    return sum(scores[r] for r in REGIONS) / len(REGIONS)


def goal_figures(evaluation: Dict[str, object]) -> Tuple[float, float, float]:
    """(mean Dice with all four sequences, the same averaged over the subsets without T1ce, and
    averaged over the four single sequences and the pairs without T1ce)."""
    subsets = evaluation["subsets"]

    def averaged(keys: Sequence[str]) -> float:
        return sum(region_mean(subsets[k]) for k in keys) / len(keys)

    return region_mean(subsets[ALL_FOUR]), averaged(WITHOUT_T1CE), averaged(SINGLES_AND_PAIRS_WITHOUT_T1CE)


def markdown(evaluations: Dict[str, Dict[str, object]]) -> str:
    """The averages table (with the goal figures) and the per-subset Dice table."""
    lines: List[str] = [
        "| method | Dice ET | Dice TC | Dice WT | HD95 ET | HD95 TC | HD95 WT | all four | without T1ce "
        "| singles, pairs w/o T1ce |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, result in evaluations.items():
        average, hd = result["average"], result["hd95_average"]
        goals = " | ".join(f"{figure:.3f}" for figure in goal_figures(result))
        lines.append(f"| {label} | " + " | ".join(f"{100 * average[r]:.1f}" for r in REGIONS) + " | "
                     + " | ".join(f"{hd[r]:.1f}" for r in REGIONS) + f" | {goals} |")
    header = " | ".join(f"{label} {r}" if r == "ET" else r for label in evaluations for r in REGIONS)
    lines += ["", "| sequences | " + header + " |",
              "| --- |" + " ---: |" * (len(REGIONS) * len(evaluations))]
    for subset in all_subsets():
        key = subset_key(subset)
        cells = [f"{100 * result['subsets'][key][r]:.1f}" for result in evaluations.values() for r in REGIONS]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_evaluation(place: str) -> Dict[str, object]:
    """evaluation.json's content from a folder written by ``lckd evaluate`` or the file itself."""
    path = Path(place)
    if path.is_dir():
        path = path / "evaluation.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no evaluation.json (run lckd evaluate --out {place} first)")
    return json.loads(path.read_text())


def pool(evaluations: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """One evaluation over the cases of several (e.g. the validation folds of a cross-validation):
    every subset's Dice and HD95 averaged with each evaluation weighted by its number of cases."""
    total = sum(e["cases"] for e in evaluations)

    def pooled(field: str) -> Dict[str, Dict[str, float]]:
        return {key: {r: sum(e[field][key][r] * e["cases"] for e in evaluations) / total for r in REGIONS}
                for key in evaluations[0][field]}

    subsets, hd95 = pooled("subsets"), pooled("hd95")
    result = {"subsets": subsets, "hd95": hd95, "cases": total,
              "average": {r: sum(s[r] for s in subsets.values()) / len(subsets) for r in REGIONS},
              "hd95_average": {r: sum(h[r] for h in hd95.values()) / len(hd95) for r in REGIONS}}
    if all("per_case" in e for e in evaluations):
        result["per_case"] = {case: scores for e in evaluations for case, scores in e["per_case"].items()}
    return result


def parse_runs(pairs: Sequence[str]) -> Dict[str, Dict[str, object]]:
    """``["LCKD=eval-lckd", "CV=eval-f0,eval-f1", ...]`` -> ``{"LCKD": evaluation.json's content, ...}``
    (folder or file; several, comma-separated, are pooled: :func:`pool`)."""
    evaluations: Dict[str, Dict[str, object]] = {}
    for pair in pairs:
        label, sep, places = pair.partition("=")
        if not sep or not label:
            raise SystemExit(f"{pair}: expected LABEL=FOLDER (a folder written by lckd evaluate)")
        found = [read_evaluation(place) for place in places.split(",")]
        evaluations[label] = found[0] if len(found) == 1 else pool(found)
    cases = {label: result["cases"] for label, result in evaluations.items()}
    if len(set(cases.values())) > 1:
        raise SystemExit(f"the evaluations cover different numbers of cases: {cases}")
    return evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=FOLDER",
                        help="a method's lckd evaluate folder (or folders, comma-separated, pooled)")
    parser.add_argument("--per-case", action="store_true", help="also every case's figures, per label")
    args = parser.parse_args()
    evaluations = parse_runs(args.runs)
    print(markdown(evaluations), end="")
    if args.per_case:
        for label, result in evaluations.items():
            if "per_case" not in result:
                raise SystemExit(f"{label}: an evaluation without per-case figures (written before lckd evaluate "
                                 "kept them); evaluate it again")
            print(f"\n{label}, per case:\n\n{per_case_table(result['per_case'])}")


if __name__ == "__main__":
    main()
