"""Evaluation reports: a Markdown table and a heat-map PNG of Dice per subset and region."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from lckd.io import atomic_path
from lckd.sequences import SEQUENCES, subset_key

REGIONS = ("ET", "TC", "WT")
ALL_FOUR = subset_key(SEQUENCES)


def markdown_table(evaluation: Dict[str, object], title: str = "") -> str:
    """Dice (%) and HD95 (mm) per subset, then the 15-subset average, then :func:`per_case_table`."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| sequences | Dice ET | Dice TC | Dice WT | HD95 ET | HD95 TC | HD95 WT |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, scores in evaluation["subsets"].items():
        hd = evaluation["hd95"][key]
        lines.append(f"| {key} | " + " | ".join(f"{100 * scores[r]:.1f}" for r in REGIONS) + " | "
                     + " | ".join(f"{hd[r]:.1f}" for r in REGIONS) + " |")
    average, hd_average = evaluation["average"], evaluation["hd95_average"]
    lines.append("| **average** | " + " | ".join(f"**{100 * average[r]:.1f}**" for r in REGIONS) + " | "
                 + " | ".join(f"{hd_average[r]:.1f}" for r in REGIONS) + " |")
    if evaluation.get("per_case"):
        lines += ["", per_case_table(evaluation["per_case"])]
    return "\n".join(lines) + "\n"


def per_case_table(per_case: Dict[str, Dict[str, Dict[str, Dict[str, float]]]]) -> str:
    """One row per case: Dice (%) and HD95 (mm) with all four sequences, and its Dice averaged over the
    subsets it was scored on (the 15 of ``lckd evaluate``)."""
    lines = ["| case | all four: Dice ET | TC | WT | HD95 ET | TC | WT | subset mean: Dice ET | TC | WT |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for case, scores in per_case.items():
        dice, hd = scores["dice"], scores["hd95"]
        full = (" | ".join(f"{100 * dice[ALL_FOUR][r]:.1f}" for r in REGIONS) + " | "
                + " | ".join(f"{hd[ALL_FOUR][r]:.1f}" for r in REGIONS)) if ALL_FOUR in dice else " | ".join(["-"] * 6)
        mean = " | ".join(f"{100 * float(np.mean([d[r] for d in dice.values()])):.1f}" for r in REGIONS)
        lines.append(f"| {case} | {full} | {mean} |")
    return "\n".join(lines)


def heat_map(evaluation: Dict[str, object], path: Path, title: str = "Dice per subset") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(evaluation["subsets"])
    values = np.array([[evaluation["subsets"][k][r] for r in REGIONS] for k in keys])
    figure, axis = plt.subplots(figsize=(4.8, 0.35 * len(keys) + 1.4))
    image = axis.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(REGIONS)), REGIONS)
    axis.set_yticks(range(len(keys)), keys, fontsize=8)
    for (row, column), value in np.ndenumerate(values):
        axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                  color="white" if value < 0.6 else "black")
    figure.colorbar(image, ax=axis, fraction=0.05)
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)
    return path
