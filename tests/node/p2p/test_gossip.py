"""Gossip mode: Cyclon views (pure), 8 churning members against FedAvg, the real registry,
and strangers' claims and models (ages, wild models) against robust members."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from node.addresses import Address
from node.errors import ConfigError
from node.federation.inprocess import train_in_memory
from node.learning.data import Dataset
from node.learning.learner import model_weights
from node.learning.merge import age_weighted_merge
from node.learning.models import build_model
from node.learning.partition import NodeData, partition
from node.p2p.auth import auth_from_config
from node.p2p.codecs import DenseCodec, QuantizeCodec
from node.p2p.config import P2PSection, load_config
from node.p2p.gossip import (
    AGE_META,
    DOMAIN_META,
    MODEL,
    Descriptor,
    GossipNode,
    ModelBuffer,
    TrainingConfig,
    answer_shuffle,
    bootstrap_view,
    merge_view,
    start_shuffle,
)
from node.p2p.transport import Envelope, send
from tests.node.helpers import digits_learner
from tests.node.p2p.signing import AUTH, SECRET
from tests.support.registry_proc import RegistryProcess

# --- Cyclon, pure --------------------------------------------------------------------


def _d(i: int, age: int = 0) -> Descriptor:
    return Descriptor(f"n{i}", f"127.0.0.1:{5000 + i}", age)


def test_bootstrap_view_is_bounded_distinct_and_excludes_oneself() -> None:
    view = bootstrap_view([_d(i) for i in range(10)] + [_d(3)], "n0", 4, random.Random(0))

    ids = [d.node_id for d in view]
    assert len(ids) == 4 and len(set(ids)) == 4 and "n0" not in ids


def test_a_shuffle_targets_the_oldest_and_offers_a_fresh_self() -> None:
    view = [_d(1, 3), _d(2, 7), _d(3, 1), _d(4, 0)]

    target, sent, rest = start_shuffle(view, _d(0, 9), 3, random.Random(0))

    assert target is not None and target.node_id == "n2"
    assert sent[0] == _d(0, 0) and len(sent) == 3
    assert "n2" not in [d.node_id for d in rest]
    assert all(
        d.age == o.age + 1 for d, o in zip(rest, [_d(1, 3), _d(3, 1), _d(4, 0)], strict=True)
    )


def test_merge_view_fills_free_slots_then_replaces_sent_entries() -> None:
    view = [_d(1), _d(2), _d(3)]

    merged = merge_view(view, [_d(0), _d(5), _d(6), _d(7)], sent=[_d(2)], self_id="n0", view_size=4)

    ids = {d.node_id for d in merged}
    assert ids == {"n1", "n3", "n5", "n6"}  # n5 filled the free slot, n6 replaced n2


def test_cyclon_keeps_a_network_connected_and_views_fresh() -> None:
    rng = random.Random(1)
    n, view_size, length = 30, 5, 3
    # Everyone starts knowing only the next two members of a ring.
    views = {f"n{i}": [_d((i + 1) % n), _d((i + 2) % n)] for i in range(n)}
    for _ in range(40):
        for i in range(n):
            me = f"n{i}"
            target, sent, rest = start_shuffle(views[me], _d(i), length, rng)
            assert target is not None
            reply, views[target.node_id] = answer_shuffle(
                views[target.node_id], sent, target.node_id, length, view_size, rng
            )
            views[me] = merge_view(rest, reply, sent, me, view_size)

    indegree = {f"n{i}": 0 for i in range(n)}
    for me, view in views.items():
        assert len(view) == view_size and me not in {d.node_id for d in view}
        for d in view:
            indegree[d.node_id] += 1
    assert min(indegree.values()) >= 1  # nobody is forgotten
    assert max(indegree.values()) <= 3 * view_size  # nobody is a hub


def test_age_weighted_merge_favours_the_older_model() -> None:
    own, other = [np.zeros(3, dtype=np.float32)], [np.ones(3, dtype=np.float32)]

    merged, age = age_weighted_merge(own, 3, other, 1)

    np.testing.assert_allclose(merged[0], 0.25)
    assert age == 3
    assert age_weighted_merge(own, 0, other, 0)[0][0][0] == pytest.approx(0.5)


# --- an in-memory registry for the in-process group ----------------------------------


@dataclass
class _Member:
    id: str
    address: str


@dataclass
class _Group:
    members: list[_Member]


@dataclass
class _Snapshot:
    data: bytes
    round: int


@dataclass
class _Board:
    """The state an in-memory registry shares between its members' clients."""

    members: dict[str, str] = field(default_factory=dict)
    snapshot: _Snapshot | None = None
    reports: list[tuple[str, float, int]] = field(default_factory=list)
    heartbeats: int = 0


class _FakeRegistry:
    """One member's client of the in-memory registry (the GossipRegistry protocol)."""

    def __init__(self, board: _Board) -> None:
        self.board = board
        self.me = ""
        self.address = ""

    def register(
        self,
        node_id: str,
        address: str,
        domain: str,
        capabilities: Mapping[str, Any] | None = None,
        *,
        public_key: str | None = None,
    ) -> object:
        self.me, self.address = node_id, address
        return None

    def get_node(self, node_id: str | None = None) -> _Member:
        raise AssertionError("members here sign with the shared secret: no key lookups")

    def join(self, group_id: int) -> object:
        self.board.members[self.me] = self.address
        return None

    def leave(self) -> int:
        self.board.members.pop(self.me, None)
        return 1

    def get_group(self, group_id: int) -> _Group:
        return _Group([_Member(i, a) for i, a in self.board.members.items()])

    def heartbeat(self, metrics: Mapping[str, float] | None = None) -> object:
        self.board.heartbeats += 1
        return None

    def report_performance(
        self,
        group_id: int,
        *,
        value: float,
        round: int,
        num_examples: int = 1,
        metric: str = "accuracy",
    ) -> object:
        self.board.reports.append((self.me, value, round))
        return None

    def upload_model(self, group_id: int, round: int, data: bytes) -> object:
        if self.board.snapshot is None or round > self.board.snapshot.round:
            self.board.snapshot = _Snapshot(data, round)
        return None

    def download_model(self, group_id: int, round: int | None = None) -> _Snapshot | None:
        return self.board.snapshot


def _mean_val_accuracy(nodes: Sequence[GossipNode], data: Sequence[NodeData]) -> float:
    accs = [
        digits_learner(d).evaluate("val", weights=n.weights()).accuracy
        for n, d in zip(nodes, data, strict=True)
    ]
    return float(np.mean(accs))


FEDAVG_ROUNDS = 5
# Stated budget: gossip matches FedAvg's 5 rounds x 8 members (40 local epochs) within
# this many model exchanges in the whole group (merges, one local epoch each).
EXCHANGE_BUDGET = 160


@pytest.mark.slow
def test_eight_churning_members_reach_fedavg_accuracy(digits: Dataset) -> None:
    torch.set_num_threads(1)
    data = partition(digits, 10, "iid", seed=0)  # 8 founders + 2 newcomers
    learners = [digits_learner(d) for d in data[:8]]
    weights = learners[0].get_weights()
    for rnd in range(1, FEDAVG_ROUNDS + 1):
        fedavg = train_in_memory(learners, weights, round_=rnd)
        weights = fedavg.weights
    assert fedavg.accuracy is not None
    target = fedavg.accuracy

    async def scenario() -> tuple[float, int, _Board, list[GossipNode]]:
        board = _Board()

        def member(i: int) -> GossipNode:
            return GossipNode(
                f"m{i}",
                "digits",
                build_model("digits", 0),
                0,
                TrainingConfig(batch_size=32, epochs=1, learning_rate=0.05),
                auth=AUTH,
                registry=_FakeRegistry(board),
                group_id=1,
                view_size=4,
                shuffle_length=2,
                period=0.05,
                seed=i,
                report_every=5,
            )

        nodes = [member(i) for i in range(8)]
        tasks = {}
        for i, node in enumerate(nodes):
            await node.start()
            tasks[node.node_id] = asyncio.create_task(node.run_continuous(data[i]))
        total = lambda: sum(n.stats.merged for n in nodes)  # noqa: E731
        while total() < EXCHANGE_BUDGET // 2:
            await asyncio.sleep(0.05)
        # Churn: one member leaves, one crashes (no goodbye), two newcomers arrive.
        await nodes[0].stop()
        await nodes[1].stop(leave=False)
        board.members.pop("m1")  # the registry's liveness sweep would expire it
        for i in (8, 9):
            newcomer = member(i)
            nodes.append(newcomer)
            await newcomer.start()
            assert newcomer.age > 0  # bootstrapped from the group's snapshot
            tasks[newcomer.node_id] = asyncio.create_task(newcomer.run_continuous(data[i]))
        while total() < EXCHANGE_BUDGET:
            await asyncio.sleep(0.05)
        live = nodes[2:]
        for node in live:
            await node.stop()
        await asyncio.gather(*tasks.values())
        live_data = [data[i] for i in range(2, 10)]
        return _mean_val_accuracy(live, live_data), total(), board, nodes

    accuracy, exchanges, board, nodes = asyncio.run(scenario())

    assert exchanges <= EXCHANGE_BUDGET + 20
    assert accuracy >= target - 0.02, (accuracy, target)
    assert board.reports and board.heartbeats  # the registry saw the group
    dropped = sum(n.stats.dropped_peers for n in nodes[2:])
    assert dropped >= 1  # someone noticed the departed members


@pytest.mark.slow
def test_gossip_members_show_up_in_a_real_registry(tmp_path: Path, digits: Dataset) -> None:
    from node.registry_client import RegistryClient

    data = partition(digits, 4, "iid", seed=1)
    with RegistryProcess(tmp_path / "r") as reg:
        admin = RegistryClient(reg.url)
        admin.register("gossip-admin", "127.0.0.1:1", "digits")
        group = admin.create_group("gossipers", "digits", max_capacity=10, join=False)

        async def scenario() -> tuple[Any, int, list[GossipNode]]:
            def member(i: int) -> GossipNode:
                client = RegistryClient(reg.url)
                # Each member signs with its own key, kept in its data dir and registered.
                section = P2PSection(data_dir=tmp_path / f"g{i}")
                return GossipNode(
                    f"g{i}",
                    "digits",
                    build_model("digits", 0),
                    0,
                    TrainingConfig(),
                    auth=auth_from_config(section, registry=client),
                    registry=client,
                    group_id=group.id,
                    period=0.05,
                    seed=i,
                    report_every=4,
                )

            nodes = [member(i) for i in range(3)]
            tasks = []
            for i, node in enumerate(nodes):
                await node.start()
                tasks.append(asyncio.create_task(node.run_continuous(data[i])))
            while sum(n.stats.merged for n in nodes) < 30 or not all(
                n._registration and n._registration.reports for n in nodes
            ):
                await asyncio.sleep(0.05)
            during = admin.get_group(group.id)
            newcomer = member(3)
            await newcomer.start()
            newcomer_age = newcomer.age
            await newcomer.stop()
            for node in nodes:
                await node.stop()
            await asyncio.gather(*tasks)
            return during, newcomer_age, nodes

        during, newcomer_age, nodes = asyncio.run(scenario())
        after = admin.get_group(group.id)
        admin.close()

    assert sorted(m.id for m in during.members) == ["g0", "g1", "g2"]
    assert all(m.public_key for m in during.members)  # each published its key
    assert all(n.server.stats.refused == {} for n in nodes)  # every signed frame verified
    assert during.accuracy is not None and during.accuracy > 0.5  # performance reports arrived
    assert all("accuracy" in m.metrics for m in during.members)  # heartbeats with metrics
    assert after.model_round is not None and after.model_round > 0  # snapshots arrived
    assert 0 < newcomer_age <= after.model_round  # the newcomer started from a snapshot
    assert after.member_count == 0  # everyone left on stop


# --- strangers: age claims and wild models -------------------------------------------


async def _listening_member(
    data: NodeData, training: TrainingConfig, **options: Any
) -> tuple[GossipNode, asyncio.Task[Any]]:
    """A member that merges what it receives but, with an hour's period, never sends."""
    options.setdefault("auth", AUTH)
    node = GossipNode("g0", "digits", build_model("digits", 0), 0, training, period=3600, **options)
    await node.start()
    task = asyncio.create_task(node.run_continuous(data))
    await asyncio.sleep(0)  # run_continuous has made the learner
    return node, task


async def _send_model(node: GossipNode, sender: str, weights: list[np.ndarray], age: int) -> None:
    """Send ``weights`` claiming ``age``, and wait until ``node`` has handled it."""
    handled = node.age
    meta = {AGE_META: age, DOMAIN_META: "digits"}
    payload = DenseCodec().encode(weights).to_bytes()
    envelope = Envelope(sender=sender, kind=MODEL, round=age, payload=payload, meta=meta)
    await send(Address("127.0.0.1", node.server.port), envelope, auth=AUTH)
    for _ in range(2000):  # every handled model adds at least one to the age
        if node.age > handled:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{node.node_id} did not handle the model from {sender}")


def test_an_age_claim_of_a_billion_is_neither_reported_nor_uploaded_as_the_round(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare
    board = _Board()
    stranger_model = digits_learner(iid_digits_nodes[1], seed=1).get_weights()

    async def scenario() -> GossipNode:
        node, task = await _listening_member(
            iid_digits_nodes[0], TrainingConfig(), registry=_FakeRegistry(board), group_id=1
        )
        try:
            # Execute: a stranger claims its model has seen 10^9 updates
            await _send_model(node, "stranger", stranger_model, 10**9)
            await node.report_now()
        finally:
            await node.stop()
            await task
        return node

    node = asyncio.run(scenario())

    # Assert: the registry sees the member's own count (one merge, one local epoch)
    assert node.updates == 2
    assert [r for _, _, r in board.reports] == [2]
    assert board.snapshot is not None and board.snapshot.round == 2
    assert node.age <= node.max_age_jump + 1  # the claim counted for at most the jump
    assert node.stats.ages_clamped == 1


def test_a_model_buffer_gives_each_sender_one_slot() -> None:
    buffer = ModelBuffer(3)
    model = lambda v: [np.full(2, v)]  # noqa: E731

    for sender, value in [("a", 1.0), ("evil", -9.0), ("evil", -9.5), ("b", 2.0), ("evil", -10.0)]:
        buffer.add(sender, model(value))

    assert [m[0][0] for m in buffer.models()] == [1.0, 2.0, -10.0]
    buffer.add("c", model(3.0))  # a fourth sender: the oldest ("a") leaves
    assert [m[0][0] for m in buffer.models()] == [2.0, -10.0, 3.0]


def test_a_median_member_keeps_a_wild_peers_values_out_of_its_model(
    iid_digits_nodes: list[NodeData],
) -> None:
    # Prepare: two honest peers and one sending -10 x an honest model, three times
    honest = [digits_learner(iid_digits_nodes[i], seed=i).get_weights() for i in (1, 2)]
    wild = [-10.0 * t for t in honest[0]]
    start = model_weights(build_model("digits", 0))  # the member's own model, as built

    async def scenario() -> tuple[list[np.ndarray], GossipNode]:
        node, task = await _listening_member(
            iid_digits_nodes[0], TrainingConfig(epochs=0), aggregation="median", buffer_size=4
        )
        try:
            # Execute
            for sender, model in [
                ("evil", wild),
                ("h1", honest[0]),
                ("evil", wild),
                ("h2", honest[1]),
                ("evil", wild),
            ]:
                await _send_model(node, sender, model, 0)
            return node.weights(), node
        finally:
            await node.stop()
            await task

    merged, node = asyncio.run(scenario())

    # Assert: every value lies between the honest models' (its own start included)
    for i, tensor in enumerate(merged):
        values = np.stack([start[i], honest[0][i], honest[1][i]])
        assert (values.min(axis=0) - 1e-6 <= tensor).all()
        assert (tensor <= values.max(axis=0) + 1e-6).all()
    assert node.stats.merged == 4  # the first model waited for a second sender
    assert node.stats.received == 5 and node.stats.refused == {}


@pytest.mark.usefixtures("no_peer_environment")
def test_a_member_set_up_from_the_config_uses_its_gossip_keys(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "gossip.yaml"
    path.write_text(
        "gossip:\n  view_size: 6\n  shuffle_length: 3\n  period_s: 0.5\n  local_steps: 2\n"
        "  max_age_jump: 7\n  aggregation: trimmed_mean\n  trim_fraction: 0.25\n"
        "  buffer_size: 5\ncompression:\n  mode: weights_quantize\n  bits: 4\n"
        "training:\n  learning_rate: 0.1\n  batch_size: 16\n"
        "p2p:\n  host: 127.0.0.1\n  local_port: 0\n"
        f"  shared_secret: {SECRET.decode()}\n"
    )

    # Execute
    node = GossipNode.from_config(load_config(path), node_id="g7")

    # Assert
    assert (node.node_id, node.domain) == ("g7", "digits")
    assert (node.view_size, node.shuffle_length, node.period) == (6, 3, 0.5)
    assert node.training_config == TrainingConfig(batch_size=16, epochs=2, learning_rate=0.1)
    assert (node.max_age_jump, node.aggregation, node.trim_fraction) == (7, "trimmed_mean", 0.25)
    assert node.buffer.size == 5
    assert node.codec == QuantizeCodec(bits=4)
    with pytest.raises(ConfigError, match=r"compression\.mode"):
        GossipNode.from_config(load_config(None, {"compression.mode": "gradients_topk"}))


def test_gossip_with_registered_keys_merges_members_and_drops_a_forged_sender(
    tmp_path: Path, iid_digits_nodes: list[NodeData]
) -> None:
    from node.registry_client import RegistryClient

    # Prepare: a real registry; a listening member and an honest one register their keys;
    # mallory registers too, with her own key
    honest_model = digits_learner(iid_digits_nodes[1], seed=1).get_weights()
    with RegistryProcess(tmp_path / "r") as reg:
        admin = RegistryClient(reg.url)
        admin.register("gossip-admin", "127.0.0.1:1", "digits")
        group = admin.create_group("signed", "digits", max_capacity=10, join=False)

        def keyed(name: str) -> tuple[RegistryClient, Any]:
            client = RegistryClient(reg.url)
            section = P2PSection(data_dir=tmp_path / name)
            return client, auth_from_config(section, registry=client)

        async def scenario() -> tuple[GossipNode, str | None]:
            client, auth = keyed("g0")
            node, task = await _listening_member(
                iid_digits_nodes[0], TrainingConfig(), registry=client, group_id=group.id, auth=auth
            )
            honest_client, honest_auth = keyed("h1")
            honest_client.register("h1", "127.0.0.1:2", "digits", public_key=honest_auth.public_key)
            mallory_client, mallory_auth = keyed("mallory")
            mallory_client.register(
                "mallory", "127.0.0.1:3", "digits", public_key=mallory_auth.public_key
            )
            to = Address("127.0.0.1", node.server.port)
            meta = {AGE_META: 0, DOMAIN_META: "digits"}
            payload = DenseCodec().encode(honest_model).to_bytes()
            try:
                # Execute: mallory names h1 as the sender; then h1 itself sends
                forged = Envelope(sender="h1", kind=MODEL, payload=payload, meta=meta)
                await send(to, forged, auth=mallory_auth)
                for _ in range(2000):  # until the member has checked it
                    if node.server.stats.frames_dropped:
                        break
                    await asyncio.sleep(0.01)
                handled = node.age
                honest = Envelope(sender="h1", kind=MODEL, payload=payload, meta=meta)
                await send(to, honest, auth=honest_auth)
                for _ in range(2000):  # every handled model adds one to the age
                    if node.age > handled:
                        break
                    await asyncio.sleep(0.01)
            finally:
                await node.stop()
                await task
            return node, client.get_node("g0").public_key

        node, published = asyncio.run(scenario())
        admin.close()

    # Assert: the honest model merged, the forged one never reached the member
    assert node.stats.received == 1 and node.stats.merged == 1
    assert node.server.stats.refused == {"bad_signature": 1}
    assert published == node.auth.public_key  # type: ignore[attr-defined]
