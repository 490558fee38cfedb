"""The app's infer task in process, without a server: MONAI Label's BasicInferTask running
LoadStudyd -> AnalyseStudyd -> post-transforms -> MONAI Label's Writer, the result where the app
keeps results, and the one place errors become HTTP answers. A stand-in model answers with a
phantom's truth, so the label map and report are known; tests/test_app.py runs the real server."""

from __future__ import annotations

import json
import re
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
from fastapi import HTTPException

from lumbarseg import io, phantom, tissues
from lumbarseg.analysis import analyse
from lumbarseg.datasets import tissue_target
from lumbarseg.io.study import StudyError
from lumbarseg.pipeline import Segmentation
from lumbarseg.triton.server import TritonError

from conftest import REPO

sys.path.insert(0, str(REPO / "apps" / "lumbar_spine"))  # the app's ``lib`` package, as MONAI Label loads it

from lib import guards  # noqa: E402
from lib.infers.segment import SegmentLumbarSpine  # noqa: E402
from lib.transforms.transforms import LoadStudyd  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:builtin type (SwigPy|swigvarlink):DeprecationWarning")  # ITK's import
LPS = np.diag([-1.0, -1.0, 1.0])


class TruthModel:
    """Stands in for :class:`lib.backend.ServedModel`: "segments" the phantom with its truth."""

    backend = "local"
    version = "test-7"

    def __init__(self, folder, classes: np.ndarray, fail: Exception | None = None):
        self.folder = folder
        self.classes = classes
        self.fail = fail

    def segment(self, series, *, with_planes: bool = True) -> Segmentation:
        if self.fail is not None:
            raise self.fail
        assert series.shape == self.classes.shape
        return Segmentation(self.classes, {}, {}, np.zeros(0))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small phantom as a NIfTI upload, a model folder (its model.json) and the label map and
    report the task must return for it."""
    root = tmp_path_factory.mktemp("infer_task")
    study = phantom.generate(731, spacing=(2.0, 1.4, 1.4), extra_discs=0)
    image = io.save_image(study.primary, root / "study.nii.gz")
    models = root / "model"
    models.mkdir()
    shutil.copy(REPO / "weights" / "lite" / "model.json", models / "model.json")
    classes = tissue_target(study.primary.label, study.structures)
    expected = analyse(io.load_study(image), TruthModel(models, classes).segment)
    return {"image": str(image), "models": models, "classes": classes, "expected": expected,
            "shape": study.primary.shape}


@pytest.fixture
def results(tmp_path, monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()
    monkeypatch.setattr(guards, "results_folder", lambda: str(folder))
    return folder


def task_for(case, fail: Exception | None = None, models=None) -> SegmentLumbarSpine:
    return SegmentLumbarSpine(TruthModel(models or case["models"], case["classes"], fail), description="test")


def test_load_studyd_loads_a_study_and_raises_study_error_not_http(case, tmp_path):
    data = LoadStudyd("image")({"image": case["image"], "other": 1})
    assert data["study"].primary.shape == case["shape"] and data["other"] == 1
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file at all")
    with pytest.raises(StudyError, match="not a readable NIfTI file"):
        LoadStudyd("image")({"image": str(broken)})


def test_nifti_result_in_the_results_folder_with_the_report_and_model_version(case, results):
    path, result = task_for(case)({"image": case["image"]})
    assert path.startswith(str(results) + "/") and path.endswith(".nii.gz")
    label, image = nib.load(path), nib.load(case["image"])
    assert label.get_data_dtype() == np.uint8 and label.shape == image.shape[:3]
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert np.array_equal(np.asarray(label.dataobj), case["expected"].label)
    assert case["expected"].label.any()
    assert json.dumps(result["report"], sort_keys=True) == json.dumps(case["expected"].report, sort_keys=True)
    assert result["model_version"] == "test-7" and result["report"]["source"] == "model"
    assert result["label_names"] == list(tissues.STUDY_LABELS.values()) and "latencies" in result


def _nrrd(body: bytes) -> tuple[dict[str, str], np.ndarray]:
    """As tests/test_viewer.py parses what OHIF gets: an uncompressed uint8 NRRD."""
    head, _, data = body.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in head.decode().splitlines()[1:] if ": " in line)
    assert fields["encoding"] == "raw" and fields["type"] in ("unsigned char", "uint8", "uchar"), fields
    return fields, np.frombuffer(data, np.uint8)


def test_ohif_gets_an_uncompressed_uint8_nrrd_in_patient_space(case, results):
    request = {"image": case["image"], "result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False}
    path, _ = task_for(case)(request)
    fields, voxels = _nrrd(open(path, "rb").read())
    affine, label = nib.load(case["image"]).affine, case["expected"].label
    assert [int(v) for v in fields["sizes"].split()] == list(label.shape)
    origin = [float(v) for v in re.findall(r"[-\d.e+]+", fields["space origin"])]
    np.testing.assert_allclose(origin, LPS @ affine[:3, 3], atol=1e-4)
    axes = [[float(v) for v in re.findall(r"[-\d.e+]+", d)] for d in re.findall(r"\(([^)]*)\)", fields["space directions"])]
    np.testing.assert_allclose(axes, (LPS @ affine[:3, :3]).T, atol=1e-4)  # one row per voxel axis
    assert np.array_equal(voxels.reshape(label.shape, order="F"), label)


def _refused(task, request) -> HTTPException:
    with pytest.raises(HTTPException) as err:
        task(request)
    return err.value


def test_errors_become_http_answers_with_a_reason(case, results, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file at all")
    err = _refused(task_for(case), {"image": str(broken)})
    assert err.status_code == 422 and err.detail.startswith("not a readable NIfTI file")  # the reason, as the datastore's

    err = _refused(task_for(case, TritonError("grpc://127.0.0.1:1: cannot connect")), {"image": case["image"]})
    assert err.status_code == 503 and err.detail == "Triton backend unavailable: grpc://127.0.0.1:1: cannot connect"

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text(json.dumps({"preset": "lite"}))  # no spacing_mm
    err = _refused(task_for(case, models=tmp_path / "model"), {"image": case["image"]})
    assert err.status_code == 500 and err.detail.startswith("server configuration fault: ")

    for bad in ({"result_extension": "/../x.sh"}, {"result_dtype": "object"}):
        err = _refused(task_for(case), {"image": case["image"], **bad})
        assert err.status_code == 400 and next(iter(bad)) in err.detail
    assert list(results.iterdir()) == []
