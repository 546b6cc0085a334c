"""MetaKD importance weights (method.md section 5).

Four free logits ``w`` (zeros, or ``torch.rand(4)`` as released); importance ``alpha = softmax(w)``.
The meta step: Adam steps on ``w`` alone, each on an augmented crop of the meta set, where each
sequence's bottleneck is multiplied by ``alpha_m`` before fusion (no mean-fill) and the loss is
Dice + BCE. Each step has its subset of sequences: all four, or (as released, in stage 2) a random
subset, where a missing sequence's input is zero and its bottleneck enters as ``encoder(0) * alpha_m``.
The network's weights are not updated (only the gradient with respect to ``w`` is computed).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from lckd.network import LCKDNet
from lckd.sequences import SEQUENCES

from .losses import segmentation_loss


class ImportanceWeights(nn.Module):
    """The four importance logits and their Adam optimiser."""

    def __init__(self, learning_rate: float, weight_decay: float, init: str = "zeros", seed: int = 0) -> None:
        super().__init__()
        if init == "rand":
            start = torch.rand(len(SEQUENCES), generator=torch.Generator().manual_seed(seed))
        elif init == "zeros":
            start = torch.zeros(len(SEQUENCES))
        else:
            raise ValueError(f"importance init {init!r}: choose zeros or rand")
        self.logits = nn.Parameter(start)
        self.optimiser = torch.optim.Adam([self.logits], lr=learning_rate, weight_decay=weight_decay)

    def alpha(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def as_dict(self) -> Dict[str, float]:
        return {name: round(float(value), 5) for name, value in zip(SEQUENCES, self.alpha().detach().cpu())}

    def meta_step(self, model: LCKDNet, batches: Iterable[Dict[str, torch.Tensor]],
                  subsets: Optional[Sequence[List[bool]]] = None) -> float:
        """One Adam step on ``w`` per batch, with ``subsets[k]`` the presence mask of batch ``k``
        (None: all four sequences); returns the last meta loss."""
        loss_value = 0.0
        for step, batch in enumerate(batches):
            images = batch["images"].to(self.logits.device)
            regions = batch["regions"].to(self.logits.device)
            present = list(subsets[step]) if subsets is not None else [True] * len(SEQUENCES)
            with torch.no_grad():
                encoded = model.encode(images, present)
            alpha = self.alpha().to(encoded.bottlenecks.dtype)
            weighted = encoded.bottlenecks * alpha.view(1, -1, 1, 1, 1, 1)
            loss = segmentation_loss(model.decode(encoded, bottlenecks=weighted), regions)
            (gradient,) = torch.autograd.grad(loss, [self.logits])
            self.optimiser.zero_grad(set_to_none=True)
            self.logits.grad = gradient
            self.optimiser.step()
            loss_value = float(loss.detach())
        return loss_value
