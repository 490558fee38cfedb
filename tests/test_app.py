"""The MONAI Label app for real: ``monailabel start_server`` on a loopback port with phantom
studies, driven through ``monailabel.client`` and plain HTTP the way OHIF and 3D Slicer's
MONAI Label module do (``/info/``, ``/infer/``, ``/datastore/``, ``/scoring/``,
``/activelearning/``, ``/train/``). Untrained lite networks on a coarse grid keep it cheap; the
tests check behaviour, not segmentation quality."""

from __future__ import annotations

import json
import math
import os
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

from conftest import free_port, security_probe, untrained_weights
from servers import Server, http_json, multipart

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
    """The app on the phantoms; ``server.tmp`` is its temp folder (``TMPDIR``), where MONAI Label
    writes uploads."""
    weights = untrained_weights(tmp_path_factory.mktemp("weights"), spacing=4.0)
    root = tmp_path_factory.mktemp("app")
    (root / "tmp").mkdir()
    s = Server(root, studies, {}, weights,
               env={"TMPDIR": str(root / "tmp"), "MONAI_LABEL_SESSION_PATH": str(root / "sessions")})
    s.tmp = root / "tmp"
    yield s
    s.stop()


def test_info_lists_models_labels_strategies_and_scoring(server):
    info = MONAILabelClient(server.url).info()
    assert set(info["models"]) == MODELS and next(iter(info["models"])) == "lumbar_spine"
    assert info["labels"] == list(tissues.STUDY_LABELS.values())  # a list, numbered from 1 by OHIF
    assert set(info["trainers"]) == MODELS
    assert {"disagreement", "random", "epistemic"} <= set(info["strategies"])
    assert {"plane_disagreement", "epistemic_entropy"} <= set(info["scoring"])


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
        body, content_type = multipart({"params": "{}"}, {"file": ("broken.nii.gz", f.read())})
    req = urllib.request.Request(server.url + "/infer/lumbar_spine", data=body, method="POST",
                                 headers={"Content-Type": content_type})
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


def _scored(server, method: str) -> dict[str, dict]:
    """Run a scoring method over the datastore; the entry it stored per study."""
    status, result = server.post(f"/scoring/{method}?run_sync=true")
    assert status == 200, result
    datastore = server.get("/datastore/?output=all")[1]
    return {image_id: obj["image"]["info"][method] for image_id, obj in datastore["objects"].items()}


def test_disagreement_scores_carry_the_model_version_and_rank_the_next_sample(server, studies):
    scores = _scored(server, "plane_disagreement")
    assert len(scores) == 3
    assert all(0.0 <= s["score"] <= 1.0 and s["model_version"] == "shipped" for s in scores.values())
    ranked = sorted(scores, key=lambda i: scores[i]["score"], reverse=True)
    first = server.post("/activelearning/disagreement")[1]
    second = server.post("/activelearning/disagreement")[1]
    assert first["id"] == ranked[0]
    assert second["id"] == ranked[1]  # the first was served a moment ago


def test_epistemic_scores_are_mc_dropout_entropies_and_rank_the_next_sample(server, studies):
    scores = _scored(server, "epistemic_entropy")
    assert len(scores) == 3
    # entropy in bits of 9 classes (untrained networks: close to log2(9), never above)
    assert all(0.0 < s["score"] <= math.log2(len(tissues.TISSUE_NAMES)) and s["samples"] == 8 for s in scores.values())
    assert server.post("/scoring/epistemic_entropy?run_sync=true")[1]["up_to_date"] == 3
    first = server.post("/activelearning/epistemic")[1]
    assert first["epistemic_entropy"]["score"] == max(s["score"] for s in scores.values())
    assert server.post("/activelearning/epistemic")[1]["id"] != first["id"]  # served a moment ago


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
    s = Server(tmp_path / "triton_app", studies, {"backend": "triton", "triton_url": f"grpc://127.0.0.1:{free_port()}"},
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


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- hostile clients (issue 16): names not paths, own uploads only, budgets, 4xx not 500 ---------
# These run last in the module: some add to or break the shared datastore on purpose, and clean up.

def _send(server, method: str, path: str, files: dict | None = None, fields: dict | None = None,
          timeout: float = 300) -> tuple[int, dict]:
    """A multipart request the way MONAI Label's clients send uploads; (status, JSON body)."""
    body, content_type = multipart(fields or {}, files or {})
    return http_json(server.url + path, method, body, {"Content-Type": content_type}, timeout)


def _nifti(path: Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> bytes:
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), path)
    return path.read_bytes()


def _gzip_bomb(shape: tuple[int, ...], dtype=np.uint8, extra: int = 0) -> bytes:
    """A valid .nii.gz declaring ``shape``, all voxels zero, followed by ``extra`` zero bytes: gzip
    members of 1 MiB of zeros repeated, so a few hundred KB inflate to the full size."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    head = header.binaryblock + b"\0" * 4
    chunk = 2**20
    length = int(np.prod(shape)) * np.dtype(dtype).itemsize + extra  # zero bytes after the header
    first = min(length, chunk)
    members = [gzip.compress(head + b"\0" * first)]
    length -= first
    members += [gzip.compress(b"\0" * chunk)] * (length // chunk)
    if length % chunk:
        members.append(gzip.compress(b"\0" * (length % chunk)))
    return b"".join(members)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.nii*")) if p.is_file()}


def _first_id(studies: Path) -> str:
    return sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*.nii.gz"))[0]


def test_datastore_writes_stay_inside_the_datastore(server, phantom_studies, tmp_path):
    """Item 1: an image id or label tag naming a path outside the datastore is refused (4xx),
    nothing is written outside it (nor through a symbolic link), stored files are intact."""
    studies, truth = phantom_studies
    image_id = _first_id(studies)
    stored = _files(studies)
    outside = tmp_path / "outside"
    outside.mkdir()
    image = (studies / f"{image_id}.nii.gz").read_bytes()
    label = (truth / f"{image_id}.nii.gz").read_bytes()
    (studies / "labels").mkdir(exist_ok=True)
    (studies / "labels" / "linked").symlink_to(outside, target_is_directory=True)
    try:
        for query, upload in [
            ("image=../escape_img", ("p.sh", b"#!/bin/sh\necho pwned\n")),
            ("image=../escape_img", ("x.nii.gz", image)),
            ("image=..%2F..%2Fescape_img2", ("x.nii.gz", image)),
            (f"image={urllib.parse.quote(str(outside / 'escape_abs'), safe='')}", ("x.nii.gz", image)),
            ("image=%2E%2E", ("x.nii.gz", image)),
        ]:
            status, body = _send(server, "PUT", f"/datastore/image?{query}", {"file": upload})
            assert 400 <= status < 500, (query, status, body)
        for tag in ["../../escape_tag", "..%2F..%2Fescape_tag", "linked", "..", "/tmp"]:
            status, body = _send(server, "PUT", f"/datastore/label?image={image_id}&tag={tag}",
                                 {"label": ("l.nii.gz", label)})
            assert 400 <= status < 500, (tag, status, body)
        status, body = _send(server, "PUT", "/datastore/label?image=..%2F..%2Fescape&tag=final",
                             {"label": ("l.nii.gz", label)})
        assert status == 404, body
        escaped = [p for p in studies.parent.parent.rglob("escape*")] + list(outside.iterdir())
        assert escaped == []
        assert _files(studies) == stored
        assert server.get("/info/")[0] == 200
    finally:
        (studies / "labels" / "linked").unlink()


def test_infer_reads_only_the_upload_of_its_own_request(server, studies):
    """Item 4: a path in the server's temp folder (a file, a symbolic link, a hard link, a file in
    the upload folder) is an unknown image (404); an upload of the request itself is segmented."""
    source = studies / f"{_first_id(studies)}.nii.gz"
    planted = [server.tmp / "other.nii.gz", server.tmp / "link.nii.gz"]
    planted[0].write_bytes(source.read_bytes())
    planted[1].symlink_to(source)
    for folder in server.tmp.glob("lumbarseg-uploads-*"):  # the app's private upload folder
        (folder / "other.nii.gz").write_bytes(source.read_bytes())
        (folder / "tmplink0000.nii.gz").symlink_to(source)
        os.link(planted[0], folder / "tmphard0000.nii.gz")
        planted += [folder / "other.nii.gz", folder / "tmplink0000.nii.gz", folder / "tmphard0000.nii.gz"]
    try:
        for path in planted:
            status, body = server.post(f"/infer/lumbar_spine?image={urllib.parse.quote(str(path), safe='')}"
                                       "&output=json")
            assert status == 404 and "unknown image id" in body["detail"], (path, status, body)
            # the request's params override its image (MONAI Label merges them last)
            status, body = _send(server, "POST", f"/infer/lumbar_spine?image={_first_id(studies)}&output=json",
                                 fields={"params": json.dumps({"image": str(path)})})
            assert status == 404, (path, status, body)
        status, body = _send(server, "POST", f"/infer/lumbar_spine?image={_first_id(studies)}&output=json",
                             fields={"params": json.dumps({"image": [str(planted[0])]})})
        assert status == 400, body
        status, body = _send(server, "POST", "/infer/sagittal?output=json",
                             {"file": ("mine.nii.gz", source.read_bytes())}, {"params": "{}"})
        assert status == 200 and body["report"]["schema"].startswith("lumbarseg.findings/"), body
        assert server.get("/info/")[0] == 200
    finally:
        for path in planted:
            path.unlink()


def _leftovers(server, before: set[Path], wait: float = 10.0) -> list[Path]:
    deadline = time.monotonic() + wait
    while True:
        left = [p for p in server.tmp.rglob("*") if p.is_file() and p not in before]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def test_refused_uploads_are_deleted(server, phantom_studies, tmp_path):
    """Item 8: every refused upload (infer, datastore image, datastore label) leaves nothing in
    the server's temp folder."""
    studies, truth = phantom_studies
    image_id = _first_id(studies)
    before = {p for p in server.tmp.rglob("*") if p.is_file()}
    garbage = ("g.nii.gz", b"not a nifti file at all" * 1000)
    wrong = ("w.nii.gz", _nifti(tmp_path / "w.nii.gz", np.ones((5, 6, 7), np.uint8)))
    label = ("l.nii.gz", (truth / f"{image_id}.nii.gz").read_bytes())
    status, body = _send(server, "POST", "/infer/lumbar_spine?output=json", {"file": garbage}, {"params": "{}"})
    assert status == 422, body
    assert _leftovers(server, before) == []
    for method, path, files, expected in [
        ("POST", "/infer/no_such_model?output=json", {"file": label}, 404),
        ("PUT", "/datastore/image?image=garbage_study", {"file": garbage}, 422),
        ("PUT", "/datastore/image?image=shell", {"file": ("p.sh", b"#!/bin/sh\n")}, 415),
        ("PUT", "/datastore/image?image=..%2Fx", {"file": label}, 400),
        ("PUT", f"/datastore/label?image={image_id}&tag=reviewed", {"label": wrong}, 422),
        ("PUT", f"/datastore/label?image={image_id}&tag=reviewed", {"label": garbage}, 422),
        ("PUT", "/datastore/label?image=no_such_image&tag=reviewed", {"label": label}, 404),
        ("PUT", f"/datastore/label?image={image_id}&tag=..%2Fx", {"label": label}, 400),
    ]:
        fields = {"params": "{}"} if method == "POST" else {}
        status, body = _send(server, method, path, files, fields)
        assert status == expected, (path, status, body)
    assert _leftovers(server, before) == []
    assert server.get("/info/")[0] == 200


def _group_memory(pid: int) -> tuple[list[int], int]:
    """The processes of the server's session (``start_new_session``) and their total RSS (kB)."""
    pids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == pid:  # process group
            pids.append(int(stat_file.parent.name))
    return pids, sum(_status(p, "VmRSS") for p in pids)


def _status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_memory_budgets_refuse_from_the_header_before_reading(server, studies, tmp_path):
    """Item 9: a 10 m voxel, a grid too large at the model spacing, a header over the voxel
    budget, a gzip bomb: 422 with the reason, and the server's memory does not grow by what the
    header declares (peak RSS reset before, read after)."""
    image_id = _first_id(studies)
    cases = [
        ("huge_spacing.nii.gz", _nifti(tmp_path / "a.nii.gz", np.zeros((30, 30, 30), np.float32), (1e4,) * 3),
         "voxel size"),
        ("huge_grid.nii.gz", _nifti(tmp_path / "b.nii.gz", np.zeros((128, 128, 128), np.float32), (9.0,) * 3),
         "grid"),
        ("huge_header.nii.gz", _gzip_bomb((512, 512, 400)), "over the limit"),
        ("bomb.nii.gz", _gzip_bomb((16, 16, 16), np.float32, extra=2**29), "gzip"),
    ]
    pids, _ = _group_memory(server.process.pid)
    for name, data, reason in cases:
        for pid in pids:  # reset the peak RSS (VmHWM) of every server process
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        rss = {pid: _status(pid, "VmRSS") for pid in pids}
        status, body = _send(server, "POST", "/infer/lumbar_spine?output=json", {"file": (name, data)},
                             {"params": "{}"})
        assert status == 422 and reason in body["detail"], (name, status, body)
        grown = max(_status(pid, "VmHWM") - rss[pid] for pid in pids)
        assert grown < 100_000, f"{name}: server peak memory grew by {grown} kB"
    # a label whose header declares 268 M voxels (a 0.3 MB upload): refused from its header
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    rss = {pid: _status(pid, "VmRSS") for pid in pids}
    status, body = _send(server, "PUT", f"/datastore/label?image={image_id}&tag=reviewed",
                         {"label": ("bomb.nii.gz", _gzip_bomb((512, 512, 400)))})
    assert status == 422 and "does not match" in body["detail"], body
    grown = max(_status(pid, "VmHWM") - rss[pid] for pid in pids)
    assert grown < 50_000, f"label bomb: server peak memory grew by {grown} kB"
    assert server.get("/info/")[0] == 200


def test_bad_requests_get_a_4xx_with_the_reason_not_a_500(server, studies, tmp_path):
    """Item 10: unknown strategy, model, scoring method; a preset naming a server file (its
    content never echoed); a garbage upload (refused, never offered by active learning); a label
    for a garbage image already in the studies folder; a session's image is segmented."""
    for path in ["/activelearning/no_such_strategy", "/scoring/no_such_method?run_sync=true",
                 "/train/no_such_model?run_sync=true"]:
        status, body = server.request("POST", path)
        assert status == 404 and b"unknown" in body, (path, status, body)
    for preset in ["/etc/passwd", "../models/lite", "../../pyproject", "%2Fetc%2Fpasswd", "finetune/../smoke"]:
        status, body = server.post("/train/sagittal?run_sync=true", {"preset": preset})
        assert status == 422 and "no such training preset" in body["detail"], (preset, body)
        assert "root:" not in body["detail"] and "preset keys" not in body["detail"]

    garbage = ("g.nii.gz", b"\x1f\x8b" + b"garbage" * 100)
    status, body = _send(server, "PUT", "/datastore/image?image=garbage_upload", {"file": garbage})
    assert status == 422, body
    assert "garbage_upload" not in server.get("/datastore/?output=all")[1]["objects"]
    for _ in range(5):
        assert server.post("/activelearning/random")[1].get("id") != "garbage_upload"

    # a garbage file put straight into the studies folder: a label for it is a 422, not a 500
    image = studies / f"{_first_id(studies)}.nii.gz"
    (studies / "broken_on_disk.nii.gz").write_bytes(b"not an image")
    try:
        deadline = time.monotonic() + 30
        while "broken_on_disk" not in server.get("/datastore/?output=all")[1]["objects"]:
            assert time.monotonic() < deadline, "the datastore did not pick up the file"
            time.sleep(1)
        status, body = _send(server, "PUT", "/datastore/label?image=broken_on_disk&tag=final",
                             {"label": ("l.nii.gz", _nifti(tmp_path / "l.nii.gz", np.zeros((4, 4, 4), np.uint8)))})
        assert status == 422 and "not a readable study" in body["detail"], body
    finally:
        (studies / "broken_on_disk.nii.gz").unlink()

    # a valid upload is stored (and removed again)
    status, body = _send(server, "PUT", "/datastore/image?image=uploaded_ok", {"file": ("u.nii.gz", image.read_bytes())})
    assert status == 200 and body["image"] == "uploaded_ok", body
    status, body = _send(server, "PUT", "/datastore/image?image=uploaded_ok", {"file": ("u.nii.gz", image.read_bytes())})
    assert status == 409, body
    assert server.request("DELETE", "/datastore/image?id=uploaded_ok")[0] == 200

    # MONAI Label sessions: PUT /session/ then infer on the session
    status, body = _send(server, "PUT", "/session/", {"files": ("s.nii.gz", image.read_bytes())})
    assert status == 200, body
    status, body = server.post(f"/infer/sagittal?session_id={body['session_id']}&output=json")
    assert status == 200 and "report" in body, body
    assert server.get("/info/")[0] == 200


# --- request bounds and the security probe (issue 16) ----------------------------------------------

def _chunked(url: str, target: str, body: bytes, content_type: str, timeout: float = 60) -> tuple[int | None, bytes]:
    """POST ``body`` with ``Transfer-Encoding: chunked`` (no Content-Length), in 64 KiB chunks."""
    import http.client

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest("POST", target)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for i in range(0, len(body), 1 << 16):
                chunk = body[i:i + (1 << 16)]
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-body: read the answer
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_oversized_requests_are_refused_before_the_body_is_read(server):
    """A body without a file over 1 MiB, declared or chunked, and a body with a file over the
    upload budget are 413 with the bound; a long URL is 414, too many headers 431; the server
    does not wait for (or read) a declared body it refuses."""
    p = security_probe()
    json_type = {"Content-Type": "application/json"}
    big = b'{"a": "' + b"x" * (2 << 20) + b'"}'
    a = p.request(server.url, "POST", "/activelearning/random", big, json_type, timeout=30)
    assert a.status == 413 and "at most 1 MiB" in a.reason, a
    status, body = _chunked(server.url, "/activelearning/random", big, "application/json")
    assert status == 413 and b"at most 1 MiB" in body, (status, body[:300])
    assert p.request(server.url, "POST", "/activelearning/random", b"{}", json_type).status == 200

    # a file upload declaring more than the budget: answered from Content-Length, the body never sent
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        conn.putrequest("PUT", "/datastore/image?image=too_big")
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(2**28 + 2**25))  # 288 MiB > 273 MiB
        conn.endheaders(b"--x\r\n")
        r = conn.getresponse()
        assert r.status == 413 and b"at most 273 MiB" in r.read()
    finally:
        conn.close()

    a = p.request(server.url, "GET", "/info/?q=" + "a" * 9000)
    assert a.status == 414 and "limit of 8,192" in a.reason, a
    a = p.request(server.url, "GET", "/info/", headers={f"X-H{i}": "v" for i in range(150)})
    assert a.status == 431 and "limit of 100" in a.reason, a
    assert server.get("/info/")[0] == 200


def test_hostile_requests_of_the_security_probe_are_refused(server, studies, tmp_path):
    """A few kinds of each app family of benchmarks/security_probe.py (paths, reads outside the
    datastore, hostile files, oversized requests, bad parameters), sent as the probe sends them:
    each is a 4xx, the server stays up and no file of the datastore or beside it changes."""
    from types import SimpleNamespace

    p = security_probe()
    (tmp_path / "outside").mkdir()
    stack = SimpleNamespace(app_url=server.url, images=sorted(x.name.removesuffix(".nii.gz") for x in studies.glob("*.nii.gz")),
                            outside=tmp_path / "outside", tmp=server.tmp, key="unused", triton_http=None, triton_grpc=None)
    chosen = ["image_id_dotdot", "image_id_nul", "label_tag_dotdot", "download_image_dotdot", "infer_absolute_path",
              "infer_temp_file", "upload_absurd_header", "upload_absurd_spacing", "oversized_header", "many_headers",
              "oversized_url", "huge_json_body", "deeply_nested_json", "train_preset_path", "unknown_strategy"]
    kinds = {k.name: k for k in p.kinds(stack)}
    before, outside = _files(studies), _files(tmp_path)
    for name in chosen:
        answer = kinds[name].send(stack)
        assert answer.status is not None and 400 <= answer.status < 500, (name, answer.status, answer.reason)
        assert server.get("/info/")[0] == 200, name
    assert _files(studies) == before and _files(tmp_path) == outside
