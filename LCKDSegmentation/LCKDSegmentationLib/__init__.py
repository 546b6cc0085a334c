"""Slicer-side work of the LCKDSegmentation module that runs without Qt: sequence slots, volume
export, the segmenter process, segmentation import with terminology, the model catalogue."""
