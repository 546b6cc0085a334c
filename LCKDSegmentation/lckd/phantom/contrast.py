"""MRI contrast model: tissue signals per sequence, partial-volume blur, bias field, Rician noise.

Relative signal levels (white matter on T1 = 1) are *stated assumptions* that follow the textbook
appearance of gliomas on the four BraTS sequences (e.g. the BraTS papers' descriptions, Menze et al.
2015, IEEE TMI 34(10); Bakas et al. 2017, Sci. Data 4:170117):

* enhancing tumour is bright only on T1ce (gadolinium leaks through the broken blood-brain barrier);
* oedema is bright on T2 and FLAIR, slightly dark on T1;
* CSF is dark on FLAIR (fluid-attenuated), bright on T2, dark on T1;
* necrosis is dark on T1 and T1ce, bright on T2;
* on T1 white matter is brighter than grey matter, on T2 and FLAIR it is darker.

The levels are chosen so that, as in BraTS, T1ce is the most informative sequence for the enhancing
tumour and the tumour core and FLAIR for the whole tumour; `Testing/test_phantom.py` measures this.
Scanner differences: a random intensity scale per sequence and case, a smooth multiplicative bias
field (up to about +-15 %), and Rician noise (2-5 % of white matter).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
from scipy import ndimage

from ..sequences import SEQUENCES

#: Relative signal of each tissue on (flair, t1, t1ce, t2).
SIGNAL: Dict[str, tuple] = {
    "white": (0.55, 1.00, 0.95, 0.45),
    "grey": (0.70, 0.75, 0.72, 0.60),
    "csf": (0.12, 0.30, 0.30, 1.30),
    "oedema": (1.05, 0.62, 0.62, 1.00),
    "necrosis": (0.70, 0.35, 0.40, 1.15),
    "enhancing": (0.98, 0.70, 1.55, 0.95),
}
#: Oedema infiltrates tissue: its voxels keep this fraction of the underlying tissue's signal.
OEDEMA_TISSUE_SHARE = 0.3


def _bias_field(rng: np.random.Generator, shape, strength: float) -> np.ndarray:
    """exp of a random second-order polynomial over the grid (separable terms + cross terms)."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    c = rng.normal(0.0, 1.0, size=9).astype(np.float32)
    field = c[0] * x + c[1] * y + c[2] * z + 0.5 * (c[3] * x * x + c[4] * y * y + c[5] * z * z
                                                    + c[6] * x * y + c[7] * y * z + c[8] * x * z)
    return np.exp(strength * field / 3.0)


def render(tissues: Dict[str, np.ndarray], labels: np.ndarray, spacing: float,
           rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """The four sequences (int16, background exactly 0) for tissue fractions and tumour labels."""
    brain = tissues["brain"]
    oedema = labels == 2
    tumour_core = {"necrosis": labels == 1, "enhancing": labels == 4}
    core = tumour_core["necrosis"] | tumour_core["enhancing"]
    texture = 1.0 + 0.06 * ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32),
                                                   1.5 / spacing) * 4.0
    images = {}
    for index, name in enumerate(SEQUENCES):
        tissue = (tissues["white"] * SIGNAL["white"][index] + tissues["grey"] * SIGNAL["grey"][index]
                  + tissues["csf"] * SIGNAL["csf"][index])
        image = np.where(oedema, OEDEMA_TISSUE_SHARE * tissue + (1 - OEDEMA_TISSUE_SHARE) * SIGNAL["oedema"][index],
                         tissue)
        for kind, mask in tumour_core.items():
            image = np.where(mask, SIGNAL[kind][index], image)
        image = np.where(core | oedema, image * texture, image).astype(np.float32)
        image = ndimage.gaussian_filter(image * brain, 0.5 / spacing)  # partial volume at 1 mm voxels
        image *= _bias_field(rng, image.shape, strength=rng.uniform(0.05, 0.15))
        sigma = rng.uniform(0.02, 0.05)
        noisy = np.hypot(image + rng.normal(0.0, sigma, image.shape).astype(np.float32),
                         rng.normal(0.0, sigma, image.shape).astype(np.float32))
        scale = rng.uniform(300.0, 1200.0)  # scanner- and protocol-dependent units
        images[name] = np.rint(noisy * scale * brain).clip(0, 32767).astype(np.int16)
    return images
