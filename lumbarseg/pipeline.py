"""In-process inference: study -> three plane networks -> learned 3D fusion -> tissue classes.

A trained model is a folder (``weights/<name>/``): ``model.json`` (:class:`ModelInfo`: model
preset, spacing, classes, how it was trained) and one state dict per network: ``sagittal.pt``,
``coronal.pt``, ``axial.pt``, ``fusion.pt``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
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
class ModelInfo:
    """A weights folder's ``model.json``. What loading and serving the networks reads is typed;
    the record of how they were trained (training preset, data, split, per-epoch history,
    machine, ...) is kept as written, in ``record``: it is read by people, and folders written
    by older versions must load whatever their record holds."""

    preset: str  # plane network preset (configs/models/<preset>.json)
    spacing_mm: float  # the isotropic grid the networks run on
    tissues: tuple[str, ...]  # the networks' output classes, in order
    fusion: FusionShape = FusionShape()
    version: str = "shipped"  # the MONAI Label app's serving version: set when it publishes a retrained model
    record: dict = other_keys()  # every other key of model.json

    @classmethod
    def load(cls, folder: str | Path) -> "ModelInfo":
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise ConfigError(folder, f"no {MODEL_FILE}: not a lumbarseg weights folder")
        return read_config(cls, path)

    def save(self, folder: str | Path) -> None:
        (Path(folder) / MODEL_FILE).write_text(json.dumps(dump_config(self), indent=1))


@torch.no_grad()
def predict_plane(model: nn.Module, image: np.ndarray, plane: str, batch_size: int = 16) -> np.ndarray:
    """Class probabilities ``(K, X, Y, Z)`` of one plane network over a canonical ``(3, X, Y, Z)``
    volume, slice by slice along the plane's normal."""
    model.eval()
    stack = torch.from_numpy(np.ascontiguousarray(planes.slice_stack(image, plane)))
    out = [model(stack[i : i + batch_size]).softmax(dim=1) for i in range(0, len(stack), batch_size)]
    return planes.restack(torch.cat(out), plane).numpy()


@torch.no_grad()
def fuse(model: nn.Module, probabilities: dict[str, np.ndarray], spacing: float) -> np.ndarray:
    """Fused class probabilities ``(K, X, Y, Z)`` from per-plane probabilities on a ``spacing`` mm grid."""
    model.eval()
    k, *shape = next(iter(probabilities.values())).shape
    x = torch.from_numpy(planes.fusion_input(probabilities, tuple(shape), k, spacing=spacing))[None]
    return model(x).softmax(dim=1)[0].numpy()


@dataclass
class Segmentation:
    """Tissue classes on the source series' grid, and the probabilities behind them (on the
    model's isotropic canonical grid) for disagreement scores and reports."""

    classes: np.ndarray  # (I, J, K) uint8 tissue class indices, source orientation
    plane_classes: dict[str, np.ndarray]  # plane -> (I, J, K) what that plane alone predicts
    plane_probabilities: dict[str, np.ndarray]  # plane -> (K, X, Y, Z)
    probabilities: np.ndarray  # (K, X, Y, Z) fused
    # The planes the fusion read: on a narrow sagittal slab the axial and coronal networks see
    # no anatomy and the fusion ignores them (planes.slab_planes), so their disagreement with
    # the sagittal plane says nothing about this study.
    fused_planes: tuple[str, ...] = planes.PLANES

    @property
    def fused_plane_classes(self) -> dict[str, np.ndarray]:
        """:attr:`plane_classes` of the :attr:`fused_planes`: what a finding's plane disagreement compares."""
        return {p: c for p, c in self.plane_classes.items() if p in self.fused_planes}


class Segmenter:
    """The three plane networks and the fusion, loaded from a weights folder."""

    def __init__(self, plane_models: dict[str, nn.Module], fusion: nn.Module, spacing: float, info: ModelInfo):
        self.plane_models = plane_models
        self.fusion = fusion
        self.spacing = spacing
        self.info = info

    @classmethod
    def load(cls, folder: str | Path) -> "Segmenter":
        folder = Path(folder)
        info = ModelInfo.load(folder)
        k = len(info.tissues)
        models = {}
        for plane in planes.PLANES:
            models[plane] = plane_net(preset=info.preset, num_classes=k)
            models[plane].load_state_dict(load_state(folder / f"{plane}.pt"))
        fusion = fusion_net(num_classes=k, planes=info.fusion.planes, hidden=info.fusion.hidden)
        fusion.load_state_dict(load_state(folder / "fusion.pt"))
        return cls(models, fusion, info.spacing_mm, info)

    def plane_probabilities(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return {plane: predict_plane(model, image, plane) for plane, model in self.plane_models.items()}

    def predict(self, image: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per-plane and fused probabilities ``(K, X, Y, Z)`` of a network input (see :func:`segment_series`)."""
        per_plane = self.plane_probabilities(image)
        return per_plane, fuse(self.fusion, per_plane, self.spacing)

    def segment(self, series: Series) -> Segmentation:
        return segment_series(series, self.spacing, self.predict)


Predict = Callable[[np.ndarray], tuple[dict[str, np.ndarray], np.ndarray]]


def segment_series(series: Series, spacing: float, predict: Predict) -> Segmentation:
    """The study-level steps around the networks, shared by every backend (in-process here,
    :class:`lumbarseg.triton.client.TritonSegmenter`): the series' network input
    (:func:`lumbarseg.planes.network_input`) resampled to ``spacing`` mm isotropic, given to
    ``predict`` (-> per-plane probabilities, possibly empty, and fused probabilities on that
    grid), classes taken on the source grid."""
    # the grid budget first (reorienting only permutes axes: the same voxel count)
    budget.check_grid(series.source or series.description or "series", series.shape, series.spacing, spacing)
    canonical = planes.to_canonical(series)
    image = planes.resample(planes.network_input(series), planes.grid_size(canonical, spacing), "trilinear")
    per_plane, fused = predict(image)

    def on_source_grid(probabilities: np.ndarray) -> np.ndarray:
        classes = planes.resample(probabilities, canonical.shape, "trilinear").argmax(axis=0)
        return planes.from_canonical(classes.astype(np.uint8), series)

    silent = planes.slab_planes(image.shape[1:], spacing)
    return Segmentation(on_source_grid(fused), {p: on_source_grid(v) for p, v in per_plane.items()}, per_plane, fused,
                        tuple(p for p in per_plane if p not in silent))


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
