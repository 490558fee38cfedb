"""Auto-segmentation infer tasks: the fused ensemble (``lumbar_spine``) or one plane network.

MONAI Label's :class:`BasicInferTask` runs the request through (``lib.transforms.transforms``
says what each step reads and writes):

* pre-transforms: :class:`LoadStudyd` loads the study with :mod:`lumbarseg.io` (NIfTI file or
  DICOM folder, in patient space);
* the inferer: :class:`AnalyseStudyd`, :func:`lumbarseg.analysis.analyse` on the served model
  (in process or Triton): the study label map (values of :data:`lumbarseg.tissues.STUDY_LABELS`,
  which is also the task's label list) and the findings report;
* post-transforms: the label map's affine where MONAI Label's Writer reads it, the report and
  model version into the result JSON, and for a DICOMweb study the DICOM-SEG and SR files the
  app stores beside it (``lib.findings_store``);
* the writer: MONAI Label's :class:`Writer` (see :meth:`SegmentLumbarSpine.writer`).

Errors reach the client as HTTP errors with a reason, mapped in :meth:`SegmentLumbarSpine.__call__`
only: an unreadable study is 422, an unreachable or unready Triton 503, a broken model
configuration 500. The server stays up either way.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.interfaces.utils.transform import run_transforms
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.writer import Writer

from lumbarseg import tissues
from lumbarseg.config import ConfigError
from lumbarseg.io.study import StudyError
from lumbarseg.triton.server import TritonError

from lib import guards
from lib.backend import ServedModel
from lib.transforms.transforms import (ANALYSIS, STUDY, AnalyseStudyd, DicomFindingsd, LabelGeometryd, LoadStudyd,
                                       ReportResultd)

log = logging.getLogger(__name__)
LABELS = list(tissues.STUDY_LABELS.values())  # value i + 1 is LABELS[i]
RESULT_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")  # result_dtype a client may ask for


class SegmentLumbarSpine(BasicInferTask):
    """``plane=None``: the ensemble of the three planes fused in 3D; else that plane alone."""

    def __init__(self, model: ServedModel, *, plane: str | None = None, description: str):
        super().__init__(path=None, network=None, type=InferType.SEGMENTATION, labels=LABELS, dimension=3,
                         description=description, config={"label_colors": _colors()})
        self.model = model
        self.plane = plane

    def is_valid(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        return {**super().info(), "plane": self.plane or "ensemble", "backend": self.model.backend}

    def __call__(self, request, callbacks=None):
        """:meth:`BasicInferTask.__call__`, its errors as HTTP answers with a reason (a bad
        study's as the datastore gives it, :func:`guards.study_problem`)."""
        try:
            return super().__call__(request, callbacks)
        except StudyError as err:
            raise HTTPException(status_code=422, detail=guards.study_problem(err)) from err
        except TritonError as err:
            raise HTTPException(status_code=503, detail=f"Triton backend unavailable: {err}") from err
        except ConfigError as err:
            log.exception("infer %s: the served model's configuration is broken", self.plane or "ensemble")
            raise HTTPException(status_code=500, detail=f"server configuration fault: {err.reason}") from err

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [LoadStudyd(self.input_key, spacing=lambda: guards.model_spacing(self.model.folder))]

    def inferer(self, data=None) -> AnalyseStudyd:
        return AnalyseStudyd(STUDY, self.model.segment, plane=self.plane, label=self.output_label_key)

    def run_inferer(self, data: dict, convert_to_batch: bool = True, device: str = "cpu") -> dict:
        """:meth:`BasicInferTask.run_inferer`'s branch for an inferer that is a transform. The
        base method first asks MONAI Label for a torch network, which fails for a task without
        a model path: the served model runs in process or on Triton (:class:`ServedModel`)."""
        return run_transforms(data, self.inferer(data), log_prefix="INF", log_name="Inferer")

    def post_transforms(self, data=None) -> Sequence[Callable]:
        post = [LabelGeometryd(self.output_label_key),
                ReportResultd(ANALYSIS, model_version=self.model.version, result=self.output_json_key)]
        if self.plane is None:  # the ensemble's answer goes to the PACS; one plane's is a comparison
            post.append(DicomFindingsd(self.output_label_key, folder=guards.results_folder, result=self.output_json_key))
        return post

    def writer(self, data: dict, extension: str | None = None, dtype: str | None = None) -> tuple[str, dict]:
        """MONAI Label's :class:`Writer`, as :meth:`BasicInferTask.writer` runs it, but for:

        * ``nibabel=True`` (its own option) for NIfTI: ITK would coerce the affine of a sheared
          DICOM stack (gantry tilt) to an orthogonal one; ITK still writes the other formats
          (OHIF's MONAI Label panel asks for an uncompressed uint8 ``.nrrd``);
        * the file then moved into :func:`guards.results_folder`: the Writer names it in the
          process's temp folder, which here is the uploads folder, and a result left there would
          look like an upload (an infer input). Its random name exists there only while written.

        The request's ``result_extension`` (default NIfTI) and ``result_dtype`` are checked first."""
        data["result_extension"] = guards.result_suffix(extension or data.get("result_extension") or ".nii.gz")
        dtype = dtype or data.get("result_dtype")
        if dtype is not None and dtype not in RESULT_DTYPES:
            raise HTTPException(status_code=400, detail=f"result_dtype {str(dtype)[:40]!r}: one of {RESULT_DTYPES}")
        data["result_dtype"] = dtype
        data["result_write_to_file"] = True  # the REST answer carries a file, never an array
        written, result = Writer(label=self.output_label_key, json=self.output_json_key, nibabel=True)(data)
        path = os.path.join(guards.results_folder(), os.path.basename(written))
        os.replace(written, path)  # the results folder is inside the temp folder: a rename
        return path, result


def _colors() -> dict[str, tuple[int, int, int]]:
    return {name: tissues.study_label_color(name) for name in LABELS}
