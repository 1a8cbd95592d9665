"""docker-compose.yml is valid (compose specification) and describes what the README says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def test_compose_file_matches_the_compose_spec() -> None:
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"valkey", "cluster-1", "cluster-2", "cluster-3", "cluster-init", "backends",
            "worker-1", "worker-2", "watch", "demo", "demo-cluster"} <= set(services)
    init = " ".join(services["cluster-init"]["command"])
    assert "--cluster create cluster-1:7001 cluster-2:7002 cluster-3:7003" in init
    # The fleet shares one server and one prefix across containers: backends, workers
    # and the watcher.
    for name in ("backends", "worker-1", "worker-2", "watch"):
        cmd = services[name]["command"]
        assert cmd[cmd.index("--prefix") + 1] == "distlb-fleet"
        assert cmd[cmd.index("--redis-url") + 1] == "redis://valkey:6379/0"
    assert services["worker-2"]["command"] == services["worker-1"]["command"]
    assert "--advertise" in services["backends"]["command"]
