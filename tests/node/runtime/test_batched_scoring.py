"""Candidate scoring in batch: one forward pass per group model over the validation data of
every node scoring it gives each node the scores it would compute alone, and a network
that scores in batch places its nodes as one that does not, downloading each snapshot
at most once (counted by the registry's own metrics)."""

from __future__ import annotations

import copy

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from node.learning.data import load_digits
from node.learning.partition import partition
from node.runtime.meta import ExampleScores
from node.runtime.network import InProcessNetwork, NetworkConfig, batch_example_scores
from tests.support.registry_proc import RegistryProcess

MODEL_ROUTE = "/groups/{group_id}/model"


def test_batched_scores_equal_each_nodes_own() -> None:
    # Prepare: six digits nodes whose models have trained apart (no registry is contacted)
    data = partition(load_digits(), 6, "clustered", seed=3, clusters=2)
    net = InProcessNetwork("http://127.0.0.1:9", data, NetworkConfig(seed=3))
    for agent in net.agents:
        agent.learner.train(1)
    with net.agents[0].learner.module() as model:
        scratch = copy.deepcopy(model)

    for owner in net.agents:
        weights = owner.learner.get_weights()

        # Execute
        batched = batch_example_scores(scratch, weights, net.agents)

        # Assert: per node and per example, what the node computes alone
        assert len(batched) == len(net.agents)
        for agent, got in zip(net.agents, batched, strict=True):
            alone = agent.score_weights(weights)
            assert len(got.correct) == len(agent.learner.data.val)
            np.testing.assert_array_equal(got.correct, alone.correct)
            np.testing.assert_allclose(got.loss, alone.loss, atol=1e-5, rtol=0)


def _requests(url: str) -> dict[tuple[str, str, str], float]:
    """The registry's request counts by (method, route template, status)."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "mycelium_registry_requests"
        for s in family.samples
        if s.name.endswith("_total")
    }


def _run(
    reg: RegistryProcess, batch: bool, domain: str
) -> tuple[list[list[list[str]]], dict[tuple[str, str, str], float], InProcessNetwork]:
    """Three rounds (re-evaluating every round) of six nodes in ``domain``; the groups of
    every round (members by node number), the requests made, and the network."""
    data = partition(load_digits(), 6, "clustered", seed=2, clusters=2)
    cfg = NetworkConfig(
        domain=domain,
        seed=2,
        local_epochs=1,
        warmup_epochs=1,
        evaluate_every_rounds=1,
        measure_contribution=False,
        batch_scoring=batch,
    )
    net = InProcessNetwork(reg.url, data, cfg, node_prefix=domain)
    before = _requests(reg.url)
    net.start()
    groups = []
    for _ in range(3):
        members = net.run_round().groups.values()
        groups.append(sorted(sorted(m.removeprefix(domain) for m in ms) for ms in members))
    after = _requests(reg.url)
    made = {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}
    return groups, made, net


def test_batched_network_places_nodes_as_before_and_fetches_each_snapshot_once(
    sqlite_registry: RegistryProcess,
) -> None:
    # Execute: the same nodes, each scoring alone, then in batch
    alone, _, plain = _run(sqlite_registry, False, "alone")
    batched, made, net = _run(sqlite_registry, True, "batched")

    # Assert: the same groups every round
    assert batched == alone
    # ...and no snapshot downloaded twice: at most one 200 per snapshot stored
    downloads = made.get(("GET", MODEL_ROUTE, "200"), 0.0)
    uploads = made.get(("PUT", MODEL_ROUTE, "200"), 0.0)
    assert 0 < downloads <= uploads
    plain.shutdown()

    # The batch's scores are what a node uses for the snapshot they were made for only
    agent = next(a for a in net.agents if a.group_id is not None)
    assert agent.group_id is not None
    snap = agent.store.latest(agent.client, agent.group_id, agent.signature)
    assert snap is not None
    handed = ExampleScores(
        np.ones(len(agent.learner.data.val), bool), np.zeros(len(agent.learner.data.val))
    )
    agent.prefetch(agent.group_id, snap.sha256, handed)
    assert agent.score_group_examples(agent.group_id) is handed
    agent.prefetch(agent.group_id, "0" * 64, handed)
    own = agent.score_group_examples(agent.group_id)
    assert own is not None and own is not handed
    np.testing.assert_allclose(own.loss, agent.score_weights(snap.weights).loss)
    net.shutdown()
