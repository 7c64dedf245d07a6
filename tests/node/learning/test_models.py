"""Tests for node.learning.models: shapes and seeded, side-effect-free construction."""

import pytest
import torch

from node.learning.models import DigitsMLP, FashionCNN, build_model


def test_same_seed_builds_identical_weights_other_seed_differs() -> None:
    # Execute
    a, b, c = build_model("digits", 1), build_model("digits", 1), build_model("digits", 2)

    # Assert
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name
    assert not all(
        torch.equal(ta, tc)
        for ta, tc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_building_a_model_leaves_the_global_rng_alone() -> None:
    # Prepare
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)

    # Execute
    build_model("fashion", 5)

    # Assert
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("name", "cls", "side"), [("digits", DigitsMLP, 8), ("fashion", FashionCNN, 28)]
)
def test_models_map_images_to_ten_logits(name: str, cls: type, side: int) -> None:
    # Execute
    model = build_model(name, 0)
    logits = model(torch.zeros(5, 1, side, side))

    # Assert
    assert isinstance(model, cls) and logits.shape == (5, 10)


def test_unknown_model_name_lists_choices() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="digits, fashion"):
        build_model("cifar", 0)
