"""DICOM RT Structure Set: write a segmentation as planar contours (:mod:`.writer`), read one back onto an image
grid (:mod:`.reader`, :mod:`.importer`), the exact contour geometry both share (:mod:`.contours`), and the
``aiportal import-rtstruct`` command (:mod:`.cli`)."""
