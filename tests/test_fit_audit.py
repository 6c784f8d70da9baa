"""``pyro_flows.train.fit`` and the training loop as a user relies on them: the learning
rate a run trains at, the weights it returns, its reproducibility."""

from __future__ import annotations

from unittest import mock

import pytest

import pyro_flows.train.loop as loop
from pyro_flows.data import make_moons
from pyro_flows.train import fit
from pyro_flows.train.fit import FLOW_MATCHING_DEFAULTS, with_flow_matching_defaults


def _rates_of(**options) -> list:
    """The ``(lr, warmup_steps)`` each ``fit(**options)`` trains at."""
    seen = []
    original = loop.learning_rate

    def spy(config, total_steps, input_dim=None):
        seen.append(original(config, total_steps, input_dim))
        return seen[-1]

    with mock.patch.object(loop, "learning_rate", spy):
        fit(make_moons(200), **options)
    return seen


@pytest.mark.parametrize("lr", [None, 0.0], ids=["not-given", "zero"])
def test_lr_zero_picks_the_flow_matching_rate_as_leaving_it_out_does(lr):
    # --lr 0 (the default) "picks the flow's": 3e-3 for an ffjord trained by flow matching
    given = {} if lr is None else {"lr": lr}
    options = with_flow_matching_defaults({"flow": "ffjord", "steps": 500, **given})
    assert options["lr"] == FLOW_MATCHING_DEFAULTS["lr"] == 3e-3
    assert options["warmup_steps"] == 10
    rates = _rates_of(flow="ffjord", steps=2, hidden_dims=(8,), eval_every=2, **given)
    assert rates == [(3e-3, 0)]
    # a rate given is kept
    assert _rates_of(flow="ffjord", steps=2, hidden_dims=(8,), eval_every=2, lr=1e-2) == [(1e-2, 0)]
