"""Segmentation by a Triton server, over gRPC: a drop-in for the in-process
:class:`lumbarseg.pipeline.Segmenter`.

``TritonSegmenter(url).segment(series)`` returns the same :class:`~lumbarseg.pipeline.Segmentation`
as ``Segmenter.load(weights).segment(series)``: both run :func:`lumbarseg.pipeline.segment_series`
(network input, resampling, classes on the source grid); only the networks run elsewhere, in
the repository's ``spine_pipeline`` model. The model spacing and tissue list come from that
model's config (``parameters``), so the client needs no weights.

Inference, loading models and the repository index are restricted APIs on a server started by
:class:`~lumbarseg.triton.server.TritonServer`: the client sends the admin key
(:func:`~lumbarseg.triton.server.admin_key`: ``$LUMBARSEG_TRITON_KEY`` or the key file) on
those calls; health and the model config need none.

URLs: ``grpc://host:port`` or ``host:port``. Inference on the project's servers is gRPC only
(:mod:`lumbarseg.triton.server` closes it on HTTP, where one malformed JSON request aborts
Triton 2.51), so an ``http://`` URL is refused with that reason. Every failure is a
:class:`~lumbarseg.triton.server.TritonError` naming the URL and the reason; connection errors
and "unavailable" answers are retried with backoff, client errors (bad input, unknown model)
are not. A request whose tensor shape overflows Triton's element count (``[3, 2**62, 2**62,
4]`` with no bytes passes its size check) kills the model's python stub, and Triton 2.51 then
answers "not healthy" until the model is reloaded; a key holder can send one, so the client
that meets a dead stub reloads that model and retries once.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from lumbarseg import planes, tissues
from lumbarseg.pipeline import (Region, Segmentation, class_scale_from_parameter, class_scale_vector,
                                segment_series)
from lumbarseg.triton.export import NETWORK_MODELS, PIPELINE
from lumbarseg.io.study import Series, StudyError
from lumbarseg.triton.server import DEFAULT_URL, TritonError, admin_headers, admin_key

log = logging.getLogger(__name__)

# Answers worth retrying: the server is (re)starting, overloaded or briefly unreachable.
TRANSIENT_STATUS = {"StatusCode.UNAVAILABLE"}
DEAD_STUB = re.compile(r"Stub process '([^']+)_\d+_\d+' is not healthy")  # the python backend's words


def _reason(err: Exception) -> tuple[str, bool]:
    """(what went wrong, whether retrying may help) for an exception from tritonclient."""
    from tritonclient.utils import InferenceServerException

    if isinstance(err, InferenceServerException):
        status = str(err.status() or "")
        message = err.message() or status or "no reason given"
        if "is restricted" in message:  # Triton answers UNAVAILABLE: not transient
            return (f"{message} (status {status}): the server wants its admin key; set LUMBARSEG_TRITON_KEY or "
                    "LUMBARSEG_TRITON_KEY_FILE to the server's key"), False
        if "failed to connect" in message:  # gRPC's word for refused or unreachable
            return f"cannot connect: {message}", True
        # DEADLINE_EXCEEDED is not retried: retrying a slow inference only adds load
        return (f"{message} (status {status})" if status else message), status in TRANSIENT_STATUS
    return f"{type(err).__name__}: {err}", False


class TritonSegmenter:
    """The repository's ``spine_pipeline`` behind one server URL; a context manager. Safe to
    share between threads (each thread gets its own connection).

    ``timeout``: seconds for one request (connect and answer); ``retries``: further attempts
    after a transient failure, waiting ``backoff`` s, then twice as long, and so on. ``key``:
    the admin key for inference, :meth:`reload` and the repository index (default
    :func:`admin_key`).
    """

    def __init__(self, url: str = DEFAULT_URL, *, model: str = PIPELINE, timeout: float = 300.0,
                 retries: int = 2, backoff: float = 0.5, key: str | None = None):
        protocol, _, address = url.rpartition("://")
        if protocol not in ("", "grpc"):
            raise TritonError(f"{url}: inference on lumbarseg's Triton is gRPC only (its HTTP inference is closed: "
                              "one malformed JSON request aborts Triton 2.51); use grpc://HOST:PORT, the gRPC port "
                              "(default 8011)")
        self.url = f"grpc://{address}"
        self.address = address
        self.model, self.timeout, self.retries, self.backoff = model, timeout, retries, backoff
        self._local = threading.local()
        self._config: dict | None = None
        self._key = key

    @property
    def _admin(self) -> dict:
        """Keyword arguments for a restricted call: the admin-key metadata, when there is a key."""
        if self._key is None:
            self._key = admin_key() or ""
        return {"headers": admin_headers(self._key)} if self._key else {}

    @property
    def _client(self):
        """This thread's tritonclient."""
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.grpc as grpc

            client = self._local.client = grpc.InferenceServerClient(self.address)
        return client

    def _call(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # tritonclient raises its own type, OSError or gevent errors
                reason, transient = _reason(err)
                if not transient or attempt == self.retries:
                    raise TritonError(f"{self.url}: {what}: {reason}") from err
                time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    # -- health -----------------------------------------------------------------------------

    def _index(self) -> list[dict]:
        index = self._call("repository index", self._client.get_model_repository_index, as_json=True, **self._admin)
        return index.get("models", [])

    def health(self) -> dict:
        """``{"url", "live", "ready", "models": {name: state}}``; :class:`TritonError` when the
        server cannot be reached. Without the admin key (the repository index is restricted)
        ``models`` holds the repository's own models, READY or UNAVAILABLE."""
        live = self._call("health", self._client.is_server_live)
        ready = self._call("health", self._client.is_server_ready)
        try:
            models = {m["name"]: m.get("state", "UNKNOWN") for m in self._index()}
        except TritonError as err:
            if "restricted" not in str(err).lower():
                raise
            models = {m: "READY" if self._call(f"readiness of {m}", self._client.is_model_ready, m) else "UNAVAILABLE"
                      for m in (*NETWORK_MODELS, self.model)}
        return {"url": self.url, "live": bool(live), "ready": bool(ready), "models": models}

    def require_ready(self, model: str | None = None) -> None:
        """:class:`TritonError` naming the model and its state unless it is ready to serve."""
        model = model or self.model
        if self._call(f"readiness of {model}", self._client.is_model_ready, model):
            return
        try:
            entry = next((m for m in self._index() if m["name"] == model), None)
        except TritonError as err:  # no admin key: the state is all we can tell
            if "restricted" not in str(err).lower():
                raise
            raise TritonError(f"{self.url}: model {model!r} is not ready (or not in the server's repository)") from err
        if entry is None:
            raise TritonError(f"{self.url}: model {model!r} is not in the server's repository")
        state = entry.get("state") or "UNAVAILABLE"
        raise TritonError(f"{self.url}: model {model!r} is not ready ({state}"
                          + (f": {entry['reason']})" if entry.get("reason") else ")"))

    def reload(self, models: Sequence[str]) -> None:
        """(Re)load ``models`` in order through the repository API (explicit model control): each
        serves its newest version once loaded, and the old version answers until then."""
        for model in models:
            self._call(f"loading {model}", self._client.load_model, model, **self._admin)
            self.require_ready(model)
        self._config = None  # the pipeline's parameters (spacing) may have changed

    def _restart(self, model: str) -> None:
        """Unload and load ``model``: a new python stub (loading a loaded model is a no-op)."""
        log.warning("%s: the python stub of %s died; reloading the model", self.url, model)
        self._call(f"unloading {model}", self._client.unload_model, model, **self._admin)
        self.reload([model])

    # -- the pipeline model -----------------------------------------------------------------

    @property
    def config(self) -> dict:
        """The pipeline model's config (JSON form), fetched once after checking it is ready."""
        if self._config is None:
            self.require_ready()
            config = self._call(f"config of {self.model}", self._client.get_model_config, self.model, as_json=True)
            self._config = config.get("config", config)
            served = self._config["parameters"]["tissues"]["string_value"].split(",")
            if served != list(tissues.TISSUE_NAMES):
                raise TritonError(f"{self.url}: {self.model} serves tissues {served}, this client expects "
                                  f"{list(tissues.TISSUE_NAMES)}")
        return self._config

    @property
    def spacing(self) -> float:
        """The model's isotropic grid in mm (written into the config by ``lumbarseg export``)."""
        return float(self.config["parameters"]["spacing_mm"]["string_value"])

    @property
    def scale(self) -> np.ndarray | None:
        """The fused classes' factor per class (the weights' ``class_scale``, written into the
        config by ``lumbarseg export``; None from a repository exported before it): applied
        here when the pipeline sends probabilities rather than classes."""
        param = self.config["parameters"].get("class_scale")
        if param is None:
            return None
        return class_scale_vector(class_scale_from_parameter(param["string_value"]), tissues.TISSUE_NAMES)

    @property
    def limits(self) -> tuple[int | None, int | None]:
        """The pipeline's ``max_voxels`` (per channel) and ``max_extent`` (per axis), from its
        config; None where the config sets none."""
        params = self.config["parameters"]
        return tuple(int(params[k]["string_value"]) if k in params else None for k in ("max_voxels", "max_extent"))

    @property
    def outputs(self) -> set[str]:
        """The output names the served pipeline declares (REGION only since spine-region inference)."""
        return {o["name"] for o in self.config.get("output", [])}

    def sends_source_classes(self, shape: tuple[int, int, int]) -> bool:
        """Whether the pipeline resamples the fused classes to a canonical source grid of
        ``shape`` itself (SOURCE_CLASSES, within its ``max_source_voxels``)."""
        cap = self.config["parameters"].get("max_source_voxels")
        return "SOURCE_CLASSES" in self.outputs and cap is not None and int(np.prod(shape)) <= int(cap["string_value"])

    def infer(self, image: np.ndarray, outputs: list[str], region: bool | None = None,
              source_shape: tuple[int, int, int] | None = None) -> dict[str, np.ndarray]:
        """Run the pipeline model on a network input ``(3, X, Y, Z)`` (float32, at
        :attr:`spacing`) and return the named outputs. ``region``: turn the model's spine-region
        inference on or off for this request (request parameter ``spine_region``; default: as
        the model's config says); ``source_shape``: the grid of SOURCE_CLASSES."""
        self.config  # readiness and compatibility first, for a clear error
        import tritonclient.grpc as grpc

        tensor = grpc.InferInput("IMAGE", list(image.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        requested = [grpc.InferRequestedOutput(name) for name in outputs]
        parameters = {} if region is None else {"spine_region": bool(region)}
        if source_shape is not None:
            parameters["source_shape"] = ",".join(str(int(n)) for n in source_shape)
        for attempt in range(2):
            try:
                result = self._call(f"inference on {self.model}", self._client.infer, self.model, [tensor],
                                    outputs=requested, client_timeout=self.timeout,
                                    parameters=parameters or None, **self._admin)
                break
            except TritonError as err:
                dead = DEAD_STUB.search(str(err))
                if dead is None or attempt:
                    raise
                self._restart(dead.group(1))
        return {name: np.array(result.as_numpy(name)) for name in outputs}  # writable copies (torch reads them)

    def predict(self, image: np.ndarray, with_planes: bool = True, region: bool | None = None, *,
                probabilities: bool = False, source_shape: tuple[int, int, int] | None = None
                ) -> tuple[dict[str, np.ndarray], np.ndarray, Region | None]:
        """What :func:`lumbarseg.pipeline.segment_series` takes from a backend: per plane (if
        ``with_planes``) its class map; the fused classes on the canonical ``source_shape`` grid
        (resampled by the pipeline) when given and within its limit; and the :class:`Region` the
        networks ran on (None from a pipeline without the REGION output). With ``probabilities``,
        or from a pipeline exported before these outputs, per plane and fused probabilities
        instead of classes."""
        source = source_shape is not None and not probabilities and self.sends_source_classes(source_shape)
        fused = "SOURCE_CLASSES" if source else "PROBABILITIES"
        kind = "CLASSES" if not probabilities and "SAGITTAL_CLASSES" in self.outputs else "PROBABILITIES"
        names = [f"{plane.upper()}_{kind}" for plane in planes.PLANES] if with_planes else []
        extra = ["REGION"] if "REGION" in self.outputs else []
        out = self.infer(image, [fused, *names, *extra], region, source_shape if source else None)
        where = Region.from_code(out["REGION"], image.shape[1:]) if extra else None
        return {plane: out[name] for plane, name in zip(planes.PLANES, names)}, out[fused], where

    def segment(self, series: Series, with_planes: bool = True, region: bool | None = None, *,
                probabilities: bool = False) -> Segmentation:
        """As :meth:`lumbarseg.pipeline.Segmenter.segment`, from class maps: each plane's, and
        the fused classes already on the series' grid; ``with_planes=False`` skips the planes
        (no plane classes or disagreement); ``probabilities`` fetches the per-plane and fused
        probabilities instead (36 times the bytes; the ``js_divergence`` disagreement and
        :attr:`Segmentation.probabilities` need them); ``region`` turns spine-region inference
        on or off (default: the served config's ``spine_region`` setting). A study whose grid is
        over the server's :attr:`limits` is a :class:`StudyError` before anything is sent."""
        def predict(image: np.ndarray):
            max_voxels, max_extent = self.limits
            grid = image.shape[1:]
            if (max_voxels and int(np.prod(grid)) > max_voxels) or (max_extent and max(grid) > max_extent):
                raise StudyError(series.source or series.description or "series",
                                 f"the study's field of view at {self.spacing:g} mm is a {'x'.join(map(str, grid))} grid "
                                 f"({int(np.prod(grid)):,} voxels); the Triton server ({self.url}) takes at most "
                                 f"{max_voxels:,} voxels and {max_extent} per axis (its memory budget)")
            return self.predict(image, with_planes, region, probabilities=probabilities,
                                source_shape=planes.canonical_shape(series))

        return segment_series(series, self.spacing, predict, self.scale)

    def close(self) -> None:
        """Close this thread's connection."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None

    def __enter__(self) -> "TritonSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
