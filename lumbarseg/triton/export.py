"""Export a weights folder into a Triton model repository: one ONNX file per network.

Repository contract (the committed ``model_repository/`` is the template)::

    <repository>/plane_sagittal|plane_coronal|plane_axial/
        config.pbtxt          GPU: onnxruntime backend, KIND_GPU, dynamic batching
        configs/cpu.pbtxt     CPU: python backend running onnxruntime on the same file
        <version>/model.onnx  IMAGE (N, 3, H, W) -> PROBABILITIES (N, K, H, W), softmax included
        <version>/model.py
    <repository>/fusion/      FUSION_INPUT (N, 3 * (K + 1), X, Y, Z) -> PROBABILITIES (N, K, X, Y, Z)
    <repository>/spine_pipeline/   python BLS model calling the four above (no ONNX)

Every ONNX file is checked against PyTorch with onnxruntime on phantom data before it replaces
the previous file, and the configs are checked against the exported graphs (names, types,
channel counts), so a repository that passes :func:`export` serves what the weights compute.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lumbarseg import planes, tissues

TEMPLATE = Path(__file__).resolve().parents[2] / "model_repository"
PLANE_MODELS = {f"plane_{plane}": plane for plane in planes.PLANES}
NETWORK_MODELS = (*PLANE_MODELS, "fusion")
PIPELINE = "spine_pipeline"
# PIPELINE's config parameter: "true" runs fusion/<version>/model.onnx in the pipeline's own process
# instead of calling the fusion model (the CPU configs; lumbarseg.triton.python_models.SpinePipeline)
FUSION_IN_PIPELINE = "fusion_in_pipeline"
MODELS = (*NETWORK_MODELS, PIPELINE)
ONNX_FILE = "model.onnx"
CPU_CONFIG = Path("configs") / "cpu.pbtxt"
# Largest |torch - onnxruntime| probability difference accepted (float32 kernels differ by ~1e-6).
TOLERANCE = 1e-4
_ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8"}  # onnx.TensorProto element types used here


class ExportError(ValueError):
    """The export failed its numerical check, or the repository's configs do not fit the graph."""


def read_config(path: str | Path):
    """A ``config.pbtxt`` as a ``ModelConfig`` protobuf; :class:`ExportError` if it does not parse."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(path)
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as err:
        raise ExportError(f"{path}: {err}") from err


class _Probabilities(nn.Module):
    """A network with its softmax, so served models answer with probabilities, as in-process."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(dim=1)


def _to_onnx(net: nn.Module, example: torch.Tensor, input_name: str, path: Path) -> None:
    """Export with every axis but the channels dynamic (slice batch and spatial size)."""
    model = _Probabilities(net).eval()
    dynamic = {axis: torch.export.Dim.DYNAMIC for axis in range(example.ndim) if axis != 1}
    torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=["PROBABILITIES"],
                      dynamic_shapes=(dynamic,), external_data=False, verbose=False)


def _check_numerics(net: nn.Module, path: Path, input_name: str, examples: list[torch.Tensor]) -> float:
    """Max |torch - onnxruntime| over ``examples`` (shapes other than the export example, so the
    dynamic axes are exercised); :class:`ExportError` above :data:`TOLERANCE`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    model = _Probabilities(net).eval()
    for x in examples:
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(["PROBABILITIES"], {input_name: x.numpy()})
        if got.shape != expected.shape:
            raise ExportError(f"{path}: onnxruntime gives shape {got.shape} for input {tuple(x.shape)}, "
                              f"PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > TOLERANCE:
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {worst:.2e} (> {TOLERANCE:g})")
    return worst


def _phantom_volume(spacing: float) -> np.ndarray:
    """A network-normalised phantom study at ``spacing``: ``(3, X, Y, Z)``."""
    from lumbarseg import phantom

    return planes.model_input(phantom.generate(0).primary, spacing)


def _plane_examples(volume: np.ndarray, plane: str) -> list[torch.Tensor]:
    """Stacks of phantom slices through the middle of the volume: one odd-sized (the network
    pads to its stride), one a different size and batch, for the dynamic axes."""
    stack = planes.slice_stack(volume, plane)
    n, _, h, w = stack.shape
    mid = n // 2
    odd = stack[mid : mid + 1, :, : min(h, 61), : min(w, 45)]
    other = stack[max(0, mid - 1) : mid + 2, :, : min(h, 40), : min(w, 72)]
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in (odd, other)]


def _fusion_example(segmenter, volume: np.ndarray, size: tuple[int, int, int]) -> torch.Tensor:
    """The fusion input of a phantom patch (centre crop of ``size``), from the plane networks'
    own probabilities."""
    start = [max(0, (n - s) // 2) for n, s in zip(volume.shape[1:], size)]
    patch = np.ascontiguousarray(volume[:, start[0] : start[0] + size[0], start[1] : start[1] + size[1],
                                        start[2] : start[2] + size[2]])
    per_plane = segmenter.plane_probabilities(patch)
    return torch.from_numpy(planes.fusion_input(per_plane, patch.shape[1:], segmenter.fusion.num_classes,
                                                spacing=segmenter.spacing))[None]


def _graph_signature(path: Path) -> dict[str, tuple[str, list[int | None]]]:
    """Input/output name -> (Triton type, dims with None for dynamic axes), from the ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    out = {}
    for value in (*graph.input, *graph.output):
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[value.name] = (_ONNX_TYPES.get(t.elem_type, f"onnx type {t.elem_type}"), dims)
    return out


def check_config(config, signature: dict[str, tuple[str, list[int | None]]], where: str) -> None:
    """The config names the graph's inputs and outputs with its types and fixed dims (the batch
    axis is Triton's, left out of ``dims`` when ``max_batch_size`` > 0)."""
    from tritonclient.grpc import model_config_pb2

    batch = config.max_batch_size > 0
    declared = {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims))
                for t in (*config.input, *config.output)}
    if set(declared) != set(signature):
        raise ExportError(f"{where}: config names {sorted(declared)}, the graph {sorted(signature)}")
    for name, (dtype, dims) in signature.items():
        want_type, want_dims = declared[name]
        graph_dims = dims[1:] if batch else dims
        fits = len(want_dims) == len(graph_dims) and all(
            w == -1 if g is None else w in (-1, g) for w, g in zip(want_dims, graph_dims))
        if want_type != dtype or not fits:
            raise ExportError(f"{where}: {name} is {want_type} {want_dims} in the config but {dtype} "
                              f"{['-1' if g is None else g for g in graph_dims]} in the graph")


def _set_parameter(path: Path, key: str, value: str, *, add: bool = False) -> None:
    """Rewrite one ``parameters`` string value in place, keeping the file otherwise as written;
    with ``add``, append the parameter when the file lacks it (a config older than the key)."""
    text = path.read_text()
    pattern = re.compile(r'(parameters\s*\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{\s*string_value:\s*")[^"]*(")')
    new, count = pattern.subn(lambda m: m.group(1) + value + m.group(2), text)
    if count == 0 and add:
        new, count = text.rstrip("\n") + f'\nparameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n', 1
    if count != 1:
        raise ExportError(f"{path}: expected one parameter {key!r}, found {count}")
    if new != text:
        path.write_text(new)


def _install_template(repository: Path, version: int) -> None:
    """Copy the committed configs and model.py files the repository lacks (never overwriting)."""
    for model in MODELS:
        source, target = TEMPLATE / model, repository / model
        for rel in (Path("config.pbtxt"), CPU_CONFIG):
            if not (target / rel).is_file():
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / rel, target / rel)
        if not (target / str(version) / "model.py").is_file():
            (target / str(version)).mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / "1" / "model.py", target / str(version) / "model.py")


@dataclass
class ExportReport:
    repository: Path
    version: int
    files: dict[str, Path]  # model -> its model.onnx
    max_difference: dict[str, float]  # model -> max |torch - onnxruntime| on the phantom checks

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the export touched, in load order (the pipeline last: it calls the others)."""
        return MODELS


def next_version(repository: str | Path) -> int:
    """One above the highest version folder holding a network's ``model.onnx`` (1 if none)."""
    versions = [int(p.parent.name) for m in NETWORK_MODELS for p in Path(repository, m).glob(f"*/{ONNX_FILE}")
                if p.parent.name.isdigit()]
    return max(versions, default=0) + 1


def export(weights: str | Path, repository: str | Path = TEMPLATE, version: int = 1) -> ExportReport:
    """Export ``weights`` (a :class:`lumbarseg.pipeline.Segmenter` folder) into ``repository``.

    Missing configs and model.py files are copied from the committed template; the pipeline's
    ``spacing_mm``, ``tissues``, ``spine_region`` (:class:`lumbarseg.pipeline.RegionSettings`),
    ``slice_context`` (2.5D input) and ``class_scale`` (the fused classes' factors) parameters
    are set from the weights. Each ``model.onnx`` is written to a temporary file, checked, then
    moved into place (a failed export leaves the previous model intact).
    """
    from lumbarseg.pipeline import Segmenter, class_scale_parameter

    segmenter = Segmenter.load(weights)
    repository = Path(repository)
    k = len(segmenter.info.tissues)
    if list(segmenter.info.tissues) != list(tissues.TISSUE_NAMES):
        raise ExportError(f"{weights}: trained for tissues {list(segmenter.info.tissues)}, this version of "
                          f"lumbarseg serves {list(tissues.TISSUE_NAMES)}")
    _install_template(repository, version)
    volume = _phantom_volume(segmenter.spacing)
    networks = {model: (segmenter.plane_models[plane], "IMAGE", _plane_examples(volume, plane))
                for model, plane in PLANE_MODELS.items()}
    fusion_examples = [_fusion_example(segmenter, volume, (20, 24, 18)), _fusion_example(segmenter, volume, (13, 9, 16))]
    networks["fusion"] = (segmenter.fusion, "FUSION_INPUT", fusion_examples)

    files, differences = {}, {}
    for model, (net, input_name, examples) in networks.items():
        target = repository / model / str(version) / ONNX_FILE
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            path = Path(tmp) / ONNX_FILE
            _to_onnx(net, examples[0], input_name, path)
            differences[model] = _check_numerics(net, path, input_name, examples)
            signature = _graph_signature(path)
            for config in (Path("config.pbtxt"), CPU_CONFIG):
                check_config(read_config(repository / model / config), signature, str(repository / model / config))
            os.replace(path, target)
        files[model] = target

    for config in (Path("config.pbtxt"), CPU_CONFIG):
        path = repository / PIPELINE / config
        _set_parameter(path, "spacing_mm", f"{segmenter.spacing:g}")
        _set_parameter(path, "tissues", ",".join(segmenter.info.tissues))
        _set_parameter(path, "spine_region", segmenter.region.parameter(), add=True)
        _set_parameter(path, "slice_context", str(segmenter.info.slice_context).lower(), add=True)
        _set_parameter(path, "class_scale", class_scale_parameter(segmenter.info.class_scale), add=True)
        pipeline_config = read_config(path)
        for output in pipeline_config.output:
            if output.name.endswith("PROBABILITIES") and output.dims[0] != k:
                raise ExportError(f"{path}: {output.name} has {output.dims[0]} classes, the weights {k}")
    return ExportReport(repository, version, files, differences)
