"""The Triton launcher starts a real tritonserver (python backend) on loopback and stops it."""

from __future__ import annotations

import socket
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpc
import tritonclient.http as http

from lumbarseg.triton import server as triton_server
from lumbarseg.triton.server import TritonError, TritonServer

KEY = "test-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def echo_repository(tmp_path):
    model = tmp_path / "repo" / "double"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(textwrap.dedent("""
        name: "double"
        backend: "python"
        max_batch_size: 0
        input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
        instance_group [ { kind: KIND_CPU count: 1 } ]
    """))
    (model / "1" / "model.py").write_text(textwrap.dedent("""
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "Y", 2 * pb_utils.get_input_tensor_by_name(r, "X").as_numpy())]) for r in requests]
    """))
    return tmp_path / "repo"


def test_server_serves_a_python_model_and_stops(echo_repository, tmp_path):
    server = TritonServer(echo_repository, http_port=free_port(), grpc_port=free_port(), log_path=tmp_path / "triton.log",
                          key=KEY)
    with server:
        assert server.ready()
        assert http.InferenceServerClient(server.url).is_model_ready("double")
        client = grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        x = grpc.InferInput("X", [3], "FP32")
        x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
        y = client.infer("double", [x], headers={triton_server.GRPC_ADMIN_HEADER: KEY}).as_numpy("Y")
        np.testing.assert_array_equal(y, [2, 4, 6])
    assert server.process.poll() is not None
    assert not server.ready()


def test_serve_scales_the_cpu_configs_to_instances_that_answer_side_by_side(tmp_path):
    """``instances=2`` serves every model's CPU config with two instances (two stub processes),
    so two requests in flight are answered by different processes; the repository's own config
    is left as it was."""
    model = tmp_path / "repo" / "whoami"
    (model / "1").mkdir(parents=True)
    (model / "configs").mkdir()
    cpu = model / "configs" / "cpu.pbtxt"
    cpu.write_text(textwrap.dedent("""
        name: "whoami"
        backend: "python"
        max_batch_size: 0
        input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "PID" data_type: TYPE_INT64 dims: [ 1 ] } ]
        instance_group [ { kind: KIND_CPU count: 1 } ]
        parameters { key: "intra_op_threads" value: { string_value: "2" } }
    """))
    (model / "1" / "model.py").write_text(textwrap.dedent("""
        import os
        import time
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                time.sleep(1.0)  # long enough for the second request to arrive while this one runs
                return [pb_utils.InferenceResponse([pb_utils.Tensor("PID", np.array([os.getpid()], np.int64))])
                        for r in requests]
    """))
    original = cpu.read_text()
    server = TritonServer(tmp_path / "repo", http_port=free_port(), grpc_port=free_port(), config_name="cpu",
                          log_path=tmp_path / "triton.log", key=KEY, instances=2, threads=1)
    with server:
        config = http.InferenceServerClient(server.url).get_model_config("whoami")
        assert config["instance_group"][0]["count"] == 2
        assert config["parameters"]["intra_op_threads"]["string_value"] == "1"

        def pid() -> int:
            client = grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
            x = grpc.InferInput("X", [1], "FP32")
            x.set_data_from_numpy(np.zeros(1, np.float32))
            return int(client.infer("whoami", [x], headers={triton_server.GRPC_ADMIN_HEADER: KEY}).as_numpy("PID")[0])

        with ThreadPoolExecutor(2) as pool:
            assert len(set(pool.map(lambda _: pid(), range(2)))) == 2
    assert cpu.read_text() == original


def test_scaling_needs_a_cpu_config_with_one_cpu_instance_group(echo_repository):
    with pytest.raises(TritonError, match="name one"):
        TritonServer(echo_repository, instances=2)
    with pytest.raises(TritonError, match="no model has configs/cpu.pbtxt"):
        triton_server.scaled_configs(echo_repository, "cpu", instances=2, threads=1)
    with pytest.raises(TritonError, match="at least 1"):
        triton_server.scaled_configs(echo_repository, "cpu", instances=0, threads=1)


def test_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(TritonError, match="model repository not found"):
        TritonServer(tmp_path / "nowhere").start()


def test_a_broken_model_makes_start_fail_with_the_log(echo_repository, tmp_path):
    (echo_repository / "double" / "config.pbtxt").write_text("this is not protobuf text")
    server = TritonServer(echo_repository, http_port=free_port(), grpc_port=free_port(), log_path=tmp_path / "t.log",
                          key=KEY)
    with pytest.raises(TritonError, match="exited with code"):
        server.start(timeout=60)
    assert "config" in (tmp_path / "t.log").read_text().lower()


@pytest.fixture
def key_env(tmp_path, monkeypatch):
    monkeypatch.delenv("LUMBARSEG_TRITON_KEY", raising=False)
    monkeypatch.setenv("LUMBARSEG_TRITON_KEY_FILE", str(tmp_path / "keys" / "triton-admin-key"))
    return tmp_path / "keys" / "triton-admin-key"


def test_the_admin_key_is_made_once_readable_by_its_owner_only(key_env, monkeypatch):
    assert triton_server.admin_key() is None  # no key yet, and none made without asking
    key = triton_server.admin_key(create=True)
    assert len(key) >= 32 and key_env.stat().st_mode & 0o777 == 0o600
    assert triton_server.admin_key(create=True) == key == triton_server.admin_key()  # kept, not replaced
    monkeypatch.setenv("LUMBARSEG_TRITON_KEY", "from-the-environment")
    assert triton_server.admin_key() == "from-the-environment"


def test_a_key_file_others_can_read_is_refused(key_env):
    key_env.parent.mkdir(parents=True)
    key_env.write_text("leaked\n")
    key_env.chmod(0o644)
    with pytest.raises(TritonError, match="readable or writable by others"):
        triton_server.admin_key()


def test_the_launcher_binds_loopback_and_restricts_model_control_and_inference(echo_repository, key_env):
    command = TritonServer(echo_repository).command()
    assert "--http-address=127.0.0.1" in command and "--grpc-address=127.0.0.1" in command
    key = key_env.read_text().strip()  # made at the first start
    restricted = {}  # (protocol, api) -> header=value
    for flag in command:
        if flag.startswith(("--http-restricted-api=", "--grpc-restricted-protocol=")):
            apis, header = flag.split("=", 1)[1].split(":")
            restricted.update({(flag[2:6], api): header for api in apis.split(",")})
    for api in ("inference", "model-repository", "shared-memory", "trace", "logging"):
        assert restricted["grpc", api] == f"lumbarseg-admin-key={key}"
        if api != "inference":
            assert restricted["http", api] == f"lumbarseg-admin-key={key}"
    sealed = restricted["http", "inference"]  # HTTP inference: a value nobody is given
    assert sealed.startswith("lumbarseg-sealed=") and key not in sealed
    assert f"--http-restricted-api=inference:{sealed}" not in TritonServer(echo_repository).command()  # drawn per start
    with pytest.raises(TritonError, match="must be non-empty"):
        triton_server.restricted_api_arguments("a:b")
