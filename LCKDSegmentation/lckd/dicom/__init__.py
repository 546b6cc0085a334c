"""DICOM in and out: study folders grouped into series and recognised as sequences
(:mod:`.study`, :mod:`.recognition`), DICOM Segmentation objects on the source series
(:mod:`.segmentation_object`), DICOMweb retrieval and storage (:mod:`.dicomweb`), and the routes
`lckd segment` takes through them (:mod:`.routes`).

pydicom, highdicom and dicomweb-client are an optional extra (``pip install 'lckd-segmentation[dicom]'``);
:func:`.dependencies.require` says so in one line when one is missing.
"""
