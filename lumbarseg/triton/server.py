"""Start and stop a real ``tritonserver`` on loopback.

The binary comes from the ``nvidia-pytriton`` wheel (Triton 2.51 with the python backend only).
Three things make it run outside NVIDIA's container, each learnt the hard way:

* ``--backend-directory`` must name a folder holding ``python/`` with the stub that matches
  this interpreter's minor version; the wheel ships stubs per version separately, so a
  backend folder is assembled once under the cache directory.
* ``LD_LIBRARY_PATH`` needs the wheel's bundled libraries (the stub links libcudart) and the
  interpreter's own ``LIBDIR`` first, or the stub mixes the system libpython with this venv.
* this venv's ``bin`` first on ``PATH``, so the stub's python imports numpy from here.

Locked down by default: both endpoints bind 127.0.0.1, and every API that runs a model or
changes what the server runs or where it writes (``inference``; ``model-repository``:
load/unload, including a load that sends its own ``file:1/model.py``; ``shared-memory``;
``trace``; ``logging``; ``statistics``) answers only requests carrying the admin key, as the
header ``lumbarseg-admin-key`` (HTTP) or the metadata ``triton-grpc-protocol-lumbarseg-admin-key``
(gRPC; Triton prefixes the name). Health, server and model metadata and model configs stay
open. Inference is gRPC only: on HTTP it sits behind a header whose value is drawn at each
start and kept nowhere, so nobody holds it. Triton 2.51's HTTP frontend allocates a JSON input
from its declared shape before it counts the values sent: one request declaring
``[3, 20000, 20000, 20000]`` aborts the server (``std::bad_alloc``), with or without a key; the
restricted-API check comes before that parse (measured: 403, server up). gRPC checks the bytes
sent against the declared shape first (400). The key is the
``LUMBARSEG_TRITON_KEY`` environment variable, else the file named by
``LUMBARSEG_TRITON_KEY_FILE`` (default ``~/.cache/lumbarseg/triton-admin-key``), created with
mode 0600 at the first start; :class:`lumbarseg.triton.client.TritonSegmenter` reads it the
same way. tritonserver takes the key on its command line, so local users who can list this
user's processes can read it: the key keeps network clients out, not other accounts on the
same host.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import signal
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

from lumbarseg.services import await_ready

CACHE = Path(os.environ.get("LUMBARSEG_CACHE", Path.home() / ".cache" / "lumbarseg"))
# The restricted APIs and the header that unlocks them (gRPC metadata keys are lower case).
ADMIN_HEADER = "lumbarseg-admin-key"
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER  # the metadata key Triton checks on gRPC
RESTRICTED_APIS = ("inference", "model-repository", "shared-memory", "trace", "logging", "statistics")
SEALED_HEADER = "lumbarseg-sealed"  # HTTP inference: a header whose value nobody is given
DEFAULT_URL = "grpc://127.0.0.1:8011"  # where clients find a local server's inference (gRPC only)
KEY_ENV = "LUMBARSEG_TRITON_KEY"
KEY_FILE_ENV = "LUMBARSEG_TRITON_KEY_FILE"


class TritonError(RuntimeError):
    """A Triton server could not start, cannot be reached, or refused a request; the message
    names the server (URL or repository) and the reason."""


def key_file() -> Path:
    """Where the admin key lives when ``LUMBARSEG_TRITON_KEY`` is not set."""
    return Path(os.environ.get(KEY_FILE_ENV) or CACHE / "triton-admin-key")


def admin_key(create: bool = False) -> str | None:
    """The key that unlocks Triton's restricted APIs: ``$LUMBARSEG_TRITON_KEY``, else the key
    file's content; with ``create``, a new random key is written to the key file (mode 0600)
    when there is none. None when there is no key and ``create`` is false. A key file that
    others may read or write is refused (:class:`TritonError`): it would hand them the server."""
    key = os.environ.get(KEY_ENV, "").strip()
    if key:
        return key
    path = key_file()
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TritonError(f"{path}: the Triton admin key file is readable or writable by others "
                          f"(mode {stat.S_IMODE(mode):o}); chmod 600 it")
    key = path.read_text().strip()
    if not key:
        raise TritonError(f"{path}: the Triton admin key file is empty")
    return key


def admin_headers(key: str | None) -> dict[str, str]:
    """The gRPC metadata that carries ``key``; empty without a key."""
    return {GRPC_ADMIN_HEADER: key} if key else {}


def restricted_api_arguments(key: str, sealed: str | None = None) -> list[str]:
    """tritonserver flags that put :data:`RESTRICTED_APIS` behind ``ADMIN_HEADER: key`` on gRPC
    and, except inference, on HTTP; HTTP inference goes behind ``SEALED_HEADER: sealed`` (default:
    a fresh random value that is not kept, which closes it)."""
    sealed = sealed or secrets.token_hex(16)
    for value in (key, sealed):
        if not value or any(c in value for c in ":=, \t\n"):
            raise TritonError("the Triton admin key must be non-empty without ':', '=', ',' or whitespace")
    http_apis = ",".join(api for api in RESTRICTED_APIS if api != "inference")
    return [f"--http-restricted-api={http_apis}:{ADMIN_HEADER}={key}",
            f"--http-restricted-api=inference:{SEALED_HEADER}={sealed}",
            f"--grpc-restricted-protocol={','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={key}"]


def set_config_parameter(text: str, key: str, value: str) -> str:
    """``text`` (a config.pbtxt) with the string parameter ``key`` set to ``value`` (added if absent)."""
    pattern = re.compile(r'(parameters\s*\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{\s*string_value:\s*")[^"]*(")')
    if pattern.search(text):
        return pattern.sub(lambda m: m.group(1) + value + m.group(2), text)
    return text + f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


def scaled_config_name(config_name: str, instances: int, threads: int) -> str:
    """The name :func:`scaled_configs` gives its copies of ``config_name``."""
    return f"{config_name}_{instances}x{threads}"


def scaled_configs(repository: Path, config_name: str, *, instances: int, threads: int) -> str:
    """Write, beside every model's ``configs/<config_name>.pbtxt``, a copy with ``instances``
    CPU instances and ``threads`` onnxruntime threads per instance (``intra_op_threads``;
    ignored by a model that runs no network), named ``<config_name>_<instances>x<threads>``;
    return that name (:attr:`TritonServer.model_config_name`). Generated beside the original
    rather than in a copy of the repository so that versions exported later (a retrained model)
    are seen."""
    if instances < 1 or threads < 1:
        raise TritonError(f"instances and threads must be at least 1 (got {instances} and {threads})")
    name = scaled_config_name(config_name, instances, threads)
    sources = sorted(Path(repository).glob(f"*/configs/{config_name}.pbtxt"))
    if not sources:
        raise TritonError(f"{repository}: no model has configs/{config_name}.pbtxt to scale")
    for source in sources:
        text, groups = re.subn(r"(instance_group\s*\[\s*\{\s*kind:\s*KIND_CPU\s+count:\s*)\d+", rf"\g<1>{instances}",
                               source.read_text())
        if groups != 1:
            raise TritonError(f"{source}: expected one KIND_CPU instance_group to scale, found {groups}")
        if 'key: "intra_op_threads"' in text:
            text = set_config_parameter(text, "intra_op_threads", str(threads))
        target = source.with_name(f"{name}.pbtxt")
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    return name


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
    mode ``explicit``), all at start, so a retrained model can be reloaded without a restart;
    loading and the other restricted APIs need ``key`` (default :func:`admin_key`, created at
    the first start). ``address``: the interface both endpoints bind (loopback unless a
    deployment says otherwise).
    ``log_path``: the server's log file; ``"-"`` for this process's terminal; None to discard it.
    ``instances`` / ``threads``: serve ``config_name``'s configs scaled to that many instances
    per model and onnxruntime threads per instance (:func:`scaled_configs`; several instances
    serve concurrent requests side by side, each holding its own request's memory).
    """

    def __init__(self, repository: str | Path, *, http_port: int = 8010, grpc_port: int = 8011,
                 config_name: str | None = None, log_path: str | Path | None = None,
                 address: str = "127.0.0.1", key: str | None = None,
                 instances: int | None = None, threads: int | None = None):
        self.repository = Path(repository).resolve()
        self.address = address
        self.key = key
        self.http_port = http_port
        self.grpc_port = grpc_port
        if (instances or threads) and not config_name:
            raise TritonError("instances and threads scale a CPU config: name one (config_name='cpu')")
        self.config_name = config_name
        self.scale = (instances or 1, threads or max(1, (os.cpu_count() or 1) // (instances or 1))) \
            if instances or threads else None
        self.log_path = None if log_path is None else "-" if str(log_path) == "-" else Path(log_path)
        self.process: subprocess.Popen | None = None

    @property
    def model_config_name(self) -> str | None:
        """``--model-config-name``: ``config_name``, or its scaled copies' name (:func:`scaled_configs`)."""
        return scaled_config_name(self.config_name, *self.scale) if self.scale else self.config_name

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"{host}:{self.http_port}"

    def command(self) -> list[str]:
        binary = _pytriton_root() / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        if self.key is None:
            self.key = admin_key(create=True)
        cmd = [
            str(binary), f"--model-repository={self.repository}", f"--backend-directory={backend_directory()}",
            f"--http-address={self.address}", f"--grpc-address={self.address}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", "--allow-metrics=false",
            "--disable-auto-complete-config", "--exit-timeout-secs=5",
            "--model-control-mode=explicit", "--load-model=*",
            *restricted_api_arguments(self.key),
        ]
        if self.model_config_name:
            cmd.append(f"--model-config-name={self.model_config_name}")
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
        if self.scale:
            scaled_configs(self.repository, self.config_name, instances=self.scale[0], threads=self.scale[1])
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
