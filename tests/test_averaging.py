"""The training recipe's options: the moving average of the weights (``--ema``) and
gradient-norm clipping (``--grad-clip``)."""

import math
import os

import pytest
import torch

from pyro_flows.train.averaging import WeightAverage
from pyro_flows.train.checkpoint import load_checkpoint
from pyro_flows.train.config import RunConfig
from pyro_flows.train.run import evaluate_run, fit_run

from .helpers import Interrupt, interrupt_at
from .test_train import tiny


def test_weight_average_matches_a_hand_computation():
    net = torch.nn.Linear(2, 1)
    average = WeightAverage(net, decay=0.9)
    weights = [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5]), torch.tensor([-1.0, 4.0])]
    expected = None
    for t, w in enumerate(weights):
        with torch.no_grad():
            net.weight.copy_(w[None])
            net.bias.fill_(float(t))
        average.update()
        d = 0.0 if t == 0 else min(0.9, (1 + t) / (10 + t))
        expected = w.clone() if expected is None else d * expected + (1 - d) * w
    assert torch.allclose(average.shadow[0][0], expected)
    # d_1 = 2/11, d_2 = 3/12; the bias saw 0, 1, 2
    bias = (2 / 11 * 0 + 9 / 11 * 1) * 3 / 12 + 9 / 12 * 2
    assert math.isclose(float(average.shadow[1]), bias, rel_tol=1e-6)
    with average.applied():
        assert torch.allclose(net.weight[0], expected)
    assert torch.equal(net.weight[0], weights[-1])  # the live weights come back
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, decay=1.0)


def test_ema_weights_are_evaluated_kept_and_saved(tmp_path):
    config = tiny(tmp_path, ema=0.9, steps=20, eval_every=10)
    results = fit_run(config)
    best, last = (load_checkpoint(os.path.join(config.out, f)) for f in ("best.pt", "checkpoint.pt"))
    names = [name for name, _ in _parameter_names(config)]
    # best.pt holds the averaged weights (those evaluate and sample use), checkpoint.pt the live ones
    for name, shadow in zip(names, best["ema"]["shadow"], strict=True):
        assert torch.equal(best["model"][name], shadow), name
    assert any(
        not torch.equal(last["model"][name], shadow)
        for name, shadow in zip(names, last["ema"]["shadow"], strict=True)
    )
    # the validation NLL that chose the best model is the averaged weights' NLL
    val = evaluate_run(config.out, split="val", quiet=True)
    assert math.isclose(val["nll"], results["best_val_nll"], rel_tol=1e-5, abs_tol=1e-5)


def _parameter_names(config):
    from pyro_flows.train.registry import build_model

    flow = build_model(config, (2,))
    return [(n, p) for n, p in flow.named_parameters() if p.requires_grad]


def test_interrupted_and_resumed_run_with_ema_ends_bit_identical(tmp_path):
    config = tiny(tmp_path, "whole", ema=0.95, flow="spline")
    fit_run(config)
    split = config.replace(out=str(tmp_path / "split"))
    with pytest.raises(Interrupt):
        fit_run(split, on_step=interrupt_at(12))
    fit_run(RunConfig(quiet=True), resume_dir=split.out)
    for which in ("checkpoint.pt", "best.pt"):
        whole, resumed = (load_checkpoint(os.path.join(d, which)) for d in (config.out, split.out))
        assert whole["ema"]["num_updates"] == resumed["ema"]["num_updates"]
        for a, b in zip(whole["ema"]["shadow"], resumed["ema"]["shadow"], strict=True):
            assert torch.equal(a, b)
        for key, value in whole["model"].items():
            assert torch.equal(value, resumed["model"][key]), (which, key)


def test_gradient_norm_clipping_bounds_what_the_optimizer_sees(tmp_path, monkeypatch):
    seen = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        )
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    fit_run(tiny(tmp_path, "clipped", steps=5, grad_clip=1e-3))
    assert len(seen) == 5 and max(seen) <= 1e-3 * (1 + 1e-4)
    seen.clear()
    fit_run(tiny(tmp_path, "free", steps=5, grad_clip=0.0))
    assert min(seen) > 1e-2  # unclipped gradients of a fresh flow are far larger


def test_ema_option_is_checked():
    with pytest.raises(ValueError, match="--ema must be in"):
        RunConfig(ema=1.0)
