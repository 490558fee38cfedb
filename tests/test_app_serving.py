"""The MONAI Label app under load and on multi-contrast studies, for real: ``monailabel
start_server`` on loopback with two-contrast phantoms (the kind ``lumbarseg phantoms`` writes:
one 4D NIfTI, two contrasts) on a coarse grid, untrained lite networks.

* Inference runs off the event loop: ``/info/`` and ``/health/`` answer within a second while
  infers run, and requests beyond the queue bound get 503 with the reason (issue 16, item 7).
* ``POST /train/sagittal`` on labelled two-contrast studies finishes and the new model serves
  (issue 16, item 6: the task failed with "2 image channels but 1 modality names ['t2w']").
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import pytest
from monailabel.client import MONAILabelClient

from lumbarseg import io, phantom

from conftest import untrained_weights
from servers import Server

WORKERS, QUEUE = 1, 4  # the server's --conf infer_workers / infer_queue


@pytest.fixture(scope="module")
def two_contrast_studies(tmp_path_factory) -> tuple[Path, Path]:
    """Two-contrast phantoms (t1w then t2w: the fluid-bright contrast is not the first channel)
    on a 4 mm grid, as a local datastore, and their truth labels."""
    root = tmp_path_factory.mktemp("two_contrast")
    (root / "studies").mkdir()
    (root / "truth").mkdir()
    for seed in (81, 82):
        study = phantom.generate(seed, modalities=("t1w", "t2w"), spacing=(4.0, 4.0, 4.0))
        assert study.primary.image.shape[0] == 2
        io.save_image(study.primary, root / "studies" / f"{study.subject}.nii.gz")
        io.save_label(study.primary.label, study.primary.affine, root / "truth" / f"{study.subject}.nii.gz")
    return root / "studies", root / "truth"


@pytest.fixture(scope="module")
def server(two_contrast_studies, tmp_path_factory):
    weights = untrained_weights(tmp_path_factory.mktemp("weights"), spacing=4.0)
    s = Server(tmp_path_factory.mktemp("app"), two_contrast_studies[0],
               {"infer_workers": str(WORKERS), "infer_queue": str(QUEUE)}, weights)
    yield s
    s.stop()


def _ids(studies: Path) -> list[str]:
    return sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*.nii.gz"))


def _timed_get(server: Server, path: str) -> tuple[int, float]:
    began = time.monotonic()
    try:
        with urllib.request.urlopen(server.url + path, timeout=120) as r:
            status = r.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.monotonic() - began


def _infer(server: Server, image_id: str) -> tuple[int, dict, Message]:
    req = urllib.request.Request(f"{server.url}/infer/lumbar_spine?image={image_id}&output=json", data=b"",
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), err.headers


def test_info_and_health_answer_within_a_second_while_infers_run_and_the_queue_is_bounded(server,
                                                                                           two_contrast_studies):
    image_ids = _ids(two_contrast_studies[0])
    count = 3 * QUEUE
    done = threading.Event()
    latencies: list[float] = []
    health: list[int] = []

    def probe():
        while not done.is_set():
            status, seconds = _timed_get(server, "/info/")
            assert status == 200
            latencies.append(seconds)
            health.append(_timed_get(server, "/health/")[0])
            time.sleep(0.1)

    prober = threading.Thread(target=probe)
    began = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(_infer, server, image_ids[i % len(image_ids)]) for i in range(count)]
        time.sleep(0.5)  # every request has arrived: the admitted ones are running or waiting
        prober.start()
        results = [f.result() for f in futures]
    done.set()
    prober.join()
    elapsed = time.monotonic() - began

    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= QUEUE, statuses  # all admitted requests are answered
    refused = [(body, headers) for status, body, headers in results if status == 503]
    assert refused, f"{count} concurrent infers with a queue bound of {QUEUE}: none refused ({statuses})"
    for body, headers in refused:
        assert "inference queue full" in body["detail"] and f"bound {QUEUE}" in body["detail"]
        assert int(headers.get("Retry-After", 0)) > 0
    assert all(body["report"]["subject"] in image_ids for status, body, _ in results if status == 200)
    assert len(latencies) >= 3, f"/info/ probed {len(latencies)} times in {elapsed:.1f} s of inference"
    print(f"/info/ latency under {count} concurrent infers: median {statistics.median(latencies):.3f} s, "
          f"max {max(latencies):.3f} s, {len(latencies)} probes; statuses {statuses}")
    assert statistics.median(latencies) < 1.0, latencies
    assert set(health) == {200}
    state = json.loads(urllib.request.urlopen(server.url + "/health/", timeout=10).read())["infer"]
    assert state["workers"] == WORKERS and state["queue_bound"] == QUEUE and state["admitted"] == 0
    assert state["refused"] >= len(refused)


def test_training_on_labelled_two_contrast_studies_finishes_and_the_new_model_serves(server, two_contrast_studies,
                                                                                    tmp_path):
    studies, truth = two_contrast_studies
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    for label in sorted(truth.glob("*.nii.gz")):
        client.save_label(label.name.removesuffix(".nii.gz"), str(label), tag="final")
    served = server.app / "model" / "lumbar_spine"
    before = (served / "sagittal.pt").read_bytes()

    status, task = server.post("/train/sagittal", {"preset": "smoke"})  # a background task, as OHIF starts it
    assert status == 200, task
    deadline = time.monotonic() + 600
    while True:
        status, task = server.get("/train/")
        assert status == 200, task
        if task["status"] not in ("SUBMITTED", "RUNNING"):
            break
        assert time.monotonic() < deadline, "training did not finish in 10 min"
        time.sleep(2)
    assert task["status"] == "DONE", "\n".join(task.get("details", [])[-15:])

    version = json.loads((served / "model.json").read_text())["version"]
    assert version != "shipped" and (served / "sagittal.pt").read_bytes() != before
    status, body, _ = _infer(server, _ids(studies)[0])
    assert status == 200, body
    assert body["model_version"] == version and body["report"]["subject"] == _ids(studies)[0]
