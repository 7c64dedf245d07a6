"""Tests for node.runtime.policy: join/create/migrate decisions on plain data."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.runtime.policy import (
    POLICIES,
    Candidate,
    Create,
    Join,
    Leave,
    Migrate,
    PolicyConfig,
    Stay,
    choose_initial,
    confident_win,
    get_policy,
    paired_lower_bound,
    rank_candidates,
    reevaluate,
    reported_accuracy_choose,
    reported_accuracy_reevaluate,
)

CFG = PolicyConfig(switch_threshold=0.05, cooldown_rounds=3, top_k=3)


def group(
    gid: int,
    local: float | None = None,
    reported: float | None = None,
    members: int = 1,
    capacity: int = 4,
    bound: float | None = 0.2,
) -> Candidate:
    """A candidate group with readable defaults: by default its win (if any) is
    significant on a paired test (``bound`` > 0), so these tests isolate the threshold,
    cooldown and capacity rules; the confidence rule has its own tests below."""
    return Candidate(gid, f"g{gid}", members, capacity, reported, local, margin_bound=bound)


# --- rank_candidates -------------------------------------------------------------


def test_ranking_puts_open_groups_first_best_reported_first_unknown_last() -> None:
    # Prepare
    groups = [
        group(1, reported=0.9, members=4),  # full
        group(2, reported=None),
        group(3, reported=0.5),
        group(4, reported=0.7),
    ]

    # Execute
    ranked = rank_candidates(groups, 3)

    # Assert
    assert [c.group_id for c in ranked] == [4, 3, 2]
    assert [c.group_id for c in rank_candidates(groups, 10)] == [4, 3, 2, 1]


# --- choose_initial ----------------------------------------------------------------


def test_join_the_group_whose_model_fits_own_data_not_the_loudest() -> None:
    # Prepare
    groups = [group(1, local=0.60, reported=0.95), group(2, local=0.80, reported=0.70)]

    # Execute
    decision = choose_initial(0.50, groups, CFG)

    # Assert
    assert decision == Join(2, decision.reason) and "g2" in decision.reason


def test_create_when_no_group_exists_or_all_are_full() -> None:
    # Execute
    empty = choose_initial(0.5, [], CFG)
    full = choose_initial(
        0.5, [group(1, local=0.9, members=4), group(2, local=0.9, members=4)], CFG
    )

    # Assert
    assert isinstance(empty, Create) and "no group" in empty.reason
    assert isinstance(full, Create) and "full" in full.reason


def test_full_best_group_falls_back_to_next_best_with_room() -> None:
    # Prepare
    groups = [group(1, local=0.95, members=4), group(2, local=0.85), group(3, local=0.75)]

    # Execute
    decision = choose_initial(0.5, groups, CFG)

    # Assert
    assert isinstance(decision, Join) and decision.group_id == 2


@pytest.mark.parametrize(
    ("own", "expected"),
    [(0.80 * 1.05 - 0.001, Join), (0.80 * 1.05 + 0.001, Create)],
)
def test_create_only_when_own_model_beats_the_best_group_by_the_threshold(
    own: float, expected: type
) -> None:
    # Execute
    decision = choose_initial(own, [group(1, local=0.80), group(2, local=0.70)], CFG)

    # Assert
    assert isinstance(decision, expected)


def test_unevaluated_open_groups_join_the_best_reported() -> None:
    # Execute
    decision = choose_initial(0.9, [group(1, reported=0.4), group(2, reported=0.6)], CFG)

    # Assert
    assert decision == Join(2, decision.reason)


# --- reevaluate -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate_score", "migrates"),
    [(0.70 * 1.05 - 0.001, False), (0.70 * 1.05 + 0.001, True)],
)
def test_migrate_only_above_the_relative_threshold(candidate_score: float, migrates: bool) -> None:
    # Execute
    decision = reevaluate(1, 0.70, [group(1, local=0.70), group(2, local=candidate_score)], 5, CFG)

    # Assert
    if migrates:
        assert decision == Migrate(1, 2, decision.reason)
    else:
        assert isinstance(decision, Stay) and "5%" in decision.reason


def test_no_migration_during_cooldown_even_to_a_much_better_group() -> None:
    # Execute
    during = reevaluate(1, 0.3, [group(2, local=0.99)], 2, CFG)
    after = reevaluate(1, 0.3, [group(2, local=0.99)], 3, CFG)

    # Assert
    assert isinstance(during, Stay) and "cooldown" in during.reason
    assert after == Migrate(1, 2, after.reason)


def test_a_better_but_full_group_is_named_in_the_reason_to_stay() -> None:
    # Execute
    decision = reevaluate(1, 0.5, [group(2, local=0.9, members=4), group(3, local=0.52)], 9, CFG)

    # Assert
    assert isinstance(decision, Stay) and "g2" in decision.reason and "full" in decision.reason


def test_full_best_candidate_gives_way_to_next_best_with_room() -> None:
    # Execute
    decision = reevaluate(1, 0.5, [group(2, local=0.9, members=4), group(3, local=0.8)], 9, CFG)

    # Assert
    assert decision == Migrate(1, 3, decision.reason)


def test_the_current_group_is_never_a_migration_target() -> None:
    # Execute
    decision = reevaluate(1, 0.2, [group(1, local=0.99)], 9, CFG)

    # Assert
    assert isinstance(decision, Stay)


# --- baseline: reported accuracy ----------------------------------------------------


def test_reported_baseline_herds_every_node_into_the_loudest_group() -> None:
    # Prepare: each node's data fits a different group, one group reports best
    nodes_views = [
        [group(1, local=0.9, reported=0.6), group(2, local=0.2, reported=0.95)],
        [group(1, local=0.3, reported=0.6), group(2, local=0.2, reported=0.95)],
        [group(1, local=0.1, reported=0.6), group(2, local=0.9, reported=0.95)],
    ]

    # Execute
    reported = [reported_accuracy_choose(0.0, view, CFG) for view in nodes_views]
    local = [choose_initial(0.0, view, CFG) for view in nodes_views]

    # Assert
    assert {d.group_id for d in reported if isinstance(d, Join)} == {2}
    assert [d.group_id for d in local if isinstance(d, Join)] == [1, 1, 2]


def test_reported_baseline_migrates_on_reports_and_respects_cooldown() -> None:
    # Prepare
    view = [group(1, local=0.9, reported=0.5), group(2, local=0.1, reported=0.9)]

    # Execute
    moved = reported_accuracy_reevaluate(1, 0.9, view, 3, CFG)
    cooling = reported_accuracy_reevaluate(1, 0.9, view, 1, CFG)

    # Assert
    assert moved == Migrate(1, 2, moved.reason)
    assert isinstance(cooling, Stay) and "cooldown" in cooling.reason


def test_policies_are_selectable_by_name() -> None:
    # Execute / Assert
    assert get_policy("local") is POLICIES["local"]
    assert get_policy("reported").choose is reported_accuracy_choose
    with pytest.raises(ValueError, match="local, reported"):
        get_policy("gossip")


# --- properties ---------------------------------------------------------------------

_scores = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0))
_candidates = st.lists(
    st.builds(
        Candidate,
        group_id=st.integers(0, 20),
        name=st.just("g"),
        members=st.integers(0, 5),
        capacity=st.integers(1, 5),
        reported=_scores,
        local_score=_scores,
    ),
    max_size=8,
)


@given(
    candidates=_candidates,
    current=st.integers(0, 20),
    score=st.floats(min_value=0.0, max_value=1.0),
    since=st.integers(0, 10),
    policy=st.sampled_from(sorted(POLICIES)),
)
def test_never_migrate_to_a_full_group_or_within_cooldown(
    candidates: list[Candidate], current: int, score: float, since: int, policy: str
) -> None:
    # Execute
    decision = POLICIES[policy].reevaluate(current, score, candidates, since, CFG)

    # Assert
    if isinstance(decision, Migrate):
        assert since >= CFG.cooldown_rounds
        assert decision.to_group != current
        target = [c for c in candidates if c.group_id == decision.to_group]
        assert target and any(c.has_room for c in target)
    assert decision.reason


@given(candidates=_candidates, own=st.floats(min_value=0.0, max_value=1.0))
def test_initial_choice_joins_only_groups_with_room(
    candidates: list[Candidate], own: float
) -> None:
    # Execute
    decisions = [p.choose(own, candidates, CFG) for p in POLICIES.values()]

    # Assert
    for decision in decisions:
        if isinstance(decision, Join):
            assert any(c.group_id == decision.group_id and c.has_room for c in candidates)
        else:
            assert isinstance(decision, Create)


# --- leaving a group that hurts -----------------------------------------------------


def test_a_node_leaves_when_the_group_model_loses_to_its_own_update_round_after_round() -> None:
    # Prepare: two rounds in which the node's own update beat the aggregate by far
    recent = [(0.10, 0.62), (0.11, 0.65)]

    # Execute
    decision = reevaluate(1, 0.11, [group(2, local=0.05)], 5, CFG, recent)

    # Assert
    assert isinstance(decision, Leave) and decision.from_group == 1
    assert "0.650" in decision.reason and "0.110" in decision.reason


@pytest.mark.parametrize(
    ("recent", "since"),
    [
        ([(0.10, 0.62)], 5),  # one round is not evidence yet
        ([(0.10, 0.62), (0.80, 0.81)], 5),  # the last round was fine
        ([(0.10, 0.62), (0.11, 0.65)], 1),  # cooldown after the last move
    ],
)
def test_a_node_stays_without_repeated_evidence_or_during_cooldown(
    recent: list[tuple[float, float]], since: int
) -> None:
    decision = reevaluate(1, 0.5, [], since, CFG, recent)
    assert isinstance(decision, Stay)


def test_a_better_group_is_preferred_to_leaving() -> None:
    recent = [(0.10, 0.62), (0.11, 0.65)]
    decision = reevaluate(1, 0.11, [group(2, local=0.9)], 5, CFG, recent)
    assert isinstance(decision, Migrate) and decision.to_group == 2


# --- confidence at small data ----------------------------------------------------------


def _correct(right: int, n: int = 15) -> list[bool]:
    return [True] * right + [False] * (n - right)


def test_one_lucky_example_in_fifteen_is_no_significant_paired_win() -> None:
    # Prepare: 15 validation examples; the candidate gets one more right (9 vs 8: +12%)
    candidate, current = _correct(9), _correct(8)

    # Execute
    bound = paired_lower_bound(candidate, current)

    # Assert
    assert bound <= 0


def test_a_clear_paired_win_is_significant_even_on_fifteen_examples() -> None:
    # Prepare: the candidate gets 13 of 15 right, the current group 5 (the same 5)
    bound = paired_lower_bound(_correct(13), _correct(5))
    assert bound > 0


def test_paired_bound_refuses_vectors_of_different_examples() -> None:
    with pytest.raises(ValueError, match="equal"):
        paired_lower_bound(_correct(3, 5), _correct(3, 6))


def test_the_confidence_rule_refuses_a_move_on_tiny_noisy_evidence() -> None:
    # Prepare: one evaluation, a 12% better accuracy and a lower loss, but the paired
    # test on 15 examples says noise
    noisy = Candidate(
        2,
        "g2",
        1,
        4,
        None,
        9 / 15,
        local_loss=1.0,
        margin_bound=paired_lower_bound(_correct(9), _correct(8)),
    )

    # Execute
    decision = reevaluate(1, 8 / 15, [noisy], 5, CFG, current_loss=1.2)

    # Assert
    assert isinstance(decision, Stay)
    assert "not yet with confidence" in decision.reason and "1 of 2" in decision.reason


def test_the_same_noisy_win_twice_in_a_row_is_evidence_enough() -> None:
    # Prepare: the same candidate won the previous evaluation too
    again = Candidate(
        2,
        "g2",
        1,
        4,
        None,
        9 / 15,
        local_loss=1.0,
        margin_bound=paired_lower_bound(_correct(9), _correct(8)),
        wins=1,
    )

    # Execute
    decision = reevaluate(1, 8 / 15, [again], 5, CFG, current_loss=1.2)

    # Assert: it moves, and the reason says why in figures
    assert decision == Migrate(1, 2, decision.reason)
    assert "0.60 vs 0.53" in decision.reason and "loss 1.00 vs 1.20" in decision.reason
    assert "2 evaluations in a row" in decision.reason


def test_a_clear_win_moves_at_the_first_evaluation() -> None:
    clear = Candidate(
        2,
        "g2",
        1,
        4,
        None,
        13 / 15,
        local_loss=0.4,
        margin_bound=paired_lower_bound(_correct(13), _correct(5)),
    )
    decision = reevaluate(1, 5 / 15, [clear], 5, CFG, current_loss=1.9)
    assert decision == Migrate(1, 2, decision.reason) and "significant" in decision.reason


def test_a_higher_loss_vetoes_an_accuracy_win() -> None:
    # Prepare: more right answers but far less sure of them (loss up)
    overconfident = Candidate(2, "g2", 1, 4, None, 0.9, local_loss=2.5, margin_bound=0.3)

    # Execute
    moved, why = confident_win(overconfident, 0.6, 0.8, CFG)

    # Assert
    assert not moved and "loss is not lower" in why
