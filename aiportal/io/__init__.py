"""The input layer: DICOM series, NIfTI/NRRD files and volume nodes, in one place."""
