"""The learning curve: validation Dice against the number of training cases, a table and a plot.

Each point is one run of the same recipe on a nested training set, scored by ``lckd evaluate`` on the
same validation cases; ``--training`` adds, for a point, the same model scored on cases it trained on,
so that the gap between the two says whether the network could fit more than it generalises (data-
limited) or fits its training cases no better (capacity-limited).

    python Testing/Benchmarks/learning_curve.py 7=eval-c7 14=eval-c14 20=eval-c20 \\
        --training 20=eval-c20-train --png Resources/LearningCurve.png

Prints a Markdown table (mean Dice over ET / TC / WT with all four sequences, over the subsets without
T1ce, and over the four single sequences and the three pairs without T1ce) and, from a least-squares
line of each figure against log2(training cases), the change per doubling of the training set: an
extrapolation from three points, printed as such.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

_spec = importlib.util.spec_from_file_location("method_comparison", Path(__file__).parent / "method_comparison.py")
method_comparison = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(method_comparison)
goal_figures, read_evaluation = method_comparison.goal_figures, method_comparison.read_evaluation

FIGURES = ("all four", "without T1ce", "singles, pairs w/o T1ce")


def parse_points(pairs: Sequence[str]) -> Dict[int, Dict[str, object]]:
    """``["7=eval-c7", ...]`` -> ``{7: evaluation, ...}`` in increasing number of training cases."""
    points: Dict[int, Dict[str, object]] = {}
    for pair in pairs:
        count, sep, place = pair.partition("=")
        if not sep or not count.isdigit():
            raise SystemExit(f"{pair}: expected N=FOLDER (N training cases, a folder written by lckd evaluate)")
        points[int(count)] = read_evaluation(place)
    return dict(sorted(points.items()))


def per_doubling(counts: Sequence[int], values: Sequence[float]) -> float:
    """The slope of the least-squares line of ``values`` against log2(``counts``)."""
    xs = [math.log2(n) for n in counts]
    mean_x, mean_y = sum(xs) / len(xs), sum(values) / len(values)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values)) / spread


def markdown(points: Dict[int, Dict[str, object]], training: Dict[int, Dict[str, object]]) -> str:
    """The table of goal figures per point (validation, and training cases where given)."""
    cases = {result["cases"] for result in points.values()}
    lines = ["| training cases | scored on | cases | " + " | ".join(FIGURES) + " |",
             "| ---: | --- | ---: |" + " ---: |" * len(FIGURES)]
    for count, result in points.items():
        rows: List[Tuple[str, Dict[str, object]]] = [("validation", result)]
        if count in training:
            rows.append(("its training cases", training[count]))
        for label, evaluation in rows:
            figures = " | ".join(f"{value:.3f}" for value in goal_figures(evaluation))
            lines.append(f"| {count} | {label} | {evaluation['cases']} | {figures} |")
    if len(points) >= 2:
        counts = list(points)
        slopes = [per_doubling(counts, [goal_figures(points[n])[i] for n in counts]) for i in range(len(FIGURES))]
        lines += ["", f"Change per doubling of the training set (least squares on log2 cases, {len(counts)} points, "
                      f"{'/'.join(str(c) for c in sorted(cases))} validation cases): "
                  + ", ".join(f"{name} {100 * slope:+.1f} points" for name, slope in zip(FIGURES, slopes))]
    return "\n".join(lines) + "\n"


def plot(points: Dict[int, Dict[str, object]], training: Dict[int, Dict[str, object]], path: Path) -> None:
    """Dice against training cases (log scale), validation solid, training cases dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    counts = list(points)
    for index, (name, colour) in enumerate(zip(FIGURES, ("tab:blue", "tab:orange", "tab:green"))):
        if name == "without T1ce":
            continue  # the two readings of the second goal lie within a few points; plot the issue's
        values = [goal_figures(points[n])[index] for n in counts]
        axis.plot(counts, values, "o-", color=colour, label=f"{name}, validation")
        seen = [n for n in counts if n in training]
        if seen:
            axis.plot(seen, [goal_figures(training[n])[index] for n in seen], "s--", color=colour, alpha=0.6,
                      label=f"{name}, its training cases")
    axis.set_xscale("log", base=2)
    axis.set_xticks(counts, [str(n) for n in counts])
    axis.set_xlabel("training cases (BraTS 2018, nested sets)")
    axis.set_ylabel("mean Dice over ET, TC, WT")
    axis.set_ylim(0.0, 1.0)
    axis.grid(alpha=0.3)
    cases = next(iter(points.values()))["cases"]
    axis.set_title(f"LCKD, brats-cpu recipe: Dice on {cases} validation cases", fontsize=10)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("points", nargs="+", metavar="N=FOLDER", help="training cases = lckd evaluate folder")
    parser.add_argument("--training", nargs="*", default=[], metavar="N=FOLDER",
                        help="the N-case model scored on cases it trained on")
    parser.add_argument("--png", type=Path, help="write the plot here")
    args = parser.parse_args(argv)
    points, training = parse_points(args.points), parse_points(args.training)
    if len({result["cases"] for result in points.values()}) > 1:
        raise SystemExit("the points are scored on different numbers of validation cases")
    print(markdown(points, training), end="")
    if args.png:
        plot(points, training, args.png)
        print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
