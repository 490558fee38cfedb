"""Auto-segmentation infer tasks: the fused ensemble (``lumbar_spine``) or one plane network.

MONAI Label's :class:`BasicInferTask` runs pre-transforms, the inferer, post-transforms and
the writer; here the pre-transform loads the study with :mod:`lumbarseg.io` (NIfTI file or
DICOM folder, in patient space), the inferer is :func:`lumbarseg.analysis.analyse` on the
served model (in process or Triton), and the writer saves the study label map (values of
:data:`lumbarseg.tissues.STUDY_LABELS`, which is also the task's label list) and returns the
findings report in the result JSON under ``report``.

Errors reach the client as HTTP errors with a reason: an unreadable study is 422, an
unreachable or unready Triton 503. The server stays up either way.
"""

from __future__ import annotations

import tempfile
from typing import Any, Callable, Sequence

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lumbarseg import io, tissues
from lumbarseg.analysis import analyse
from lumbarseg.io.study import StudyError
from lumbarseg.triton.server import TritonError

from lib import guards
from lib.backend import ServedModel

LABELS = list(tissues.STUDY_LABELS.values())  # value i + 1 is LABELS[i]


class LoadStudyd:
    """``data["image"]`` (a NIfTI path or a DICOM folder) -> ``data["study"]`` (:class:`Study`),
    after the memory budgets checked from its header (:func:`lumbarseg.io.check_study`, with the
    network grid at ``spacing()`` mm)."""

    def __init__(self, spacing: Callable[[], float] | None = None):
        self.spacing = spacing

    def __call__(self, data: dict) -> dict:
        try:
            io.check_study(data["image"], self.spacing() if self.spacing else None)
            data["study"] = io.load_study(data["image"])
        except StudyError as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
        return data


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

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [LoadStudyd(lambda: guards.model_spacing(self.model.folder))]

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def run_inferer(self, data: dict, convert_to_batch: bool = True, device: str = "cpu") -> dict:
        try:
            analysis = analyse(data["study"], lambda s: self.model.segment(s, with_planes=True), plane=self.plane)
        except TritonError as err:
            raise HTTPException(status_code=503, detail=f"Triton backend unavailable: {err}") from err
        except StudyError as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
        data["pred"], data["affine"], data["report"] = analysis.label, analysis.affine, analysis.report
        return data

    def writer(self, data: dict, extension: str | None = None, dtype: str | None = None) -> tuple[str, dict]:
        # The request's result_extension: OHIF's MONAI Label panel asks for ".nrrd" (uncompressed)
        # and parses NRRD; other clients get NIfTI unless they ask.
        suffix = guards.result_suffix(extension or data.get("result_extension") or ".nii.gz")
        path = tempfile.NamedTemporaryFile(suffix=suffix, delete=False, dir=guards.results_folder()).name
        if suffix in (".nii.gz", ".nii"):
            io.save_label(data["pred"], data["affine"], path)
        else:
            _save_itk(data["pred"], data["affine"], path, dtype=data.get("result_dtype") or "uint8",
                      compress=bool(data.get("result_compress", True)))
        return path, {"report": data["report"], "model_version": self.model.version}


def _save_itk(label, affine, path: str, *, dtype: str, compress: bool) -> None:
    """The label map in any format SimpleITK writes (NRRD, ...): same voxel order and geometry as
    the NIfTI, voxels as ``dtype`` (OHIF reads the NRRD's bytes as uint8)."""
    import SimpleITK as sitk

    pixel = {"uint8": sitk.sitkUInt8, "uint16": sitk.sitkUInt16, "int16": sitk.sitkInt16,
             "int32": sitk.sitkInt32, "float32": sitk.sitkFloat32}.get(str(dtype), sitk.sitkUInt8)
    with tempfile.TemporaryDirectory() as tmp:
        nifti = io.save_label(label, affine, f"{tmp}/label.nii.gz")
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(nifti)), pixel), path, useCompression=compress)


def _colors() -> dict[str, tuple[int, int, int]]:
    return {name: tissues.study_label_color(name) for name in LABELS}
