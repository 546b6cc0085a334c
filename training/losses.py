"""Losses (method.md section 3): soft Dice + summed BCE for segmentation, L1 KD on bottlenecks.

Segmentation: Dice per sample and region, ``2 sum(p g) / (sum(p) + sum(g) + 1)``, averaged over
regions and batch (loss ``1 - Dice``; MONAI's DiceLoss with ``smooth_nr=0, smooth_dr=1`` is exactly
this form), plus BCE-with-logits averaged over voxels and summed over the three regions.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from lckd.sequences import SEQUENCES

_DICE = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1.0, reduction="mean")


def segmentation_loss(logits: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Dice + BCE for logits and region targets ``(N, 3, D, H, W)``."""
    bce = F.binary_cross_entropy_with_logits(logits, regions, reduction="none").mean(dim=(0, 2, 3, 4)).sum()
    return _DICE(logits, regions) + bce


def l1(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference with the teacher side detached."""
    return (teacher.detach() - student).abs().mean()


def lckd_kd(bottlenecks: torch.Tensor, present: Sequence[bool], teachers: Sequence[str]) -> torch.Tensor:
    """Sum over available teachers t and available sequences s != t of L1(f_t, f_s).

    ``bottlenecks`` is ``(N, 4, C, d, h, w)`` before missing-sequence fill; the s == t terms are 0
    and are skipped.
    """
    available = [i for i, p in enumerate(present) if p]
    total = bottlenecks.new_zeros(())
    for teacher in (SEQUENCES.index(t) for t in teachers):
        if teacher in available:
            for student in available:
                if student != teacher:
                    total = total + l1(bottlenecks[:, teacher], bottlenecks[:, student])
    return total


def metakd_kd(bottlenecks: torch.Tensor, present: Sequence[bool], importance: torch.Tensor) -> torch.Tensor:
    """Sum over ordered pairs i != j of available sequences of detach(alpha_i / alpha_j) L1(f_i, f_j)."""
    available = [i for i, p in enumerate(present) if p]
    alpha = importance.detach()
    total = bottlenecks.new_zeros(())
    for i in available:
        for j in available:
            if i != j:
                total = total + (alpha[i] / alpha[j]) * l1(bottlenecks[:, i], bottlenecks[:, j])
    return total


def describe(losses: Dict[str, torch.Tensor]) -> Dict[str, float]:
    return {name: float(value.detach()) for name, value in losses.items()}
