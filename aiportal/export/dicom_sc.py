"""Key images as DICOM Secondary Capture, in the source study, for a PACS that cannot store a PNG.

Each measured lesion's key image (:mod:`aiportal.measure.key_images`: the slice through its RECIST
axes at the view's window/level, outline and axes drawn, lengths written in) becomes one RGB
Secondary Capture image; all of an export's key images form one series. The pixels are the PNG's,
unchanged. Patient and study come from the source images (as in the SEG), so the PACS files the key
images with the study; an image on an acquired slice references that slice (Source Image Sequence).
The TID 1500 SR lists them in its image library (:func:`aiportal.export.dicom_sr.write_sr`).

The burnt-in text names the lesion, its slice and its lengths, never the patient: Burned In
Annotation is NO, which is what that attribute means (enough text to identify the patient), so the
images can be de-identified like any other result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from aiportal import __version__
from aiportal.export.dicom_seg import MANUFACTURER, with_utf8
from aiportal.export.dicom_source import ExportSource, copy_patient_and_study
from aiportal.provenance import software_versions

if TYPE_CHECKING:
    from aiportal.measure.key_images import KeyImage
    from aiportal.measure.recist import RecistMeasurement

_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # negative, positive direction of LPS x, y, z


@dataclass
class KeyImageExport:
    path: Path  # the SC file
    png: Path  # the key image it holds
    sop_instance_uid: str
    series_instance_uid: str
    lesion_name: str
    source_sop_instance_uid: str | None  # the acquired slice it shows, when it is one


def orientation_letters(direction_ras) -> str:
    """DICOM Patient Orientation of a direction: its main LPS components, largest first (e.g. ``LP``)."""
    lps = np.asarray(direction_ras, dtype=float) * np.array([-1.0, -1.0, 1.0])
    order = np.argsort(-np.abs(lps))
    return "".join(_LETTERS[axis][int(lps[axis] > 0)] for axis in order if abs(lps[axis]) > 1e-2)


def key_image_dataset(
    key: KeyImage,
    measurement: RecistMeasurement,
    source: ExportSource,
    *,
    series_instance_uid: str,
    instance_number: int,
    series_number: int = 303,
    series_description: str = "AI key images",
) -> hd.sc.SCImage:
    """The RGB Secondary Capture of one key image PNG, in the source study."""
    with Image.open(key.path) as image:
        pixels = np.asarray(image.convert("RGB"))
    rows, columns = orientation_letters(key.row_direction_ras), orientation_letters(key.column_direction_ras)
    first = source.datasets[0]
    dataset = with_utf8(
        hd.sc.SCImage.from_ref_dataset,
        ref_dataset=first,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=(rows[0], columns[0]),  # highdicom takes one letter; the full ones are set below
        transfer_syntax_uid=ExplicitVRLittleEndian,
        manufacturer_model_name=MANUFACTURER,
        software_versions=software_versions()[:64],
        device_serial_number=__version__,
        series_description=series_description[:64],
    )
    copy_patient_and_study(dataset, first)  # the whole patient and study modules, as in the SEG
    dataset.PatientOrientation = [rows, columns]
    dataset.ConversionType = "WSD"  # made on a workstation
    dataset.BurnedInAnnotation = "NO"  # lesion name and lengths only: nothing that identifies the patient
    dataset.RecognizableVisualFeatures = "NO"
    dataset.NominalScannedPixelSpacing = [format_number_as_ds(key.mm_per_pixel)] * 2
    if "Laterality" not in dataset:  # Type 2C (dciodvfy asks for it on this CT): present, empty = not known
        dataset.Laterality = ""
    dataset.ImageComments = (f"{measurement.lesion_name}: long axis {measurement.long_axis_mm:.1f} mm, short axis "
                             f"{measurement.short_axis_mm:.1f} mm; window {key.window:g}, level {key.level:g}")[:10240]
    dataset.DerivationDescription = (f"Slice {measurement.slice_axis}={measurement.slice_index} resampled at "
                                     f"{key.mm_per_pixel:.3f} mm per pixel, segment outline and RECIST axes drawn")
    image = acquired_slice(measurement, source)
    if image is not None:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
        dataset.SourceImageSequence = Sequence([item])
    return dataset


def acquired_slice(measurement: RecistMeasurement, source: ExportSource) -> Dataset | None:
    """The source image the measurement's slice is, when it is an acquired one (slices along k, no resampling)."""
    if measurement.slice_axis != "k" or source.regular_grid is not None:
        return None
    return source.datasets[measurement.slice_index] if 0 <= measurement.slice_index < len(source.datasets) else None


def write_key_image_scs(
    keys: list[tuple[KeyImage, RecistMeasurement]], source: ExportSource, folder: Path
) -> list[KeyImageExport]:
    """One Secondary Capture per key image, next to its PNG (``<name>.dcm``), all in one new series."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = hd.UID()
    written = []
    for number, (key, measurement) in enumerate(keys, start=1):
        dataset = key_image_dataset(key, measurement, source, series_instance_uid=series_uid, instance_number=number)
        path = folder / f"{Path(key.path).stem}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        image = acquired_slice(measurement, source)
        written.append(KeyImageExport(path, Path(key.path), str(dataset.SOPInstanceUID), series_uid,
                                      measurement.lesion_name, str(image.SOPInstanceUID) if image else None))
    return written
