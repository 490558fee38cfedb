"""In-process inference: study -> three plane networks -> learned 3D fusion -> tissue classes.

A trained model is a folder (``weights/<name>/``): ``model.json`` (:class:`ModelInfo`: model
preset, spacing, classes, how it was trained) and one state dict per network: ``sagittal.pt``,
``coronal.pt``, ``axial.pt``, ``fusion.pt``.

**Spine-region inference** (:class:`RegionSettings`, ``model.json`` key ``region``): the spine
fills a small part of a lumbar field of view, and every network costs in proportion to the
voxels it sees. A cheap first pass (the sagittal network on every few sagittal slices,
:func:`first_pass_input`) finds the spine's bounding box (:func:`locate`); the three planes and
the fusion then run on that box with a margin (:func:`crop`, :func:`region_fusion_input`), and
everything outside it is background (:func:`paste`). The Triton ``spine_pipeline`` model calls
the same functions (:mod:`lumbarseg.triton.python_models`), so both backends crop alike.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from lumbarseg import planes, tissues
from lumbarseg.config import ConfigError, dump_config, other_keys, read_config
from lumbarseg.io import budget
from lumbarseg.io.study import Series
from lumbarseg.networks.fusion import fusion_net
from lumbarseg.networks.plane_net import plane_net

MODEL_FILE = "model.json"


@dataclass(frozen=True)
class FusionShape:
    """The fusion network's shape (:func:`lumbarseg.networks.fusion.fusion_net`'s arguments
    besides the class count), so that a folder loads into the network it was trained as."""

    planes: int = 3
    hidden: int | None = None  # hidden channels; None: twice the class count


@dataclass(frozen=True)
class RegionSettings:
    """Spine-region inference (see the module doc): a weights folder's ``model.json`` key
    ``region``; folders without it get these defaults, which ``benchmarks/spine_region.py``
    measured against whole-volume inference (docs/performance.md, "Spine-region inference");
    ``Segmenter.segment(series, region=True)`` turns it on per call.

    The first pass is the sagittal network on every few sagittal slices of the model grid
    (``slice_mm`` apart): at the grid it was trained on, since on a coarser grid it misses
    parts of real spines (on a 3 mm grid up to half of a held-out study's labelled voxels fell
    outside the box). Pieces of tissue it finds within ``link_mm`` of each other are one
    structure; the largest structure is the spine (what else it finds, scattered in the body,
    is dropped). Its box plus ``margin_mm`` on every side is the region: the plane networks
    then see real anatomy up to the box's edge, and the first pass may miss the spine's rim."""

    # Off by default: held-out Dice holds (-0.0003; benchmarks/results/spine_region.md), but on
    # one of 30 held-out phantoms the box left out L5-S1 and every level was named one off
    # (docs/performance.md, "Spine-region inference"); the box must keep the lumbosacral junction first.
    enabled: bool = False
    slice_mm: float = 4.5  # first pass: sagittal slices this far apart (the model grid's nearest multiple)
    link_mm: float = 10.0  # found tissue closer than this is one structure
    margin_mm: float = 20.0  # added around the spine found, each side, on every axis (15 mm cost 0.003 Dice)
    min_tissue_mm3: float = 2000.0  # less spine found than this (a lumbar disc is ~10 cm^3): nothing found
    # A box holding more than this share of the grid's voxels saves too little to be worth the
    # risk of cutting anatomy: the networks run on the whole volume.
    max_share: float = 0.85

    def parameter(self) -> str:
        """One-line form for the Triton pipeline's config (``key=value,...``)."""
        return ",".join(f"{f}={getattr(self, f)}" for f in self.__dataclass_fields__)

    @classmethod
    def from_parameter(cls, text: str) -> "RegionSettings":
        """Inverse of :meth:`parameter`; keys it does not name keep their defaults."""
        values: dict = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"spine region setting {key!r} unknown; known: {list(cls.__dataclass_fields__)}")
            kind = type(getattr(cls(), key))
            values[key] = value.strip().lower() in ("1", "true", "on", "yes") if kind is bool else kind(value)
        return cls(**values)


@dataclass(frozen=True)
class ModelInfo:
    """A weights folder's ``model.json``. What loading and serving the networks reads is typed;
    the record of how they were trained (training preset, data, split, per-epoch history,
    machine, ...) is kept as written, in ``record``: it is read by people, and folders written
    by older versions must load whatever their record holds."""

    preset: str  # plane network preset (configs/models/<preset>.json)
    spacing_mm: float  # the isotropic grid the networks run on
    tissues: tuple[str, ...]  # the networks' output classes, in order
    fusion: FusionShape = FusionShape()
    region: RegionSettings = RegionSettings()  # spine-region inference
    # 2.5D input: a study's repeated input slots carry the neighbouring slices (planes.slice_context)
    slice_context: bool = False
    version: str = "shipped"  # the MONAI Label app's serving version: set when it publishes a retrained model
    # Fused classes are the argmax of the probabilities, each multiplied by its tissue's factor
    # here (1 where none is named): moves one class's decision threshold without retraining.
    # Chosen for these weights on validation data (docs/training.md); retraining drops it.
    class_scale: dict[str, float] = field(default_factory=dict)
    record: dict = other_keys()  # every other key of model.json

    @classmethod
    def load(cls, folder: str | Path) -> "ModelInfo":
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise ConfigError(folder, f"no {MODEL_FILE}: not a lumbarseg weights folder")
        info = read_config(cls, path)
        try:
            info.scale()
        except ValueError as err:
            raise ConfigError(path, str(err)) from None
        return info

    def save(self, folder: str | Path) -> None:
        (Path(folder) / MODEL_FILE).write_text(json.dumps(dump_config(self), indent=1))

    def scale(self) -> np.ndarray | None:
        """:attr:`class_scale` as one factor per class (None: plain argmax), for :func:`class_map`."""
        return class_scale_vector(self.class_scale, self.tissues)


def class_scale_parameter(class_scale: dict[str, float]) -> str:
    """One-line form of a ``class_scale`` for the Triton pipeline's config (``name=factor,...``)."""
    return ",".join(f"{name}={factor:g}" for name, factor in class_scale.items())


def class_scale_from_parameter(text: str) -> dict[str, float]:
    """Inverse of :func:`class_scale_parameter`; a malformed item is a ValueError."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, factor = item.partition("=")
        if not sep:
            raise ValueError(f"class_scale item {item!r} is not name=factor")
        out[name.strip()] = float(factor)
    return out


def class_scale_vector(class_scale: dict[str, float], names: tuple[str, ...]) -> np.ndarray | None:
    """Tissue name -> factor as one float32 factor per class of ``names`` (None when empty);
    a name not among them or a factor that is not positive and finite is a ValueError."""
    if not class_scale:
        return None
    unknown = sorted(set(class_scale) - set(names))
    if unknown:
        raise ValueError(f"class_scale names {unknown}, not classes of these networks: {list(names)}")
    factors = np.array([class_scale.get(name, 1.0) for name in names], dtype=np.float32)
    if not (np.isfinite(factors).all() and (factors > 0).all()):
        raise ValueError(f"class_scale factors must be positive and finite, got {class_scale}")
    return factors


@torch.no_grad()
def predict_plane(model: nn.Module, image: np.ndarray, plane: str, batch_size: int = 16, *,
                  context: bool = False) -> np.ndarray:
    """Class probabilities ``(K, X, Y, Z)`` of one plane network over a canonical ``(3, X, Y, Z)``
    volume, slice by slice along the plane's normal; ``context``: the network takes 2.5D input
    (:func:`lumbarseg.planes.slice_context`)."""
    model.eval()
    if context:
        image = planes.slice_context(image, plane)
    stack = torch.from_numpy(np.ascontiguousarray(planes.slice_stack(image, plane)))
    layout = torch.channels_last if _channels_last(model) else torch.contiguous_format
    out = [model(stack[i : i + batch_size].contiguous(memory_format=layout)).softmax(dim=1)
           for i in range(0, len(stack), batch_size)]
    return planes.restack(torch.cat(out), plane).numpy()


def _channels_last(model: nn.Module) -> bool:
    """Whether the network's convolution weights are stored channels last (as
    :func:`for_inference` leaves them): its input then goes in that layout too."""
    return any(w.dim() == 4 and w.shape[1] > 1 and w.shape[2] > 1 and not w.is_contiguous()
               and w.is_contiguous(memory_format=torch.channels_last) for w in model.parameters())


@torch.no_grad()
def fuse(model: nn.Module, probabilities: dict[str, np.ndarray], spacing: float, region: "Region | None" = None) -> np.ndarray:
    """Fused class probabilities ``(K, X, Y, Z)`` from per-plane probabilities on a ``spacing`` mm
    grid, or on a :class:`Region`'s box of it (positions relative to the whole grid)."""
    model.eval()
    k, *shape = next(iter(probabilities.values())).shape
    region = region or Region.whole(tuple(shape), OFF)
    x = torch.from_numpy(region_fusion_input(probabilities, region, k, spacing=spacing))[None]
    return model(x).softmax(dim=1)[0].numpy()


# -- spine-region inference (shared with the Triton pipeline model) ---------------------------

# Region.status values: why the networks ran where they ran. The Triton pipeline returns the
# code in its REGION output, so a client reads the same reason as in-process inference.
REGION_STATUS = {0: "cropped to the spine found by the first pass", 1: "spine-region inference off",
                 2: "first pass found no spine tissue: whole volume", 3: "spine box covers most of the grid: whole volume"}
CROPPED, OFF, NOTHING_FOUND, MOSTLY_SPINE = REGION_STATUS


@dataclass(frozen=True)
class Region:
    """Where the networks ran on the model grid ``grid``: ``box`` is ``(start, stop)`` per axis
    (the whole grid unless ``status`` is :data:`CROPPED`); ``status`` a :data:`REGION_STATUS` key."""

    grid: tuple[int, int, int]
    box: tuple[tuple[int, int], ...]
    status: int

    @classmethod
    def whole(cls, grid: tuple[int, ...], status: int) -> "Region":
        return cls(tuple(grid), tuple((0, n) for n in grid), status)

    @property
    def cropped(self) -> bool:
        return self.status == CROPPED

    @property
    def reason(self) -> str:
        return REGION_STATUS[self.status]

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in self.box)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.box)

    @property
    def share(self) -> float:
        """The box's share of the grid's voxels."""
        return float(np.prod(self.shape) / np.prod(self.grid))

    def code(self) -> np.ndarray:
        """``[status, x0, x1, y0, y1, z0, z1]`` int32: the Triton pipeline's REGION output."""
        return np.array([self.status, *(v for ab in self.box for v in ab)], np.int32)

    @classmethod
    def from_code(cls, code: np.ndarray, grid: tuple[int, ...]) -> "Region":
        values = [int(v) for v in code]
        return cls(tuple(grid), tuple(zip(values[1::2], values[2::2])), values[0])

    def as_dict(self) -> dict:
        return {"status": self.reason, "cropped": self.cropped, "grid": list(self.grid),
                "box": [list(ab) for ab in self.box], "share": round(self.share, 4)}


def first_pass_step(spacing: float, settings: RegionSettings) -> int:
    """Every how many sagittal slices of the model grid the first pass looks at."""
    return max(1, int(round(settings.slice_mm / spacing)))


def first_pass_input(image: np.ndarray, spacing: float, settings: RegionSettings, *,
                     context: bool = False) -> np.ndarray:
    """The first pass's share of a network input ``(3, X, Y, Z)``: every
    :func:`first_pass_step`-th sagittal slice, with 2.5D ``context``
    (:func:`lumbarseg.planes.slice_context`) taken before thinning, so that its neighbours are
    the model grid's. The sagittal network's probabilities on it go to :func:`locate`."""
    if context:
        image = planes.slice_context(image, "sagittal")
    return np.ascontiguousarray(image[:, :: first_pass_step(spacing, settings)])


def locate(probabilities: np.ndarray, grid: tuple[int, ...], spacing: float, settings: RegionSettings) -> Region:
    """The region the networks run on, from the first pass's class probabilities
    ``(K, x, Y, Z)`` (on :func:`first_pass_input`'s slices of ``grid``): the box of the largest
    structure of found tissue (see :class:`RegionSettings`) widened by ``margin_mm``, on the
    model grid. The whole grid when no spine is found or the box would hold most of the grid
    (``status`` says which)."""
    grid = tuple(int(n) for n in grid)
    step = first_pass_step(spacing, settings)
    voxel = (step * spacing, spacing, spacing)  # mm per first-pass voxel
    tissue = probabilities.argmax(axis=0) > 0
    if not tissue.any():
        return Region.whole(grid, NOTHING_FOUND)
    # Pieces within link_mm of each other: their link_mm / 2 neighbourhoods touch.
    near = ndimage.distance_transform_edt(~tissue, sampling=voxel) <= settings.link_mm / 2
    structures, _ = ndimage.label(near)
    sizes = np.bincount(structures[tissue])  # tissue voxels per structure
    spine = tissue & (structures == sizes.argmax())
    if spine.sum() * float(np.prod(voxel)) < settings.min_tissue_mm3:
        return Region.whole(grid, NOTHING_FOUND)
    margin = math.ceil(settings.margin_mm / spacing)
    box = []
    for axis, n in enumerate(grid):
        hit = np.flatnonzero(spine.any(axis=tuple(a for a in range(3) if a != axis)))
        scale = step if axis == 0 else 1  # first-pass slice i is model slice i * step
        box.append([max(0, int(hit[0]) * scale - margin), min(n, int(hit[-1]) * scale + 1 + margin)])
    # At least MIN_SLAB_MM left to right (the whole width if the study is narrower): the fusion
    # input's slab rule then judges the box as it judges the whole study.
    need = min(grid[0], math.ceil(planes.MIN_SLAB_MM / spacing))
    start, stop = box[0]
    if stop - start < need:
        start = max(0, min(start - (need - (stop - start)) // 2, grid[0] - need))
        box[0] = [start, start + need]
    region = Region(grid, tuple((int(a), int(b)) for a, b in box), CROPPED)
    if region.share > settings.max_share or region.shape == grid:
        return Region.whole(grid, MOSTLY_SPINE)
    return region


def crop(volume: np.ndarray, region: Region) -> np.ndarray:
    """``(C, X, Y, Z)`` -> the region's box, contiguous (the plane models slice it)."""
    return volume if not region.cropped else np.ascontiguousarray(volume[(slice(None), *region.slices)])


def paste(values: np.ndarray, region: Region) -> np.ndarray:
    """Values on the region's box -> the whole grid, background outside: class probabilities
    ``(K, ...)`` get class 0 with probability 1 there, a class map ``(...)`` class 0."""
    if not region.cropped:
        return values
    lead = values.shape[:-3]
    out = np.zeros((*lead, *region.grid), values.dtype)
    if lead:
        out[0] = 1.0
    out[(..., *region.slices)] = values
    return out


def region_fusion_input(probabilities: dict[str, np.ndarray], region: Region, num_classes: int, *,
                        spacing: float) -> np.ndarray:
    """:func:`lumbarseg.planes.fusion_input` on the region's box, with each plane's position
    channel relative to the whole grid: the fusion learnt on whole volumes, where the position
    says how near the field of view's edge a slice is."""
    x = planes.fusion_input(probabilities, region.shape, num_classes, spacing=spacing)
    if region.cropped:
        empty = planes.slab_planes(region.shape, spacing)
        for i, plane in enumerate(planes.PLANES):
            if plane in probabilities and plane not in empty:
                x[i * (num_classes + 1) + num_classes] = planes.position_encoding(region.grid, plane)[region.slices]
    return x


@dataclass
class Segmentation:
    """Tissue classes on the source series' grid, and the probabilities behind them (on the
    model's isotropic canonical grid) for disagreement scores and reports."""

    classes: np.ndarray  # (I, J, K) uint8 tissue class indices, source orientation
    plane_classes: dict[str, np.ndarray]  # plane -> (I, J, K) what that plane alone predicts
    plane_probabilities: dict[str, np.ndarray]  # plane -> (K, X, Y, Z); empty when only classes were sent
    probabilities: np.ndarray | None  # (K, X, Y, Z) fused; None when only classes were sent
    # The planes the fusion read: on a narrow sagittal slab the axial and coronal networks see
    # no anatomy and the fusion ignores them (planes.slab_planes), so their disagreement with
    # the sagittal plane says nothing about this study.
    fused_planes: tuple[str, ...] = planes.PLANES
    region: Region | None = None  # where the networks ran (None: the backend does not say)

    @property
    def fused_plane_classes(self) -> dict[str, np.ndarray]:
        """:attr:`plane_classes` of the :attr:`fused_planes`: what a finding's plane disagreement compares."""
        return {p: c for p, c in self.plane_classes.items() if p in self.fused_planes}


def for_inference(model: nn.Module) -> nn.Module:
    """A plane network ready for inference on CPU: in eval mode, every batch norm that follows a
    convolution folded into it (a traced copy; dropout and everything else unchanged), weights
    stored channels last, the layout oneDNN's convolutions run fastest in. The same outputs to
    float rounding in about 0.6x the time (benchmarks/results/inference_backends.md). Not for
    training, nor to be saved as the original's state dict."""
    from torch.fx.experimental.optimization import fuse

    return fuse(model.eval()).to(memory_format=torch.channels_last)


class Segmenter:
    """The three plane networks and the fusion, loaded from a weights folder."""

    def __init__(self, plane_models: dict[str, nn.Module], fusion: nn.Module, spacing: float, info: ModelInfo,
                 region: RegionSettings | None = None):
        self.plane_models = plane_models
        self.fusion = fusion
        self.spacing = spacing
        self.info = info
        # spine-region inference: as the weights folder says, unless given
        self.region = region or getattr(info, "region", None) or RegionSettings()

    @classmethod
    def load(cls, folder: str | Path, *, optimise: bool = True) -> "Segmenter":
        """The networks of a weights folder in eval mode; with ``optimise``, the plane networks
        made :func:`for_inference` (the fusion, two small 3D convolutions, as it is)."""
        folder = Path(folder)
        info = ModelInfo.load(folder)
        k = len(info.tissues)
        models = {}
        for plane in planes.PLANES:
            models[plane] = plane_net(preset=info.preset, num_classes=k)
            models[plane].load_state_dict(load_state(folder / f"{plane}.pt"))
        fusion = fusion_net(num_classes=k, planes=info.fusion.planes, hidden=info.fusion.hidden)
        fusion.load_state_dict(load_state(folder / "fusion.pt"))
        ready = for_inference if optimise else nn.Module.eval
        return cls({plane: ready(m) for plane, m in models.items()}, fusion.eval(), info.spacing_mm, info)

    def plane_probabilities(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return {plane: predict_plane(model, image, plane, context=self.info.slice_context)
                for plane, model in self.plane_models.items()}

    def settings(self, region: "bool | RegionSettings | None" = None) -> RegionSettings:
        """The region settings: :attr:`region`, turned on or off by a bool ``region``, or
        replaced by a :class:`RegionSettings` one (benchmarks compare settings)."""
        if isinstance(region, RegionSettings):
            return region
        return self.region if region is None else replace(self.region, enabled=region)

    def locate(self, image: np.ndarray, region: "bool | RegionSettings | None" = None) -> Region:
        """Where the networks will run on a network input (:func:`locate` of the first pass)."""
        settings = self.settings(region)
        if not settings.enabled:
            return Region.whole(image.shape[1:], OFF)
        first = predict_plane(self.plane_models["sagittal"],
                              first_pass_input(image, self.spacing, settings, context=self.info.slice_context), "sagittal")
        return locate(first, image.shape[1:], self.spacing, settings)

    def predict(self, image: np.ndarray,
                region: "bool | RegionSettings | None" = None) -> tuple[dict[str, np.ndarray], np.ndarray, Region]:
        """Per-plane and fused probabilities ``(K, X, Y, Z)`` of a network input (see
        :func:`segment_series`), and the :class:`Region` they were computed on; ``region``
        turns spine-region inference on or off (default: :attr:`region`'s setting; see
        :meth:`settings`)."""
        where = self.locate(image, region)
        per_plane = self.plane_probabilities(crop(image, where))
        fused = fuse(self.fusion, per_plane, self.spacing, where)
        return {p: paste(v, where) for p, v in per_plane.items()}, paste(fused, where), where

    def segment(self, series: Series, region: "bool | RegionSettings | None" = None) -> Segmentation:
        return segment_series(series, self.spacing, lambda image: self.predict(image, region), self.info.scale())


# network input -> (per plane probabilities or class map, fused probabilities or canonical-grid classes[, Region])
Predict = Callable[[np.ndarray], tuple]


def segment_series(series: Series, spacing: float, predict: Predict, scale: np.ndarray | None = None) -> Segmentation:
    """The study-level steps around the networks, shared by every backend (in-process here,
    :class:`lumbarseg.triton.client.TritonSegmenter`): the series' network input
    (:func:`lumbarseg.planes.network_input`) resampled to ``spacing`` mm isotropic, given to
    ``predict``, which returns per plane its probabilities ``(K, X, Y, Z)`` or only its class
    map ``(X, Y, Z)`` (possibly no plane); the fused probabilities on that grid, or the fused
    classes already on the series' canonical grid (:func:`lumbarseg.planes.canonical_shape`);
    and optionally the :class:`Region` the networks ran on. Fused classes are the argmax of the
    probabilities resampled trilinear to the canonical grid, each class's multiplied by its
    ``scale`` factor (:meth:`ModelInfo.scale`; a backend that sends classes applied it); a
    plane's classes are the plain argmax, taken on the network grid and resampled nearest (what
    a backend that sends class maps does), so every backend gives the same classes. Both are
    returned in the series' own orientation."""
    # the grid budget first (reorienting only permutes axes: the same voxel count)
    budget.check_grid(series.source or series.description or "series", series.shape, series.spacing, spacing)
    shape = planes.canonical_shape(series)
    image = planes.model_input(series, spacing)
    per_plane, fused, *where = predict(image)
    fused_classes = fused if fused.ndim == 3 else source_classes(fused, shape, scale)
    if fused_classes.shape != shape:
        raise ValueError(f"the backend sent fused classes of shape {fused_classes.shape} for a series whose "
                         f"canonical grid is {shape}")

    def on_source_grid(classes: np.ndarray) -> np.ndarray:
        return planes.from_canonical(planes.resample(classes[None], shape, "nearest")[0], series)

    plane_classes = {p: on_source_grid(v if v.ndim == 3 else class_map(v)) for p, v in per_plane.items()}
    silent = planes.slab_planes(image.shape[1:], spacing)
    return Segmentation(planes.from_canonical(fused_classes, series), plane_classes,
                        {p: v for p, v in per_plane.items() if v.ndim == 4}, None if fused.ndim == 3 else fused,
                        fused_planes=tuple(p for p in per_plane if p not in silent), region=where[0] if where else None)


def source_classes(fused: np.ndarray, shape: tuple[int, int, int], scale: np.ndarray | None = None) -> np.ndarray:
    """Fused probabilities ``(K, X, Y, Z)`` -> classes on a canonical source grid of ``shape``:
    resampled trilinear, then the (scaled, :func:`class_map`) argmax (in process, and the Triton
    pipeline's ``SOURCE_CLASSES``)."""
    return class_map(planes.resample(fused, shape, "trilinear"), scale)


def class_map(probabilities: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities ``(K, X, Y, Z)`` -> their argmax ``(X, Y, Z)`` uint8 (the Triton
    pipeline's ``CLASSES`` and ``<PLANE>_CLASSES``); ``scale``: a factor per class
    (:meth:`ModelInfo.scale`) applied first."""
    if scale is not None:
        probabilities = probabilities * scale.reshape(-1, *[1] * (probabilities.ndim - 1))
    return probabilities.argmax(axis=0).astype(np.uint8)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(path, "weights file missing")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: t.float() if t.is_floating_point() else t for name, t in state.items()}


def save_model(folder: Path, plane_models: dict[str, nn.Module], fusion: nn.Module, info: dict) -> None:
    """Write a weights folder; float tensors as float16 to keep shipped weights small.

    ``info``: the content of its ``model.json`` (:class:`ModelInfo`) but ``tissues``, which are
    this version's (what the networks were built for); checked as loading checks it, so a
    folder that is written also loads."""
    model_info = read_config(ModelInfo, {**info, "tissues": list(tissues.TISSUE_NAMES)}, where=folder / MODEL_FILE)
    folder.mkdir(parents=True, exist_ok=True)
    for name, model in {**plane_models, "fusion": fusion}.items():
        state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        torch.save(state, folder / f"{name}.pt")
    model_info.save(folder)
