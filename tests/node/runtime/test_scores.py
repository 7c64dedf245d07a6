"""Tests for node.runtime.scores: purity and sibling ARI say what a user reads off a network."""

import pytest

from node.runtime.scores import group_purity, sibling_ari, sibling_clusters


def test_pure_groups_score_one_even_when_a_cluster_is_split_over_groups() -> None:
    # Prepare: cluster 0 split over groups 1 and 2 (capacity), cluster 1 in group 3
    clusters = [0, 0, 0, 0, 1, 1]
    groups = [1, 1, 2, 2, 3, 3]

    # Execute / Assert
    assert group_purity(clusters, groups) == 1.0


def test_a_minority_member_lowers_purity_by_its_share() -> None:
    # Prepare: group 1 holds three of cluster 0 and one of cluster 1
    clusters = [0, 0, 0, 1, 1, 1]
    groups = [1, 1, 1, 1, 2, 2]

    # Execute / Assert
    assert group_purity(clusters, groups) == pytest.approx(5 / 6)


def test_ungrouped_nodes_count_as_pure_singletons_not_as_one_group() -> None:
    # Prepare: as one group these three would score 1/3
    clusters = [0, 1, 2]
    groups: list[int | None] = [None, None, None]

    # Execute / Assert
    assert group_purity(clusters, groups) == 1.0


def test_one_group_of_balanced_clusters_is_as_impure_as_its_cluster_count() -> None:
    # Prepare: global FedAvg over 4 equal clusters; a tie counts one cluster only
    clusters = [0, 1, 2, 3] * 3

    # Execute / Assert
    assert group_purity(clusters, [7] * 12) == pytest.approx(0.25)


def test_purity_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 clusters but 3 groups"):
        group_purity([0, 1], [1, 1, 2])


def test_sibling_clusters_are_connected_components_of_the_link_graph() -> None:
    # Execute
    components = sibling_clusters([1, 2, 3, 4, 5], [(1, 2), (2, 3), (4, 5)])

    # Assert
    assert components == {1: 0, 2: 0, 3: 0, 4: 1, 5: 1}


def test_sibling_ari_is_one_when_links_rejoin_a_cluster_split_by_capacity() -> None:
    # Prepare: 2 clusters, each over 2 pure groups; ARI on groups alone is below 1
    clusters = [0, 0, 0, 0, 1, 1, 1, 1]
    groups = [1, 1, 2, 2, 3, 3, 4, 4]

    # Execute
    linked = sibling_ari(clusters, groups, [(1, 2), (3, 4)])
    unlinked = sibling_ari(clusters, groups, [])
    wrongly_linked = sibling_ari(clusters, groups, [(1, 3), (2, 4)])

    # Assert
    assert linked == 1.0
    assert unlinked < 1.0
    assert wrongly_linked < 0.1
