"""The findings as a DICOM Structured Report (TID 1500): every level of the report read back with
highdicom, references to the DICOM-SEG and the source images, dciodvfy, and ``lumbarseg infer
--sr`` on a DICOM phantom."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage

from lumbarseg import io, measure, phantom, postprocess, tissues
from lumbarseg.io.dicom import write_dicom_seg, write_dicom_study
from lumbarseg.io.sr import read_findings_sr, write_findings_sr
from lumbarseg.io.study import Series, Study, StudyError

LUMBARSEG = str(Path(sys.executable).parent / "lumbarseg")


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory) -> tuple[Path, Study]:
    """A clinical-layout phantom (sagittal stack + one angulated axial stack per disc) as DICOM,
    and the phantom itself with its truth label maps."""
    study = phantom.clinical_study(5)
    folder = write_dicom_study(study, tmp_path_factory.mktemp("phantom") / "dicom", patient_id="p5")
    return folder, study


@pytest.fixture(scope="module")
def truth_sr(phantom_dicom, tmp_path_factory):
    """The truth findings of the DICOM sagittal stack and the L4-L5 axial stack (faster than all
    eight series, and both cases: L4-L5 is measured on its acquired axial slices, the other
    levels on planes resampled from the sagittal stack, L3-L4's hernia among them), the
    DICOM-SEG of the levels they name, and the SR of both."""
    folder, study = phantom_dicom
    truth = {s.description: s.label for s in study.series}
    series = [s for s in io.load_study(folder).series if s.description in ("sag", "ax_L4-L5")]
    for s in series:
        s.label = truth[s.description]  # the DICOM round trip keeps each grid (tests/test_dicom.py)
    report, findings = measure.study_findings(Study(series, study.structures, study.subject))
    out = tmp_path_factory.mktemp("sr")
    label = postprocess.study_label_map(findings.named, findings.levels)
    seg = pydicom.dcmread(write_dicom_seg(label, tissues.STUDY_LABELS, series[findings.naming_series], out / "seg.dcm"))
    return report, series, seg, write_findings_sr(report, series, seg, out / "sr.dcm")


def _on_image(series: list[Series], top: dict) -> dict:
    """The report's top point as the SR places it: column, row and SOP instance of its slice."""
    i, j, k = top["voxel"]
    return {"pixel": [i, j], "sop_instance_uid": series[top["series"]].meta["sop_uids"][0][k]}


def test_every_level_reads_back_with_the_values_of_the_report(truth_sr):
    report, series, seg, path = truth_sr
    levels = [level for level in report["levels"] if level["level"]]
    hernias = {level["level"]: level["herniation"]["top_point"] for level in levels if level["herniation"]["present"]}
    assert {hernias[n]["series"] for n in ("L4-L5", "L3-L4")} == {0, 1}  # the fixture has both cases
    assert {level["stenosis"] for level in levels} >= {"none", "mild", "moderate"}
    back = read_findings_sr(path)["levels"]
    assert [level["level"] for level in back] == [level["level"] for level in levels]
    segments = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    for level, got in zip(levels, back):
        sac, h = level["dural_sac"], level["herniation"]
        assert got["disc_volume_mm3"] == pytest.approx(level["disc_volume_mm3"])
        measured_on = None if sac["slice"] is None else series[sac["series"]].meta["sop_uids"][0][sac["slice"]]
        assert got["dural_sac"] == {"area_mm2": pytest.approx(sac["area_mm2"]),
                                    "ap_diameter_mm": pytest.approx(sac["ap_diameter_mm"]),
                                    "sop_instance_uid": measured_on}
        assert got["stenosis"] == level["stenosis"]
        expected = {"present": False}
        if h["present"]:
            expected = {"present": True, "direction": h["direction"], "side": h["side"],
                        "height_mm": pytest.approx(h["height_mm"]), "top_point": _on_image(series, h["top_point"])}
        assert got["herniation"] == expected
        assert got["segment"] == {"sop_instance_uid": seg.SOPInstanceUID, "segment_number": segments[level["level"]],
                                  "source_series_uid": series[0].meta["series_uids"][0]}
    # the point is at the hernia's edge in its image: (column, row) of a slice is voxel (i, j) of its stack
    for name, top in hernias.items():
        i, j, k = top["voxel"]
        around = series[top["series"]].label[i - 2:i + 3, j - 2:j + 3, k]
        assert (around == tissues.STUDY_VALUES["hernia"]).any(), name


def test_the_sr_lists_the_seg_and_the_source_images_as_evidence_of_the_study(truth_sr):
    report, series, seg, path = truth_sr
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == ComprehensiveSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == seg.StudyInstanceUID and ds.PatientID == "p5"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = {(item.SeriesInstanceUID, sop.ReferencedSOPInstanceUID)
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for item in study.ReferencedSeriesSequence for sop in item.ReferencedSOPSequence}
    l45 = next(level for level in report["levels"] if level["level"] == "L4-L5")
    axial = series[l45["dural_sac"]["series"]]
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) in evidence
    assert (axial.meta["series_uids"][0], axial.meta["sop_uids"][0][l45["dural_sac"]["slice"]]) in evidence


def test_dciodvfy_finds_no_error_in_the_sr_the_seg_or_an_mr_slice(truth_sr):
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs dciodvfy (scripts/setup.sh installs dicom3tools)")
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    report, series, seg, path = truth_sr
    for file, kind in ((path, "ComprehensiveSR"), (path.with_name("seg.dcm"), "Segmentation"),
                       (series[0].meta["files"][0][0], "MRImage")):
        result = subprocess.run(["dciodvfy", str(file)], capture_output=True, text=True, timeout=60)
        lines = (result.stdout + result.stderr).splitlines()
        assert lines[0] == kind
        assert [line for line in lines if line.startswith("Error")] == [], file


def test_a_seg_of_another_run_or_a_non_dicom_series_is_refused(truth_sr, tmp_path):
    report, series, seg, path = truth_sr
    other = copy.deepcopy(seg)
    other.SegmentSequence = [s for s in seg.SegmentSequence if s.SegmentLabel != "L4-L5"]
    with pytest.raises(StudyError, match="no segment for L4-L5"):
        write_findings_sr(report, series, other, tmp_path / "sr.dcm")
    nifti = Series(series[0].image, series[0].affine, series[0].modalities, source="study.nii.gz")
    with pytest.raises(StudyError, match="must reference DICOM source images") as err:
        write_findings_sr(report, [nifti, series[1]], seg, tmp_path / "sr.dcm")
    assert err.value.path == "study.nii.gz"
    with pytest.raises(StudyError, match="not a readable TID 1500"):
        read_findings_sr(Path(seg.filename))


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([LUMBARSEG, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_infer_writes_the_seg_and_an_sr_of_its_report(phantom_dicom, tmp_path):
    # The phantom's sagittal stack cut to its middle 8 slices (< 40 mm across, a narrow slab like
    # SPIDER's: only the sagittal network runs, half the time of the whole stack).
    sagittal_files = sorted(next(phantom_dicom[0].glob("*_sag_*")).glob("*.dcm"))
    middle = len(sagittal_files) // 2
    folder = tmp_path / "narrow"
    folder.mkdir()
    for path in sagittal_files[middle - 4:middle + 4]:
        shutil.copy(path, folder)
    result = _run("infer", folder, "--out", tmp_path / "label.nii.gz", "--report", tmp_path / "report.json",
                  "--sr", tmp_path / "findings.dcm")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    seg = pydicom.dcmread(tmp_path / "findings_seg.dcm")  # no --seg: beside the SR
    sagittal = io.load_study(folder).primary  # what infer segments and the report measures
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sagittal.meta["series_uids"][0]
    levels = [level for level in report["levels"] if level["level"]]
    back = read_findings_sr(tmp_path / "findings.dcm")["levels"]
    assert levels and [level["level"] for level in back] == [level["level"] for level in levels]
    for level, got in zip(levels, back):
        assert got["segment"]["sop_instance_uid"] == seg.SOPInstanceUID
        assert got["disc_volume_mm3"] == pytest.approx(level["disc_volume_mm3"])
        assert got["stenosis"] == level["stenosis"]
        assert got["herniation"]["present"] == level["herniation"]["present"]
        if level["herniation"]["present"]:
            assert got["herniation"]["top_point"] == _on_image([sagittal], level["herniation"]["top_point"])


def test_infer_refuses_an_sr_of_a_nifti_study(tmp_path):
    study = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8), np.float32), np.eye(4)), study)
    result = _run("infer", study, "--out", tmp_path / "label.nii.gz", "--sr", tmp_path / "findings.dcm")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"lumbarseg infer: error: {study}: --seg and --sr need a DICOM study")
    assert "reference the DICOM source images" in error
    assert not (tmp_path / "findings.dcm").exists() and not (tmp_path / "label.nii.gz").exists()
