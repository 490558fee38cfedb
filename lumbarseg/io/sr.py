"""The findings report as a DICOM Structured Report: a TID 1500 Measurement Report, written and
read back with highdicom.

Why: a PACS and its viewers store, route and show DICOM, not the report's JSON. An SR beside the
DICOM-SEG puts the findings in the study itself, each level tied to its disc segment and to the
source images it was measured on.

Content (one TID 1411 Volumetric ROI measurement group per named disc level, plus a TID 1410
planar group with the same tracking identifier whose image region is the disc centre: OHIF's SR
handler merges groups by tracking UID and draws only groups with an image region at their top
level; an image library of the slices referenced, which that handler reads too). The SOP class
is Comprehensive SR: every point is an image point (SCOORD), and OHIF reads a Comprehensive 3D SR
as world points (SCOORD3D) only:

* tracking identifier: the level name ("L4-L5"); finding site: SNOMED CT's "Level of L4/L5
  intervertebral disc"; ROI: the disc's segment of the DICOM-SEG of the same run, on the source
  series (Referenced Segment + Source Series For Segmentation);
* measurements (TID 300): disc volume; dural sac area and antero-posterior diameter (finding site
  the dural sac, coded as the SEG codes it; source image the acquired axial slice they were
  measured on, when there is one); herniation height, inferred from the hernia's top point, a
  SCOORD POINT on the source slice it lies on (TID 320);
* qualitative evaluations: spinal stenosis grade, herniation yes/no, direction, laterality.

Codes: SNOMED CT, DCM and UCUM where they have the concept, else this project's private scheme
``99LUMBARSEG`` (the one its DICOM-SEG uses), whose code value and meaning are the report's word.
Pixel coordinates: (column, row), (0, 0) the top-left corner of the top-left pixel (PS3.3
C.18.6.1.1), so a voxel's centre is its index + 0.5.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from highdicom.sr.utils import find_content_items
from pydicom.uid import generate_uid

from lumbarseg import __version__, tissues
from lumbarseg.io.dicom import PRIVATE_SCHEME, property_type
from lumbarseg.io.study import Series, StudyError


# No SNOMED CT / DCM concept for these two: the private scheme.
HERNIA_HEIGHT = hd.sr.CodedConcept("hernia_height", PRIVATE_SCHEME, "Herniation height")
HERNIA_DIRECTION = hd.sr.CodedConcept("hernia_direction", PRIVATE_SCHEME, "Herniation direction")
STENOSIS = hd.sr.CodedConcept("76107001", "SCT", "Spinal stenosis")
HERNIATION = hd.sr.CodedConcept("73589001", "SCT", "Herniation of intervertebral disc")
DURAL_SAC = property_type("dural_sac")  # as the DICOM-SEG codes the dural sac segment
MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
MM2 = hd.sr.CodedConcept("mm2", "UCUM", "square millimeter")
MM3 = hd.sr.CodedConcept("mm3", "UCUM", "cubic millimeter")

# The report's words for which SNOMED CT has a concept; any other word is a private code.
WORDS = {"yes": codes.SCT.Yes, "no": codes.SCT.No, "none": codes.SCT.Absent, "mild": codes.SCT.Mild,
         "moderate": codes.SCT.Moderate, "severe": codes.SCT.Severe, "central": codes.SCT.Central,
         "left": codes.SCT.Left, "right": codes.SCT.Right}
Group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations  # one disc level's findings
LEVEL_SITES = {name: getattr(codes.SCT, f"LevelOf{name.replace('-', '')}IntervertebralDisc")
               for name in tissues.DISC_LEVELS}


def _coded(word: str) -> hd.sr.CodedConcept:
    code = WORDS.get(word)
    return hd.sr.CodedConcept(word, PRIVATE_SCHEME, word) if code is None else hd.sr.CodedConcept.from_code(code)


def _word(concept: hd.sr.CodedConcept) -> str:
    return next((word for word, code in WORDS.items() if concept == code), concept.value)


class _SourceImages:
    """Headers of the source slices the report points at, read once each: every one is both a
    reference in the content and evidence the SR must list. ``series`` are the report's series
    in its order (``report["series"][i]`` is ``series[i]``); a slice of a series is its first
    contrast's instance, the one the DICOM-SEG references too."""

    def __init__(self, series: Sequence[Series], out_path: Path):
        for s in series:
            if "files" not in s.meta:
                raise StudyError(s.source or out_path, "a structured report must reference DICOM source images; "
                                                       "this series was not loaded from DICOM")
        self.series = list(series)
        self.read: dict[tuple[int, int], Dataset] = {}

    def __call__(self, index: int, k: int) -> Dataset:
        if (index, k) not in self.read:
            self.read[index, k] = pydicom.dcmread(self.series[index].meta["files"][0][k], stop_before_pixels=True)
        return self.read[index, k]


def _sac_measurements(sac: dict, images: _SourceImages) -> list[hd.sr.Measurement]:
    """Dural sac area and antero-posterior diameter at the dural sac, from the acquired slice
    they were measured on (none when measured on a plane resampled from a volume)."""
    source = None
    if sac["slice"] is not None:
        source = [hd.sr.SourceImageForMeasurement.from_source_image(images(sac["series"], sac["slice"]))]
    site = [hd.sr.FindingSite(DURAL_SAC)]
    return [hd.sr.Measurement(codes.SCT.Area, sac["area_mm2"], MM2, finding_sites=site, referenced_images=source),
            hd.sr.Measurement(codes.SCT.Diameter, sac["ap_diameter_mm"], MM, finding_sites=site,
                              referenced_images=source)]


def _top_point(top: dict, images: _SourceImages) -> hd.sr.ScoordContentItem:
    """The hernia's top point on its source slice: voxel (i, j, k) of the report's series is
    column i, row j of slice k (a slice's array is (columns, rows), see lumbarseg.io.dicom)."""
    i, j, k = top["voxel"]
    point = hd.sr.ScoordContentItem(name=codes.DCM.SourceOfMeasurement, graphic_type=hd.sr.GraphicTypeValues.POINT,
                                    graphic_data=np.array([[i + 0.5, j + 0.5]]),
                                    relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM)
    point.ContentSequence = [hd.sr.SourceImageForRegion.from_source_image(images(top["series"], k))]
    return point


def _herniation(h: dict, images: _SourceImages) -> tuple[list, list]:
    """(measurements, evaluations) of a level's herniation. The height carries the top point as
    the spatial coordinates it was inferred from (TID 300 > TID 320): where a viewer draws it."""
    evaluations = [hd.sr.QualitativeEvaluation(HERNIATION, _coded("yes" if h["present"] else "no"))]
    if not h["present"]:
        return [], evaluations
    evaluations.append(hd.sr.QualitativeEvaluation(HERNIA_DIRECTION, _coded(h["direction"])))
    if h["side"] != "none":
        evaluations.append(hd.sr.QualitativeEvaluation(codes.SCT.Laterality, _coded(h["side"])))
    height = hd.sr.Measurement(HERNIA_HEIGHT, h["height_mm"], MM)
    height[0].ContentSequence = hd.sr.ContentSequence([_top_point(h["top_point"], images)])
    return [height], evaluations


def _disc_centre(level: dict, series: Series, index: int, images: _SourceImages) -> hd.sr.ImageRegion | None:
    """The disc centre as a point on the source slice through it: where a viewer that draws
    planar regions (OHIF) shows the level's findings. None when the centre is outside the series."""
    i, j, k = np.rint(series.voxel(np.array(level["centre_mm"]))).astype(int)
    if not all(0 <= v < n for v, n in zip((i, j, k), series.shape)):
        return None
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=np.array([[i + 0.5, j + 0.5]]),
                             source_image=hd.sr.SourceImageForRegion.from_source_image(images(index, int(k))))


def _level_groups(level: dict, seg: Dataset, segment: int, images: _SourceImages, naming: int) -> list:
    """One level's measurement group, its ROI the level's disc segment of ``seg``, and a planar
    group with the same tracking identifier whose region is the disc centre on the series the
    levels were named on (``naming``): viewers merge groups by tracking UID, and OHIF draws only
    groups with an image region."""
    measurements = [hd.sr.Measurement(codes.SCT.Volume, level["disc_volume_mm3"], MM3)]
    evaluations = []
    if level["dural_sac"]:
        measurements += _sac_measurements(level["dural_sac"], images)
        evaluations.append(hd.sr.QualitativeEvaluation(STENOSIS, _coded(level["stenosis"])))
    hernia_measurements, hernia_evaluations = _herniation(level["herniation"], images)
    source_series = hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=level["level"])
    site = [hd.sr.FindingSite(LEVEL_SITES[level["level"]])]
    groups = [Group(
        tracking_identifier=tracking,
        referenced_segment=hd.sr.ReferencedSegment(seg.SOPClassUID, seg.SOPInstanceUID, segment,
                                                   source_series=source_series),
        finding_sites=site, algorithm_id=hd.sr.AlgorithmIdentification(name="lumbarseg", version=__version__),
        measurements=measurements + hernia_measurements, qualitative_evaluations=evaluations + hernia_evaluations)]
    centre = _disc_centre(level, images.series[naming], naming, images)
    if centre is not None:
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=centre, finding_sites=site))
    return groups


def write_findings_sr(report: dict, series: Sequence[Series], seg: Dataset, out_path: str | Path) -> Path:
    """A Comprehensive SR of ``report`` (:func:`lumbarseg.measure.study_report`): one
    measurement group per named level, referencing the DICOM-SEG ``seg`` written from the same
    run (its segments named by level) and the source images. ``series``: the DICOM-loaded
    series the report measured, in its order (its slice and voxel indices point into them)."""
    out_path = Path(out_path)
    images = _SourceImages(series, out_path)
    segments = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    levels = [level for level in report["levels"] if level["level"]]
    if not levels:
        raise StudyError(out_path, "the report names no disc level: nothing to write in a structured report")
    missing = [level["level"] for level in levels if level["level"] not in segments]
    if missing:
        raise StudyError(out_path, f"the DICOM-SEG has no segment for {', '.join(missing)}: "
                                   "give the SEG written from the same run as the report")
    naming = (report.get("naming") or {}).get("series") or 0
    groups = [g for level in levels for g in _level_groups(level, seg, segments[level["level"]], images, naming)]
    device = hd.sr.DeviceObserverIdentifyingAttributes(  # one UID for lumbarseg, the same in every SR
        uid=generate_uid(entropy_srcs=["lumbarseg"]), name="lumbarseg", manufacturer_name="lumbarseg",
        model_name="lumbarseg")
    observer = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device))
    content = hd.sr.MeasurementReport(observation_context=observer, procedure_reported=codes.SCT.ImagingProcedure,
                                      imaging_measurements=groups, referenced_images=list(images.read.values()))
    sr = hd.sr.ComprehensiveSR(
        evidence=[seg, *images.read.values()], content=content[0], series_instance_uid=generate_uid(),
        series_number=901, sop_instance_uid=generate_uid(), instance_number=1, manufacturer="lumbarseg",
        is_complete=True, series_description="lumbarseg findings", manufacturer_model_name="lumbarseg",
        software_versions=__version__, coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            PRIVATE_SCHEME, name="lumbarseg findings and structures", responsible_organization="lumbarseg")])
    sr.save_as(str(out_path))
    return out_path


def write_findings_dicom(label: np.ndarray, report: dict, source: Series, seg_path: str | Path,
                         sr_path: str | Path | None = None) -> tuple[Path, Path | None]:
    """The study label map as a DICOM-SEG on ``source`` and, given ``sr_path``, the findings
    report as an SR referencing that SEG: what one analysis of ``source`` (the report's series 0)
    gives a PACS. Returns the paths written."""
    from lumbarseg.io.dicom import write_dicom_seg

    seg = write_dicom_seg(label, tissues.STUDY_LABELS, source, seg_path)
    if sr_path is None:
        return seg, None
    return seg, write_findings_sr(report, [source], pydicom.dcmread(seg, stop_before_pixels=True), sr_path)


# --- reading back ---------------------------------------------------------------------------

def _number(group: Group, name: hd.sr.CodedConcept) -> float | None:
    found = group.get_measurements(name=name)
    return float(found[0].value) if found else None


def _evaluation(group: Group, name: hd.sr.CodedConcept) -> str | None:
    found = group.get_qualitative_evaluations(name=name)
    return _word(found[0].value) if found else None


def _source_uid(measurement: hd.sr.Measurement) -> str | None:
    images = measurement.referenced_images
    return str(images[0].referenced_sop_instance_uid) if images else None


def _read_top_point(height: hd.sr.Measurement) -> dict:
    [point] = find_content_items(height[0], value_type=hd.sr.ValueTypeValues.SCOORD)
    x, y = (float(v) for v in point.GraphicData)
    return {"pixel": [math.floor(x), math.floor(y)],
            "sop_instance_uid": str(point.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)}


def _read_herniation(group: Group) -> dict:
    if _evaluation(group, HERNIATION) != "yes":
        return {"present": False}
    [height] = group.get_measurements(name=HERNIA_HEIGHT)
    return {"present": True, "direction": _evaluation(group, HERNIA_DIRECTION),
            "side": _evaluation(group, codes.SCT.Laterality) or "none",
            "height_mm": float(height.value), "top_point": _read_top_point(height)}


def _read_level(group: Group) -> dict:
    area = group.get_measurements(name=codes.SCT.Area)
    sac = None
    if area:
        sac = {"area_mm2": float(area[0].value), "ap_diameter_mm": _number(group, codes.SCT.Diameter),
               "sop_instance_uid": _source_uid(area[0])}
    segment, source_series = group.referenced_segment
    return {
        "level": group.tracking_identifier,
        "disc_volume_mm3": _number(group, codes.SCT.Volume),
        "dural_sac": sac,
        "stenosis": _evaluation(group, STENOSIS),
        "herniation": _read_herniation(group),
        "segment": {"sop_instance_uid": str(segment.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
                    "segment_number": int(segment.ReferencedSOPSequence[0].ReferencedSegmentNumber),
                    "source_series_uid": str(source_series.value)},
    }


def read_findings_sr(path: str | Path) -> dict:
    """The levels of an SR written by :func:`write_findings_sr`, in the shape of the JSON
    report's levels (values only; ``yes``/``no`` and SNOMED CT words back to the report's
    words), each with the ``segment`` it references and, for the dural sac and the hernia's top
    point, the SOP instance they lie on: ``{"levels": [...]}``."""
    path = Path(path)
    try:
        report = hd.sr.MeasurementReport.from_sequence(hd.sr.srread(str(path)).content)
    except Exception as err:  # pydicom and highdicom raise assorted errors on foreign files
        raise StudyError(path, f"not a readable TID 1500 structured report ({err})") from err
    return {"levels": [_read_level(group) for group in report.get_volumetric_roi_measurement_groups()]}
