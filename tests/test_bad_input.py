"""Bad input gets a ValueError naming what was expected and what was received: one
test per case listed in the reliability issue."""

import pyro.distributions as dist
import pytest
import torch

import pyro_flows
from pyro_flows.transforms import logit, squeeze


@pytest.fixture(scope="module")
def image_flow():
    return pyro_flows.Flow(
        pyro_flows.real_nvp_image((1, 4, 4), num_scales=1, hidden_channels=4, num_blocks=1)
    )


def test_wrong_event_shape(image_flow):
    with pytest.raises(
        ValueError, match=r"event_shape: torch.Size\(\[2, 1, 4, 5\]\) vs torch.Size\(\[1, 4, 4\]\)"
    ):
        image_flow.log_prob(torch.rand(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"expected input of shape .*3.* got shape \(2, 4\)"):
        pyro_flows.real_nvp(3, num_layers=2)(torch.randn(2, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values(bad):
    x = torch.randn(3, 2)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="1 non-finite value"):
        pyro_flows.real_nvp(2, num_layers=2).inv(x)


def test_flow_log_prob_names_nan_in_a_batch_too_large_to_print():
    """With validation on (Pyro's default) torch's support check refuses a NaN first;
    its message prints the values summarised, which can hide the NaN: it is named."""
    flow = pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(4,)))
    x = torch.randn(5000, 2)
    x[2500, 1] = float("nan")
    with pytest.raises(ValueError, match=r"Flow.log_prob: the value holds NaN \(1 of 10000 elements\)"):
        flow.log_prob(x)
    # torch's own message follows, and a batch with no NaN scores
    with pytest.raises(ValueError, match="within the support"):
        flow.log_prob(x)
    assert torch.isfinite(flow.log_prob(x.nan_to_num())).all()


def test_wrong_dtype():
    with pytest.raises(ValueError, match="expected a floating-point value, got dtype torch.int32"):
        pyro_flows.real_nvp(2, num_layers=2).inv(torch.ones(3, 2, dtype=torch.int32))


def test_integer_images_where_dequantized_floats_are_expected(image_flow):
    levels = torch.randint(0, 17, (2, 1, 4, 4))
    with pytest.raises(ValueError, match="floating-point .* got dtype torch.int64 .*dequantize"):
        image_flow.log_prob(levels)
    # raw levels as floats, fed to the logit preprocessing that expects [0, 1]
    with pytest.raises(ValueError, match=r"expected data in \[0, 1\]"):
        logit((1, 4, 4)).inv(levels.float())


def test_odd_spatial_sizes_for_squeeze():
    with pytest.raises(ValueError, match="odd|even|divisible"):
        squeeze((1, 5, 4))
    with pytest.raises(ValueError, match=r"\(1, 6, 8\)|divisible|2\*\*"):
        pyro_flows.real_nvp_image((1, 6, 8), num_scales=2)


def test_context_of_the_wrong_size():
    flow = pyro_flows.conditional_real_nvp(2, context_dim=3, num_layers=2, hidden_dims=(8,))
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    d = dist.ConditionalTransformedDistribution(base, [flow])
    with pytest.raises(ValueError, match=r"context of shape \(\*batch, 3\), got \(5, 4\)"):
        d.condition(torch.randn(5, 4)).log_prob(torch.randn(5, 2))


@pytest.mark.parametrize(
    "data, options, message",
    [
        (torch.tensor([[0.0, 1.0], [float("nan"), 2.0]] * 20), {}, "NaN or infinite"),
        (
            torch.ones(40, 2, dtype=torch.long),
            {},
            r"floating-point tensor of shape \(N, D\), got shape \(40, 2\), dtype torch.int64",
        ),
        (torch.randn(40), {}, r"got shape \(40,\)"),
        # a constant coordinate: its density would grow without bound
        (
            torch.cat([torch.randn(40, 1), torch.full((40, 1), 3.0)], 1),
            {},
            r"column 1 \(0-based\) holds the same value \(3\)",
        ),
        # options of files and runs, which fit() would otherwise silently ignore
        (torch.randn(40, 2), {"standardize": True}, "standardize does not apply here"),
        (torch.randn(40, 2), {"levels": 16, "test_fraction": 0.5}, "levels, test_fraction do not apply here"),
        (torch.randn(40, 2), {"out": "runs"}, "out does not apply here"),
    ],
    ids=["nan", "integer", "1-d", "constant-column", "standardize", "levels", "out"],
)
def test_the_training_api_refuses_bad_data_and_options_it_would_ignore(data, options, message):
    from pyro_flows.train import fit

    with pytest.raises(ValueError, match=message):
        fit(data, flow="real_nvp", steps=2, num_layers=2, hidden_dims=(4,), batch_size=8, **options)


def test_unknown_base_keywords_are_refused_not_ignored():
    with pytest.raises(TypeError, match="base 'beta' takes keywords a, b, got alpha"):
        pyro_flows.transforms.base_cdf("beta", (2,), alpha=2.0)
    with pytest.raises(TypeError, match="base 'normal' takes no keywords, got a"):
        pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(4,)), base="normal", a=2.0)
    with pytest.raises(TypeError, match="apply to a base given by name"):
        pyro_flows.Flow(
            pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(4,)), base=dist.Normal(0.0, 1.0), b=1.0
        )
    assert float(pyro_flows.Flow(pyro_flows.cdf_flow(3, base="beta", a=2.0, b=6.0)).base().mean) == 0.25
    with pytest.raises(
        ValueError, match="the Beta base needs positive, finite parameters a and b, got a=-1.0"
    ):
        pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=2, hidden_dims=(4,)), base="beta", a=-1.0)
