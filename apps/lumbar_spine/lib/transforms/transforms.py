"""The infer task's steps as MONAI dictionary transforms, so that MONAI Label's
:class:`BasicInferTask` runs them (``lib.infers.segment``). What each reads and writes:

    pre      LoadStudyd      image (NIfTI file or DICOM folder)  -> study
    inferer  AnalyseStudyd   study -> pred (the label map), analysis
    post     LabelGeometryd  analysis's affine -> pred_meta_dict["affine"]
    post     ReportResultd   analysis's report, the model version -> result
    post     DicomFindingsd  with store_dicom: pred, study, report -> DICOM-SEG and SR files, result["dicom"]

MONAI Label's :class:`~monailabel.transform.writer.Writer` then saves ``pred`` with the affine
of ``pred_meta_dict`` and returns ``result`` as the result JSON. Bad input raises
:class:`lumbarseg.io.study.StudyError` like everywhere else in lumbarseg; the task alone turns
errors into HTTP answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import PostFix

from lumbarseg import io
from lumbarseg.analysis import Analysis, analyse
from lumbarseg.io.study import Series, StudyError
from lumbarseg.pipeline import Segmentation

STUDY = "study"  # lumbarseg.io.study.Study
ANALYSIS = "analysis"  # lumbarseg.analysis.Analysis


class LoadStudyd(MapTransform):
    """``data[key]`` (a NIfTI path or a DICOM folder) -> ``data["study"]`` (:class:`Study`),
    refused from its header first when over the memory budgets (:func:`lumbarseg.io.check_study`,
    the network grid at ``spacing()`` mm: read per study, a published model may change it)."""

    def __init__(self, keys: KeysCollection, spacing: Callable[[], float] | None = None):
        super().__init__(keys)
        self.spacing = spacing

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            io.check_study(d[key], self.spacing() if self.spacing else None)
            d[STUDY] = io.load_study(d[key])
        return d


class AnalyseStudyd(MapTransform):
    """The inferer: :func:`lumbarseg.analysis.analyse` of ``data[key]`` (a :class:`Study`) with
    ``segment`` (the served networks, in process or on Triton) -> ``data[label]``, the study label
    map on the primary series' grid, and ``data["analysis"]`` (its affine and the report).
    ``plane``: that plane network's answer instead of the fused one."""

    def __init__(self, keys: KeysCollection, segment: Callable[[Series], Segmentation], *,
                 plane: str | None = None, label: str = "pred"):
        super().__init__(keys)
        self.segment = segment
        self.plane = plane
        self.label = label

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            analysis = analyse(d[key], self.segment, plane=self.plane)
            d[self.label], d[ANALYSIS] = analysis.label, analysis
        return d


class LabelGeometryd(MapTransform):
    """``data["analysis"]``'s affine -> ``data[f"{key}_meta_dict"]["affine"]``: where MONAI
    Label's Writer reads a label map's geometry (MONAI Label's own ``Restored`` leaves it there)."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        analysis: Analysis = d[ANALYSIS]
        for key in self.key_iterator(d):
            d[PostFix.meta(key)] = {**d.get(PostFix.meta(key), {}), "affine": analysis.affine}
        return d


class ReportResultd(MapTransform):
    """``data[key]``'s findings report (an :class:`Analysis`) -> ``data[result]["report"]``, with
    the served ``model_version`` beside it (clients tell a result of an older model by it): the
    result JSON MONAI Label's Writer returns."""

    def __init__(self, keys: KeysCollection, *, model_version: str, result: str = "result"):
        super().__init__(keys)
        self.model_version = model_version
        self.result = result

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.result] = {**d.get(self.result, {}), "report": d[key].report, "model_version": self.model_version}
        return d


class DicomFindingsd(MapTransform):
    """When ``data["store_dicom"]`` (the app sets it for a study of a DICOMweb datastore):
    ``data[key]``, the label map, as a DICOM-SEG of the study's primary series and the findings
    report as a DICOM SR referencing it (:mod:`lumbarseg.io.sr`), written into ``folder()``;
    ``data[result]["dicom"]`` holds their paths for the app to store beside the study, or the
    reason there are none (a study not read from DICOM, a report that names no level)."""

    def __init__(self, keys: KeysCollection, *, folder: Callable[[], str], result: str = "result"):
        super().__init__(keys)
        self.folder = folder
        self.result = result

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not d.get("store_dicom"):
            return d
        from lumbarseg.io.sr import write_findings_dicom

        primary: Series = d[STUDY].primary
        for key in self.key_iterator(d):
            stem = Path(self.folder()) / f"{primary.meta.get('series_uids', ['study'])[0]}"
            try:
                seg, sr = write_findings_dicom(d[key], d[ANALYSIS].report, primary, f"{stem}_seg.dcm", f"{stem}_sr.dcm")
                dicom = {"seg": str(seg), "sr": str(sr)}
            except StudyError as err:
                Path(f"{stem}_seg.dcm").unlink(missing_ok=True)  # a SEG whose SR failed is not stored either
                dicom = {"error": err.reason}
            d[self.result] = {**d.get(self.result, {}), "dicom": dicom}
        return d
