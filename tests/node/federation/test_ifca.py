"""IFCA (Ghosh et al., 2020) on real digits: it recovers the hidden clusters."""

from sklearn.metrics import adjusted_rand_score

from node.federation.ifca import run_ifca
from node.learning.data import Dataset
from node.learning.partition import partition


def test_ifca_finds_two_label_permutation_clusters_within_a_few_rounds(digits: Dataset) -> None:
    # Prepare
    data = partition(digits, 8, "clustered", seed=0, clusters=2, cluster_mode="label_permutation")
    truth = [nd.cluster for nd in data]

    # Execute
    result = run_ifca(data, clusters=2, rounds=4, dataset="digits", seed=0)

    # Assert
    assert len(result.assignments) == 4
    assert all(len(picks) == 8 for picks in result.assignments)
    assert adjusted_rand_score(truth, result.final_assignment) >= 0.9
    assert max(adjusted_rand_score(truth, picks) for picks in result.assignments) >= 0.9
    assert min(result.test_accuracy) > 0.5  # a cluster model that fits, not chance (0.1)


def test_ifca_with_one_cluster_is_fedavg_and_learns(digits: Dataset) -> None:
    # Prepare
    data = partition(digits, 4, "iid", seed=1)

    # Execute
    result = run_ifca(data, clusters=1, rounds=2, dataset="digits", seed=1)

    # Assert
    assert result.final_assignment == [0, 0, 0, 0]
    assert sum(result.test_accuracy) / 4 > 0.5
