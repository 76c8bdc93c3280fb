"""Results in standard form: statistics, DICOM SEG and SR, surfaces; one module per concern."""
