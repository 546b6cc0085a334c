"""LCKD inference library: sequences and labels, network, normalisation, inference, model files, I/O.

Pure Python on torch, MONAI, nibabel and safetensors; it never imports Slicer.
"""

__version__ = "0.1.0"
