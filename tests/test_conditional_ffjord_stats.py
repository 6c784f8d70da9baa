"""The solver statistics of ConditionalFFJORD: the number of evaluations and the kinetic
and Jacobian-Frobenius regularisation of the last solve of any transform conditioned on
it, read on the module the user holds."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_flows.nn import DynamicsNet
from pyro_flows.transforms import FFJORD, ConditionalFFJORD

from .helpers import randomize

TOL = 1e-8


def normal_base(dim):
    return dist.Normal(torch.zeros(dim, dtype=torch.float64), 1.0).to_event(1)


def make(seed=0, **settings):
    net = randomize(DynamicsNet(2, (8,), context_dim=3, zero_init=False).double(), 0.5, seed)
    return ConditionalFFJORD(net, 2, 3, rtol=TOL, atol=TOL, **settings)


def score(cflow, x, context):
    """``log p(x | context)`` the way a user computes it; returns it and the conditioned
    transform that solved."""
    d = dist.ConditionalTransformedDistribution(normal_base(2), [cflow]).condition(context)
    return d.log_prob(x), d.transforms[0]


class FixedContext(nn.Module):
    """The conditional dynamics with the (flattened) context fixed: a plain FFJORD's."""

    def __init__(self, net, context):
        super().__init__()
        self.net = net
        self.context = context

    def forward(self, t, z):
        return self.net(t, z, self.context)


def test_nothing_recorded_before_a_solve():
    cflow = make(kinetic_weight=0.5)
    assert cflow.nfe == 0 and cflow.nfe_backward == 0
    assert cflow.kinetic_energy is None and cflow.jacobian_frobenius is None
    assert cflow.regularizes
    reg = cflow.regularization
    assert reg.shape == () and reg.item() == 0.0 and reg.dtype == torch.float64


def test_nfe_is_the_conditioned_transforms():
    torch.manual_seed(0)
    cflow = make()
    context = torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    log_p, solved = score(cflow, x, context)
    assert cflow.nfe == solved.nfe > 0
    first = cflow.nfe
    # conditioning again does not clear what the last solve recorded
    child = cflow.condition(context)
    assert child.nfe == 0 and cflow.nfe == first
    # the same solve through a transform built explicitly: the same count, now recorded
    calls = []
    handle = cflow.dynamics.register_forward_hook(lambda *args: calls.append(1))
    try:
        again = dist.TransformedDistribution(normal_base(2), [child]).log_prob(x)
    finally:
        handle.remove()
    assert torch.allclose(again, log_p, rtol=0, atol=1e-12)
    assert cflow.nfe == child.nfe == len(calls) == first
    # a later solve (here sampling, another batch) replaces the record
    calls.clear()
    handle = cflow.dynamics.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            child(torch.randn(7, 4, 2, dtype=torch.float64))
    finally:
        handle.remove()
    assert cflow.nfe == child.nfe == len(calls) > 0


@pytest.mark.parametrize("adjoint", [False, True])
def test_nfe_backward_reaches_the_module(adjoint):
    torch.manual_seed(0)
    cflow = make(adjoint=adjoint)
    context = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 2, dtype=torch.float64)
    log_p, solved = score(cflow, x, context)
    assert cflow.nfe_backward == 0  # no backward pass yet
    log_p.sum().backward()
    # only the adjoint solves again backwards; backpropagation goes through the stored steps
    assert (cflow.nfe_backward > 0) == adjoint
    assert cflow.nfe_backward == solved.nfe_backward
    assert context.grad is not None and context.grad.abs().sum() > 0


def test_regularization_is_the_conditioned_transforms_and_a_plain_ffjords():
    torch.manual_seed(0)
    cflow = make(kinetic_weight=0.5, frobenius_weight=0.25)
    context = torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    log_p, solved = score(cflow, x, context)
    assert cflow.regularizes
    kinetic, frobenius = cflow.kinetic_energy, cflow.jacobian_frobenius
    assert kinetic.shape == frobenius.shape == (4,)
    assert bool((kinetic > 0).all()) and bool((frobenius > 0).all())
    assert torch.equal(kinetic, solved.kinetic_energy) and torch.equal(frobenius, solved.jacobian_frobenius)
    expected = 0.5 * kinetic.mean() + 0.25 * frobenius.mean()
    assert torch.allclose(cflow.regularization, expected, rtol=1e-14)
    assert torch.allclose(cflow.regularization, solved.regularization, rtol=1e-14)

    # the same dynamics with the context fixed, in a plain FFJORD
    plain = FFJORD(
        FixedContext(cflow.dynamics, context),
        2,
        rtol=TOL,
        atol=TOL,
        kinetic_weight=0.5,
        frobenius_weight=0.25,
    )
    plain_log_p = dist.TransformedDistribution(normal_base(2), [plain]).log_prob(x)
    assert torch.allclose(plain_log_p, log_p, rtol=1e-12, atol=1e-12)
    assert plain.nfe == cflow.nfe
    assert torch.allclose(plain.kinetic_energy, kinetic, rtol=1e-12)
    assert torch.allclose(plain.jacobian_frobenius, frobenius, rtol=1e-12)
    assert torch.allclose(plain.regularization, cflow.regularization, rtol=1e-12)

    # added to the loss, its gradient reaches the dynamics
    cflow.regularization.backward()
    grads = [p.grad for p in cflow.dynamics.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_regularization_has_the_batch_shape_of_the_solve():
    torch.manual_seed(0)
    cflow = make(frobenius_weight=1.0)
    context = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(5, 3, 2, dtype=torch.float64)  # five points per context
    log_p, _ = score(cflow, x, context)
    assert log_p.shape == (5, 3)
    assert cflow.kinetic_energy.shape == cflow.jacobian_frobenius.shape == (5, 3)
    assert torch.allclose(cflow.regularization, cflow.jacobian_frobenius.mean(), rtol=1e-14)


def test_no_regularization_without_weights():
    torch.manual_seed(0)
    cflow = make()
    context = torch.randn(4, 3, dtype=torch.float64)
    log_p, _ = score(cflow, torch.randn(4, 2, dtype=torch.float64), context)
    assert not cflow.regularizes
    assert cflow.kinetic_energy is None and cflow.jacobian_frobenius is None
    loss = -log_p.mean() + cflow.regularization
    assert cflow.regularization.item() == 0.0
    assert torch.equal(loss, -log_p.mean())


def test_the_module_does_not_keep_conditioned_transforms_alive():
    torch.manual_seed(0)
    cflow = make(kinetic_weight=0.5)
    child = cflow.condition(torch.randn(4, 3, dtype=torch.float64))
    dist.TransformedDistribution(normal_base(2), [child]).log_prob(torch.randn(4, 2, dtype=torch.float64))
    ref = weakref.ref(child)
    del child
    gc.collect()
    assert ref() is None
    assert cflow.nfe > 0 and cflow.kinetic_energy is not None  # the record outlives it


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_drop_the_record(how):
    torch.manual_seed(0)
    cflow = make(kinetic_weight=0.5, frobenius_weight=0.25)
    context = torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    log_p, child = score(cflow, x, context)
    nfe, reg = cflow.nfe, cflow.regularization.detach()
    duplicate = copy.deepcopy if how == "deepcopy" else lambda obj: pickle.loads(pickle.dumps(obj))

    copied = duplicate(cflow)
    assert copied.nfe == 0 and copied.nfe_backward == 0
    assert copied.kinetic_energy is None and copied.jacobian_frobenius is None
    assert copied.regularization.item() == 0.0
    # the copy records its own solves, and leaves the original's record alone
    copied_log_p, _ = score(copied, x, context)
    assert torch.allclose(copied_log_p, log_p.detach(), rtol=1e-12)
    assert copied.nfe > 0 and torch.allclose(copied.regularization, reg, rtol=1e-12)
    assert cflow.nfe == nfe and cflow.regularization.detach().equal(reg)

    # a copied conditioned transform does not write into the original module
    child_copy = duplicate(child)
    assert child_copy.kinetic_energy is None
    with torch.no_grad():
        child_copy(torch.randn(6, 4, 2, dtype=torch.float64))
    assert child_copy.nfe > 0 and child_copy.kinetic_energy.shape == (6, 4)
    assert cflow.nfe == nfe and cflow.kinetic_energy.shape == (4,)
