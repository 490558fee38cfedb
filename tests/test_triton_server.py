"""The Triton launcher starts a real tritonserver (python backend) on loopback and stops it."""

from __future__ import annotations

import socket
import textwrap

import numpy as np
import pytest
import tritonclient.http as http

from lumbarseg.triton.server import TritonError, TritonServer


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
    server = TritonServer(echo_repository, http_port=free_port(), grpc_port=free_port(), log_path=tmp_path / "triton.log")
    with server:
        assert server.ready()
        client = http.InferenceServerClient(server.url)
        assert client.is_model_ready("double")
        x = http.InferInput("X", [3], "FP32")
        x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
        np.testing.assert_array_equal(client.infer("double", [x]).as_numpy("Y"), [2, 4, 6])
    assert server.process.poll() is not None
    assert not server.ready()


def test_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(TritonError, match="model repository not found"):
        TritonServer(tmp_path / "nowhere").start()


def test_a_broken_model_makes_start_fail_with_the_log(echo_repository, tmp_path):
    (echo_repository / "double" / "config.pbtxt").write_text("this is not protobuf text")
    server = TritonServer(echo_repository, http_port=free_port(), grpc_port=free_port(), log_path=tmp_path / "t.log")
    with pytest.raises(TritonError, match="exited with code"):
        server.start(timeout=60)
    assert "config" in (tmp_path / "t.log").read_text().lower()
