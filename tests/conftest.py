"""Shared fixtures. Real data is read from ``../shared/data`` beside the repository, or from
``$LUMBARSEG_DATA``; tests that need it skip without it, except in CI where it must be there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("LUMBARSEG_DATA", REPO.parent / "shared" / "data"))
    if not (path / "manifest.csv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the shared data at {path}")
        pytest.skip(f"no shared data at {path}")
    return path


def load_module(path: str):
    """A script or benchmark of the repository (``path`` relative to its root) as a module,
    loaded once per test session."""
    import importlib.util
    import sys

    name = Path(path).stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def security_probe():
    """``benchmarks/security_probe.py`` as a module (loaded once): its raw HTTP client, its kinds
    of hostile request and its stand-in Keycloak realm, which the tests send as the probe does."""
    return load_module("benchmarks/security_probe.py")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def untrained_weights(folder: Path, spacing: float) -> Path:
    """A weights folder of randomly initialised lite networks (seeded): servers and exports can
    be tested without trained weights; ``spacing`` (mm) sets the model grid, coarse is cheap."""
    import torch

    from lumbarseg import pipeline, planes, tissues
    from lumbarseg.networks.fusion import fusion_net
    from lumbarseg.networks.plane_net import plane_net

    torch.manual_seed(0)
    k = tissues.NUM_TISSUES
    pipeline.save_model(Path(folder), {p: plane_net(preset="lite", num_classes=k) for p in planes.PLANES},
                        fusion_net(num_classes=k), {"preset": "lite", "spacing_mm": spacing})
    return Path(folder)
