"""Held-out negative log-likelihood of a GMM (EM), a CDF flow and RealNVP, on the built-in
1-D data (``make_bimodal``) and 2-D data (``make_moons``).

    python -m examples.compare_nll            # the numbers in docs/one-d.md
    python -m examples.compare_nll --smoke    # seconds, for the tests

Notes on fairness:

* all models get the same training set and are scored on a held-out set of equal size;
* the CDF flow acts coordinatewise, so in 2-D it is a product of two 1-D densities and
  cannot represent the dependence between the coordinates of the moons (that is what
  coupling layers are for);
* RealNVP needs at least two coordinates to split, so on the 1-D data it models
  (x, e) with an independent padding e ~ N(0, 1) and reports
  -log q(x, e) + log N(e). In expectation this is an *upper bound* on the NLL of its
  x-marginal (the cross-entropy of e given x is at least the entropy of N(0, 1)).
"""

from __future__ import annotations

import argparse
import time

import torch

from pyro_flows import Flow, GaussianMixture, cdf_flow, real_nvp
from pyro_flows.data import make_bimodal, make_moons


def train(flow: Flow, data: torch.Tensor, steps: int, lr: float, batch_size: int, seed: int = 0) -> Flow:
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        batch = data[torch.randint(len(data), (min(batch_size, len(data)),), generator=g)]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return flow


@torch.no_grad()
def nll(model, x: torch.Tensor) -> float:
    return -model.log_prob(x).mean().item()


def compare_1d(args) -> dict:
    train_x, test_x = make_bimodal(args.n, seed=0), make_bimodal(args.n, seed=1)
    k = args.components_1d
    results = {"GMM (EM)": nll(GaussianMixture(k).double().fit_em(train_x), test_x)}
    flow = Flow(cdf_flow(k)).double()
    flow.transform.mixture.init_from_data(train_x)
    results["CDF flow"] = nll(train(flow, train_x, args.steps, 0.05, len(train_x)), test_x)
    # RealNVP on (x, e), e ~ N(0, 1) independent padding; subtract the padding's log-density
    g = torch.Generator().manual_seed(2)
    pad = lambda x: torch.stack([x, torch.randn(len(x), generator=g, dtype=x.dtype)], -1)  # noqa: E731
    nvp = Flow(real_nvp(2, num_layers=args.layers, hidden_dims=(args.hidden, args.hidden))).double()
    train(nvp, pad(train_x), args.nvp_steps, 1e-3, 256)
    padded = pad(test_x)
    with torch.no_grad():
        padding = torch.distributions.Normal(0.0, 1.0).log_prob(padded[:, 1])
        results["RealNVP (padded)"] = -(nvp.log_prob(padded) - padding).mean().item()
    return results


def compare_2d(args) -> dict:
    train_x = make_moons(args.n, noise=0.1, seed=0, dtype=torch.float64)
    test_x = make_moons(args.n, noise=0.1, seed=1, dtype=torch.float64)
    k = args.components_2d
    results = {
        "GMM (EM, full cov.)": nll(
            GaussianMixture(k, dim=2, covariance="full").double().fit_em(train_x), test_x
        )
    }
    flow = Flow(cdf_flow(k, event_shape=(2,))).double()
    flow.transform.mixture.init_from_data(train_x)
    results["CDF flow (per coordinate)"] = nll(train(flow, train_x, args.steps, 0.05, len(train_x)), test_x)
    nvp = Flow(real_nvp(2, num_layers=args.layers, hidden_dims=(args.hidden, args.hidden))).double()
    results["RealNVP"] = nll(train(nvp, train_x, args.nvp_steps, 1e-3, 256), test_x)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=4000, help="training (and held-out) set size")
    parser.add_argument("--components-1d", type=int, default=5)
    parser.add_argument("--components-2d", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400, help="CDF-flow steps (full batch)")
    parser.add_argument("--nvp-steps", type=int, default=3000)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny run (for tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.steps, args.nvp_steps, args.layers, args.hidden = 300, 5, 5, 2, 8
    torch.manual_seed(args.seed)
    out = {}
    for name, fn in (("1-D bimodal", compare_1d), ("2-D moons", compare_2d)):
        start = time.time()
        out[name] = fn(args)
        print(f"{name} (held-out NLL, nats per point; {time.time() - start:.0f} s)")
        for model, value in out[name].items():
            print(f"  {model:<28} {value:8.4f}")
    return out


if __name__ == "__main__":
    main()
