"""RealNVP batch normalization (lecture, Concept 10.31): train vs eval, running averages,
gradients through the current batch only, vectors and images."""

import pytest
import torch

import pyro_flows
from pyro_flows.transforms import RealNVPBatchNorm

from .helpers import autograd_logdet


def test_first_batch_initialises_and_normalises():
    bn = pyro_flows.real_nvp_batch_norm(3)
    y = torch.randn(500, 3) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([2.0, -1.0, 0.0])
    x = bn.inv(y)
    assert torch.allclose(x.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.var(0, unbiased=False), torch.ones(3), atol=1e-3)
    assert torch.allclose(bn.running_mean, y.mean(0))


def test_running_average_update_and_statistics_used():
    momentum = 0.25
    bn = pyro_flows.real_nvp_batch_norm(2, momentum=momentum)
    bn.inv(torch.randn(64, 2))  # initialise
    old_mean, old_var = bn.running_mean.clone(), bn.running_var.clone()
    y = torch.randn(64, 2) * 3 + 1
    x = bn.inv(y)
    mean = (1 - momentum) * old_mean + momentum * y.mean(0)
    var = (1 - momentum) * old_var + momentum * y.var(0, unbiased=False)
    assert torch.allclose(bn.running_mean, mean, atol=1e-6)
    assert torch.allclose(bn.running_var, var, atol=1e-6)
    assert torch.allclose(x, (y - mean) / torch.sqrt(var + bn.eps), atol=1e-5)
    assert torch.allclose(
        bn.log_abs_det_jacobian(x, y), 0.5 * torch.log(var + bn.eps).sum().expand(64), atol=1e-5
    )


def test_gradient_flows_only_through_current_batch_statistics():
    momentum = 0.3
    bn = pyro_flows.real_nvp_batch_norm(2, momentum=momentum).double()
    bn.inv(torch.randn(32, 2, dtype=torch.float64))
    old_mean, old_var = bn.running_mean.clone(), bn.running_var.clone()
    y = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(16, 2, dtype=torch.float64)
    (grad,) = torch.autograd.grad((bn.inv(y) * weights).sum(), y)

    def reference(v):  # old averages are constants, the batch statistics are not
        mean = (1 - momentum) * old_mean + momentum * v.mean(0)
        var = (1 - momentum) * old_var + momentum * v.var(0, unbiased=False)
        return (v - mean) / torch.sqrt(var + bn.eps)

    y2 = y.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad((reference(y2) * weights).sum(), y2)
    assert torch.allclose(grad, expected, atol=1e-12)
    assert not bn.running_mean.requires_grad


def test_eval_mode_is_an_exact_bijection_and_does_not_update():
    bn = pyro_flows.real_nvp_batch_norm(3, affine=True).double()
    for _ in range(3):
        bn.inv(torch.randn(50, 3, dtype=torch.float64) * 2 + 1)
    bn.eval()
    stats = bn.running_mean.clone(), bn.running_var.clone()
    y = torch.randn(7, 3, dtype=torch.float64)
    x = bn.inv(y)
    assert torch.allclose(bn(x.clone()), y, atol=1e-12)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    ladj = bn.log_abs_det_jacobian(x, y)
    assert torch.allclose(ladj, autograd_logdet(bn, x, 1), atol=1e-10)


def test_train_and_eval_differ_until_statistics_settle():
    bn = pyro_flows.real_nvp_batch_norm(1)
    bn.inv(torch.zeros(10, 1) + torch.arange(10.0).unsqueeze(-1))
    y = torch.randn(10, 1) * 7 + 30
    x_train = bn.inv(y)
    bn.eval()
    x_eval = bn.inv(y.clone())
    # eval uses the running averages the train call left behind: the same numbers
    assert torch.allclose(x_train, x_eval, atol=1e-5)
    bn.train()
    x_train2 = bn.inv(y.clone())  # a second train step moves the averages again
    assert not torch.allclose(x_train2, x_eval, atol=1e-3)


def test_images_are_normalised_per_channel():
    bn = pyro_flows.real_nvp_batch_norm(2, event_dim=3).double()
    y = torch.randn(40, 2, 3, 3, dtype=torch.float64) * torch.tensor([1.0, 4.0]).view(2, 1, 1) + 5
    x = bn.inv(y)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-10)
    var = y.var((0, 2, 3), unbiased=False)
    expected = 0.5 * 9 * torch.log(var + bn.eps).sum()
    assert torch.allclose(bn.log_abs_det_jacobian(x, y), expected.expand(40))
    bn.eval()
    assert torch.allclose(
        bn.log_abs_det_jacobian(x[:2], bn(x[:2])), autograd_logdet(bn, x[:2], 3), atol=1e-10
    )


def test_zero_variance_feature_stays_finite():
    bn = pyro_flows.real_nvp_batch_norm(2)
    y = torch.stack([torch.randn(20), torch.full((20,), 3.0)], -1)
    x = bn.inv(y)
    ladj = bn.log_abs_det_jacobian(x, y)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()


def test_single_value_per_feature_warns():
    bn = pyro_flows.real_nvp_batch_norm(2)
    with pytest.warns(RuntimeWarning, match="single value"):
        bn.inv(torch.randn(1, 2))


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="event_dim"):
        RealNVPBatchNorm(3, event_dim=2)
    with pytest.raises(ValueError, match="momentum"):
        RealNVPBatchNorm(3, momentum=0.0)
    with pytest.raises(ValueError, match="expected value with 3 features"):
        pyro_flows.real_nvp_batch_norm(3).inv(torch.randn(4, 2))


def test_state_dict_keeps_running_statistics():
    bn = pyro_flows.real_nvp_batch_norm(3)
    bn.inv(torch.randn(30, 3) * 2 + 1)
    fresh = pyro_flows.real_nvp_batch_norm(3)
    fresh.load_state_dict(bn.state_dict())
    assert torch.equal(fresh.running_mean, bn.running_mean)
    assert bool(fresh.initialized)
