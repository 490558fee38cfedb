"""The served model: where inference runs (in process or on Triton) and how a retrained model
replaces it without a restart.

The app keeps its served weights in ``<app>/model/lumbar_spine/`` (a lumbarseg weights
folder, seeded from the shipped ``weights/lite`` on first start). :meth:`ServedModel.publish`
swaps in a new folder with two renames, so a reader sees the old model or the new one, never
half of each; with the Triton backend the new weights are first exported as the next version
of the repository's models and loaded through Triton's model control, and only then swapped.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import replace
from pathlib import Path

from lumbarseg.io.study import Series
from lumbarseg.pipeline import MODEL_FILE, ModelInfo, Segmentation, Segmenter

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[3]
SHIPPED_WEIGHTS = REPO / "weights" / "lite"
BACKENDS = ("local", "triton")


class ServedModel:
    """The model every infer, scoring and train task of the app uses; thread-safe."""

    def __init__(self, folder: Path, *, backend: str = "local", triton_url: str | None = None,
                 triton_repository: Path | None = None, timeout: float = 300.0):
        if backend not in BACKENDS:
            raise ValueError(f"--conf backend {backend!r}: expected one of {BACKENDS}")
        self.folder = Path(folder)
        self.backend = backend
        self.triton_url = triton_url
        self.triton_repository = triton_repository
        self.timeout = timeout
        self._lock = threading.Lock()
        self._local: tuple[str, Segmenter] | None = None  # (version, loaded networks)
        if not (self.folder / MODEL_FILE).is_file():
            if not (SHIPPED_WEIGHTS / MODEL_FILE).is_file():
                raise FileNotFoundError(f"{self.folder}: no model, and no shipped weights at {SHIPPED_WEIGHTS}")
            shutil.copytree(SHIPPED_WEIGHTS, self.folder, dirs_exist_ok=True)

    @property
    def version(self) -> str:
        """Changes whenever a new model is published (scores computed with another are stale)."""
        return ModelInfo.load(self.folder).version

    def segmenter(self) -> Segmenter:
        """The in-process networks of the current version (reloaded after a publish)."""
        with self._lock:
            version = self.version
            if self._local is None or self._local[0] != version:
                self._local = (version, Segmenter.load(self.folder))
            return self._local[1]

    def segment(self, series: Series, *, with_planes: bool = True, probabilities: bool = False) -> Segmentation:
        """``probabilities``: Triton sends the per-plane and fused probabilities, not only
        class maps (in process they are always there)."""
        if self.backend == "local":
            return self.segmenter().segment(series)
        from lumbarseg.triton.client import TritonSegmenter

        with TritonSegmenter(self.triton_url, timeout=self.timeout) as client:
            return client.segment(series, with_planes=with_planes, probabilities=probabilities)

    def publish(self, weights: Path, version: str) -> None:
        """Serve ``weights`` (a finished weights folder) as ``version`` from now on."""
        replace(ModelInfo.load(weights), version=version).save(weights)
        Segmenter.load(weights)  # a folder that does not load is never published
        if self.backend == "triton":
            self._publish_to_triton(Path(weights))
        with self._lock:
            staged = self.folder.with_name(self.folder.name + ".new")
            previous = self.folder.with_name(self.folder.name + ".previous")
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(weights, staged)
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(self.folder, previous)
            os.replace(staged, self.folder)
        log.info("serving model version %s (%s backend)", version, self.backend)

    def _publish_to_triton(self, weights: Path) -> None:
        """Export as the next version of every model in the repository, then (re)load them; the
        server keeps serving the old version until the new one has loaded."""
        from lumbarseg.triton.client import TritonSegmenter
        from lumbarseg.triton.export import export, next_version

        if self.triton_repository is None:
            raise ValueError("--conf triton_repository is needed to publish a retrained model to Triton")
        report = export(weights, self.triton_repository, version=next_version(self.triton_repository))
        with TritonSegmenter(self.triton_url, timeout=self.timeout) as client:
            client.reload(report.models)
