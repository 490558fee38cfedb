"""DICOM studies in patient space: series and stacks in, MR series and DICOM-SEG out.

Geometry: a slice's ImageOrientationPatient holds the direction of increasing column index
(along a row) and then of increasing row index, in LPS; PixelSpacing is (distance between rows,
distance between columns) -- the reverse order. A stack's array is ``(columns, rows, slices)``
so that its affine's first column is the row direction times the column spacing, the second the
column direction times the row spacing, the third the step between slice positions; x and y are
negated for RAS. Nothing assumes axis-aligned slices: a clinical lumbar study's sparse sagittal
stack and its angulated axial stacks (one per disc, sometimes several in one series) each
become their own :class:`Series`.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from lumbarseg import __version__, modalities, tissues
from lumbarseg.io import budget
from lumbarseg.io.study import Series, Study, StudyError

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS, its own inverse


def _geometry(ds: Dataset, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, position) in LPS; StudyError if a tag is missing."""
    missing = [tag for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing") if tag not in ds]
    if missing:
        raise StudyError(path, f"missing geometry: {', '.join(missing)}")
    orientation = np.array(ds.ImageOrientationPatient, float)
    return orientation[:3], orientation[3:], np.array(ds.ImagePositionPatient, float)


def affine_of(first: Dataset, step: np.ndarray) -> np.ndarray:
    """RAS affine of a stack from its first slice and the LPS step between slices."""
    row, col, position = (np.array(v, float) for v in (first.ImageOrientationPatient[:3],
                                                        first.ImageOrientationPatient[3:], first.ImagePositionPatient))
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * col_spacing, col * row_spacing, step, position
    return LPS @ lps


def _read(path: Path) -> Dataset | None:
    """Header of a DICOM image file; None for files that are not DICOM images."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError):
        return None
    except Exception as err:  # pydicom raises assorted errors on damaged headers
        raise StudyError(path, f"unreadable DICOM header ({err})") from err
    return ds if "SOPClassUID" in ds and "Rows" in ds and "SeriesInstanceUID" in ds else None


def _pixels(path: Path) -> np.ndarray:
    try:
        ds = pydicom.dcmread(str(path))
        data = ds.pixel_array.astype(np.float32)
    except Exception as err:  # truncated pixel data raises ValueError, EOFError, ...
        raise StudyError(path, f"truncated or corrupt pixel data ({err})") from err
    return data * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))


def _split_stacks(slices: list[tuple[Path, Dataset]]) -> list[list[tuple[Path, Dataset]]]:
    """Parallel slices sorted along their normal, cut where the step between positions changes
    (another stack, a gap, or non-uniform spacing that one affine cannot hold)."""
    row, col, _ = _geometry(slices[0][1], slices[0][0])
    normal = np.cross(row, col)
    slices = sorted(slices, key=lambda s: float(np.array(s[1].ImagePositionPatient, float) @ normal))
    stacks = [[slices[0]]]
    for item in slices[1:]:
        stack = stacks[-1]
        step = np.array(item[1].ImagePositionPatient, float) - np.array(stack[-1][1].ImagePositionPatient, float)
        if len(stack) >= 2:
            usual = np.array(stack[-1][1].ImagePositionPatient, float) - np.array(stack[-2][1].ImagePositionPatient, float)
            same = np.linalg.norm(step - usual) < 0.05 * np.linalg.norm(usual) + 1e-3
        else:
            same = np.linalg.norm(step) > 1e-3 and abs(step @ normal) / np.linalg.norm(step) > 0.9
        if same:
            stack.append(item)
        else:
            stacks.append([item])
    return stacks


def _stack_series(stack: list[tuple[Path, Dataset]]) -> Series:
    first_path, first = stack[0]
    shape = (int(first.Rows), int(first.Columns))
    for path, ds in stack:
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise StudyError(path, f"slice is {ds.Rows}x{ds.Columns}, its stack {shape[0]}x{shape[1]}")
    if len(stack) > 1:
        positions = np.array([ds.ImagePositionPatient for _, ds in stack], float)
        step = (positions[-1] - positions[0]) / (len(stack) - 1)
    else:
        row, col, _ = _geometry(first, first_path)
        thickness = float(getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1.0)
        step = np.cross(row, col) * thickness
    affine = affine_of(first, step)
    budget.check_spacing(first_path.parent, budget.affine_spacing(affine))
    volume = np.stack([_pixels(path).T for path, _ in stack], axis=-1)  # (columns, rows, slices)
    description = str(getattr(first, "SeriesDescription", ""))
    name, _, contrast = description.rpartition(" ")
    if not contrast or modalities.normalize(contrast) not in modalities.MODALITIES:
        name, contrast = description, description or "mr"
    return Series(
        image=volume[None], affine=affine, modalities=(modalities.normalize(contrast),),
        description=name, source=str(first_path.parent),
        meta={"study_uid": str(first.StudyInstanceUID), "series_uids": [str(first.SeriesInstanceUID)],
              "frame_of_reference_uid": str(getattr(first, "FrameOfReferenceUID", "")),
              "files": [[str(p) for p, _ in stack]], "sop_uids": [[str(ds.SOPInstanceUID) for _, ds in stack]]},
    )


def _merge_channels(stacks: list[Series]) -> list[Series]:
    """Stacks acquired on one grid (several contrasts) become one multi-channel series."""
    merged: list[Series] = []
    for s in stacks:
        twin = next((m for m in merged if m.shape == s.shape and np.allclose(m.affine, s.affine, atol=1e-3)
                     and m.description == s.description), None)
        if twin is None:
            merged.append(s)
            continue
        twin.image = np.concatenate([twin.image, s.image])
        twin.modalities += s.modalities
        for key in ("series_uids", "files", "sop_uids"):
            twin.meta[key] = twin.meta[key] + s.meta[key]
    return merged


def load_dicom(folder: str | Path) -> Study:
    """Every image stack of every series below ``folder``, placed in patient space."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StudyError(folder, "DICOM folder not found")
    groups: dict[tuple, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read(path)
        if ds is None:
            continue
        row, col, _ = _geometry(ds, path)
        groups[(str(ds.SeriesInstanceUID), *np.round(np.concatenate([row, col]), 3))].append((path, ds))
    if not groups:
        raise StudyError(folder, "no DICOM images found")
    voxels = 0  # the study's voxel budget, from the headers, before any pixel is decoded
    for path, ds in (item for group in groups.values() for item in group):
        try:
            shape = (int(ds.Rows), int(getattr(ds, "Columns", 0) or 0), int(getattr(ds, "NumberOfFrames", 1) or 1),
                     int(getattr(ds, "SamplesPerPixel", 1) or 1))
        except (TypeError, ValueError) as err:
            raise StudyError(path, f"unreadable image size in the DICOM header ({err})") from err
        voxels = budget.check_size(path, shape, voxels)
    stacks = [_stack_series(stack) for group in groups.values() for stack in _split_stacks(group)]
    series = _merge_channels(stacks)
    study = Study(series, subject=folder.name, source=str(folder))
    return study.check()


def _ds(*values: float) -> list[DSfloat]:
    """Decimal strings of at most 16 characters, as the DS value representation allows."""
    return [DSfloat(float(v), auto_format=True) for v in values]


def _dataset(series: Series, channel: int, k: int, uids: dict, number: int, patient: tuple[str, str]) -> Dataset:
    lps = LPS @ series.affine
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    pixels = series.image[channel, :, :, k].T  # (rows, columns)
    lo, hi = float(series.image[channel].min()), float(series.image[channel].max())
    slope = (hi - lo) / 65535 or 1.0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    now = datetime.datetime.now()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PatientID, ds.PatientName = patient
    ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber, ds.ReferringPhysicianName = "", "O", "", ""
    ds.StudyID, ds.StudyDate, ds.StudyTime = "1", now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Modality, ds.Manufacturer = "MR", "lumbarseg"
    # MR Image IOD attributes a converted volume cannot know: present, empty or "none" (Type 2)
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.ScanningSequence, ds.SequenceVariant = "RM", "NONE"  # RM: research mode, i.e. not stated
    ds.ScanOptions = ds.MRAcquisitionType = ds.RepetitionTime = ds.EchoTime = ds.EchoTrainLength = ""
    ds.Laterality = ds.PositionReferenceIndicator = ds.PatientPosition = ""
    ds.SeriesNumber, ds.InstanceNumber = number, k + 1
    ds.SeriesDescription = f"{series.description} {series.modalities[channel]}".strip()
    ds.ImageOrientationPatient = _ds(*col_step / np.linalg.norm(col_step), *row_step / np.linalg.norm(row_step))
    ds.ImagePositionPatient = _ds(*lps[:3, :3] @ np.array([0, 0, k]) + lps[:3, 3])
    ds.PixelSpacing = _ds(np.linalg.norm(row_step), np.linalg.norm(col_step))
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(np.linalg.norm(lps[:3, 2]))[0]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    (ds.RescaleSlope, ds.RescaleIntercept), ds.RescaleType = _ds(slope, lo), "US"
    ds.PixelData = np.round((pixels - lo) / slope).clip(0, 65535).astype(np.uint16).tobytes()
    return ds


def write_dicom_series(series: Series, out_dir: str | Path, *, patient_id: str, study_uid: str,
                       series_number: int, frame_uid: str | None = None, patient_name: str = "") -> list[Path]:
    """One MR series per channel (a DICOM series holds one contrast), one file per slice along
    k; returns the series folders. The contrast is the SeriesDescription's last word."""
    out_dir = Path(out_dir)
    folders = []
    for c, contrast in enumerate(series.modalities):
        folder = out_dir / f"{series_number:02d}{c}_{series.description or 'series'}_{contrast}"
        folder.mkdir(parents=True, exist_ok=True)
        uids = {"study": study_uid, "series": generate_uid(), "frame": frame_uid or generate_uid()}
        for k in range(series.shape[2]):
            ds = _dataset(series, c, k, uids, series_number * 10 + c, (patient_id, patient_name or f"{patient_id}^"))
            ds.save_as(str(folder / f"{k + 1:04d}.dcm"), write_like_original=False)
        folders.append(folder)
    return folders


def write_dicom_study(study: Study, out_dir: str | Path, *, patient_id: str | None = None) -> Path:
    """All series of a study under one StudyInstanceUID and frame of reference."""
    out_dir = Path(out_dir)
    study_uid, frame_uid = generate_uid(), generate_uid()
    for number, series in enumerate(study.series, start=1):
        write_dicom_series(series, out_dir, patient_id=patient_id or study.subject or "anonymous",
                           study_uid=study_uid, series_number=number, frame_uid=frame_uid)
    return out_dir


# --- DICOM-SEG -----------------------------------------------------------------------------

# SNOMED CT where pydicom's code dictionary has the concept; otherwise a private coding scheme
# (DICOM allows "99"-prefixed designators) naming the schema's structure.
PRIVATE_SCHEME = "99LUMBARSEG"
# The SeriesDescription of every DICOM-SEG lumbarseg writes: a model's answer, not a reviewed label
# (the app's DICOMweb datastore does not count these as labels).
SEG_DESCRIPTION = "lumbarseg segmentation"
_SCT = {"sacrum": ("54735007", "Sacrum"), "vertebral_body": ("51282000", "Vertebra"),
        "dural_sac": ("65216001", "Cerebrospinal Fluid")}


def property_type(name: str):
    from highdicom.sr.coding import CodedConcept

    tissue = tissues.tissue_of(name).name
    if tissue in _SCT:
        value, meaning = _SCT[tissue]
        return CodedConcept(value, "SCT", meaning)
    return CodedConcept(tissue, PRIVATE_SCHEME, tissues.tissue_of(name).title)


def _cielab(rgb: tuple[int, int, int]) -> list[int]:
    """DICOM-encoded CIELab of an sRGB colour (RecommendedDisplayCIELabValue)."""
    from skimage.color import rgb2lab

    l, a, b = rgb2lab(np.array([[rgb]], float) / 255.0)[0, 0]
    return [int(round(l * 65535 / 100)), int(round((a + 128) * 65535 / 255)), int(round((b + 128) * 65535 / 255))]


def write_dicom_seg(label: np.ndarray, structures: dict[int, str], source: Series, out_path: str | Path) -> Path:
    """A DICOM-SEG of ``label`` (on ``source``'s grid) referencing ``source``'s instances; one
    segment per structure present, named and coloured from the label schema."""
    import highdicom as hd

    out_path = Path(out_path)
    if "files" not in source.meta:
        raise StudyError(source.source or "series", "DICOM-SEG needs a series loaded from DICOM (its source instances)")
    if label.shape != source.shape:
        raise StudyError(out_path, f"label shape {label.shape} does not match the source series {source.shape}")
    sources = [pydicom.dcmread(p) for p in source.meta["files"][0]]
    present = [v for v in sorted(int(v) for v in np.unique(label)) if v and v in structures]
    segment_of = np.zeros(int(label.max()) + 1, np.uint16)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(name="lumbarseg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    for number, value in enumerate(present, start=1):
        segment_of[value] = number
        name = structures[value]
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.cid7150.AnatomicalStructure,
            segmented_property_type=property_type(name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        description.SegmentDescription = tissues.tissue_of(name).title
        description.RecommendedDisplayCIELabValue = _cielab(tissues.study_label_color(name))
        descriptions.append(description)
    if not descriptions:
        raise StudyError(out_path, "the label map holds no named structure to write")
    frames = np.moveaxis(segment_of[label], -1, 0).transpose(0, 2, 1)  # (slices, rows, columns)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=900,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="lumbarseg",
        manufacturer_model_name="lumbarseg", software_versions=__version__, device_serial_number="0",
        series_description=SEG_DESCRIPTION)
    seg.save_as(str(out_path))
    return out_path


def read_dicom_seg(path: str | Path, reference: Series) -> tuple[np.ndarray, dict[int, str]]:
    """A DICOM-SEG back on ``reference``'s grid: (study label map, value -> structure name)."""
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(str(path))
    except Exception as err:
        raise StudyError(path, f"not a readable DICOM-SEG ({err})") from err
    names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=reference.meta["sop_uids"][0],
                                               combine_segments=True, skip_overlap_checks=True)
    value_of = np.zeros(max(names) + 1, np.uint8)
    for number, name in names.items():
        value_of[number] = tissues.STUDY_VALUES[name]
    label = value_of[frames.transpose(0, 2, 1)]  # (slices, columns, rows)
    return np.moveaxis(label, 0, -1), {int(value_of[n]): name for n, name in names.items()}
