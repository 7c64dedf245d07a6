"""The shared flag checker: a bad choice is a usage error naming the flag and the choices."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from node.cli.common import one_of
from node.cli.node import node


def test_an_allowed_value_is_returned() -> None:
    assert one_of("iid", ("iid", "dirichlet"), "--partition") == "iid"


def test_a_bad_value_names_the_flag_and_the_choices() -> None:
    with pytest.raises(typer.BadParameter) as err:
        one_of("zip", ["none", "gradients_topk"], "--compression")

    assert err.value.param_hint == "--compression"
    assert "'zip' is not one of: none, gradients_topk" in str(err.value)


def test_the_node_command_rejects_a_bad_choice_with_status_2() -> None:
    # Prepare
    app = typer.Typer()
    app.command()(node)

    # Execute
    result = CliRunner().invoke(app, ["--policy", "oracle", "--dry-run"])

    # Assert
    assert result.exit_code == 2
    assert "--policy" in result.output and "local" in result.output
