"""Scopes: what `all`, `n1,n3`, `0-4`, `n000-n004` and `@group` select, and what is refused."""

from __future__ import annotations

import pytest

from sim.scope import ScopeError, node_name, parse_node, parse_scope, resolve_scope

ALIVE = [0, 1, 2, 3, 4, 7]
GROUPS = {"g1": [1, 3], "empty": []}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", ALIVE),
        ("*", ALIVE),
        ("n1,n3", [1, 3]),
        ("3", [3]),
        ("n003", [3]),
        ("0-4", [0, 1, 2, 3, 4]),
        ("n000-n004", [0, 1, 2, 3, 4]),
        ("n2-n9", [2, 3, 4, 7]),
        ("@g1", [1, 3]),
        ("@g1,n7,0-1", [0, 1, 3, 7]),
    ],
)
def test_scopes_select_the_nodes_a_user_means(text: str, expected: list[int]) -> None:
    # Execute
    chosen = resolve_scope(parse_scope(text), ALIVE, GROUPS)

    # Assert
    assert chosen == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty scope"),
        ("n1,,n2", "empty part"),
        ("x7", "not a node id"),
        ("4-2", "empty range"),
        ("@bad name", "not a group name"),
        ("n5", "no such node: n005"),
        ("n20-n30", "no live node"),
        ("@nope", "no such group: nope"),
    ],
)
def test_bad_scopes_are_refused_with_a_reason(text: str, message: str) -> None:
    # Execute / Assert
    with pytest.raises(ScopeError, match=message):
        resolve_scope(parse_scope(text), ALIVE, GROUPS)


def test_node_names_round_trip() -> None:
    # Execute / Assert
    assert [node_name(i) for i in (0, 42, 1000)] == ["n000", "n042", "n1000"]
    assert parse_node(node_name(1000)) == 1000
