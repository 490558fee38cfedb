"""The deployment files parse and are consistent with the repository and with each other:
the paths they build from or mount exist, the Triton ports the app uses are the ones Triton
listens on and publishes, the Kubernetes Service reaches the replicas' ports. (Nothing here
runs Docker or a cluster; this machine has neither a GPU nor a container runtime.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
REPO = DOCKER.parent


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def triton_ports(command: list[str]) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for arg in command if (m := re.fullmatch(r"--(\w+)-port=(\d+)", arg))}


def test_compose_builds_and_mounts_what_exists():
    services = compose()["services"]
    assert set(services) == {"triton", "app", "orthanc"}
    for service in services.values():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context == REPO
            dockerfile = context / service["build"]["dockerfile"]
            assert dockerfile.is_file()
            for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile.read_text(), re.M):
                assert all((context / s).exists() for s in source.split()), f"{dockerfile}: COPY {source}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).is_dir(), volume
    assert services["triton"]["volumes"] == ["../model_repository:/models:ro"]
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_app_reaches_triton_on_the_port_triton_serves():
    services = compose()
    triton_cmd = re.search(r'^CMD \[(.*?)\]$', (DOCKER / "Dockerfile.triton").read_text(), re.M | re.S).group(1)
    ports = triton_ports([a.strip().strip('"') for a in triton_cmd.replace("\\\n", " ").split(",")])
    assert ports == {"http": 8010, "grpc": 8011, "metrics": 8012}
    published = {int(p.split(":")[1]) for p in services["services"]["triton"]["ports"]}
    assert set(ports.values()) <= published
    app = services["services"]["app"]["command"]
    conf = {app[i + 1]: app[i + 2] for i, a in enumerate(app) if a == "--conf"}
    assert conf == {"backend": "triton", "triton_url": f"grpc://triton:{ports['grpc']}"}
    assert 8000 not in published  # MONAI Label's port stays the app's
    assert "8000:8000" in services["services"]["app"]["ports"]


def test_kubernetes_replicas_sit_behind_a_service_on_their_ports():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DOCKER / "k8s" / "triton.yaml").read_text())}
    deployment, service = docs["Deployment"], docs["Service"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert triton_ports(container["args"]) == named
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(named)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    claim = next(v for v in pod["spec"]["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    assert docs["PersistentVolumeClaim"]["metadata"]["name"] == claim
