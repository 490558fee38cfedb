"""DICOM in patient space: oblique and angulated stacks, merged contrasts, DICOM-SEG, bad input."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from lumbarseg import phantom, tissues
from lumbarseg.io import load_study
from lumbarseg.io.dicom import load_dicom, read_dicom_seg, write_dicom_seg, write_dicom_series, write_dicom_study
from lumbarseg.io.study import Series, StudyError


def oblique_series(shape=(40, 32, 6), spacing=(0.7, 0.7, 4.0), angles=(20, -15, 10), channels=("t2w",), seed=0):
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, 3] = (12.5, -30.0, 80.0)
    image = np.random.default_rng(seed).uniform(0, 900, (len(channels), *shape)).astype(np.float32)
    return Series(image, affine, channels, description="stack")


def write(series, folder, **kw):
    return write_dicom_series(series, folder, patient_id="p1", study_uid=pydicom.uid.generate_uid(), series_number=1, **kw)


def test_oblique_round_trip_keeps_patient_positions_and_agrees_with_simpleitk(tmp_path):
    original = oblique_series()
    [folder] = write(original, tmp_path)
    [loaded] = load_dicom(tmp_path).series
    assert loaded.shape == original.shape and loaded.modalities == ("t2w",)
    corners = np.array([[0, 0, 0], [39, 31, 5], [10, 20, 3]])
    error = np.linalg.norm(loaded.world(corners) - original.world(corners), axis=1).max()
    assert error < 0.5 * original.spacing.min()
    np.testing.assert_allclose(loaded.image, original.image, atol=900 / 65535)
    # SimpleITK reads the same files in LPS: our RAS affine is its geometry with x, y negated
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    lps = np.diag([-1, -1, 1]) @ loaded.affine[:3, :3]
    np.testing.assert_allclose(lps, direction, atol=1e-4)
    np.testing.assert_allclose(np.diag([-1, -1, 1]) @ loaded.affine[:3, 3], image.GetOrigin(), atol=1e-3)


def test_angulated_stacks_in_one_series_split_and_land_in_place(tmp_path):
    a = oblique_series(shape=(30, 30, 4), angles=(0, 0, 0))
    b = oblique_series(shape=(30, 30, 3), angles=(25, 0, 0), seed=1)
    b.affine[:3, 3] += (0, 0, 60)
    write(a, tmp_path / "a")
    write(b, tmp_path / "b")
    uid = next((tmp_path / "a").rglob("*.dcm")).as_posix()
    series_uid = pydicom.dcmread(uid).SeriesInstanceUID
    for path in (tmp_path / "b").rglob("*.dcm"):  # one series holding both stacks
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.save_as(path)
    stacks = load_dicom(tmp_path).series
    assert sorted(s.shape[2] for s in stacks) == [3, 4]
    for original in (a, b):
        loaded = next(s for s in stacks if s.shape == original.shape)
        np.testing.assert_allclose(loaded.affine, original.affine, atol=1e-3)
        np.testing.assert_allclose(loaded.image, original.image, atol=900 / 65535)


def test_contrasts_on_one_grid_merge_and_single_slices_load(tmp_path):
    series = oblique_series(channels=("t2w", "t1w"))
    folders = write(series, tmp_path / "multi")
    assert len(folders) == 2  # one DICOM series per contrast
    [merged] = load_dicom(tmp_path / "multi").series
    assert merged.modalities == ("t2w", "t1w") and merged.image.shape == series.image.shape
    single = oblique_series(shape=(20, 20, 1))
    write(single, tmp_path / "single")
    [loaded] = load_dicom(tmp_path / "single").series
    np.testing.assert_allclose(loaded.affine, single.affine, atol=1e-3)


def test_phantom_clinical_layout_round_trip_and_seg(tmp_path):
    study = phantom.clinical_study(5)
    write_dicom_study(study, tmp_path / "dicom")
    loaded = load_study(tmp_path / "dicom")  # the dispatcher finds the DICOM folder
    assert len(loaded.series) == len(study.series) == 8
    truth = {d["level"]: d for d in study.series[0].meta["truth"]["discs"]}
    for original in study.series:
        back = next(s for s in loaded.series if s.description == original.description)
        corners = np.array([[0, 0, 0], np.array(original.shape) - 1])
        assert np.linalg.norm(back.world(corners) - original.world(corners), axis=1).max() < 0.5 * original.spacing.min()
        if original.description.startswith("ax_"):
            level = original.description.removeprefix("ax_")
            voxel = np.round(back.voxel(truth[level]["center_mm"])).astype(int)
            assert tissues.STUDY_LABELS[int(original.label[tuple(voxel)])] == level
    sagittal = next(s for s in loaded.series if s.description == "sag")
    path = write_dicom_seg(study.series[0].label, study.structures, sagittal, tmp_path / "seg.dcm")
    label, names = read_dicom_seg(path, sagittal)
    np.testing.assert_array_equal(label, study.series[0].label)
    assert set(names.values()) <= set(tissues.STUDY_VALUES) and "L4-L5" in names.values()
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == sagittal.meta["series_uids"][0]
    assert {s.SegmentLabel for s in ds.SegmentSequence} >= {"L5-S1", "dural_sac", "sacrum"}


def test_bad_dicom_input_names_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="no DICOM images"):
        load_dicom(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "README").write_text("not dicom")
    with pytest.raises(StudyError, match="no DICOM images"):
        load_dicom(tmp_path / "text")
    series = oblique_series(shape=(16, 16, 3))
    [folder] = write(series, tmp_path / "cut")
    victim = sorted(folder.glob("*.dcm"))[1]
    victim.write_bytes(victim.read_bytes()[:-300])
    with pytest.raises(StudyError, match="truncated or corrupt") as err:
        load_dicom(tmp_path / "cut")
    assert err.value.path == str(victim)
    [folder] = write(series, tmp_path / "nogeo")
    victim = sorted(folder.glob("*.dcm"))[0]
    ds = pydicom.dcmread(victim)
    del ds.ImagePositionPatient
    ds.save_as(victim)
    with pytest.raises(StudyError, match="missing geometry: ImagePositionPatient") as err:
        load_dicom(tmp_path / "nogeo")
    assert err.value.path == str(victim)
    good = oblique_series(shape=(16, 16, 3))
    write(good, tmp_path / "good")
    [source] = load_dicom(tmp_path / "good").series
    with pytest.raises(StudyError, match="does not match the source series"):
        write_dicom_seg(np.zeros((16, 16, 2), np.uint8), {1: "disc"}, source, tmp_path / "seg.dcm")
    with pytest.raises(StudyError, match="loaded from DICOM"):
        write_dicom_seg(np.zeros(good.shape, np.uint8), {1: "disc"}, good, tmp_path / "seg.dcm")
