"""The Triton path end to end, for real: ``lumbarseg export`` of untrained lite weights into a
copy of the repository, one ``lumbarseg triton serve --cpu`` (tritonserver from the
nvidia-pytriton wheel, loopback) shared by the module, the client (gRPC: HTTP inference is
closed) against in-process inference, and the errors a user meets."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import tritonclient.http as http

from lumbarseg import phantom, pipeline, planes, tissues
from lumbarseg.networks.fusion import fusion_net
from lumbarseg.networks.plane_net import plane_net

from conftest import security_probe
from lumbarseg.triton.client import TritonSegmenter
from lumbarseg.triton.export import FUSION_IN_PIPELINE, MODELS, NETWORK_MODELS, TEMPLATE, next_version, read_config
from lumbarseg.triton.server import TritonError

KEY = secrets.token_urlsafe(16)  # the admin key of this module's servers (LUMBARSEG_TRITON_KEY)
ADMIN = {"lumbarseg-admin-key": KEY}  # HTTP header; gRPC metadata is triton-grpc-protocol-<name>
GRPC_ADMIN = {"triton-grpc-protocol-lumbarseg-admin-key": KEY}

pytestmark = pytest.mark.slow  # an export and a server start: about 2.5 minutes on 2 cores

LUMBARSEG = str(Path(sys.executable).parent / "lumbarseg")
SPACING = 3.0  # a coarse model grid keeps the untrained networks cheap on a shared CPU
CLASS_SCALE = {"hernia": 0.5, "disc": 2.0}  # the weights' class factors (ModelInfo.class_scale)
PARITY = 0.999  # share of voxels with identical classes, Triton vs in-process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_state(admin: http.InferenceServerClient, name: str) -> str | None:
    return next(m.get("state") for m in admin.get_model_repository_index(headers=ADMIN) if m["name"] == name)


def one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "LUMBARSEG_ORT_THREADS": "1", "LUMBARSEG_TRITON_KEY": KEY}


@pytest.fixture(scope="module", autouse=True)
def admin_key():
    """The servers and clients of this module share one admin key, from the environment."""
    old = os.environ.get("LUMBARSEG_TRITON_KEY")
    os.environ["LUMBARSEG_TRITON_KEY"] = KEY
    yield KEY
    if old is None:
        del os.environ["LUMBARSEG_TRITON_KEY"]
    else:
        os.environ["LUMBARSEG_TRITON_KEY"] = old


def post(url: str, body: bytes, headers: dict | None = None, timeout: float = 120) -> tuple[int | None, str]:
    """A raw HTTP POST: (status, body text), or (None, why) when the connection failed."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError, OSError) as err:
        return None, f"{type(err).__name__}: {err}"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    k = tissues.NUM_TISSUES
    # 2.5D input (planes.slice_context) on a one-contrast study: the server cuts the same slices;
    # class factors (ModelInfo.class_scale): the server decides the fused classes as in process
    pipeline.save_model(folder, {p: plane_net(preset="lite", num_classes=k) for p in planes.PLANES},
                        fusion_net(num_classes=k), {"preset": "lite", "spacing_mm": SPACING, "slice_context": True,
                                                    "class_scale": CLASS_SCALE})
    return folder


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the committed repository (configs, model.py) with ONNX from the CLI export."""
    repository = tmp_path_factory.mktemp("triton") / "model_repository"
    shutil.copytree(TEMPLATE, repository, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    result = subprocess.run([LUMBARSEG, "export", "--weights", str(weights), "--repository", str(repository)],
                            capture_output=True, text=True, timeout=900, env=one_thread_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return repository, result.stdout


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    """``lumbarseg triton serve --cpu`` on free loopback ports; stopped at the end as
    scripts/demo.sh is by Ctrl-C: SIGINT, then its exit trap's SIGTERM while the server stops,
    which must shut tritonserver down and exit 0 without a traceback."""
    repository, _ = exported
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("log") / "triton.log"
    process = subprocess.Popen([LUMBARSEG, "triton", "serve", "--cpu", "--repository", str(repository),
                                "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--log", str(log)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=one_thread_env())
    seen = []
    for line in process.stdout:  # the launcher says "Triton ready" once every model is (or exits)
        seen.append(line)
        if "Triton ready" in line:
            break
    else:
        pytest.fail(f"serve did not come up: {''.join(seen)}\n{log.read_text()[-3000:] if log.exists() else ''}")
    yield {"http": f"http://127.0.0.1:{http_port}", "grpc": f"grpc://127.0.0.1:{grpc_port}", "log": log,
           "repository": repository}
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    output = process.stdout.read()
    assert "stopping Triton" in output and "Traceback" not in output
    with pytest.raises(TritonError, match="Connection refused"):
        TritonSegmenter(f"grpc://127.0.0.1:{grpc_port}", retries=0).health()


@pytest.fixture(scope="module")
def study():
    return phantom.generate(5, modalities=("t2w",)).primary


@pytest.fixture(scope="module")
def local(weights, study) -> pipeline.Segmentation:
    torch.set_num_threads(1)
    return pipeline.Segmenter.load(weights).segment(study)


def test_export_checks_every_network_against_pytorch(exported):
    repository, stdout = exported
    differences = {m: float(d) for m, d in re.findall(r"(\S+)\s+\S+model\.onnx\s+max \|torch - onnxruntime\| (\S+)", stdout)}
    assert set(differences) == set(NETWORK_MODELS)
    assert max(differences.values()) < 1e-4
    for model in NETWORK_MODELS:
        assert (repository / model / "1" / "model.onnx").stat().st_size > 10_000
    for config in ("config.pbtxt", "configs/cpu.pbtxt"):
        parameters = read_config(repository / "spine_pipeline" / config).parameters
        assert parameters["spacing_mm"].string_value == "3" and parameters["slice_context"].string_value == "true"
        assert pipeline.class_scale_from_parameter(parameters["class_scale"].string_value) == CLASS_SCALE


def fusion_requests(admin: http.InferenceServerClient) -> int:
    """Requests the ``fusion`` model has served (every version)."""
    stats = admin.get_inference_statistics("fusion", headers=ADMIN)["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


def test_triton_pipeline_matches_in_process_inference(served, study, local):
    admin = http.InferenceServerClient(served["http"].removeprefix("http://"))
    before = fusion_requests(admin)
    with TritonSegmenter(served["grpc"]) as client:
        assert client.spacing == SPACING
        remote = client.segment(study)
        detailed = client.segment(study, probabilities=True)
    # the CPU configs' pipeline runs the fusion's file itself (fusion_in_pipeline): no BLS call
    assert fusion_requests(admin) == before
    assert remote.classes.shape == study.shape
    assert remote.region == local.region  # the same first pass and box (lumbarseg.pipeline.locate)
    assert (remote.classes == local.classes).mean() >= PARITY
    # class maps only (fused ones resampled by the pipeline), unless asked for probabilities
    assert remote.plane_probabilities == {} and remote.probabilities is None
    assert (detailed.classes == remote.classes).mean() >= PARITY
    for plane in planes.PLANES:
        assert (remote.plane_classes[plane] == local.plane_classes[plane]).mean() >= PARITY
        np.testing.assert_array_equal(detailed.plane_classes[plane], remote.plane_classes[plane])
        np.testing.assert_allclose(detailed.plane_probabilities[plane], local.plane_probabilities[plane], atol=1e-4)
    np.testing.assert_allclose(detailed.probabilities, local.probabilities, atol=1e-4)


def test_spine_region_inference_is_the_pipelines_and_a_request_can_turn_it_off(served, weights, study):
    """The export writes the weights' region settings into the pipeline's config; the request
    parameter spine_region turns it off (whole volume, as in process with region=False); REGION
    says where the networks ran."""
    config = read_config(served["repository"] / "spine_pipeline" / "configs" / "cpu.pbtxt").parameters
    assert pipeline.RegionSettings.from_parameter(config["spine_region"].string_value) == \
        pipeline.Segmenter.load(weights).region
    local = pipeline.Segmenter.load(weights).segment(study, region=False)
    with TritonSegmenter(served["grpc"]) as client:
        remote = client.segment(study, region=False, probabilities=True)
        image = np.random.default_rng(8).random((3, 9, 10, 11), dtype=np.float32)
        out = client.infer(image, ["CLASSES", "REGION"], region=True)
    assert remote.region.status == pipeline.OFF and not remote.region.cropped
    assert (remote.classes == local.classes).mean() >= PARITY
    np.testing.assert_allclose(remote.probabilities, local.probabilities, atol=1e-4)
    region = pipeline.Region.from_code(out["REGION"], image.shape[1:])
    assert out["REGION"].dtype == np.int32 and region.status in pipeline.REGION_STATUS
    assert out["CLASSES"].shape == image.shape[1:]


def test_classes_output_and_health(served, local):
    with TritonSegmenter(served["grpc"]) as client:
        health = client.health()
        assert health["ready"] and set(health["models"]) == {*NETWORK_MODELS, "spine_pipeline"}
        image = np.random.default_rng(0).random((3, 17, 23, 12), dtype=np.float32)
        out = client.infer(image, ["CLASSES", "PROBABILITIES", "AXIAL_CLASSES", "AXIAL_PROBABILITIES"])
    assert out["CLASSES"].dtype == np.uint8 and out["CLASSES"].shape == (17, 23, 12)
    # the fused classes are decided with the weights' class factors; a plane's are its plain argmax
    scale = pipeline.class_scale_vector(CLASS_SCALE, tissues.TISSUE_NAMES)[:, None, None, None]
    np.testing.assert_array_equal(out["CLASSES"], (out["PROBABILITIES"] * scale).argmax(axis=0))
    assert (out["CLASSES"] != out["PROBABILITIES"].argmax(axis=0)).any()
    assert out["AXIAL_CLASSES"].dtype == np.uint8
    np.testing.assert_array_equal(out["AXIAL_CLASSES"], out["AXIAL_PROBABILITIES"].argmax(axis=0))


def test_bad_input_is_refused_with_the_reason(served):
    with TritonSegmenter(served["grpc"]) as client:
        image = np.zeros((3, 8, 8, 8), np.float32)
        image[1, 2, 3, 4] = np.nan
        with pytest.raises(TritonError, match=r"NaN or infinite.*INVALID_ARGUMENT"):
            client.infer(image, ["CLASSES"])
        with pytest.raises(TritonError, match=r"IMAGE.*INVALID_ARGUMENT"):
            client.infer(np.zeros((2, 8, 8, 8), np.float32), ["CLASSES"])  # two channels, not three
        assert client.health()["ready"]  # and the server is still serving


def test_source_classes_are_resampled_to_the_requested_grid_within_the_limit(served):
    """SOURCE_CLASSES: the fused classes on the request's source_shape grid, as the client
    would resample them; a missing, malformed or oversized shape is refused before any work."""
    image = np.random.default_rng(2).random((3, 17, 23, 12), dtype=np.float32)
    with TritonSegmenter(served["grpc"]) as client:
        out = client.infer(image, ["SOURCE_CLASSES", "PROBABILITIES"], source_shape=(30, 41, 20))
        assert out["SOURCE_CLASSES"].dtype == np.uint8
        assert client.scale is not None  # the weights' class_scale, from the served config
        np.testing.assert_array_equal(out["SOURCE_CLASSES"], pipeline.class_map(
            planes.resample(out["PROBABILITIES"], (30, 41, 20), "trilinear"), client.scale))
        with pytest.raises(TritonError, match=r"SOURCE_CLASSES needs the request parameter source_shape.*INVALID_ARGUMENT"):
            client.infer(image, ["SOURCE_CLASSES"])
        with pytest.raises(TritonError, match=r"source_shape must be three positive integers.*INVALID_ARGUMENT"):
            client.infer(image, ["SOURCE_CLASSES"], source_shape=(0, 5, 5))
        huge = (4000, 4000, 4000)  # 64 G voxels: refused from the shape alone
        with pytest.raises(TritonError, match=r"over max_source_voxels.*INVALID_ARGUMENT"):
            client.infer(image, ["SOURCE_CLASSES"], source_shape=huge)
        assert client.sends_source_classes((30, 41, 20)) and not client.sends_source_classes(huge)
        assert client.health()["ready"]


def test_a_server_that_is_down_is_a_clear_error():
    url = f"grpc://127.0.0.1:{free_port()}"
    with pytest.raises(TritonError, match=re.escape(url) + r".*cannot connect.*Connection refused"):
        TritonSegmenter(url, retries=1, backoff=0.05).segment(phantom.generate(1).primary)


def test_an_http_url_is_refused_with_the_reason():
    with pytest.raises(TritonError, match=r"http://127.0.0.1:8010: .*gRPC only.*grpc://HOST:PORT"):
        TritonSegmenter("http://127.0.0.1:8010")


def test_a_model_that_is_not_loaded_is_a_clear_error(served, study):
    with pytest.raises(TritonError, match="'no_such_model' is not in the server's repository"):
        TritonSegmenter(served["grpc"], model="no_such_model").require_ready()
    admin = http.InferenceServerClient(served["http"].removeprefix("http://"))
    admin.unload_model("plane_axial", headers=ADMIN)
    deadline = time.monotonic() + 60
    while model_state(admin, "plane_axial") != "UNAVAILABLE" and time.monotonic() < deadline:  # stub stopping
        time.sleep(0.2)
    try:
        with TritonSegmenter(served["grpc"], retries=0) as client:
            with pytest.raises(TritonError, match=r"'plane_axial' is not ready \(UNAVAILABLE"):
                client.require_ready("plane_axial")
            with pytest.raises(TritonError, match="plane_axial"):
                client.segment(study)
    finally:
        admin.load_model("plane_axial", headers=ADMIN)
    assert admin.is_model_ready("plane_axial")


def test_a_new_version_is_loaded_without_a_restart(served, exported):
    repository, _ = exported
    assert next_version(repository) == 2
    for model in MODELS:  # what `export --version 2` writes, without exporting again
        shutil.copytree(repository / model / "1", repository / model / "2")
    admin = http.InferenceServerClient(served["http"].removeprefix("http://"))
    with TritonSegmenter(served["grpc"]) as client:
        client.reload(MODELS)
        assert {m["name"]: m["version"] for m in admin.get_model_repository_index(headers=ADMIN) if m.get("state") == "READY"} \
            == {m: "2" for m in MODELS}
        out = client.infer(np.random.default_rng(1).random((3, 9, 10, 11), dtype=np.float32), ["CLASSES"])
    assert out["CLASSES"].shape == (9, 10, 11)


def test_scaled_cpu_configs_serve_concurrent_studies_and_later_versions(exported, study, local, tmp_path):
    """``lumbarseg triton serve --cpu --instances 2 --threads 1`` (what the README recommends
    for several readers): every model runs two instances of one thread, two studies sent at
    once both come back as in process, and a version exported after the start is loaded with
    the same scaled configs. This server's pipeline calls the fusion model by BLS, as the GPU
    configs do (fusion_in_pipeline false), so that path is served for real too."""
    from concurrent.futures import ThreadPoolExecutor

    from lumbarseg.triton.server import TritonServer, set_config_parameter

    repository = tmp_path / "model_repository"  # a copy: the new version must not reach the module's server
    shutil.copytree(exported[0], repository)
    config = repository / "spine_pipeline" / "configs" / "cpu.pbtxt"
    config.write_text(set_config_parameter(config.read_text(), FUSION_IN_PIPELINE, "false"))
    server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(), config_name="cpu",
                          log_path=tmp_path / "triton.log", key=KEY, instances=2, threads=1)
    with server, TritonSegmenter(f"grpc://127.0.0.1:{server.grpc_port}", key=KEY) as client:
        admin = http.InferenceServerClient(server.url)
        for model in MODELS:
            config = admin.get_model_config(model)
            assert config["instance_group"][0]["count"] == 2, model
            # every model runs a network (the pipeline its fusion, when it does not call the model)
            assert config["parameters"]["intra_op_threads"]["string_value"] == "1", model
        with ThreadPoolExecutor(2) as pool:
            for remote in pool.map(lambda _: client.segment(study), range(2)):
                assert (remote.classes == local.classes).mean() >= PARITY
        assert fusion_requests(admin) == 2
        version = next_version(repository)
        for model in MODELS:
            shutil.copytree(repository / model / str(version - 1), repository / model / str(version))
        client.reload(MODELS)
        ready = {m["name"]: m["version"] for m in admin.get_model_repository_index(headers=ADMIN) if m.get("state") == "READY"}
        assert ready == {m: str(version) for m in MODELS}
        assert admin.get_model_config("fusion")["instance_group"][0]["count"] == 2


def test_cli_infer_on_triton_writes_a_level_named_label_map(served, study, tmp_path):
    from lumbarseg import io

    source = tmp_path / "study.nii.gz"
    io.save_image(study, source)
    out = tmp_path / "label.nii.gz"
    result = subprocess.run([LUMBARSEG, "infer", str(source), "--backend", "triton", "--triton-url", served["grpc"],
                             "--out", str(out)], capture_output=True, text=True, timeout=600, env=one_thread_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"-> {out}" in result.stdout
    label = np.asarray(nib.load(out).dataobj)
    assert label.shape == study.shape
    assert set(np.unique(label)) <= {0, *tissues.STUDY_LABELS}


def test_malformed_tensors_are_refused_by_the_server_which_stays_up(served):
    """What a client other than ours may send: a tensor of the wrong rank or the wrong dtype
    (TritonSegmenter casts to float32; raw tritonclient does not), or NaN."""
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    raw = grpc.InferenceServerClient(served["grpc"].removeprefix("grpc://"))

    def send(array: np.ndarray, dtype: str) -> None:
        tensor = grpc.InferInput("IMAGE", list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        raw.infer("spine_pipeline", [tensor], outputs=[grpc.InferRequestedOutput("CLASSES")], headers=GRPC_ADMIN)

    cases = [
        (np.zeros((3, 8, 8), np.float32), "FP32", r"shape for input 'IMAGE'.*Expected \[3,-1,-1,-1\]"),  # rank 3
        (np.zeros((1, 3, 8, 8, 8), np.float32), "FP32", r"shape for input 'IMAGE'.*Expected \[3,-1,-1,-1\]"),  # rank 5
        (np.zeros((3, 8, 8, 8), np.float64), "FP64", r"'IMAGE' data-type is 'FP64'.*expects 'FP32'"),
        (np.zeros((3, 8, 8, 8), np.int32), "INT32", r"'IMAGE' data-type is 'INT32'.*expects 'FP32'"),
        (np.full((3, 8, 8, 8), np.nan, np.float32), "FP32", r"NaN or infinite"),
    ]
    for array, dtype, reason in cases:
        with pytest.raises(InferenceServerException, match=reason):
            send(array, dtype)
    assert raw.is_server_ready() and raw.is_model_ready("spine_pipeline")
    send(np.random.default_rng(2).random((3, 8, 8, 8), dtype=np.float32), "FP32")  # still serving
    raw.close()


def _pwn_load(marker: Path) -> dict:
    """A repository load that ships its own model: config plus ``file:1/model.py`` whose import
    writes ``marker`` (what issue 16 item 2 ran as the server's user)."""
    import base64

    config = {"name": "probe_pwn", "backend": "python", "max_batch_size": 0,
              "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}]}
    code = (f"open({str(marker)!r}, 'w').write('ran')\n"
            "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n")
    return {"parameters": {"config": json.dumps(config), "file:1/model.py": base64.b64encode(code.encode()).decode()}}


def test_model_control_and_inference_need_the_admin_key(served, tmp_path):
    """Issue 16 item 2: without the key, a load that sends its own model.py is refused (HTTP and
    gRPC) and runs nothing, an unload leaves the model serving, inference is refused; the
    project's client, holding the key, still loads and infers."""
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    marker = tmp_path / "ran"
    load = served["http"] + "/v2/repository/models/probe_pwn/load"
    try:
        for headers in ({}, {"lumbarseg-admin-key": "wrong"}):
            status, body = post(load, json.dumps(_pwn_load(marker)).encode(), headers)
            assert status == 403 and "restricted" in body, (status, body)
        status, body = post(served["http"] + "/v2/repository/models/fusion/unload", b"{}")
        assert status == 403 and "restricted" in body, (status, body)
        raw = grpc.InferenceServerClient(served["grpc"].removeprefix("grpc://"))
        with pytest.raises(InferenceServerException, match="restricted"):
            raw.load_model("probe_pwn", config=_pwn_load(marker)["parameters"]["config"],
                           files={"file:1/model.py": b"open('/tmp/x', 'w')"})
        with pytest.raises(InferenceServerException, match="restricted"):
            raw.unload_model("fusion")
        tensor = grpc.InferInput("IMAGE", [3, 4, 4, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((3, 4, 4, 4), np.float32))
        with pytest.raises(InferenceServerException, match="restricted"):
            raw.infer("spine_pipeline", [tensor])
        raw.close()
        body = json.dumps({"inputs": [{"name": "IMAGE", "shape": [3, 1, 2, 2], "datatype": "FP32", "data": [0.0] * 12}]})
        for headers in ({}, ADMIN):  # HTTP inference is closed, to the key holder too
            status, text = post(served["http"] + "/v2/models/spine_pipeline/infer", body.encode(), headers)
            assert status == 403 and "restricted" in text, (status, text)
        assert not marker.exists()
        with TritonSegmenter(served["grpc"]) as client:  # the key from LUMBARSEG_TRITON_KEY
            assert client.health()["models"]["fusion"] == "READY"
            client.reload(["fusion"])
            out = client.infer(np.random.default_rng(5).random((3, 6, 7, 8), dtype=np.float32), ["CLASSES"])
        assert out["CLASSES"].shape == (6, 7, 8)
        with TritonSegmenter(served["grpc"], key="", retries=0) as keyless:  # health stays open, the rest does not
            assert keyless.health()["models"]["spine_pipeline"] == "READY"
            with pytest.raises(TritonError, match="restricted.*admin key"):
                keyless.infer(np.zeros((3, 4, 4, 4), np.float32), ["CLASSES"])
    finally:  # on a server without the restriction the load succeeded: unload what it loaded
        post(served["http"] + "/v2/repository/models/probe_pwn/unload", b"{}", ADMIN)


def test_the_server_listens_on_loopback_only(served):
    """Neither port answers on this host's other addresses."""
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: the kernel picks the outgoing address
            addresses.add(s.getsockname()[0])
    except OSError:
        pass
    addresses = {a for a in addresses if not a.startswith("127.")}
    if not addresses:
        pytest.skip("this host has no address besides loopback")
    for address in addresses:
        for url in (served["http"], served["grpc"]):
            port = int(url.rsplit(":", 1)[1])
            with socket.socket() as s, pytest.raises(OSError):
                s.settimeout(5)
                s.connect((address, port))


def _raw_grpc_infer(url: str, shape: list[int], data: bytes) -> tuple[str, str]:
    """An inference request as a hostile key holder may build it, not through tritonclient's
    checks: IMAGE declared as ``shape`` with ``data`` as its bytes. (gRPC status, details)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="spine_pipeline")
    tensor = request.inputs.add(name="IMAGE", datatype="FP32")
    tensor.shape.extend(shape)
    request.raw_input_contents.append(data)
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, metadata=list(GRPC_ADMIN.items()), timeout=120)
            return "OK", ""
        except grpc.RpcError as err:
            return err.code().name, err.details()


def test_a_request_declaring_a_huge_tensor_is_refused_and_the_server_stays_up(served):
    """Issue 16 item 3: JSON declaring IMAGE [3,20000,20000,20000] with 12 values aborted
    tritonserver (std::bad_alloc). Now HTTP inference is closed (403, with or without the key)
    and the server stays up; on gRPC with the key a declared shape the sent bytes do not fill
    is refused by Triton, and shapes over the pipeline's max_extent / max_voxels by the
    pipeline, before any work; then a valid request is served."""
    infer = served["http"] + "/v2/models/spine_pipeline/infer"
    absurd = json.dumps({"inputs": [{"name": "IMAGE", "shape": [3, 20000, 20000, 20000], "datatype": "FP32",
                                     "data": [0.0] * 12}]}).encode()
    for headers in ({}, ADMIN):
        status, reason = post(infer, absurd, headers)
        assert status == 403 and "restricted" in reason, (status, reason)
    status, reason = _raw_grpc_infer(served["grpc"], [3, 512, 512, 512], bytes(48))
    assert status == "INVALID_ARGUMENT" and "byte size" in reason, (status, reason)
    config = read_config(served["repository"] / "spine_pipeline" / "configs" / "cpu.pbtxt").parameters
    extent, voxels = int(config["max_extent"].string_value), int(config["max_voxels"].string_value)
    with TritonSegmenter(served["grpc"], retries=0) as client:
        with pytest.raises(TritonError, match=rf"max_extent {extent}.*INVALID_ARGUMENT"):
            client.infer(np.zeros((3, 2, extent + 1, 4), np.float32), ["CLASSES"])
        slabs = voxels // extent**2 + 1  # every axis within max_extent, the volume over max_voxels
        assert slabs <= extent
        with pytest.raises(TritonError, match=rf"more than max_voxels {voxels}.*INVALID_ARGUMENT"):
            client.infer(np.zeros((3, slabs, extent, extent), np.float32), ["CLASSES"])
        assert client.health()["ready"]
        out = client.infer(np.random.default_rng(6).random((3, 5, 6, 7), dtype=np.float32), ["CLASSES"])
        assert out["CLASSES"].shape == (5, 6, 7)
        # a study whose field of view is over the limits: refused by the client, nothing sent
        from lumbarseg.io.study import Series, StudyError

        wide = Series(np.zeros((1, 34, 8, 8), np.float32), np.diag([29.0, SPACING, SPACING, 1.0]), ("t2w",),
                      source="wide.nii.gz")  # 986 mm long: over max_extent at the model's spacing
        with pytest.raises(StudyError, match=rf"wide.nii.gz: .*at most {voxels:,} voxels and {extent} per axis"):
            client.segment(wide)


def test_a_stub_killed_by_an_overflowing_shape_is_reloaded_by_the_next_client(served):
    """A shape whose element count overflows (3 * 2^62 * 2^62 * 4 wraps to 0) passes Triton
    2.51's byte-size check with no bytes and aborts the pipeline's python stub; Triton then
    answers "not healthy" until the model is reloaded. The key holder who sends it gets the
    error; the project's client reloads the model and is served."""
    status, reason = _raw_grpc_infer(served["grpc"], [3, 2**62, 2**62, 4], b"")
    assert status == "INTERNAL" and "not healthy" in reason, (status, reason)
    assert _raw_grpc_infer(served["grpc"], [3, 4, 4, 4], bytes(4 * 3 * 64))[1].endswith("not healthy.")  # stays dead
    with TritonSegmenter(served["grpc"], retries=0) as client:
        out = client.infer(np.random.default_rng(7).random((3, 4, 5, 6), dtype=np.float32), ["CLASSES"])
    assert out["CLASSES"].shape == (4, 5, 6)
    assert _raw_grpc_infer(served["grpc"], [3, 4, 4, 4], bytes(4 * 3 * 64)) == ("OK", "")


def test_a_server_killed_mid_request_is_a_clear_error_and_a_restart_serves_again(exported, monkeypatch, tmp_path):
    """SIGKILL to tritonserver (and its python stubs) while a request is being computed: the
    waiting client gets a TritonError within seconds, not a hang; the same client objects
    work again once a server is back on the same ports."""
    import threading

    from lumbarseg.triton.server import TritonServer

    repository, _ = exported
    monkeypatch.setenv("LUMBARSEG_ORT_THREADS", "1")
    server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(), config_name="cpu",
                          log_path=tmp_path / "triton.log")
    client = TritonSegmenter(f"grpc://127.0.0.1:{server.grpc_port}", retries=0, timeout=120)
    # seconds of work on one thread even on a CPU with AVX-512 (48x96x96 took under 1.5 s there)
    big = np.random.default_rng(3).random((3, 96, 160, 160), dtype=np.float32)
    small = np.random.default_rng(4).random((3, 9, 10, 11), dtype=np.float32)

    def kill_soon(process, delay: float) -> threading.Timer:
        timer = threading.Timer(delay, lambda: os.killpg(process.pid, signal.SIGKILL))
        timer.start()
        return timer

    server.start(timeout=300)
    try:
        client.infer(small, ["CLASSES"])  # connected, config fetched
        process = server.process
        timer = kill_soon(process, 1.5)
        start = time.monotonic()
        with pytest.raises(TritonError, match=re.escape(client.url) + r": inference on spine_pipeline"):
            client.infer(big, ["CLASSES"])
        assert time.monotonic() - start < 60
        timer.join()
        process.wait(timeout=30)
        server.start(timeout=300)  # the same ports: a restart
        out = client.infer(small, ["CLASSES"])  # the same client object, the same thread
        assert out["CLASSES"].shape == small.shape[1:]
        assert client.health()["ready"]
    finally:
        server.stop()
        client.close()


def test_hostile_triton_requests_of_the_security_probe_are_refused(served, tmp_path):
    """Kinds of benchmarks/security_probe.py's Triton families, sent by its own code: loads that
    ship code (HTTP without a key, gRPC), an unload, the issue's absurd JSON shape without the key
    are refused (403) and nothing runs; a malformed tensor with the key is 400; the pipeline still
    serves after each."""
    from types import SimpleNamespace

    probe = security_probe()
    (tmp_path / "outside").mkdir()
    stack = SimpleNamespace(triton_http=served["http"], triton_grpc=served["grpc"].removeprefix("grpc://"), key=KEY,
                            outside=tmp_path / "outside", tmp=tmp_path, images=["unused"], app_url=None)
    kinds = {k.name: k for k in probe.kinds(stack)}
    for name, expected in (("triton_load_file_override", 403), ("triton_grpc_load_override", 403),
                           ("triton_unload", 403), ("triton_json_absurd_shape", 403), ("triton_wrong_rank", 400)):
        kind = kinds[name]
        answer = kind.send(stack)
        assert answer.status == expected, (name, answer)
        assert kind.extra is None or kind.extra(stack) is None, name
    assert not list((tmp_path / "outside").iterdir())
