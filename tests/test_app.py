"""The MONAI Label app for real: ``monailabel start_server`` on a loopback port with phantom
studies, driven through ``monailabel.client`` and plain HTTP the way OHIF and 3D Slicer's
MONAI Label module do (``/info/``, ``/infer/``, ``/datastore/``, ``/scoring/``,
``/activelearning/``, ``/train/``). Untrained lite networks on a coarse grid keep it cheap; the
tests check behaviour, not segmentation quality."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from lumbarseg import io, phantom, tissues

from conftest import free_port, untrained_weights
from servers import Server

MODELS = {"lumbar_spine", "sagittal", "coronal", "axial"}


@pytest.fixture(scope="module")
def phantom_studies(tmp_path_factory) -> tuple[Path, Path]:
    """Three single-contrast phantoms as a MONAI Label local datastore, and their truth labels."""
    root = tmp_path_factory.mktemp("phantoms")
    (root / "studies").mkdir()
    (root / "truth").mkdir()
    for seed in (71, 72, 73):
        study = phantom.generate(seed, modalities=("t2w",))
        io.save_image(study.primary, root / "studies" / f"{study.subject}.nii.gz")
        io.save_label(study.primary.label, study.primary.affine, root / "truth" / f"{study.subject}.nii.gz")
    return root / "studies", root / "truth"


@pytest.fixture(scope="module")
def studies(phantom_studies) -> Path:
    return phantom_studies[0]


@pytest.fixture(scope="module")
def server(studies, tmp_path_factory):
    weights = untrained_weights(tmp_path_factory.mktemp("weights"), spacing=4.0)
    s = Server(tmp_path_factory.mktemp("app"), studies, {}, weights)
    yield s
    s.stop()


def test_info_lists_models_labels_strategies_and_scoring(server):
    info = MONAILabelClient(server.url).info()
    assert set(info["models"]) == MODELS and next(iter(info["models"])) == "lumbar_spine"
    assert info["labels"] == list(tissues.STUDY_LABELS.values())  # a list, numbered from 1 by OHIF
    assert set(info["trainers"]) == MODELS
    assert {"disagreement", "random", "epistemic"} <= set(info["strategies"])
    assert "plane_disagreement" in info["scoring"]


@pytest.mark.parametrize("model", ["lumbar_spine", "sagittal"])
def test_infer_returns_a_label_map_on_the_image_grid_and_the_findings_report(server, studies, model, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    image_id = sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*.nii.gz"))[0]
    label_file, params = client.infer(model, image_id, {})
    image, label = nib.load(studies / f"{image_id}.nii.gz"), nib.load(label_file)
    assert label.shape == image.shape[:3]
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, *tissues.STUDY_LABELS}
    report = params["report"]
    assert report["schema"].startswith("lumbarseg.findings/") and report["subject"] == image_id
    assert report["source"] == ("model" if model == "lumbar_spine" else "model:sagittal")
    assert params["label_names"] == list(tissues.STUDY_LABELS.values())


def test_bad_study_gets_a_4xx_with_the_reason_and_the_server_stays_up(server, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file at all")
    with broken.open("rb") as f:
        body, boundary = _multipart({"params": "{}"}, {"file": ("broken.nii.gz", f.read())})
    req = urllib.request.Request(server.url + "/infer/lumbar_spine", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=120)
    assert err.value.code == 422
    assert "not a readable NIfTI file" in json.loads(err.value.read())["detail"]
    assert server.get("/info/")[0] == 200


@pytest.mark.parametrize("image_id", ["no_such_study", "../../../../etc/passwd", "/etc/hostname"])
def test_unknown_and_path_traversal_image_ids_are_404(server, image_id):
    status, body = server.post(f"/infer/lumbar_spine?image={urllib.parse.quote(image_id, safe='')}")
    assert status == 404 and "unknown image id" in body["detail"]


def test_a_label_off_its_image_grid_is_refused_and_stored_labels_are_kept(server, phantom_studies, tmp_path):
    studies, truth = phantom_studies
    image_id = sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*.nii.gz"))[0]
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    client.save_label(image_id, str(truth / f"{image_id}.nii.gz"), tag="reviewed")
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7), np.uint8), np.eye(4)), wrong)
    for bad in (wrong, _write(tmp_path / "text.nii.gz", b"not an image")):
        with pytest.raises(Exception) as err:
            client.save_label(image_id, str(bad), tag="reviewed")
        assert "422" in str(err.value)
    label = studies / "labels" / "reviewed" / f"{image_id}.nii.gz"
    assert np.array_equal(nib.load(label).get_fdata(), nib.load(truth / f"{image_id}.nii.gz").get_fdata())
    assert server.get("/info/")[0] == 200
    # a new server process on the same studies (a restart) finds the saved label
    weights = untrained_weights(tmp_path / "weights", spacing=4.0)
    restarted = Server(tmp_path / "restarted", studies, {}, weights)
    try:
        objects = restarted.get("/datastore/?output=all")[1]["objects"]
        assert "reviewed" in objects[image_id]["labels"]
    finally:
        restarted.stop()


def test_concurrent_infer_requests_are_all_answered(server, studies):
    from concurrent.futures import ThreadPoolExecutor

    image_ids = sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*.nii.gz"))
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: server.post(f"/infer/sagittal?image={image_ids[i % 3]}&output=json"),
                                range(20)))
    assert [status for status, _ in results] == [200] * 20
    assert all(body["report"]["subject"] in image_ids for _, body in results)


def test_disagreement_scores_carry_the_model_version_and_rank_the_next_sample(server, studies):
    status, result = server.post("/scoring/plane_disagreement?run_sync=true")
    assert status == 200, result
    datastore = server.get("/datastore/?output=all")[1]
    scores = {image_id: obj["image"]["info"]["plane_disagreement"] for image_id, obj in datastore["objects"].items()}
    assert len(scores) == 3
    assert all(0.0 <= s["score"] <= 1.0 and s["model_version"] == "shipped" for s in scores.values())
    ranked = sorted(scores, key=lambda i: scores[i]["score"], reverse=True)
    first = server.post("/activelearning/disagreement")[1]
    second = server.post("/activelearning/disagreement")[1]
    assert first["id"] == ranked[0]
    assert second["id"] == ranked[1]  # the first was served a moment ago


def test_a_train_request_without_final_labels_is_refused(server):
    # runs before any test saves a final label (tests of a module run in file order)
    served = server.app / "model" / "lumbar_spine"
    before = {p.name: p.read_bytes() for p in served.glob("*.pt")}
    for task in ("lumbar_spine", "axial"):
        status, result = server.post(f"/train/{task}?run_sync=true")
        assert status == 422 and "0 final label(s)" in result["detail"], result
    assert {p.name: p.read_bytes() for p in served.glob("*.pt")} == before
    assert server.get("/info/")[0] == 200


def test_training_on_final_labels_serves_a_new_version_and_a_failed_run_changes_nothing(server, phantom_studies,
                                                                                          tmp_path):
    studies, truth = phantom_studies
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    for label in sorted(truth.glob("*.nii.gz"))[:2]:
        client.save_label(label.name.removesuffix(".nii.gz"), str(label), tag="final")
    served = server.app / "model" / "lumbar_spine"
    before = {p.name: p.read_bytes() for p in served.glob("*.pt")}

    status, result = server.post("/train/sagittal?run_sync=true", {"preset": "nonexistent"})
    assert status == 422 and "no such training preset" in result["detail"]
    assert {p.name: p.read_bytes() for p in served.glob("*.pt")} == before
    assert json.loads((served / "model.json").read_text()).get("version", "shipped") == "shipped"

    status, result = server.post("/train/sagittal?run_sync=true")
    assert status == 200, result
    info = json.loads((served / "model.json").read_text())
    assert info["version"] != "shipped"
    after = {p.name: p.read_bytes() for p in served.glob("*.pt")}
    assert after["sagittal.pt"] != before["sagittal.pt"]
    assert after["fusion.pt"] == before["fusion.pt"] and after["axial.pt"] == before["axial.pt"]
    # the running server serves the new version without a restart
    image_id = sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*.nii.gz"))[-1]
    _, params = client.infer("lumbar_spine", image_id, {})
    assert params["model_version"] == info["version"]


def test_triton_backend_down_gives_503_not_a_hang(studies, tmp_path):
    weights = untrained_weights(tmp_path / "weights", spacing=4.0)
    s = Server(tmp_path / "triton_app", studies, {"backend": "triton", "triton_url": f"http://127.0.0.1:{free_port()}"},
               weights)
    try:
        image_id = sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*.nii.gz"))[0]
        began = time.monotonic()
        status, body = s.post(f"/infer/lumbar_spine?image={image_id}", timeout=120.0)
        assert status == 503 and "cannot connect" in body["detail"]
        assert time.monotonic() - began < 60
        assert s.get("/info/")[0] == 200
    finally:
        s.stop()


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "lumbarsegboundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
