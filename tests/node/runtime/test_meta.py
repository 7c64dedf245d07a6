"""Meta-federation, cold start and drift over real HTTP on digits (node.runtime.meta)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from node.learning.data import load_digits
from node.learning.partition import NodeData, partition
from node.learning.weights import bytes_to_weights, weights_to_bytes
from node.registry_client import RegistryClient
from node.runtime import meta
from node.runtime.agent import NodeAgent
from node.runtime.network import InProcessNetwork, NetworkConfig
from node.runtime.policy import PolicyConfig
from registry.server import BackgroundRegistry
from registry.settings import build_settings
from tests.node.helpers import digits_learner


@pytest.fixture
def registry_url(tmp_path: Path) -> Iterator[str]:
    with BackgroundRegistry(build_settings(data_dir=tmp_path / "registry")) as reg:
        yield reg.url


# --- pure decisions -----------------------------------------------------------------


def test_a_sibling_fits_within_the_threshold_and_a_stranger_does_not() -> None:
    own = meta.Fit(correct=80, loss_sum=40.0, examples=100)
    assert meta.is_sibling(own, meta.Fit(77, 41.0, 100), 0.05)  # 0.77 * 1.05 > 0.80
    assert not meta.is_sibling(own, meta.Fit(70, 41.0, 100), 0.05)  # accuracy too low
    assert not meta.is_sibling(own, meta.Fit(80, 60.0, 100), 0.05)  # loss 50% higher


def test_models_that_have_learned_nothing_yet_are_no_siblings() -> None:
    # Ten classes: chance is 0.1. Two untrained models "fit as well" as each other...
    own = meta.Fit(correct=9, loss_sum=230.0, examples=100)
    near_chance = meta.Fit(correct=12, loss_sum=231.0, examples=100)
    assert meta.is_sibling(own, near_chance, 0.05)  # ...by the 5% rule alone
    # ...but 12 of 100 is no evidence of beating chance, so they are not linked
    assert not meta.is_sibling(own, near_chance, 0.05, chance=0.1)
    # a model that has learned is linked on as many examples
    assert meta.is_sibling(meta.Fit(60, 120.0, 100), meta.Fit(59, 121.0, 100), 0.05, chance=0.1)
    # Wilson's lower bound (95 % one-sided) tightens with examples
    assert meta.wilson_lower_bound(0.5, 100) == pytest.approx(0.418, abs=0.002)
    assert meta.wilson_lower_bound(0.5, 20) < meta.wilson_lower_bound(0.5, 100) < 0.5
    assert meta.wilson_lower_bound(0.9, 0) == 0.0


def test_members_fits_add_up_to_the_group_fit() -> None:
    scores = meta.ExampleScores(np.array([1, 1, 0, 1, 0], bool), np.array([0.1, 0.2, 2, 0.3, 1]))
    fits = meta.member_fits(scores, [2, 3])
    assert fits == [meta.Fit(2, pytest.approx(0.3), 2), meta.Fit(1, pytest.approx(3.3), 3)]
    with pytest.raises(ValueError, match="add up"):
        meta.member_fits(scores, [2, 2])


def test_only_mutual_siblings_that_fit_the_capacity_merge_smaller_into_larger() -> None:
    sizes = {1: 1, 2: 3, 3: 2, 4: 2}
    siblings = [(1, 2), (2, 1), (3, 4), (4, 3), (1, 3)]  # 1->3 is one-way
    plan = meta.merge_plan(sizes, siblings, capacity=4)
    assert plan == [(1, 2), (4, 3)]  # equal sizes: the newer group into the older
    assert meta.merge_plan(sizes, siblings, capacity=3) == []


def test_sattler_split_separates_opposed_updates_and_keeps_agreeing_ones() -> None:
    rng = np.random.default_rng(0)
    direction = rng.normal(size=50)
    opposed = {
        f"n{i}": (1 if i < 3 else -1) * direction + 0.1 * rng.normal(size=50) for i in range(5)
    }
    agreeing = {f"n{i}": direction + 0.1 * rng.normal(size=50) for i in range(5)}
    parts = meta.sattler_split(opposed)
    assert parts is not None and parts[:2] == (["n0", "n1", "n2"], ["n3", "n4"]) and parts[2] < 0
    assert meta.sattler_split(agreeing) is None
    assert meta.sattler_split(dict(list(opposed.items())[:3])) is None  # fewer than 4


def test_candidates_keep_the_linked_component_and_stay_bounded() -> None:
    import random

    chosen = meta.sibling_candidates(0, list(range(40)), [(0, 7), (7, 9)], random.Random(1), 5)
    assert chosen[:2] == [7, 9] and len(chosen) == 5 and 0 not in chosen


# --- cold start -------------------------------------------------------------------------


def test_a_joining_node_starts_from_the_group_snapshot(registry_url: str) -> None:
    # Prepare: a trained founder creates a group; a newcomer has an untrained model
    data = partition(load_digits(), 2, "iid", seed=0)
    founder = NodeAgent(
        "founder", digits_learner(data[0], seed=0), RegistryClient(registry_url), "digits"
    )
    newcomer = NodeAgent(
        "newcomer", digits_learner(data[1], seed=9), RegistryClient(registry_url), "digits"
    )
    founder.learner.train(3)
    founder.ensure_registered()
    newcomer.ensure_registered()
    gid = founder.choose_group(1)
    assert gid is not None

    # Execute
    joined = newcomer.choose_group(1)

    # Assert: it joined, and its weights are the snapshot's, before any training
    snapshot = newcomer.client.download_model(gid)
    assert joined == gid and snapshot is not None
    for mine, theirs in zip(
        newcomer.learner.get_weights(), bytes_to_weights(snapshot.data), strict=True
    ):
        np.testing.assert_array_equal(mine, theirs)
    founder.client.close()
    newcomer.client.close()


# --- meta-federation over the registry ----------------------------------------------


def test_same_cluster_groups_link_and_merge_over_the_registry(registry_url: str) -> None:
    # Prepare: 8 nodes, 2 label-permutation clusters, groups of at most 4; the same
    # partition run with and without meta-federation
    data = partition(
        load_digits(), 8, "clustered", seed=0, clusters=2, cluster_mode="label_permutation"
    )
    nets = {
        on: InProcessNetwork(
            registry_url,
            data,
            NetworkConfig(seed=0, max_capacity=4, meta_federation=on, measure_contribution=False),
            node_prefix=f"meta{int(on)}",
        )
        for on in (True, False)
    }

    # Execute
    for net in nets.values():
        net.start()
        for _ in range(4):
            net.run_round()
    net = nets[True]
    with RegistryClient(registry_url) as reader:
        stored = reader.links(domain="digits")

    # Assert: the registry's links join only groups whose members share a cluster
    cluster_of = {g: {a.cluster for a in net.agents if a.group_id == g} for g in net.group_models}
    live = [
        link for link in stored if link.group_id in cluster_of and link.sibling_id in cluster_of
    ]
    for link in live:
        assert cluster_of[link.group_id] == cluster_of[link.sibling_id]
        assert len(cluster_of[link.group_id]) == 1
    # ...siblings whose members fit the capacity merged, with a reason
    assert net.merges
    merged = [m for a in net.agents for m in a.moves if "merged into its sibling" in m.reason]
    assert merged
    # ...and the merged network is no worse than islands on held-out data (measured
    # at 4 rounds: 0.83 both ways; a clear gain is not shown at this size)
    mean = {on: np.mean(list(n.test_accuracy().values())) for on, n in nets.items()}
    assert mean[True] >= mean[False] - 0.02
    for n in nets.values():
        n.shutdown()


def test_members_adopt_their_group_s_shared_model_at_once(registry_url: str) -> None:
    # Prepare: 6 nodes of one cluster in groups of at most 2, so every group has siblings;
    # two plain rounds, then one meta round called directly
    data = partition(load_digits(), 6, "clustered", seed=0, clusters=1)
    net = InProcessNetwork(
        registry_url,
        data,
        NetworkConfig(seed=0, max_capacity=2, meta_federation=False, measure_contribution=False),
        node_prefix="adopt",
    )
    net.start()
    net.run_round()
    net.run_round()
    before = net.group_models
    home = {a.node_id: a.group_id for a in net.agents}

    # Execute
    net.meta_round(net.round)

    # Assert: the groups whose model the sharing changed...
    after = net.group_models
    changed = [
        g
        for g in after
        if g in before
        and any(not np.array_equal(a, b) for a, b in zip(after[g], before[g], strict=True))
    ]
    assert changed and net.shared[net.round] >= len(changed)
    # ...are the model their members now hold (what they are tested and scored with);
    # members a merge moved hold their old group's model until the next round
    stayed = [a for a in net.agents if a.group_id == home[a.node_id]]
    assert any(a.group_id in changed for a in stayed)
    for agent in stayed:
        if agent.group_id in changed:
            for mine, group in zip(agent.learner.get_weights(), after[agent.group_id], strict=True):
                np.testing.assert_array_equal(mine, group)
    net.shutdown()


def test_a_mixed_group_splits_by_cluster(registry_url: str) -> None:
    # Prepare: the "reported" policy herds 4 nodes of 2 clusters into one group
    data = partition(
        load_digits(), 4, "clustered", seed=0, clusters=2, cluster_mode="label_permutation"
    )
    cfg = NetworkConfig(
        seed=0,
        policy="reported",
        max_capacity=4,
        meta_every_rounds=1000,
        measure_contribution=False,
    )
    net = InProcessNetwork(registry_url, data, cfg)
    net.start()
    net.run_round()
    net.run_round()
    assert len({a.group_id for a in net.agents}) == 1

    # Execute
    moved = net.meta_round(net.round)

    # Assert: two groups now, each of one cluster, and the registry agrees
    groups = {a.group_id for a in net.agents}
    assert moved == 2 and len(groups) == 2 and net.splits
    for gid in groups:
        assert len({a.cluster for a in net.agents if a.group_id == gid}) == 1
        assert {a.node_id for a in net.agents if a.group_id == gid} == {
            m.id for m in net.agents[0].client.get_group(gid).members
        }
    net.shutdown()


# --- drift --------------------------------------------------------------------------


def test_a_drifting_node_rehomes_and_the_report_shows_it(registry_url: str) -> None:
    # Prepare: 6 nodes, 2 clusters, room for 4 per group, grouped
    data = partition(
        load_digits(), 6, "clustered", seed=0, clusters=2, cluster_mode="label_permutation"
    )
    cfg = NetworkConfig(seed=0, max_capacity=4, measure_contribution=False)
    net = InProcessNetwork(registry_url, data, cfg)
    net.start()
    for _ in range(4):
        net.run_round()
    drifter = next(i for i, nd in enumerate(data) if nd.cluster == 0)
    donor = next(nd for nd in data if nd.cluster == 1)
    # the donor's examples as the drifter's new data: the other cluster's distribution
    new = NodeData(donor.train, donor.val, donor.test, cluster=1, index=drifter)

    # Execute
    net.apply_drift({drifter: new})
    drift_round = net.round
    for _ in range(4):
        net.run_round()
    report = net.drift_report()[net.agents[drifter].node_id]

    # Assert: the node sits with cluster 1 within 4 rounds, and the report says so
    assert report["round"] == drift_round and (report["old_cluster"], report["new_cluster"]) == (
        0,
        1,
    )
    assert report["rounds_to_rehome"] is not None and report["rounds_to_rehome"] <= 4
    assert report["lowest_after"] < report["accuracy_before"]
    moves = [m for m in net.agents[drifter].moves if m.round > drift_round]
    assert moves and moves[0].reason
    net.shutdown()


def test_meta_every_rounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="meta_every_rounds"):
        NetworkConfig(meta_every_rounds=0)


def test_a_node_scores_one_group_per_sibling_component_first(registry_url: str) -> None:
    # Prepare: three groups with snapshots; groups 1 and 2 are siblings (one component)
    data = partition(load_digits(), 4, "iid", seed=0)
    gids = []
    for i in range(3):
        founder = NodeAgent(
            f"f{i}", digits_learner(data[i], seed=i), RegistryClient(registry_url), "digits"
        )
        founder.ensure_registered()
        group = founder.client.create_group(
            f"g{i}", "digits", max_capacity=5, join=True, model_signature=founder.signature
        )
        founder.client.upload_model(group.id, 0, weights_to_bytes(founder.learner.get_weights()))
        gids.append(group.id)
    components = {gids[0]: gids[0], gids[1]: gids[0], gids[2]: gids[2]}
    node = NodeAgent(
        "judge",
        digits_learner(data[3], seed=3),
        RegistryClient(registry_url),
        "digits",
        policy_config=PolicyConfig(top_k=1),
        sibling_view=lambda: components,
    )
    node.ensure_registered()

    # Execute
    scored = {c.group_id for c in node.candidates() if c.local_score is not None}

    # Assert: top_k = 1 alone would score one group; the view adds the other component
    assert len(scored) == 2 and gids[2] in scored and len(scored & {gids[0], gids[1]}) == 1
