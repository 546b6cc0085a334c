"""Several trained networks of one architecture used as one model: their region probabilities are
averaged, tile by tile (as nnU-Net averages its cross-validation folds' softmax outputs and
MONAI Auto3DSeg its algorithms' probabilities). Averaging per tile before MONAI's constant-weight
blending equals blending each network and then averaging, since both are means.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .network import LCKDNet


class NetworkEnsemble(nn.Module):
    """Networks whose probabilities :func:`lckd.inference.sliding_window_probabilities` averages.

    It has no ``forward``: an ensemble has no logits, only averaged probabilities. Its state dict
    names each network's tensors ``members.K.<name>``, which is how an ensemble's model file
    stores them (:mod:`lckd.model_file`).
    """

    def __init__(self, members: Sequence[LCKDNet]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two networks, got {len(members)}")
        configs = {member.config for member in members}
        if len(configs) != 1:
            raise ValueError("the networks of an ensemble must share one architecture")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def freeze_for_inference(self, dtype: torch.dtype = torch.float32,
                             channels_last: bool = False) -> NetworkEnsemble:
        """:meth:`LCKDNet.freeze_for_inference` for every network; sets eval mode."""
        for member in self.members:
            member.freeze_for_inference(dtype, channels_last)
        return self.eval()


def networks_of(model: LCKDNet | NetworkEnsemble) -> Sequence[LCKDNet]:
    """The networks a model is made of: an ensemble's members, or the network itself."""
    return list(model.members) if isinstance(model, NetworkEnsemble) else [model]
