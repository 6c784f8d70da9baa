"""ParameterAverage: the running mean of the parameter store, swapped into a guide."""

import pyro
import pyro.distributions as dist
import pytest
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


def test_an_average_saved_and_loaded_goes_on_as_if_never_interrupted():
    """state_dict -> torch.save -> torch.load(weights_only=True) -> load_state_dict, then
    more updates: the same means as one average that was never saved."""
    import io

    pyro.clear_param_store()
    p = pyro.param("p", torch.zeros(3))
    pyro.param("q", torch.ones(2), constraint=torch.distributions.constraints.positive)
    whole, first = ParameterAverage(), ParameterAverage()
    values = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    for row in values[:3]:
        p.data.copy_(row[:3])
        pyro.get_param_store()._params["q"].data.copy_(row[3:])
        whole.update()
        first.update()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = ParameterAverage()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for row in values[3:]:
        p.data.copy_(row[:3])
        pyro.get_param_store()._params["q"].data.copy_(row[3:])
        whole.update()
        resumed.update()
    assert resumed.counts == whole.counts == {"p": 6, "q": 6}
    for name in ("p", "q"):
        assert torch.allclose(resumed.means[name], whole.means[name], atol=1e-7)
    assert torch.allclose(whole.means["p"], values[:, :3].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="the count of 'p' must be a positive int"):
        ParameterAverage().load_state_dict({"means": {"p": torch.zeros(3)}, "counts": {"p": 0}})
