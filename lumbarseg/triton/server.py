"""Start and stop a real ``tritonserver`` on loopback.

The binary comes from the ``nvidia-pytriton`` wheel (Triton 2.51 with the python backend only).
Three things make it run outside NVIDIA's container, each learnt the hard way:

* ``--backend-directory`` must name a folder holding ``python/`` with the stub that matches
  this interpreter's minor version; the wheel ships stubs per version separately, so a
  backend folder is assembled once under the cache directory.
* ``LD_LIBRARY_PATH`` needs the wheel's bundled libraries (the stub links libcudart) and the
  interpreter's own ``LIBDIR`` first, or the stub mixes the system libpython with this venv.
* this venv's ``bin`` first on ``PATH``, so the stub's python imports numpy from here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

from lumbarseg.services import await_ready

CACHE = Path(os.environ.get("LUMBARSEG_CACHE", Path.home() / ".cache" / "lumbarseg"))


class TritonError(RuntimeError):
    """A Triton server could not start, cannot be reached, or refused a request; the message
    names the server (URL or repository) and the reason."""


def _pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__path__[0]).parent


def backend_directory() -> Path:
    """A backends folder whose python backend carries the stub for this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = _pytriton_root()
    target = CACHE / f"triton-backends-py{version}"
    stub = target / "python" / "triton_python_backend_stub"
    if not stub.is_file():
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(root / "pytriton" / "tritonserver" / "backends", tmp)
        shutil.copy2(root / "pytriton" / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                     tmp / "python" / "triton_python_backend_stub")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def server_environment() -> dict[str, str]:
    root = _pytriton_root()
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR"), str(root / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class TritonServer:
    """A ``tritonserver`` process serving ``repository`` on 127.0.0.1; a context manager.

    ``config_name="cpu"`` selects each model's ``configs/cpu.pbtxt`` (python backend running
    onnxruntime) instead of its GPU ``config.pbtxt``. Models load explicitly (model control
    mode ``explicit``), all at start, so a retrained model can be reloaded without a restart.
    ``log_path``: the server's log file; ``"-"`` for this process's terminal; None to discard it.
    """

    def __init__(self, repository: str | Path, *, http_port: int = 8010, grpc_port: int = 8011,
                 config_name: str | None = None, log_path: str | Path | None = None):
        self.repository = Path(repository).resolve()
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.config_name = config_name
        self.log_path = None if log_path is None else "-" if str(log_path) == "-" else Path(log_path)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        binary = _pytriton_root() / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        cmd = [
            str(binary), f"--model-repository={self.repository}", f"--backend-directory={backend_directory()}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", "--allow-metrics=false",
            "--disable-auto-complete-config", "--exit-timeout-secs=5",
            "--model-control-mode=explicit", "--load-model=*",
        ]
        if self.config_name:
            cmd.append(f"--model-config-name={self.config_name}")
        return cmd

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 120.0) -> "TritonServer":
        if not self.repository.is_dir():
            raise TritonError(f"{self.repository}: model repository not found")
        if self.log_path is None:
            log = subprocess.DEVNULL
        elif self.log_path == "-":
            log = None  # this process's stdout
        else:
            log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), env=server_environment(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        await_ready("tritonserver", self, timeout=timeout, poll=0.5, error=TritonError,
                    log=self.log_path if isinstance(self.log_path, Path) else None)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
