"""Input checks of the transforms found missing by the input-checking audit: the domain of
the CDF bridges, the context of every conditional flow, and the arguments of the
single-layer constructors. Each case gets an error that names the problem and the
transform (or constructor) the user called."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_flows
from pyro_flows.transforms import ActNorm, ElementwiseSpline, Permutation


# ------------------------------------------------------------- 1. CDF domains
def test_base_cdf_refuses_input_outside_the_base_support():
    beta = pyro_flows.base_cdf("beta", (2,), a=2.0, b=3.0)
    with pytest.raises(
        ValueError, match=r"BaseCDF: expected inputs in the support of the Beta base, .*\[0, 1\]"
    ):
        beta(torch.tensor([[0.5, 1.5]]))
    uniform = pyro_flows.base_cdf("uniform", (2,))
    with pytest.raises(ValueError, match=r"BaseCDF: .*support of the Uniform base.*1 value\(s\) outside"):
        uniform(torch.tensor([[0.5, -0.5]]))
    # the log-determinant alone runs the same check
    with pytest.raises(ValueError, match="support of the Uniform base"):
        uniform.log_abs_det_jacobian(torch.tensor([[0.5, -0.5]]), torch.zeros(1, 2))
    # the edges belong to the support, and valid input is unchanged
    assert uniform(torch.tensor([[0.0, 1.0]])).shape == (1, 2)
    assert beta(torch.tensor([[0.25, 0.75]])).shape == (1, 2)


def test_base_cdf_with_a_shifted_support():
    g = pyro_flows.base_cdf(dist.Uniform(torch.tensor(-2.0), torch.tensor(3.0)))
    assert torch.allclose(g(torch.tensor([0.5])), torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"the interval \[-2, 3\]"):
        g(torch.tensor([3.5]))


@pytest.mark.parametrize("bad", [-0.5, 1.5])
def test_change_of_base_names_itself_and_the_support(bad):
    bridge = pyro_flows.change_of_base("uniform", "normal", (2,))
    with pytest.raises(
        ValueError, match=r"^ChangeOfBase: expected inputs in the support of the Uniform base"
    ):
        bridge(torch.tensor([[0.5, bad]]))


def test_change_of_base_checks_its_codomain_in_the_inverse():
    bridge = pyro_flows.change_of_base("normal", "beta")
    with pytest.raises(ValueError, match=r"^ChangeOfBase: expected values in the support of the Beta base"):
        bridge.inv(torch.tensor([0.5, 1.5]))
    assert torch.isfinite(bridge.inv(torch.tensor([0.2, 0.8]))).all()


def test_cdf_flow_reports_the_support_not_a_non_finite_input():
    flow = pyro_flows.cdf_flow(3, base="beta")
    with pytest.raises(ValueError, match=r"support of the Beta base, the unit interval \[0, 1\]") as info:
        flow(torch.tensor([0.5, 1.5]))
    assert "non-finite" not in str(info.value)


def test_domain_checks_follow_distribution_validation():
    # value checks that need a device sync run only while validation is on (Pyro's convention)
    with pyro.validation_enabled(False):
        pyro_flows.base_cdf("uniform")(torch.tensor([-0.5]))
        pyro_flows.change_of_base("uniform", "normal")(torch.tensor([1.5]))


# ---------------------------------------------------------------- 2. contexts
def _conditional(name, dtype=torch.float32):
    """(conditional flow, event shape) of every conditional variant, context_dim=2."""
    if name == "affine_coupling":
        flow, shape = pyro_flows.conditional_affine_coupling(2, 2, hidden_dims=(8,)), (2,)
    elif name == "additive_coupling":
        flow, shape = pyro_flows.conditional_additive_coupling(2, 2, hidden_dims=(8,)), (2,)
    elif name == "spline_coupling":
        flow, shape = pyro_flows.conditional_spline_coupling(2, 2, hidden_dims=(8,), num_bins=4), (2,)
    elif name == "real_nvp":
        flow, shape = pyro_flows.conditional_real_nvp(2, 2, num_layers=2, hidden_dims=(8,)), (2,)
    elif name == "ffjord":
        pytest.importorskip("torchdiffeq")
        flow, shape = pyro_flows.conditional_ffjord(2, 2, hidden_dims=(8,)), (2,)
    else:
        flow = pyro_flows.glow((1, 4, 4), num_scales=2, steps_per_scale=1, hidden_channels=4, context_dim=2)
        shape = (1, 4, 4)
    return flow.to(dtype), shape


VARIANTS = ["affine_coupling", "additive_coupling", "spline_coupling", "real_nvp", "ffjord", "glow"]
OWNERS = {
    "affine_coupling": "ConditionalAffineCoupling",
    "additive_coupling": "ConditionalAdditiveCoupling",
    "spline_coupling": "ConditionalSplineCoupling",
    "real_nvp": "ConditionalVectorFlow",
    "ffjord": "ConditionalFFJORD",
    "glow": "ConditionalMultiScale",
}


@pytest.mark.parametrize("name", VARIANTS)
def test_non_finite_context_is_refused_under_validation(name):
    flow, shape = _conditional(name)
    context = torch.tensor([[float("nan"), 0.0]])
    with pytest.raises(ValueError, match=rf"^{OWNERS[name]}: the context contains 1 non-finite value"):
        flow.condition(context)
    with pytest.raises(ValueError, match="context contains 1 non-finite"):
        flow.condition(torch.tensor([0.0, float("inf")]))


@pytest.mark.parametrize("name", VARIANTS)
def test_context_batch_that_does_not_broadcast_is_named(name):
    flow, shape = _conditional(name)
    conditioned = flow.condition(torch.randn(5, 2))
    message = r"batch shape \(3,\) does not broadcast against the context's batch shape \(5,\)"
    with pytest.raises(ValueError, match=message):
        conditioned(torch.randn(3, *shape))
    with pytest.raises(ValueError, match=message):
        conditioned.inv(torch.randn(3, *shape))
    # batches that broadcast still work: one per context, several per context, one for all
    assert conditioned.inv(torch.randn(5, *shape)).shape == (5, *shape)
    assert conditioned.inv(torch.randn(4, 1, *shape)).shape == (4, 5, *shape)
    assert flow.condition(torch.randn(2)).inv(torch.randn(3, *shape)).shape == (3, *shape)


@pytest.mark.parametrize("name", VARIANTS)
def test_context_dtype_must_match_the_parameters(name):
    flow, shape = _conditional(name)
    with pytest.raises(
        ValueError,
        match=rf"^{OWNERS[name]}: the context has dtype torch.float64 but the flow's parameters are "
        r"torch.float32; convert the context \(context.float\(\)\)",
    ):
        flow.condition(torch.randn(5, 2, dtype=torch.float64))
    # the same flow in float64 takes the float64 context, and refuses a float32 one
    flow = flow.double()
    y = flow.condition(torch.randn(5, 2, dtype=torch.float64)).inv(
        torch.randn(5, *shape, dtype=torch.float64)
    )
    assert y.dtype == torch.float64
    with pytest.raises(
        ValueError, match="context has dtype torch.float32 but the flow's parameters are torch.float64"
    ):
        flow.condition(torch.randn(5, 2))


def test_conditioned_coupling_names_the_conditional_class_in_input_errors():
    t = pyro_flows.conditional_affine_coupling(2, 2, hidden_dims=(8,)).condition(torch.randn(2))
    with pytest.raises(ValueError, match=r"^ConditionalAffineCoupling: expected input of shape"):
        t(torch.randn(3, 4))


def test_context_shape_and_type_checks_are_kept():
    flow = pyro_flows.conditional_ffjord(2, 2, hidden_dims=(8,)) if _has_torchdiffeq() else None
    for f in filter(None, [flow, pyro_flows.conditional_real_nvp(2, 2, num_layers=1, hidden_dims=(4,))]):
        with pytest.raises(ValueError, match=r"expected a context of shape \(\*batch, 2\), got \(5, 3\)"):
            f.condition(torch.randn(5, 3))
        with pytest.raises(ValueError, match="floating-point context"):
            f.condition(torch.zeros(2, dtype=torch.long))
        with pytest.raises(TypeError, match="expected a tensor context"):
            f.condition([0.0, 1.0])


def _has_torchdiffeq():
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------ 3. constructor arguments
@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: pyro_flows.affine_coupling(4, hidden_dims=8), r"affine_coupling: hidden_dims .* got 8"),
        (lambda: pyro_flows.additive_coupling(4, hidden_dims=(8, -1)), r"additive_coupling: hidden_dims"),
        (
            lambda: pyro_flows.spline_coupling(4, hidden_dims=(0,)),
            r"spline_coupling: hidden_dims .* got \(0,\)",
        ),
        (
            lambda: pyro_flows.conditional_affine_coupling(4, 2, hidden_dims=8),
            r"conditional_affine_coupling: hidden_dims",
        ),
        (
            lambda: pyro_flows.conditional_spline_coupling(4, 2, hidden_dims=()),
            r"conditional_spline_coupling: hidden_dims",
        ),
        (lambda: pyro_flows.mixture_cdf(3, event_shape=2), r"MixtureCDF: event_shape .* got 2"),
        (lambda: pyro_flows.base_cdf("normal", event_shape=(0,)), r"BaseCDF: event_shape .* got \(0,\)"),
        (lambda: pyro_flows.mixture_cdf(2.5), r"MixtureCDF: num_components .* got 2.5"),
        (lambda: pyro_flows.scaling(-1), r"scaling: input_dim must be an integer >= 1, got -1"),
        (lambda: pyro_flows.scaling(0), r"scaling: input_dim must be an integer >= 1, got 0"),
        (lambda: pyro_flows.transforms.Scaling(3), r"Scaling: event_shape .* got 3"),
        (lambda: pyro_flows.invertible_linear(2.5), r"invertible_linear: input_dim .* got 2.5"),
        (lambda: pyro_flows.invertible_linear(0), r"invertible_linear: input_dim .* got 0"),
        (lambda: pyro_flows.transforms.InvertibleLinear(0), r"InvertibleLinear: input_dim .* got 0"),
        (lambda: Permutation(0), r"Permutation: dim must be an integer >= 1, got 0"),
        (lambda: ElementwiseSpline(0), r"ElementwiseSpline: dim must be an integer >= 1, got 0"),
        (
            lambda: pyro_flows.base_cdf("beta", a=-1.0),
            r"BaseCDF: the Beta base needs positive, finite .* a=-1.0",
        ),
        (lambda: pyro_flows.base_cdf("beta", b=float("nan")), r"BaseCDF: the Beta base .* b=nan"),
        (lambda: pyro_flows.change_of_base("beta", b=0.0), r"ChangeOfBase: the Beta base .* b=0.0"),
        (lambda: pyro_flows.real_nvp_batch_norm(3, eps=-1), r"RealNVPBatchNorm: eps must be .*> 0.*got -1"),
        (lambda: pyro_flows.real_nvp_batch_norm(3, eps=0), r"RealNVPBatchNorm: eps must be .*> 0.*got 0"),
        (lambda: pyro_flows.real_nvp_batch_norm(2.5), r"RealNVPBatchNorm: num_features .* got 2.5"),
        (lambda: ActNorm(2, eps=-1.0), r"ActNorm: eps must be .*>= 0.*got -1.0"),
    ],
)
def test_constructor_arguments_are_checked(build, message):
    with pytest.raises(ValueError, match=message) as info:
        build()
    assert "Dirichlet" not in str(info.value)


def test_batch_norm_eps_keeps_a_constant_feature_finite():
    bn = pyro_flows.real_nvp_batch_norm(3)
    y = torch.cat([torch.randn(10, 2), torch.ones(10, 1)], 1)
    assert torch.isfinite(bn.inv(y)).all()


def test_conditional_affine_builders_take_shift_bound():
    layer = pyro_flows.conditional_affine_coupling(2, 2, hidden_dims=(8,))
    assert layer.shift_bound == pyro_flows.affine_coupling(2, hidden_dims=(8,)).shift_bound == 8.0
    layer = pyro_flows.conditional_affine_coupling(2, 2, hidden_dims=(8,), shift_bound=3.0)
    assert layer.shift_bound == 3.0 and layer.condition(torch.randn(2)).shift_bound == 3.0
    # the bound binds: a conditioner whose shift is huge is clamped to it
    with torch.no_grad():
        layer.conditioner[-1].bias.fill_(100.0)
    x = torch.zeros(1, 2)
    y = layer.condition(torch.zeros(2))(x)
    assert float((y - x).abs().max()) == pytest.approx(3.0)
    flow = pyro_flows.conditional_real_nvp(2, 2, num_layers=3, hidden_dims=(8,), shift_bound=None)
    assert [part.shift_bound for part in flow.transforms] == [None] * 3
    assert all(p.shift_bound == 8.0 for p in pyro_flows.conditional_real_nvp(2, 2, 2, (8,)).transforms)
    with pytest.raises(ValueError, match="shift_bound must be positive"):
        pyro_flows.conditional_real_nvp(2, 2, 2, (8,), shift_bound=-1.0)
