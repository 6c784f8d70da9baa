"""ParameterAverage: the running mean of the parameter store, swapped into a guide."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_flows.infer import AutoSplineFlow, ParameterAverage


def model():
    pyro.sample("z", dist.Normal(torch.ones(3), 2.0).to_event(1))


def test_a_guide_reads_the_averaged_parameters_and_gets_its_own_back():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoSplineFlow(model, num_layers=2, hidden_dims=(8,), layers="mix")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    store = pyro.get_param_store()
    average = ParameterAverage()
    snapshots = []
    for _ in range(4):
        svi.step()
        average.update()
        snapshots.append({k: v.detach().clone() for k, v in store.named_parameters()})
    expected = {k: torch.stack([s[k] for s in snapshots]).mean(0) for k in snapshots[0]}
    z = torch.randn(5, 3)
    last = guide.get_transform()(z).detach()
    with average.applied():
        for name, value in store.named_parameters():
            assert torch.allclose(value, expected[name], atol=1e-6), name
        averaged = guide.get_transform()(z).detach()
    assert not torch.allclose(averaged, last)
    for name, value in store.named_parameters():
        assert torch.equal(value, snapshots[-1][name]), name
    assert torch.allclose(guide.get_transform()(z), last)
