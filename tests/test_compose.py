"""docker-compose.yml is valid (compose specification) and describes what the README says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from distlb.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def test_compose_file_matches_the_compose_spec() -> None:
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"valkey", "cluster-init", "backends", "worker-1", "worker-2", "watch", "demo",
            "demo-cluster"} <= set(services)
    # The fleet shares one server and one prefix across containers: backends, workers
    # and the watcher.
    for name in ("backends", "worker-1", "worker-2", "watch"):
        cmd = services[name]["command"]
        assert cmd[cmd.index("--prefix") + 1] == "distlb-fleet"
        assert cmd[cmd.index("--redis-url") + 1] == "redis://valkey:6379/0"
    assert services["worker-2"]["command"] == services["worker-1"]["command"]
    assert "--advertise" in services["backends"]["command"]


def cluster_nodes(services: dict[str, Any]) -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in services.items()
            if name.startswith("cluster-") and name != "cluster-init"}


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_cluster_has_a_replica_per_primary_and_survives_a_dark_shard() -> None:
    """The README's failover advice ("Operating at scale"): one replica per primary, and
    cluster-require-full-coverage no on every node, so healthy shards keep answering."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    nodes = cluster_nodes(services)
    assert len(nodes) == 6
    init = services["cluster-init"]["command"]
    created = init[init.index("create") + 1:init.index("--cluster-replicas")]
    assert option(init, "--cluster-replicas") == "1"
    assert len(created) == len(nodes) == 3 * (1 + 1)        # 3 primaries, 1 replica each
    assert set(services["cluster-init"]["depends_on"]) == set(nodes)
    for name, command in nodes.items():
        assert option(command, "--cluster-require-full-coverage") == "no", name
        assert option(command, "--cluster-enabled") == "yes", name
        port = option(command, "--port")
        assert f"{name}:{port}" in created
        assert option(command, "--cluster-announce-hostname") == name
        assert services[name]["healthcheck"]["test"][-2] == port
    assert "--cluster-replicas" in init and "--cluster-yes" in init
    url = option(services["demo-cluster"]["command"], "--redis-url")
    assert url.removeprefix("redis://").removesuffix("/0") in created


@pytest.mark.real_server
def test_every_cluster_node_option_is_one_the_server_takes() -> None:
    """Each node's options, on a real server binary (on a free port): it starts, and the
    settings the failover advice depends on are in force."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    command = cluster_nodes(services)["cluster-1"]
    args = command[1:]
    i = args.index("--port")
    del args[i:i + 2]
    with EmbeddedServer(extra_args=args) as node:
        c = node.client(decode_responses=True)
        try:
            assert c.config_get("cluster-require-full-coverage") == {
                "cluster-require-full-coverage": "no"}
            assert c.config_get("cluster-node-timeout") == {"cluster-node-timeout": "500"}
            assert c.config_get("cluster-enabled") == {"cluster-enabled": "yes"}
        finally:
            c.close()
