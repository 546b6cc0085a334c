"""Synthetic BraTS-like cases on real brain anatomy (the MNI ICBM152 2009 template shipped in nilearn).

Used by the tests, ``make demo``, the training smoke runs, the bundled demo model and the Slicer
sample data: no BraTS data can be shipped or downloaded.
"""
