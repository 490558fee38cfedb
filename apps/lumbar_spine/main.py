"""The lumbar spine MONAI Label app: auto-segmentation for OHIF and 3D Slicer, retraining, and
active learning by plane disagreement.

    monailabel start_server --app apps/lumbar_spine --studies STUDIES \
        [--conf backend local|triton] [--conf triton_url grpc://127.0.0.1:8011] \
        [--conf triton_repository model_repository]

Models (infer and train tasks): ``lumbar_spine`` (the fused ensemble, the default),
``sagittal``, ``coronal``, ``axial``. Strategies: ``disagreement`` and ``epistemic`` (the
highest score of ``plane_disagreement`` or ``epistemic_entropy`` scoring first), ``random``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import monailabel
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.interfaces.app import MONAILabelApp

from lumbarseg import planes
from lumbarseg.triton.client import DEFAULT_URL

from lib.backend import ServedModel
from lib.configs.lumbar_spine import LumbarSpineConfig, PlaneConfig
from lib import findings_store, guards
from lib.activelearning.fair_random import Random
from lib.datastore import CheckedLocalDatastore
from lib.serving import serve

log = logging.getLogger(__name__)
DEFAULT_MODEL = "lumbar_spine"


class LumbarSpineApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict):
        self.uploads = guards.Uploads.install()  # MONAI Label writes uploads to this private folder
        self.model_dir = os.path.join(app_dir, "model")
        repository = conf.get("triton_repository")
        self.served = ServedModel(Path(self.model_dir) / DEFAULT_MODEL, backend=conf.get("backend", "local"),
                                  triton_url=conf.get("triton_url", DEFAULT_URL),
                                  triton_repository=Path(repository) if repository else None,
                                  timeout=float(conf.get("triton_timeout", 300)))
        self.models = {DEFAULT_MODEL: LumbarSpineConfig(), **{p: PlaneConfig(p) for p in planes.PLANES}}
        for name, config in self.models.items():
            config.init(name, self.model_dir, conf, None, model=self.served)
        log.info("lumbar spine app: %s backend, model version %s", self.served.backend, self.served.version)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="Lumbar spine MRI (lumbarseg)",
                         description="Discs, vertebral bodies, dural sac, posterior elements and hernias; levels "
                                     "named from anatomy; findings report per level",
                         version=monailabel.__version__)

    def server_mode(self, mode: bool):
        """MONAI Label calls this in the server process only: refuse an unauthenticated non-loopback
        server, fix token checks, move inference off the event loop (``lib.serving``)."""
        if mode:
            serve(self.conf)
        super().server_mode(mode)

    def init_infers(self) -> dict:
        return {name: config.infer() for name, config in self.models.items()}

    def init_trainers(self) -> dict:
        return {name: config.trainer() for name, config in self.models.items()}

    def init_strategies(self) -> dict:
        return {**self.models[DEFAULT_MODEL].strategy(), "random": Random()}

    def init_scoring_methods(self) -> dict:
        return self.models[DEFAULT_MODEL].scoring_method()

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            datastore = super().init_datastore()  # DICOMweb: labels become DICOM-SEG through dcmqi
            datastore.__class__ = findings_store.reviewed_labels_only(type(datastore))
            return datastore
        return CheckedLocalDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                     auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                     read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
                                     spacing=self._model_spacing)

    def _model_spacing(self) -> float:
        """The served model's grid spacing (mm): an upload's network grid is budgeted at it."""
        return guards.model_spacing(self.served.folder)

    def _load_sessions(self, load=False):
        sessions = super()._load_sessions(load)  # archives unpacked safely (lib.guards.safe_sessions)
        if sessions is not None:
            sessions.__class__ = guards.safe_sessions(type(sessions))
        return sessions

    def infer(self, request: dict, datastore=None) -> dict:
        """Only images of the datastore, the file the client uploaded with this very request, or
        the image of the client's session (``lib.guards.infer_input``): an id naming anything
        else on the server, such as ``../../etc/passwd`` or another file in the temp folder, is
        an unknown image (404), not a path to read. A failed request's upload is deleted."""
        datastore = datastore or self.datastore()
        request = dict(request)
        claimed = guards.infer_input(request, datastore, self.uploads, self.sessions(), self._infers)
        # a study of the PACS is read as DICOM and gets its SEG and findings SR stored beside it
        request["store_dicom"] = isinstance(datastore, DICOMWebDatastore) and "session" not in request
        if request["store_dicom"]:
            request["image"] = findings_store.dicom_series(datastore, request["image"])
        try:
            result = super().infer(request, datastore)
        except BaseException:
            self.uploads.discard(*claimed)  # MONAI Label deletes uploads only after a success
            raise
        if request["store_dicom"]:
            findings_store.store_findings(result, datastore)
        return result

    def next_sample(self, request):
        guards.known(request.get("strategy") or "random", self._strategies, "strategy")
        return super().next_sample(request)

    def train(self, request):
        guards.known(request.get("model"), self._trainers, "model")
        return super().train(guards.training_preset(request))

    def scoring(self, request):
        guards.known(request.get("method"), self._scoring_methods, "scoring method")
        return super().scoring(request)
