"""MetaKD importance weights (method.md section 5).

Four free logits ``w``; importance ``alpha = softmax(w)``. The meta step (as released): Adam steps
on ``w`` alone, each on an augmented crop of the held-out meta set with all four sequences, where
each sequence's bottleneck is multiplied by ``alpha_m`` before fusion and the loss is Dice + BCE.
The network's weights are not updated (only the gradient with respect to ``w`` is computed).
"""

from __future__ import annotations

from typing import Dict, Iterable

import torch
from torch import nn

from lckd.network import LCKDNet
from lckd.sequences import SEQUENCES

from .losses import segmentation_loss


class ImportanceWeights(nn.Module):
    """The four importance logits and their Adam optimiser."""

    def __init__(self, learning_rate: float, weight_decay: float) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(len(SEQUENCES)))
        self.optimiser = torch.optim.Adam([self.logits], lr=learning_rate, weight_decay=weight_decay)

    def alpha(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def as_dict(self) -> Dict[str, float]:
        return {name: round(float(value), 5) for name, value in zip(SEQUENCES, self.alpha().detach().cpu())}

    def meta_step(self, model: LCKDNet, batches: Iterable[Dict[str, torch.Tensor]]) -> float:
        """One Adam step on ``w`` per batch; returns the last meta loss."""
        loss_value = 0.0
        for batch in batches:
            images = batch["images"].to(self.logits.device)
            regions = batch["regions"].to(self.logits.device)
            with torch.no_grad():
                encoded = model.encode(images, [True] * len(SEQUENCES))
            alpha = self.alpha().to(encoded.bottlenecks.dtype)
            weighted = encoded.bottlenecks * alpha.view(1, -1, 1, 1, 1, 1)
            loss = segmentation_loss(model.decode(encoded, bottlenecks=weighted), regions)
            (gradient,) = torch.autograd.grad(loss, [self.logits])
            self.optimiser.zero_grad(set_to_none=True)
            self.logits.grad = gradient
            self.optimiser.step()
            loss_value = float(loss.detach())
        return loss_value
