"""Edge cases of the image flows: the logit layer at the edges of its support,
dequantization near cell boundaries, the cells a dequantized model scores, squeeze
shape errors and the variational dequantizer under a default device."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pyro_flows
from pyro_flows.dequantization import DequantizedFlow, VariationalDequantizer
from pyro_flows.transforms import Logit, depth_to_space, dequantize, space_to_depth


# ------------------------------------------------------------------------ logit
def test_logit_without_margin_rejects_data_at_0_and_1_under_validation():
    layer = Logit((3,), alpha=0.0)
    # strictly inside (0, 1) is fine
    z = layer.inv(torch.tensor([[0.25, 0.5, 0.75]]))
    assert torch.allclose(z, torch.log(torch.tensor([[1 / 3, 1.0, 3.0]])))
    for edge in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"Logit: .*\(0, 1\).*alpha"):
            layer.inv(torch.tensor([[0.5, edge, 0.5]]))
        # a whole flow reports it too, instead of returning NaN
        with pytest.raises(ValueError, match=r"Logit: .*\(0, 1\)"):
            pyro_flows.Flow(Logit((3,), alpha=0.0)).log_prob(torch.tensor([[0.5, edge, 0.5]]))


def test_logit_with_margin_maps_0_and_1_to_finite_values():
    layer = Logit((2,), alpha=0.05)
    x = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    z = layer.inv(x)
    assert torch.allclose(z, torch.tensor([[-math.log(19.0), math.log(19.0)]], dtype=torch.float64))
    # log|dx/dz| = log p + log(1 - p) - log(1 - 2 alpha) with p = 0.05 or 0.95 at the ends
    ladj = layer.log_abs_det_jacobian(z, x)
    expected = 2 * (math.log(0.05) + math.log(0.95) - math.log(0.9))
    assert torch.allclose(ladj, torch.tensor([expected], dtype=torch.float64))


# --------------------------------------------------------------- dequantization
def test_dequantize_stays_in_the_cell_of_each_level_float32():
    """``x + u`` rounds up to ``x + 1`` in float32 for ``u`` within an ulp of 1: the
    dequantized value must still lie in ``[x/K, (x+1)/K)``, and below 1 for the top level."""
    g = torch.Generator().manual_seed(0)
    for level in (255.0, 254.0):
        x = torch.full((1 << 20,), level)
        y = dequantize(x, 256, generator=g)
        assert bool((y >= x / 256).all())
        assert bool((y < (x + 1) / 256).all()), (
            f"level {level}: {int((y >= (x + 1) / 256).sum())} values left the cell"
        )
        assert torch.equal(torch.floor(y * 256), x)  # K = 256 is a power of two: exact
    assert float(dequantize(torch.full((1 << 20,), 255.0), 256, generator=g).max()) < 1.0


class _Recorder(nn.Module):
    """A stand-in model that remembers what it scored (its log_prob is the sum)."""

    def __init__(self, event_shape):
        super().__init__()
        self.event_shape = torch.Size(event_shape)

    def log_prob(self, y):
        self.seen = y
        return y.sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_levels", [22, 100, 255])
def test_dequantized_flow_scores_the_cell_of_points_on_the_grid(num_levels, dtype):
    """``levels / K`` (undequantized data) lies in the cell of ``levels``; ``floor(K y)``
    rounds some of them down to the cell below for K that is not a power of two."""
    torch.manual_seed(0)
    levels = torch.arange(num_levels, dtype=dtype)
    model = DequantizedFlow(_Recorder((num_levels,)), num_levels)
    model.log_prob(levels / num_levels)
    seen = model.flow.seen
    lower, upper = levels / num_levels, (levels + 1) / num_levels
    wrong = ((seen < lower) | (seen >= upper)).nonzero().flatten().tolist()
    assert not wrong, f"levels {wrong} were scored in another cell"


def test_variational_dequantizer_masks_follow_the_default_device():
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)  # meta has no values
    torch.set_default_device("meta")
    try:
        q = VariationalDequantizer((1, 4, 4), 17, hidden_channels=4)
    finally:
        torch.set_default_device(None)
        torch.distributions.Distribution.set_default_validate_args(validate)
    elsewhere = [n for n, t in [*q.named_parameters(), *q.named_buffers()] if t.device.type != "meta"]
    assert not elsewhere, f"created outside the default device: {elsewhere}"


# ---------------------------------------------------------------------- squeeze
def test_space_to_depth_and_back_name_the_bad_shape():
    with pytest.raises(ValueError, match=r"space_to_depth: .*even.*\(1, 5, 4\)"):
        space_to_depth(torch.randn(1, 5, 4))
    with pytest.raises(ValueError, match=r"space_to_depth: .*C, H, W\).*\(4, 4\)"):
        space_to_depth(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"depth_to_space: .*multiple of 4.*\(2, 3, 2, 2\)"):
        depth_to_space(torch.randn(2, 3, 2, 2))
    # valid shapes still round-trip exactly, with extra batch dimensions
    x = torch.randn(2, 3, 5, 4, 6, dtype=torch.float64)
    assert torch.equal(depth_to_space(space_to_depth(x)), x)
