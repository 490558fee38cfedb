"""Training augmentations for the 2D plane networks, after the paper's "Augmentation" section.

Data contract (one 2D slice, channels first):

* ``image``: ``(C, H, W)`` float, each channel scaled to about ``[0, 1]`` as
  :func:`lumbarseg.planes.network_input` does; intensity amounts below are in those units.
* ``label``: ``(1, H, W)`` integer tissue-class map (:data:`lumbarseg.tissues.TISSUES`), with
  :data:`IGNORE_INDEX` where nothing was annotated.

Geometric transforms move image and label with one sampling field: the image bilinear, the label
nearest-neighbour, so a label only ever holds values it held before. Where a transform samples
outside the slice the image gets 0 and the label :data:`IGNORE_INDEX`: nothing was annotated
there, and calling the padding "background" would teach the network that the slice edge is
background. Intensity transforms never touch the label.

The transforms written here return the kind of array they were given (numpy or torch) and keep
the label's dtype; MONAI's own spatial and intensity transforms return tensors, so the composed
:func:`paper_augmentations` does too.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    Randomizable,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy, convert_to_tensor, ensure_tuple_rep
from scipy import ndimage

from lumbarseg import tissues

from lumbarseg.tissues import NUM_TISSUES

IGNORE_INDEX = tissues.IGNORE
# What the tissue transforms pick from: every tissue class but background. Other label values
# (ignore, or codes a caller gives to uncertain pixels) are never taken for a tissue.
TISSUE_CLASSES: tuple[int, ...] = tuple(range(1, NUM_TISSUES))


def inverse_distance_field(
    shape: Sequence[int],
    points: NdarrayOrTensor,
    vectors: NdarrayOrTensor,
    power: float = 2.0,
    radius: float | None = None,
) -> torch.Tensor:
    """Displacement field ``(2, H, W)`` (rows, cols; pixels) interpolating ``vectors`` ``(K, 2)``
    given at ``points`` ``(K, 2)`` by inverse-distance weighting.

    ``radius=None``: Shepard weights ``w_k = d_k**-power``, normalised to sum 1, so every pixel
    moves by a weighted mean of all control vectors (the whole-image deformation).

    ``radius=R``: local, compactly supported: the modified Shepard weights
    ``w_k = ((R - d_k)+ / (R d_k))**power`` plus a rest weight ``R**-power`` standing for "stay
    put". The field is ``vectors[k]`` at ``points[k]``, half of it at ``R / 2`` from a lone point,
    and exactly 0 at ``R`` or more from every point.
    """
    points = torch.as_tensor(points, dtype=torch.float32)
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    rows = torch.arange(shape[0], dtype=torch.float32)[None, :, None]
    cols = torch.arange(shape[1], dtype=torch.float32)[None, None, :]
    # clamped so a pixel on a control point gets a huge, finite weight: its own vector
    dist = torch.hypot(rows - points[:, 0, None, None], cols - points[:, 1, None, None]).clamp_min(1e-2)
    if radius is None:
        weights, rest = dist.pow(-power), 0.0
    else:
        weights, rest = ((radius - dist).clamp_min(0) / (radius * dist)).pow(power), radius**-power
    return torch.einsum("khw,kc->chw", weights, vectors) / (weights.sum(0) + rest)


def warp(
    img: NdarrayOrTensor, field: torch.Tensor, mode: str = "bilinear", padding_value: float = 0.0
) -> NdarrayOrTensor:
    """``img`` ``(C, H, W)`` deformed so that content at ``p`` moves to about ``p + field[:, p]``
    (backward mapping ``out(x) = img(x - field(x))``, close for smooth fields).

    ``mode`` is ``"bilinear"`` (images) or ``"nearest"`` (label maps: values are copied, never
    blended). Pixels whose source lies outside the slice get ``padding_value``; pixels the field
    does not move keep their exact value. Returns the kind and dtype of ``img``.
    """
    data = convert_to_tensor(img, track_meta=False)
    src = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in data.shape[1:]), indexing="ij"))
    src = src - field
    size = torch.tensor(data.shape[1:], dtype=torch.float32)[:, None, None]
    # grid_sample wants (x, y) = (col, row) in [-1, 1]; align_corners=True puts -1 and 1 on pixel centres
    grid = (2 * src / (size - 1) - 1).flip(0).permute(1, 2, 0)[None]
    values = data.to(torch.float32)
    out = F.grid_sample(values[None], grid, mode=mode, padding_mode="border", align_corners=True)[0]
    # the same outside test for every mode, so the image's padding and the label's coincide
    outside = ((src < -0.5) | (src > size - 0.5)).any(0)
    out = torch.where(outside, padding_value, out)
    out = torch.where((field != 0).any(0), out, values)
    return convert_to_dst_type(out, img)[0]


def _random_vectors(rng: np.random.RandomState, count: int, magnitude: float) -> np.ndarray:
    """``(count, 2)`` vectors in uniformly random directions, lengths uniform in ``[0, magnitude]``."""
    angle = rng.uniform(0, 2 * np.pi, count)
    return rng.uniform(0, magnitude, count)[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1)


def _present_classes(label: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    present = np.unique(label)
    return present[np.isin(present, classes)]


class RandElasticGrid(RandomizableTransform):
    """The paper's elastic whole-image deformation of a ``(C, H, W)`` slice: an ``N x N`` uniform
    grid of control points (cell centres), each with a random displacement of up to
    ``magnitude`` pixels; every pixel moves by the inverse-distance weighted mean of them
    (:func:`inverse_distance_field`, Shepard weights ``d**-power``)."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, prob: float = 0.1, grid_size: int = 4, magnitude: float = 6.0, power: float = 2.0) -> None:
        RandomizableTransform.__init__(self, prob)
        self.grid_size = grid_size
        self.magnitude = magnitude
        self.power = power
        self.field: torch.Tensor | None = None

    def randomize(self, spatial_size: Sequence[int]) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        centres = [(np.arange(self.grid_size) + 0.5) * n / self.grid_size for n in spatial_size[:2]]
        points = np.stack(np.meshgrid(*centres, indexing="ij"), -1).reshape(-1, 2)
        vectors = _random_vectors(self.R, len(points), self.magnitude)
        self.field = inverse_distance_field(spatial_size, points, vectors, self.power)

    def __call__(
        self, img: NdarrayOrTensor, mode: str = "bilinear", padding_value: float = 0.0, randomize: bool = True
    ) -> NdarrayOrTensor:
        if randomize:
            self.randomize(img.shape[1:])
        if not self._do_transform:
            return img
        return warp(img, self.field, mode, padding_value)


class RandElasticGridd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandElasticGrid`: one field for all ``keys``. ``mode`` and
    ``padding_value`` are per key, e.g. ``("bilinear", "nearest")`` and ``(0, IGNORE_INDEX)``
    for ``("image", "label")``."""

    backend = RandElasticGrid.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        grid_size: int = 4,
        magnitude: float = 6.0,
        power: float = 2.0,
        mode: Sequence[str] | str = "bilinear",
        padding_value: Sequence[float] | float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.elastic = RandElasticGrid(1.0, grid_size, magnitude, power)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_value = ensure_tuple_rep(padding_value, len(self.keys))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandElasticGridd:
        super().set_random_state(seed, state)
        self.elastic.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first_key = self.first_key(d)
        self.randomize(None)
        if first_key == () or not self._do_transform:
            return d
        self.elastic.randomize(d[first_key].shape[1:])
        for key, mode, padding_value in self.key_iterator(d, self.mode, self.padding_value):
            d[key] = self.elastic(d[key], mode, padding_value, randomize=False)
        return d


class RandTissueDeform(RandomizableTransform):
    """The paper's tissue deformation of a ``(C, H, W)`` slice: pick one object (a connected
    component of a random tissue present in the ``(1, H, W)`` label), anchor ``num_contour``
    random points on its contour and ``num_inside`` inside it, displace each by up to
    ``magnitude`` pixels, and move the pixels around them by the local inverse-distance field
    (:func:`inverse_distance_field` with ``radius``): the object changes shape, and nothing
    farther than ``radius`` pixels from an anchor moves. ``classes``: the label values that
    count as tissues; a slice with none of them is left as it is.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        prob: float = 0.1,
        num_contour: int = 4,
        num_inside: int = 1,
        magnitude: float = 4.0,
        radius: float = 16.0,
        power: float = 2.0,
        classes: Sequence[int] = TISSUE_CLASSES,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.num_contour = num_contour
        self.num_inside = num_inside
        self.magnitude = magnitude
        self.radius = radius
        self.power = power
        self.classes = classes
        self.field: torch.Tensor | None = None

    def _pick(self, candidates: np.ndarray, count: int) -> np.ndarray:
        return candidates[self.R.choice(len(candidates), min(count, len(candidates)), replace=False)]

    def randomize(self, label: NdarrayOrTensor) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        label = convert_to_numpy(label)[0]
        tissues = _present_classes(label, self.classes)
        if len(tissues) == 0:
            self._do_transform = False
            return
        components, count = ndimage.label(label == self.R.choice(tissues))
        obj = components == self.R.randint(1, count + 1)
        core = ndimage.binary_erosion(obj)
        inside = np.argwhere(core) if core.any() else np.argwhere(obj)  # a thin object has no core
        points = np.concatenate(
            [self._pick(np.argwhere(obj & ~core), self.num_contour), self._pick(inside, self.num_inside)]
        )
        vectors = _random_vectors(self.R, len(points), self.magnitude)
        self.field = inverse_distance_field(label.shape, points, vectors, self.power, self.radius)

    def __call__(
        self,
        img: NdarrayOrTensor,
        label: NdarrayOrTensor | None = None,
        mode: str = "bilinear",
        padding_value: float = 0.0,
        randomize: bool = True,
    ) -> NdarrayOrTensor:
        """``label`` picks the object; needed when ``randomize`` (it may be ``img`` itself)."""
        if randomize:
            if label is None:
                raise ValueError("RandTissueDeform needs the label map to pick an object")
            self.randomize(label)
        if not self._do_transform:
            return img
        return warp(img, self.field, mode, padding_value)


class RandTissueDeformd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandTissueDeform`: the object is picked in ``data[label_key]``
    and the same field moves all ``keys`` (``mode`` and ``padding_value`` per key, as in
    :class:`RandElasticGridd`)."""

    backend = RandTissueDeform.backend

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        prob: float = 0.1,
        num_contour: int = 4,
        num_inside: int = 1,
        magnitude: float = 4.0,
        radius: float = 16.0,
        power: float = 2.0,
        classes: Sequence[int] = TISSUE_CLASSES,
        mode: Sequence[str] | str = "bilinear",
        padding_value: Sequence[float] | float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.deform = RandTissueDeform(1.0, num_contour, num_inside, magnitude, radius, power, classes)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_value = ensure_tuple_rep(padding_value, len(self.keys))

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandTissueDeformd:
        super().set_random_state(seed, state)
        self.deform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.deform.randomize(d[self.label_key])
        for key, mode, padding_value in self.key_iterator(d, self.mode, self.padding_value):
            d[key] = self.deform(d[key], mode=mode, padding_value=padding_value, randomize=False)
        return d


class RandTissueBrightness(RandomizableTransform):
    """The paper's tissue brightness: the pixels of a ``(C, H, W)`` image inside the mask of one
    random tissue present in the ``(1, H, W)`` label become ``v * (1 + factor_c) + offset_c``,
    with ``factor_c`` uniform in ``[-factors, factors]`` and ``offset_c`` in ``[-offsets, offsets]``
    drawn per channel (a random direction in channel space). Pixels outside the mask keep their
    exact values. ``classes`` as in :class:`RandTissueDeform`."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, prob: float = 0.1, factors: float = 0.2, offsets: float = 0.1, classes: Sequence[int] = TISSUE_CLASSES
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.factors = factors
        self.offsets = offsets
        self.classes = classes
        self.tissue: int | None = None
        self.scale = self.shift = np.zeros(0)

    def randomize(self, label: NdarrayOrTensor, num_channels: int = 1) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        tissues = _present_classes(convert_to_numpy(label), self.classes)
        if len(tissues) == 0:
            self._do_transform = False
            return
        self.tissue = int(self.R.choice(tissues))
        self.scale = 1 + self.R.uniform(-self.factors, self.factors, num_channels)
        self.shift = self.R.uniform(-self.offsets, self.offsets, num_channels)

    def __call__(self, img: NdarrayOrTensor, label: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize(label, img.shape[0])
        if not self._do_transform:
            return img
        data = convert_to_tensor(img, track_meta=get_track_meta())
        inside = convert_to_tensor(label, track_meta=False) == self.tissue
        scale, shift = (torch.as_tensor(v, dtype=data.dtype)[:, None, None] for v in (self.scale, self.shift))
        return convert_to_dst_type(torch.where(inside, data * scale + shift, data), img)[0]


class RandTissueBrightnessd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandTissueBrightness`: changes ``keys`` (images) inside a
    tissue of ``data[label_key]``; the label is not changed."""

    backend = RandTissueBrightness.backend

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        prob: float = 0.1,
        factors: float = 0.2,
        offsets: float = 0.1,
        classes: Sequence[int] = TISSUE_CLASSES,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.brightness = RandTissueBrightness(1.0, factors, offsets, classes)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandTissueBrightnessd:
        super().set_random_state(seed, state)
        self.brightness.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first_key = self.first_key(d)
        self.randomize(None)
        if first_key == () or not self._do_transform:
            return d
        label = d[self.label_key]
        self.brightness.randomize(label, d[first_key].shape[0])
        for key in self.key_iterator(d):
            d[key] = self.brightness(d[key], label, randomize=False)
        return d


class IgnorePaddingd(Randomizable, MapTransform):
    """Runs a MONAI geometric dictionary ``transform`` so that label pixels it pads hold
    ``ignore_index`` rather than 0 (MONAI pads with zeros, reflection or the border, never with
    a chosen label value). The label ``keys`` go in shifted by one, so after the transform 0
    marks padding alone; the inner transform must therefore sample labels nearest-neighbour and
    pad them with zeros. Labels come out as tensors (MONAI's spatial convention) of their input
    dtype."""

    def __init__(
        self, transform: MapTransform, keys: KeysCollection = "label", ignore_index: int = IGNORE_INDEX
    ) -> None:
        MapTransform.__init__(self, keys)
        self.transform = transform
        self.ignore_index = ignore_index

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> IgnorePaddingd:
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: object) -> None:
        self.transform.randomize(data)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        dtypes = {}
        for key in self.key_iterator(d):
            label = convert_to_tensor(d[key], track_meta=get_track_meta())
            dtypes[key] = label.dtype
            d[key] = label.to(torch.float32) + 1  # float: a uint8 255 + 1 must not wrap to 0
        d = dict(self.transform(d))
        for key, dtype in dtypes.items():
            label = d[key] - 1
            d[key] = torch.where(label < 0, self.ignore_index, label).to(dtype)
        return d


def rand_crop_resized(
    keys: tuple[str, str] = ("image", "label"),
    prob: float = 0.5,
    zoom: tuple[float, float] = (0.8, 1.25),
    ignore_index: int = IGNORE_INDEX,
) -> IgnorePaddingd:
    """Crop and resize: MONAI's ``RandZoomd`` about the centre, keeping the size. A zoom above 1
    shows a central crop enlarged; below 1 the whole slice shrunk inside padding (ignored in
    the label). Keys are ``(image, label)``; ``nearest-exact`` keeps the label on the image's
    pixel-centre convention."""
    return IgnorePaddingd(
        RandZoomd(
            keys, prob, zoom[0], zoom[1], mode=("bilinear", "nearest-exact"), padding_mode="constant", keep_size=True
        ),
        keys[1],
        ignore_index,
    )


def rand_tilt_rotated(
    keys: tuple[str, str] = ("image", "label"),
    prob: float = 0.5,
    rotate: float = np.pi / 12,
    shear: float = 0.15,
    ignore_index: int = IGNORE_INDEX,
) -> IgnorePaddingd:
    """Tilt and rotate: MONAI's ``RandAffined`` with a rotation up to ``rotate`` radians and a
    shear up to ``shear`` along each axis (a tilted plane seen in projection). Keys are
    ``(image, label)``."""
    return IgnorePaddingd(
        RandAffined(
            keys,
            prob=prob,
            rotate_range=rotate,
            shear_range=(shear, shear),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        keys[1],
        ignore_index,
    )


def paper_augmentations(
    *,
    keys: tuple[str, str] = ("image", "label"),
    prob: float = 0.5,
    intensity_only: bool = False,
    classes: Sequence[int] = TISSUE_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> Compose:
    """The paper's augmentations, each applied on its own with probability ``prob`` ("in all
    possible combinations"). Reproducible with ``.set_random_state(seed)``.

    ``keys`` is ``(image key, label key)``. Order: tissue brightness first (on the label the
    image was annotated with, so the bright region's edge is warped with the image rather than
    cut along a resampled label), then tissue deformation, elastic grid, crop and resize, tilt
    and rotate, then dynamic range (gamma, per-channel scale and shift) and white noise last,
    so the noise level is the one asked for. ``intensity_only`` keeps the label grid: brightness,
    dynamic range and noise only. ``classes`` limits the tissues the tissue transforms pick.
    """
    image, label = keys
    geometry = {"mode": ("bilinear", "nearest"), "padding_value": (0.0, ignore_index)}
    brightness = RandTissueBrightnessd(image, label, prob, classes=classes)
    intensity = [
        RandAdjustContrastd(image, prob, gamma=(0.7, 1.5)),
        RandScaleIntensityd(image, factors=0.2, prob=prob, channel_wise=True),
        RandShiftIntensityd(image, offsets=0.1, prob=prob, channel_wise=True),
        RandGaussianNoised(image, prob, std=0.05),
    ]
    if intensity_only:
        return Compose([brightness, *intensity])
    return Compose(
        [
            brightness,
            RandTissueDeformd(keys, label, prob, classes=classes, **geometry),
            RandElasticGridd(keys, prob, **geometry),
            rand_crop_resized(keys, prob, ignore_index=ignore_index),
            rand_tilt_rotated(keys, prob, ignore_index=ignore_index),
            *intensity,
        ]
    )
