"""Study I/O: NIfTI, IVDM3Seg, manifest folders, the dispatcher, and every kind of bad input."""

from __future__ import annotations

import struct

import nibabel as nib
import numpy as np
import pytest

from lumbarseg import io
from lumbarseg.io import StudyError
from lumbarseg.io.study import Series


def _affine(spacing=(1.0, 0.8, 3.0)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = (-20.0, 15.0, 40.0)
    return a


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), _affine() if affine is None else affine), str(path))
    return path


@pytest.fixture
def volume():
    return np.random.default_rng(0).normal(100, 10, (12, 10, 8)).astype(np.float32)


def test_3d_file_loads_channels_first_with_affine(tmp_path, volume):
    study = io.load_study(_save(tmp_path / "a.nii.gz", volume), ["T2"])
    s = study.primary
    assert s.image.shape == (1, 12, 10, 8) and s.image.dtype == np.float32
    assert s.modalities == ("t2w",)
    np.testing.assert_allclose(s.image[0], volume)
    np.testing.assert_allclose(s.spacing, (1.0, 0.8, 3.0))
    np.testing.assert_allclose(s.world([1, 2, 3]), [-19.0, 16.6, 49.0])
    np.testing.assert_allclose(s.voxel(s.world([1, 2, 3])), [1, 2, 3])


def test_4d_file_and_one_file_per_modality_agree(tmp_path, volume):
    four = np.stack([volume, 2 * volume, 3 * volume], axis=-1)
    a = io.load_study(_save(tmp_path / "four.nii.gz", four), ["fat", "inn", "opp"]).primary
    files = [_save(tmp_path / f"{i}.nii.gz", four[..., i]) for i in range(3)]
    b = io.load_study(files, ["fat", "inn", "opp"]).primary
    assert a.modalities == b.modalities == ("dixon_fat", "dixon_in", "dixon_opp")
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_allclose(a.image[2], 3 * volume)


def test_label_round_trip(tmp_path, volume):
    series = io.load_study(_save(tmp_path / "a.nii.gz", volume)).primary
    label = (volume > 100).astype(np.uint8) * 3
    io.save_label(label, series.affine, tmp_path / "l.nii.gz")
    np.testing.assert_array_equal(io.load_label(tmp_path / "l.nii.gz", series), label)


def test_ivdm3seg_layout(tmp_path, volume):
    for i, contrast in enumerate(("fat", "inn", "opp", "wat")):
        _save(tmp_path / f"07_{contrast}.nii", volume + i)
    _save(tmp_path / "07_Labels.nii", (volume > 100).astype(np.uint8))
    for path in (tmp_path / "07", tmp_path):
        study = io.load_study(path)
        assert study.primary.modalities == ("dixon_fat", "dixon_in", "dixon_opp", "dixon_water")
        assert study.structures == {1: "disc"} and study.subject == "07"
        np.testing.assert_allclose(study.primary.image[3], volume + 3)
        assert study.label.sum() == (volume > 100).sum()


def test_manifest_round_trip(tmp_path, volume):
    image = _save(tmp_path / "s1_image.nii.gz", np.stack([volume, volume], -1))
    label = _save(tmp_path / "s1_label.nii.gz", (volume > 100).astype(np.uint8) * 16)
    entry = io.ManifestEntry("phantom", "s1", image, label, ("t2w", "t1w"), {16: "L5-S1"})
    io.write_manifest(tmp_path, [entry])
    [back] = io.read_manifest(tmp_path)
    assert back == entry
    text = (tmp_path / "manifest.csv").read_text().splitlines()[1]
    assert "s1_image.nii.gz,s1_label.nii.gz,t2w;t1w,16=L5-S1,12x10x8,1x0.8x3," in text
    study = io.load_entry(back)
    assert study.structures == {16: "L5-S1"} and study.primary.image.shape == (2, 12, 10, 8)


# --- bad input: one exception type, naming the file and the reason --------------------------

def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _junk(path):
    path.write_bytes(b"not a nifti at all" * 40)
    return path


def _huge_header(path, volume):
    """A valid header claiming 30000^3 voxels: it must be refused before any data is read."""
    _save(path, volume)
    raw = bytearray(path.read_bytes())
    raw[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda p, v: p / "missing.nii.gz", "file not found"),
    (lambda p, v: _truncate(_save(p / "cut.nii.gz", v)), "truncated or corrupt"),
    (lambda p, v: _junk(p / "junk.nii"), "not a readable NIfTI"),
    (lambda p, v: _save(p / "flat.nii.gz", v[:, :, 0]), "2D image"),
    (lambda p, v: _save(p / "nan.nii.gz", np.where(v > 110, np.nan, v)), "NaN or infinite"),
    (lambda p, v: _save(p / "inf.nii.gz", np.where(v > 110, np.inf, v)), "NaN or infinite"),
    (lambda p, v: _huge_header(p / "huge.nii", v), "over the limit"),
])
def test_bad_image_is_refused_with_file_and_reason(tmp_path, volume, make, reason):
    path = make(tmp_path, volume)
    with pytest.raises(StudyError, match=reason) as err:
        io.load_study(path)
    assert err.value.path == str(path)


def test_mismatched_modalities_are_refused(tmp_path, volume):
    a = _save(tmp_path / "a.nii.gz", volume)
    b = _save(tmp_path / "b.nii.gz", volume[:-1])
    with pytest.raises(StudyError, match="does not match") as err:
        io.load_study([a, b])
    assert err.value.path == str(b)
    c = _save(tmp_path / "c.nii.gz", volume, _affine((1, 1, 1)))
    with pytest.raises(StudyError, match="affine differs"):
        io.load_study([a, c])
    with pytest.raises(StudyError, match="3 modality names"):
        io.load_study(a, ["t1w", "t2w", "stir"])


def test_label_that_does_not_match_its_image_is_refused(tmp_path, volume):
    series = io.load_study(_save(tmp_path / "a.nii.gz", volume)).primary
    with pytest.raises(StudyError, match="does not match image shape"):
        io.load_label(_save(tmp_path / "l.nii.gz", np.zeros((12, 10, 7), np.uint8)), series)
    with pytest.raises(StudyError, match="non-negative integers"):
        io.load_label(_save(tmp_path / "f.nii.gz", volume), series)


def test_bad_manifests(tmp_path, volume):
    with pytest.raises(StudyError, match="no manifest.csv"):
        io.read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("set,subject,image\n")
    with pytest.raises(StudyError, match="missing columns"):
        io.read_manifest(tmp_path)
    header = "set,subject,image,label,modality,structures\n"
    (tmp_path / "manifest.csv").write_text(header)
    with pytest.raises(StudyError, match="lists no studies"):
        io.read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text(header + "s,1,a.nii.gz,l.nii.gz,t2w,1=L9-L10\n")
    with pytest.raises(StudyError, match="line 2: unknown structure"):
        io.read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text(header + "s,1,gone.nii.gz,l.nii.gz,t2w,1=disc\n")
    [entry] = io.read_manifest(tmp_path)
    with pytest.raises(StudyError, match="file not found") as err:
        io.load_entry(entry)
    assert err.value.path.endswith("gone.nii.gz")


def test_dispatcher_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(StudyError, match="not found"):
        io.load_study(tmp_path / "nothing")
    (tmp_path / "manifest.csv").write_text("x")
    with pytest.raises(StudyError, match="load_dataset"):
        io.load_study(tmp_path)


# --- the real data ---------------------------------------------------------------------------

@pytest.mark.realdata
def test_every_shared_set_loads_through_its_manifest(shared_data):
    entries = io.read_manifest(shared_data)
    sets = {e.set for e in entries}
    assert {"lumbar_ivd_t2", "lumbar_vb_t2", "lumbar_vb_dixon", "ivdm3seg_crops"} <= sets
    for entry in entries:
        study = io.load_entry(entry)
        s = study.primary
        assert s.label is not None and s.label.shape == s.shape
        present = set(np.unique(s.label).tolist()) - {0}
        assert present <= set(study.structures), entry.key
        if entry.set != "ivdm3seg_crops":
            # README: the 1 mm sets are stored IPR; the first axis runs superior to inferior
            assert s.axcodes == ("I", "P", "R"), entry.key
    # a set folder's own manifest reads the same studies
    per_set = io.read_manifest(shared_data / "lumbar_ivd_t2")
    assert [e.image for e in per_set] == [e.image for e in entries if e.set == "lumbar_ivd_t2"]
    dixon = next(e for e in entries if e.set == "ivdm3seg_crops")
    assert io.load_entry(dixon).primary.modalities == ("dixon_fat", "dixon_in", "dixon_opp")


def test_a_label_stored_in_another_axis_order_is_taken_onto_the_series_grid():
    rng = np.random.default_rng(3)
    affine = np.array([[0, 0, -2.0, 30], [0.5, 0, 0, -10], [0, -0.5, 0, 5], [0, 0, 0, 1]])
    series = Series(np.zeros((1, 6, 5, 4), np.float32), affine, ("t2w",), source="s.dcm")
    label = rng.integers(0, 5, series.shape).astype(np.uint8)
    # the same voxels as another converter stores them: axes reversed and the first flipped
    other = label[::-1].transpose(2, 1, 0)
    other_affine = affine @ np.array([[0, 0, -1, 5], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    np.testing.assert_array_equal(series.take_label(other, other_affine), label)
    shifted = other_affine.copy()
    shifted[0, 3] += 3.0  # the same shape 3 mm away: other voxels
    with pytest.raises(StudyError, match=r"s.dcm: a label of shape \(4, 5, 6\) is not on this series' grid"):
        series.take_label(other, shifted)
