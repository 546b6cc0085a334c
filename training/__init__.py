"""Distillation training for the LCKD network: LCKD teacher election, MetaKD importance weights, the
no-KD baseline, 15-subset evaluation and multi-process training.

Reuses the inference library (network, labels, normalisation, case preparation, model files); it
never has its own copies of them.
"""
