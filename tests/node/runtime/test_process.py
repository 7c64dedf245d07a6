"""Node processes on loopback: groups form and train over Flower; members and hosts can die."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.config import NodeConfig
from node.learning.partition import PartitionSpec
from node.runtime.process import NodeProcess, ProcessOptions
from tests.support.registry_proc import RegistryProcess
from tests.support.stranger import Stranger

pytestmark = pytest.mark.slow

TTL = 4.0  # heartbeats every 0.5 s: a busy machine must not expire a live node
NODES = 4


class NodeProcs:
    """Node subprocesses started with `python -m node`, each logging to its own file."""

    def __init__(self, tmp: Path, registry_url: str) -> None:
        self.tmp = tmp
        self.url = registry_url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, index: int, *extra: str) -> str:
        node_id = f"n{index}"
        cmd = [
            sys.executable, "-m", "node",
            "--registry-url", self.url,
            "--node-id", node_id,
            "--data-dir", str(self.tmp / "data" / node_id),
            "--address", "127.0.0.1:0",
            "--listen", "127.0.0.1:0",
            "--partition", "clustered", "--clusters", "2",
            "--num-partitions", str(NODES), "--partition-id", str(index),
            "--max-capacity", "2",
            "--heartbeat-interval-s", "0.5",
            "--group-evaluation-interval-s", "60",
            "--round-pause-s", "0.3", "--join-wait-s", "1", "--round-timeout-s", "5",
            *extra,
        ]  # fmt: skip
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
        log = (self.tmp / f"{node_id}.log").open("ab")
        self.procs[node_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return node_id

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:])
            for p in sorted(self.tmp.glob("n*.log"))
        )

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[RegistryProcess, NodeProcs]]:
    registry = RegistryProcess(
        tmp_path / "r", extra=["--heartbeat-ttl", str(TTL), "--sweep-interval", "0.5"]
    ).start()
    nodes = NodeProcs(tmp_path, registry.url)
    try:
        yield registry, nodes
    finally:
        nodes.kill_all()
        registry.stop()


def groups(url: str) -> dict[int, dict[str, Any]]:
    """Live groups by id, with their members."""
    out = {}
    for g in httpx.get(f"{url}/groups", timeout=5).json()["data"]:
        detail = httpx.get(f"{url}/groups/{g['id']}", timeout=5).json()
        detail["member_ids"] = sorted(m["id"] for m in detail["members"])
        out[g["id"]] = detail
    return out


def node_info(url: str, node_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/nodes/{node_id}", timeout=5).json())


def wait_until(check: Callable[[], Any], timeout: float, what: str, nodes: NodeProcs) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{nodes.logs()}")


def test_nodes_train_in_groups_and_survive_a_dead_member_and_a_dead_host(
    network: tuple[RegistryProcess, NodeProcs],
) -> None:
    # Prepare: one node per hidden cluster first, so each creates a group; then one more each.
    # n1 starts once n0's group holds a snapshot: a group seen before its first snapshot
    # can't be scored, and a node that can score no group joins the best reported one.
    registry, nodes = network
    url = registry.url
    nodes.start(0)
    wait_until(
        lambda: any(g["model_round"] is not None for g in groups(url).values()),
        90,
        "n0's group and its first snapshot",
        nodes,
    )
    nodes.start(1)
    wait_until(
        lambda: all(node_info(url, n).get("group_id") for n in ("n0", "n1")),
        90,
        "n0, n1 placed",
        nodes,
    )
    nodes.start(2)
    nodes.start(3)

    def full_groups() -> dict[int, dict[str, Any]] | None:
        gs = groups(url)
        ok = len(gs) == 2 and all(
            len(g["member_ids"]) == 2 and g["host_node_id"] for g in gs.values()
        )
        return gs if ok else None

    formed = wait_until(full_groups, 90, "two groups of two with hosts", nodes)
    start_rounds = {gid: g["model_round"] for gid, g in formed.items()}

    # Execute / assert: every group completes at least 3 rounds with all its members.
    wait_until(
        lambda: all(groups(url)[gid]["model_round"] >= r + 3 for gid, r in start_rounds.items()),
        60, "3 rounds in each group", nodes,
    )  # fmt: skip

    # A non-host member dies: the registry expires it and its group goes on.
    gid_a, group_a = sorted(formed.items())[0]
    member = next(m for m in group_a["member_ids"] if m != group_a["host_node_id"])
    nodes.procs[member].send_signal(signal.SIGKILL)
    wait_until(lambda: node_info(url, member)["status"] == "inactive", 30, "expiry", nodes)
    after_expiry = groups(url)[gid_a]["model_round"]
    wait_until(
        lambda: groups(url)[gid_a]["model_round"] >= after_expiry + 2,
        30, f"group {gid_a} rounds after {member} expired", nodes,
    )  # fmt: skip

    # A host dies: the other member claims the hosting and resumes from the latest round.
    gid_b, group_b = sorted(formed.items())[1]
    before = groups(url)[gid_b]
    host = before["host_node_id"]
    heir = next(m for m in before["member_ids"] if m != host)
    nodes.procs[host].send_signal(signal.SIGKILL)
    killed_at_round = groups(url)[gid_b]["model_round"]

    def taken_over() -> bool:
        g = groups(url)[gid_b]
        return bool(
            g["host_node_id"] == heir
            and g["host_epoch"] > before["host_epoch"]
            and g["model_round"] >= killed_at_round + 2
        )

    wait_until(taken_over, 45, f"{heir} hosting group {gid_b} with rising rounds", nodes)
    assert groups(url)[gid_b]["member_ids"] == [heir]

    # SIGTERM: the survivors leave their groups and exit cleanly.
    survivors = [n for n in nodes.procs if n not in (member, host)]
    for n in survivors:
        nodes.procs[n].send_signal(signal.SIGTERM)
    for n in survivors:
        assert nodes.procs[n].wait(30) == 0, nodes.logs()
        assert node_info(url, n)["group_id"] is None


def test_a_node_restarted_with_its_id_and_data_dir_keeps_its_identity(
    network: tuple[RegistryProcess, NodeProcs],
) -> None:
    registry, nodes = network

    def updates() -> int:
        params = {"type": "node_updated", "node_id": "n0"}
        return len(httpx.get(f"{registry.url}/events", params=params, timeout=5).json()["data"])

    # Prepare: n0 registers and heartbeats, then dies without a word
    nodes.start(0, "--warmup-epochs", "0")
    wait_until(lambda: node_info(registry.url, "n0").get("status") == "active", 60, "n0", nodes)
    nodes.procs["n0"].kill()
    nodes.procs["n0"].wait(10)
    credential = next((nodes.tmp / "data" / "n0" / "credentials").rglob("n0.json"))
    token = credential.read_text()
    before, log_size = updates(), (nodes.tmp / "n0.log").stat().st_size

    # Execute: the same id and data dir again
    nodes.start(0, "--warmup-epochs", "0")
    wait_until(lambda: updates() > before, 60, "n0 to register again", nodes)
    beat = node_info(registry.url, "n0")["last_heartbeat"]
    wait_until(lambda: node_info(registry.url, "n0")["last_heartbeat"] > beat, 30, "a beat", nodes)

    # Assert: recognised by its stored token, never refused
    after = (nodes.tmp / "n0.log").read_bytes()[log_size:].decode(errors="replace")
    assert credential.read_text() == token
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    assert " 401" not in after and " 403" not in after, after[-3000:]


def test_dry_run_accepts_the_flags_and_exits(tmp_path: Path) -> None:
    # Execute
    out = subprocess.run(
        [sys.executable, "-m", "node", "--registry-url", "http://registry:8000",
         "--address", "auto:7000", "--partition-id", "auto", "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    bad = subprocess.run(
        [sys.executable, "-m", "node", "--partition-id", "7", "--num-partitions", "4", "--dry-run"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    # Assert
    assert out.returncode == 0, out.stderr
    assert "settings are valid" in out.stdout
    assert bad.returncode == 2
    assert "out of range" in bad.stderr


def test_auto_partition_ids_follow_registration_order(
    sqlite_registry: RegistryProcess, tmp_path: Path
) -> None:
    # Prepare: three nodes of a fresh domain, registered one after another
    domain = "ordinal-test"
    procs = [
        NodeProcess(
            NodeConfig(
                registry_url=sqlite_registry.url,
                node_id=f"auto-{i}",
                data_dir=tmp_path,
                node_address="127.0.0.1:0",
                domain=domain,
            ),
            PartitionSpec(num_partitions=2),
            ProcessOptions(warmup_epochs=0),
            partition_id=None,
        )
        for i in range(3)
    ]

    # Execute
    for proc in procs:
        proc.prepare()

    # Assert: ordinals 0, 1, 2 modulo 2 partitions; each node holds its share's data
    assert [p.partition_id for p in procs] == [0, 1, 0]
    first, second, third = (p.learner.data for p in procs)
    assert first.index == third.index == 0 and second.index == 1
    for proc in procs:
        proc.client.close()


def test_a_process_deployment_measures_and_pays_contributions(
    network: tuple[RegistryProcess, NodeProcs],
) -> None:
    # Prepare: three node processes that fit one group (capacity 3, one hidden cluster);
    # the first creates it, and the others follow the best reported group into it
    registry, nodes = network
    url = registry.url
    flags = ("--max-capacity", "3", "--clusters", "1", "--policy", "reported")
    ids = [nodes.start(0, *flags)]
    wait_until(lambda: node_info(url, "n0").get("group_id"), 90, "n0 placed", nodes)
    ids += [nodes.start(i, *flags) for i in (1, 2)]

    def paid_rounds() -> dict[int, set[str]] | None:
        entries = httpx.get(f"{url}/ledger", params={"limit": 1000}, timeout=5).json()["data"]
        by_round: dict[int, set[str]] = {}
        for e in entries:
            by_round.setdefault(e["round"], set()).add(e["node_id"])
        full = {r: who for r, who in by_round.items() if len(who) == 3}
        return full if len(full) >= 2 else None

    # Execute: wait until two rounds have paid every member of a three-member group
    rounds = wait_until(paid_rounds, 120, "two rounds with ledger entries for all three", nodes)

    # Assert: the entries name the three processes, and the registry knows the host paid them
    assert all(who == set(ids) for who in rounds.values())
    balances = {n: httpx.get(f"{url}/nodes/{n}/balance", timeout=5).json() for n in ids}
    assert all(b["entries"] >= 2 for b in balances.values())
    events = httpx.get(f"{url}/events", params={"limit": 1000}, timeout=5).json()["data"]
    assert any(e["type"] == "reward" for e in events)


def test_a_harmful_candidate_snapshot_leaves_a_node_process_alive(
    network: tuple[RegistryProcess, NodeProcs],
) -> None:
    # Prepare: the best-looking group in the domain holds a model whose loss overflows
    registry, nodes = network
    url = registry.url
    with Stranger(url) as stranger:
        bad = stranger.group_id

        # Execute: a node process scores the candidates, then re-scores them every second
        node_id = nodes.start(0, "--group-evaluation-interval-s", "1")
        log_path = nodes.tmp / f"{node_id}.log"
        _wait_for_the_node(url, nodes, node_id, log_path, bad)

        # Assert: the process lives on in a group of its own; nobody joined the bad group
        assert nodes.procs[node_id].poll() is None, nodes.logs()
        assert node_info(url, node_id)["group_id"] != bad
        assert groups(url)[bad]["member_ids"] == ["stranger"]
        assert "Traceback" not in log_path.read_text(errors="replace")


def _wait_for_the_node(url: str, nodes: NodeProcs, node_id: str, log_path: Path, bad: int) -> None:
    """Until the node has skipped the bad snapshot twice and its own group trained 2 rounds."""

    def scored_twice_and_trained() -> bool:
        text = log_path.read_text(errors="replace")
        own = node_info(url, node_id).get("group_id")
        trained = bool(own) and groups(url).get(own, {}).get("model_round", 0) >= 2
        return text.count(f"snapshot of group {bad}") >= 2 and trained

    wait_until(scored_twice_and_trained, 120, "the bad snapshot skipped twice, rounds", nodes)


def test_a_node_of_another_architecture_is_refused_at_the_door(
    network: tuple[RegistryProcess, NodeProcs],
) -> None:
    # Prepare: a digits node sets the domain's model by creating its group
    registry, nodes = network
    url = registry.url
    nodes.start(0)
    wait_until(lambda: node_info(url, "n0").get("group_id"), 90, "n0 placed", nodes)

    # Execute: a Fashion-MNIST node asks to join the same domain
    log = nodes.tmp / "fashion.log"
    with log.open("wb") as out:
        fashion = subprocess.run(
            [sys.executable, "-m", "node", "--registry-url", url, "--node-id", "fash",
             "--address", "127.0.0.1:0", "--dataset", "fashion", "--domain", "digits",
             "--samples-per-node", "60", "--warmup-epochs", "0"],
            stdout=out, stderr=subprocess.STDOUT, timeout=300,
        )  # fmt: skip
    text = log.read_text(errors="replace")

    # Assert: one clear line, no traceback, and the digits group untouched
    assert fashion.returncode == 2, text
    assert "refuses this node's model in domain 'digits'" in text
    assert "Traceback" not in text
    assert all(g["member_ids"] == ["n0"] for g in groups(url).values())
