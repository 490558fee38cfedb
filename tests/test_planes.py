"""Plane slicing: canonical orientation, exact slice/restack round trips, position encoding."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from lumbarseg import planes
from lumbarseg.io.study import Series


def _series(axcodes: str, shape=(7, 5, 6), channels=("t2w", "t1w")) -> Series:
    """A series stored in orientation ``axcodes`` whose voxel values encode their world position."""
    ornt = nib.orientations.axcodes2ornt(axcodes)
    affine = np.eye(4)
    for out_axis, (world_axis, flip) in enumerate(ornt):
        affine[:3, out_axis] = 0
        affine[int(world_axis), out_axis] = flip * (1.0 + out_axis * 0.5)
    affine[:3, 3] = (10.0, -4.0, 30.0)
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    image = np.stack([xyz[:, 0].reshape(shape), xyz[:, 2].reshape(shape)]).astype(np.float32)
    label = (np.arange(np.prod(shape)) % 5).reshape(shape).astype(np.uint8)
    return Series(image, affine, channels, label=label)


@pytest.mark.parametrize("axcodes", ["RAS", "IPR", "LPS", "PIL", "SRA"])
def test_canonical_keeps_patient_positions_and_round_trips(axcodes):
    series = _series(axcodes)
    canonical = planes.to_canonical(series)
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    # voxel values were their world x and z: they must still be, under the new affine
    ijk = np.stack(np.meshgrid(*map(np.arange, canonical.shape), indexing="ij"), -1)
    xyz = canonical.world(ijk)
    np.testing.assert_allclose(canonical.image[0], xyz[..., 0], atol=1e-4)
    np.testing.assert_allclose(canonical.image[1], xyz[..., 2], atol=1e-4)
    np.testing.assert_array_equal(planes.from_canonical(canonical.label, series), series.label)
    np.testing.assert_array_equal(planes.from_canonical(canonical.image, series), series.image)


@pytest.mark.parametrize("plane", planes.PLANES)
def test_slice_stack_and_restack_are_exact_inverses(plane):
    volume = np.random.default_rng(1).random((3, 7, 5, 6)).astype(np.float32)
    stack = planes.slice_stack(volume, plane)
    axis = planes.NORMAL_AXIS[plane]
    assert stack.shape[0] == volume.shape[1 + axis] and stack.shape[1] == 3
    np.testing.assert_array_equal(planes.restack(stack, plane), volume)
    # slice i is the volume at index i along the plane's normal
    np.testing.assert_array_equal(stack[2], np.take(volume, 2, axis=1 + axis))
    tensor = torch.from_numpy(volume)
    assert torch.equal(planes.restack(planes.slice_stack(tensor, plane), plane), tensor)


def test_position_encoding_and_fusion_input_layout():
    shape = (4, 5, 6)
    pos = planes.position_encoding(shape, "axial")
    np.testing.assert_allclose(pos[0, 0], (np.arange(6) + 0.5) / 6)
    assert np.ptp(pos[:, :, 3]) == 0  # constant within an axial slice
    covered = np.zeros(shape, bool)
    covered[:, :, 2] = True
    sparse = planes.position_encoding(shape, "axial", covered)
    assert (sparse[:, :, 2] > 0).all() and (sparse[~covered] == 0).all()

    k = 2
    probs = {p: np.full((k, *shape), i + 1, np.float32) / 10 for i, p in enumerate(planes.PLANES)}
    del probs["coronal"]
    fused = planes.fusion_input(probs, shape, k)
    assert fused.shape == (3 * (k + 1), *shape)
    np.testing.assert_allclose(fused[0:2], 0.1)          # sagittal probabilities
    np.testing.assert_allclose(fused[2], planes.position_encoding(shape, "sagittal"))
    assert not fused[3:6].any()                            # coronal absent: all zero
    np.testing.assert_allclose(fused[6:8], 0.3)           # axial probabilities
    with pytest.raises(ValueError, match="sagittal probabilities have shape"):
        planes.fusion_input({"sagittal": np.zeros((3, *shape))}, shape, k)


def test_network_input_picks_slots_and_normalises():
    series = _series("IPR", channels=("t1w", "t2w"))
    x = planes.network_input(series)
    assert x.shape == (3, *planes.to_canonical(series).shape) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1
    # slot 0 is the fluid-bright contrast (t2w, stored second), slot 2 repeats it
    np.testing.assert_array_equal(x[0], x[2])
    assert not np.array_equal(x[0], x[1])
