"""Triton python-backend models. Each model's ``<version>/model.py`` in the repository imports
its class from here, so the repository holds no code of its own.

Runs only inside Triton's python stub (``triton_python_backend_utils`` exists there alone).

* :class:`OnnxModel` — a network's ``model.onnx`` on onnxruntime, for the CPU configs
  (``configs/cpu.pbtxt``): the stand-in for the onnxruntime backend of the GPU configs, with
  the same inputs, outputs and batching.
* :class:`SpinePipeline` — ``spine_pipeline``: one study volume through the three plane models
  and the fusion by business-logic scripting (BLS), slicing and fusion input built by
  :mod:`lumbarseg.planes` as in-process inference builds them; with spine-region inference the
  first pass, the box and the crop are :mod:`lumbarseg.pipeline`'s functions, as in process.
  With ``fusion_in_pipeline`` (the CPU configs) it runs the fusion model's file itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

PROBABILITIES = "PROBABILITIES"
CLASSES = "CLASSES"
REGION = "REGION"  # spine_pipeline output: lumbarseg.pipeline.Region.code() of where the networks ran
REGION_PARAMETER = "spine_region"  # config parameter (settings) and request parameter (true/false)
CLASS_SCALE_PARAMETER = "class_scale"  # config parameter: ModelInfo.class_scale (pipeline.class_scale_parameter)
# SOURCE_CLASSES: the fused classes on the grid of the request parameter source_shape ("I,J,K":
# the study's own grid, canonically oriented), so the client need not fetch the probabilities.
SOURCE_CLASSES, SOURCE_SHAPE = "SOURCE_CLASSES", "source_shape"
# Environment override of each config's intra_op_threads (tests and shared machines).
THREADS_ENV = "LUMBARSEG_ORT_THREADS"
# Environment override of each config's cpu_mem_arena ("0" turns onnxruntime's memory arena off:
# the arena keeps the largest batch's activations, about 0.6 GiB per lite plane model at 1.5 mm).
ARENA_ENV = "LUMBARSEG_ORT_ARENA"


def _parameters(config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def _error(message: str, code: str = "INTERNAL") -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, getattr(pb_utils.TritonError, code)))


def _onnx_session(path: Path, parameters: dict[str, str]):
    """An onnxruntime CPU session over ``path`` with a config's ``intra_op_threads`` and
    ``cpu_mem_arena`` parameters (or their environment overrides)."""
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ONNX file (run `lumbarseg export` into this repository)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get(THREADS_ENV) or parameters.get("intra_op_threads", 0))
    options.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of spin-waiting: the pipeline calls the plane models
    # and the fusion one after another, and a finished model's spinning threads took the cores
    # from the next (2 threads per model, a 39x147x210 grid: 3.49 s per request spinning, 2.74 s not).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    arena = os.environ.get(ARENA_ENV) or parameters.get("cpu_mem_arena", "1")
    options.enable_cpu_mem_arena = arena.lower() not in ("0", "false", "off")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """``<version>/model.onnx`` on onnxruntime; input and output names from the model config."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = _onnx_session(path, _parameters(config))
        self.input = config["input"][0]["name"]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list) -> list:
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        # The dynamic batcher hands over several requests; those of one slice size run as one batch.
        groups: dict[tuple, list[int]] = {}
        for i, array in enumerate(arrays):
            groups.setdefault(array.shape[1:], []).append(i)
        responses: list = [None] * len(requests)
        for members in groups.values():
            batch = arrays[members[0]] if len(members) == 1 else np.concatenate([arrays[i] for i in members])
            results = self.session.run(self.outputs, {self.input: batch})
            start = 0
            for i in members:
                end = start + len(arrays[i])
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, np.ascontiguousarray(r[start:end])) for name, r in zip(self.outputs, results)])
                start = end
        return responses


class _Failed(Exception):
    """A composing model answered with an error; the message names the model."""


class SpinePipeline:
    """IMAGE ``(3, X, Y, Z)`` -> fused PROBABILITIES ``(K, X, Y, Z)``, CLASSES ``(X, Y, Z)`` and
    SOURCE_CLASSES (on the request's ``source_shape``), per plane ``<PLANE>_CLASSES`` and
    ``<PLANE>_PROBABILITIES``, and REGION; only the requested outputs are sent back."""

    def initialize(self, args: dict) -> None:
        from lumbarseg import pipeline, planes  # torch and monai: loaded in this model's stub only
        from lumbarseg.triton.export import FUSION_IN_PIPELINE

        self.planes, self.pipeline = planes, pipeline
        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        self.batch = int(parameters["plane_batch_size"])
        self.max_voxels = int(parameters["max_voxels"])
        self.max_extent = int(parameters.get("max_extent", 0)) or None
        self.max_source_voxels = int(parameters.get("max_source_voxels", 0))
        self.spacing = float(parameters["spacing_mm"])
        self.num_classes = next(int(o["dims"][0]) for o in config["output"] if o["name"] == PROBABILITIES)
        self.outputs = {o["name"] for o in config["output"]}
        # Spine-region settings, written by `lumbarseg export` from the weights; a repository
        # exported before spine-region inference has none: whole volume, as it was then.
        setting = parameters.get(REGION_PARAMETER)
        self.region = (pipeline.RegionSettings.from_parameter(setting) if setting
                       else pipeline.RegionSettings(enabled=False))
        self.context = parameters.get("slice_context", "false") == "true"  # 2.5D input (planes.slice_context)
        # the fused classes' factor per class (ModelInfo.class_scale), written by `lumbarseg export`
        class_scale = pipeline.class_scale_from_parameter(parameters.get(CLASS_SCALE_PARAMETER, ""))
        self.scale = pipeline.class_scale_vector(class_scale, tuple(parameters["tissues"].split(",")))
        # On CPU the fusion model's own process only adds copies: a BLS call moved the 30-channel
        # fusion input (145 MB on a 39x147x210 grid) into the fusion's stub and the probabilities
        # back (end to end 1.03-1.19x in-process onnxruntime, 0.90-0.92x with the fusion run here;
        # docs/performance.md). The file is the fusion model's of this version (`lumbarseg export`
        # writes every model's version together); the GPU configs call the fusion model on the GPU.
        self.fusion = None
        if parameters.get(FUSION_IN_PIPELINE, "false") == "true":
            fusion = Path(args["model_repository"]).parent / "fusion" / args["model_version"] / "model.onnx"
            self.fusion = _onnx_session(fusion, parameters)

    async def execute(self, requests: list) -> list:
        return [await self._segment(request) for request in requests]

    def _refusal(self, shape: tuple[int, ...]) -> str | None:
        """Why a declared IMAGE shape is over the limits (None when it is not), judged from the
        shape alone: before anything is computed, since the work holds about 0.5 KB per voxel
        (``max_voxels``) and the plane networks' activations grow with the slice area
        (``max_extent`` per axis). Triton has already checked rank, dtype and byte size."""
        spatial = shape[1:]
        if self.max_extent and max(spatial, default=0) > self.max_extent:
            return (f"IMAGE shape {list(shape)}: an axis of {max(spatial)} voxels is over max_extent "
                    f"{self.max_extent} (at the model's spacing_mm)")
        voxels = int(np.prod(spatial, dtype=np.int64))
        if voxels > self.max_voxels:
            return (f"IMAGE has {voxels} voxels per channel, more than max_voxels {self.max_voxels}; "
                    "resample the study to the model's spacing_mm first")
        return None

    async def _segment(self, request) -> pb_utils.InferenceResponse:
        tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        refusal = self._refusal(tuple(int(n) for n in tensor.shape()))
        if refusal:
            return _error(refusal, "INVALID_ARG")
        image = tensor.as_numpy()
        if not np.isfinite(image).all():
            return _error("IMAGE holds NaN or infinite values", "INVALID_ARG")
        wanted = set(request.requested_output_names())
        try:
            settings = self._settings(request)
            # a request naming no output is asked for all: SOURCE_CLASSES then only with a source_shape
            source_shape = self._source_shape(request, required=wanted != self.outputs) if SOURCE_CLASSES in wanted else None
        except ValueError as err:
            return _error(str(err), "INVALID_ARG")
        if source_shape is None:
            wanted.discard(SOURCE_CLASSES)
        pipeline = self.pipeline
        try:
            # Spine-region inference, as in process (lumbarseg.pipeline.Segmenter.predict): the
            # first pass, then the planes and the fusion on the box only.
            region = pipeline.Region.whole(image.shape[1:], pipeline.OFF)
            if settings.enabled:
                thinned = pipeline.first_pass_input(image, self.spacing, settings, context=self.context)
                first = await self._plane(thinned, "sagittal", context=False)  # context taken before thinning
                region = pipeline.locate(first, image.shape[1:], self.spacing, settings)
            box = pipeline.crop(image, region)
            stacks = await asyncio.gather(*(self._plane(box, plane, context=self.context)
                                            for plane in self.planes.PLANES))
            per_plane = dict(zip(self.planes.PLANES, stacks))
            fusion_input = pipeline.region_fusion_input(per_plane, region, self.num_classes, spacing=self.spacing)[None]
            fused = pipeline.paste((await self._fuse(fusion_input))[0], region)
            del fusion_input  # 30 channels: the largest array, not needed for the outputs
        except _Failed as err:
            return _error(str(err), "UNAVAILABLE")
        if not any(name.startswith(plane.upper()) for name in wanted for plane in self.planes.PLANES):
            per_plane.clear()
        outputs = {PROBABILITIES: lambda: fused, CLASSES: lambda: pipeline.class_map(fused, self.scale),
                   REGION: region.code, SOURCE_CLASSES: lambda: pipeline.source_classes(fused, source_shape, self.scale)}
        for plane in self.planes.PLANES:  # a plane's class map is 1/36 of its probabilities' bytes
            outputs[f"{plane.upper()}_{PROBABILITIES}"] = lambda p=plane: pipeline.paste(per_plane[p], region)
            outputs[f"{plane.upper()}_{CLASSES}"] = lambda p=plane: pipeline.paste(pipeline.class_map(per_plane[p]),
                                                                                   region)
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, np.ascontiguousarray(make()))
                                           for name, make in outputs.items() if name in wanted])

    def _settings(self, request):
        """The model's region settings, turned on or off by the request parameter
        ``spine_region`` (bool) when the request sets it."""
        parameters = json.loads(request.parameters() or "{}")
        if REGION_PARAMETER not in parameters:
            return self.region
        value = parameters[REGION_PARAMETER]
        if not isinstance(value, bool):
            raise ValueError(f"request parameter {REGION_PARAMETER} must be a bool, got {value!r}")
        return dataclasses.replace(self.region, enabled=value)

    def _source_shape(self, request, required: bool) -> tuple[int, int, int] | None:
        """The request parameter ``source_shape`` ("I,J,K"; None when absent and not
        ``required``), checked before anything is allocated: resampling holds the K class
        probabilities on that grid (float32), so at most ``max_source_voxels`` voxels."""
        value = json.loads(request.parameters() or "{}").get(SOURCE_SHAPE)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise ValueError(f"{SOURCE_CLASSES} needs the request parameter {SOURCE_SHAPE} (\"I,J,K\"), got {value!r}")
        try:
            shape = tuple(int(n) for n in value.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"request parameter {SOURCE_SHAPE} must be three positive integers \"I,J,K\", got {value!r}")
        if int(np.prod(shape, dtype=np.int64)) > self.max_source_voxels:
            raise ValueError(f"{SOURCE_SHAPE} {value} is over max_source_voxels {self.max_source_voxels}; "
                             f"request {PROBABILITIES} and resample in the client")
        return shape

    async def _plane(self, image: np.ndarray, plane: str, *, context: bool) -> np.ndarray:
        """One plane's ``(K, X, Y, Z)`` probabilities: its slice stack (2.5D with ``context``)
        sent in chunks, all at once, so the plane model's dynamic batcher can fill its batches."""
        if context:
            image = self.planes.slice_context(image, plane)
        stack = self.planes.slice_stack(image, plane)
        chunks = [np.ascontiguousarray(stack[i : i + self.batch]) for i in range(0, len(stack), self.batch)]
        parts = await asyncio.gather(*(self._infer(f"plane_{plane}", "IMAGE", c) for c in chunks))
        return self.planes.restack(np.concatenate(parts), plane)

    async def _fuse(self, fusion_input: np.ndarray) -> np.ndarray:
        if self.fusion is not None:
            return self.fusion.run([PROBABILITIES], {"FUSION_INPUT": fusion_input})[0]
        return await self._infer("fusion", "FUSION_INPUT", fusion_input)

    async def _infer(self, model: str, name: str, array: np.ndarray) -> np.ndarray:
        request = pb_utils.InferenceRequest(model_name=model, requested_output_names=[PROBABILITIES],
                                            inputs=[pb_utils.Tensor(name, array)])
        response = await request.async_exec()
        if response.has_error():
            raise _Failed(f"{model}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, PROBABILITIES).as_numpy()
