"""Amortized posteriors on simulators with known posteriors: our
:func:`pyro_flows.infer.fit_posterior` against the ``sbi`` package's default NPE
(Greenberg et al., 2019; Lueckmann et al., 2021) at the same simulations and at most the
same training time.

Tasks:

* **linear Gaussian**: theta ~ N(0, I_2), x = A theta + 0.5 eps with a fixed 3 x 2
  matrix A; the posterior is Gaussian and exact.
* **two moons** (Greenberg et al., 2019; the SBI benchmark of Lueckmann et al., 2021):
  theta ~ U(-1, 1)^2, a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01^2),
  x = (r cos a + 0.25, r sin a) + (-|theta_1 + theta_2| / sqrt 2, (theta_2 - theta_1) / sqrt 2).
  The likelihood has a closed form (polar coordinates of x minus the offset), so the
  reference posterior is the likelihood on a 2001 x 2001 grid over the prior's box,
  normalized by quadrature and sampled cell by cell with uniform jitter (checked against
  rejection sampling from the prior: C2ST 0.51).

For each task, budget and seed, ``sbi``'s NPE runs with its defaults (MAF, batch 200,
lr 5e-4, early stopping after 20 epochs without improvement); ours then gets
``max_seconds`` equal to ``sbi``'s training time (and stops earlier on its own early
stopping). Scores per observation, averaged over ``--observations`` observations drawn
from the prior predictive: the classifier two-sample test accuracy (C2ST; 0.5 is
indistinguishable; an MLP classifier, 5-fold cross-validation, as in Lueckmann et al.,
2021) between 1000 posterior draws and 1000 reference draws, and KL(p || q) estimated
with reference draws, E_p[log p(theta | x) - log q(theta | x)] (``sbi``'s log_prob
normalized for leakage outside the prior's box, as its default does).

``sbi`` is optional: ``pip install sbi`` (0.27.0 was used; it keeps torch as installed).
Without it only ours runs. Results go to ``outputs/sbi/`` (``--out``).

    OMP_NUM_THREADS=1 python -m benchmarks.sbi                 # the table in docs/inference.md
    OMP_NUM_THREADS=1 python -m benchmarks.sbi --smoke         # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, Uniform

from benchmarks import report
from pyro_flows.infer import fit_posterior

# ---------------------------------------------------------------- linear Gaussian
A = torch.tensor([[1.0, 0.5], [-0.3, 1.0], [0.8, -0.6]])
NOISE = 0.5


def linear_gaussian_prior():
    return MultivariateNormal(torch.zeros(2), torch.eye(2))


def linear_gaussian(theta: torch.Tensor) -> torch.Tensor:
    return theta @ A.T + NOISE * torch.randn(len(theta), 3)


def linear_gaussian_posterior(x: torch.Tensor) -> MultivariateNormal:
    cov = torch.linalg.inv(torch.eye(2) + A.T @ A / NOISE**2)
    return MultivariateNormal((x @ A) / NOISE**2 @ cov, cov)


class GaussianReference:
    """Exact draws and log-densities of the linear Gaussian posterior at one x."""

    def __init__(self, x: torch.Tensor):
        self.posterior = linear_gaussian_posterior(x)

    def sample(self, n: int) -> torch.Tensor:
        return self.posterior.sample((n,))

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        return self.posterior.log_prob(theta)


# ---------------------------------------------------------------- two moons
def two_moons_prior():
    return Independent(Uniform(-torch.ones(2), torch.ones(2)), 1)


def _offset(theta: torch.Tensor) -> torch.Tensor:
    t1, t2 = theta[..., 0], theta[..., 1]
    return torch.stack([-(t1 + t2).abs() / math.sqrt(2), (t2 - t1) / math.sqrt(2)], -1)


def two_moons(theta: torch.Tensor) -> torch.Tensor:
    n = len(theta)
    a = math.pi * (torch.rand(n) - 0.5)
    r = 0.1 + 0.01 * torch.randn(n)
    p = torch.stack([r * a.cos() + 0.25, r * a.sin()], -1)
    return p + _offset(theta)


def two_moons_log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | theta): with q = x - offset(theta) - (0.25, 0) = r (cos a, sin a),
    p(q) = N(|q|; 0.1, 0.01) / (pi |q|) on the half-plane q_1 > 0 (a in (-pi/2, pi/2))."""
    q = x - _offset(theta) - torch.tensor([0.25, 0.0], dtype=theta.dtype)
    r = q.norm(dim=-1)
    log_p = Normal(0.1, 0.01).log_prob(r) - math.log(math.pi) - r.log()
    return torch.where(q[..., 0] > 0, log_p, torch.full_like(log_p, -math.inf))


class TwoMoonsReference:
    """The two-moons posterior at one x on a grid over the prior's box [-1, 1]^2 (the prior
    is flat there): log p(theta | x) = log p(x | theta) - log Z with Z by the midpoint rule;
    draws pick a cell with probability proportional to its mass and jitter uniformly in it.
    The moons are about 0.01 wide, so cells of 0.001 resolve them."""

    def __init__(self, x: torch.Tensor, cells: int = 2000):
        x = x.double()
        self.x, self.h = x, 2.0 / cells
        centers = -1 + self.h * (torch.arange(cells, dtype=torch.float64) + 0.5)
        grid = torch.stack(torch.meshgrid(centers, centers, indexing="ij"), -1).reshape(-1, 2)
        log_lik = two_moons_log_likelihood(grid, x)
        top = log_lik.max()
        mass = (log_lik - top).exp()
        self.log_z = float(top + mass.sum().log() + 2 * math.log(self.h))
        self.grid, self.weights = grid, mass / mass.sum()

    def sample(self, n: int) -> torch.Tensor:
        draws = torch.empty(0, 2, dtype=torch.float64)
        while len(draws) < n:
            cell = torch.multinomial(self.weights, n, replacement=True)
            jittered = self.grid[cell] + self.h * (torch.rand(n, 2, dtype=torch.float64) - 0.5)
            # a cell cut by the half-plane edge of the likelihood can jitter out of it
            keep = torch.isfinite(two_moons_log_likelihood(jittered, self.x))
            draws = torch.cat([draws, jittered[keep]])
        return draws[:n].float()

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        return (two_moons_log_likelihood(theta.double(), self.x) - self.log_z).float()


TASKS = {
    "linear Gaussian": (linear_gaussian_prior, linear_gaussian, GaussianReference),
    "two moons": (two_moons_prior, two_moons, TwoMoonsReference),
}


# ---------------------------------------------------------------- scores
def c2st(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> float:
    """Classifier two-sample test accuracy (5-fold cross-validated MLP, inputs z-scored by
    the first sample), as in Lueckmann et al. (2021): 0.5 when indistinguishable."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    a, b = a.double().numpy(), b.double().numpy()
    mean, sd = a.mean(0), a.std(0)
    data = (np.concatenate([a, b]) - mean) / sd
    labels = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    width = 10 * a.shape[1]
    classifier = MLPClassifier((width, width), max_iter=1000, random_state=seed)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(classifier, data, labels, cv=folds, scoring="accuracy").mean())


def score(sample, log_prob, reference, num_draws: int, seed: int) -> dict:
    """C2ST accuracy and KL(p || q) of one posterior at one observation."""
    ref = reference.sample(num_draws)
    with torch.no_grad():
        kl = float((reference.log_prob(ref) - log_prob(ref)).mean())
    return {"c2st": c2st(reference.sample(num_draws), sample(num_draws), seed), "kl": kl}


# ---------------------------------------------------------------- methods
def fit_sbi(prior, theta, x, log_dir: Path):
    from sbi.inference import NPE
    from torch.utils.tensorboard import SummaryWriter

    # sbi logs to TensorBoard, by default in ./sbi-logs; keep that with our outputs
    inference = NPE(prior=prior, show_progress_bars=False, summary_writer=SummaryWriter(str(log_dir)))
    inference.append_simulations(theta, x)
    start = time.perf_counter()
    estimator = inference.train()
    seconds = time.perf_counter() - start
    posterior = inference.build_posterior(estimator)

    def at(x_obs):
        return (
            lambda n: posterior.sample((n,), x=x_obs, show_progress_bars=False),
            lambda t: posterior.log_prob(t, x=x_obs),
        )

    return at, seconds, {"epochs": inference.epoch}


def fit_ours(prior, theta, x, max_seconds, **kwargs):
    start = time.perf_counter()
    posterior = fit_posterior((theta, x), prior, max_seconds=max_seconds, **kwargs)
    seconds = time.perf_counter() - start

    def at(x_obs):
        return lambda n: posterior.sample(x_obs, n), lambda t: posterior.log_prob(t, x_obs)

    return at, seconds, {"epochs": posterior.history["epochs"]}


def have_sbi() -> bool:
    try:
        import sbi  # noqa: F401
    except ImportError:
        return False
    return True


def run(task: str, num_simulations: int, seed: int, args) -> list:
    make_prior, simulator, make_reference = TASKS[task]
    torch.manual_seed(1000 + seed)
    prior = make_prior()
    theta = prior.sample((num_simulations,))
    x = simulator(theta)
    torch.manual_seed(2000)  # the same observations for every budget and seed
    observations = simulator(prior.sample((args.observations,)))
    references = [make_reference(x_obs) for x_obs in observations]
    methods = {}
    budget = args.max_seconds
    if "sbi" in args.methods and have_sbi():
        torch.manual_seed(seed)
        methods["sbi NPE (MAF)"] = fit_sbi(prior, theta, x, args.out / "sbi-logs")
        budget = methods["sbi NPE (MAF)"][1] if budget is None else budget
    if "ours" in args.methods:
        kwargs = json.loads(args.fit_kwargs)
        if args.max_epochs:
            kwargs["max_epochs"] = args.max_epochs
        name = "ours (fit_posterior)" if "flow" not in kwargs else f"ours (fit_posterior, {kwargs['flow']})"
        methods[name] = fit_ours(prior, theta, x, budget, seed=seed, **kwargs)
    rows = []
    for name, (at, seconds, info) in methods.items():
        scores = []
        for i, (x_obs, reference) in enumerate(zip(observations, references, strict=True)):
            torch.manual_seed(3000 + i)
            scores.append(score(*at(x_obs), reference, args.draws, seed))
        row = {
            "task": task,
            "simulations": num_simulations,
            "seed": seed,
            "method": name,
            "train_seconds": seconds,
            "epochs": info["epochs"],
            "c2st": float(np.mean([s["c2st"] for s in scores])),
            "kl": float(np.mean([s["kl"] for s in scores])),
            "per_observation": scores,
        }
        print(
            f"{task:16s} n={num_simulations:6d} seed {seed} {name:22s} {seconds:7.1f} s "
            f"({info['epochs']} epochs)  C2ST {row['c2st']:.3f}  KL {row['kl']:.3f}",
            flush=True,
        )
        rows.append(row)
    return rows


#: default folder of the records: beside the other benchmarks' (ignored), whatever the working directory
OUT = report.RESULTS.parent / "sbi"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default="linear Gaussian,two moons")
    parser.add_argument("--simulations", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", default="sbi,ours")
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--draws", type=int, default=1000, help="posterior and reference draws per C2ST")
    parser.add_argument("--max-seconds", type=float, default=None, help="ours' budget (default: sbi's time)")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--fit-kwargs", default="{}", help="JSON keyword arguments of fit_posterior")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--stem", default="sbi")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, ours only unless --methods")
    args = parser.parse_args(argv)
    if args.smoke:
        args.simulations, args.observations, args.draws, args.max_epochs = [200], 1, 100, 2
    torch.set_num_threads(1)
    if "sbi" in args.methods and not have_sbi():
        print("sbi is not installed: running ours only (pip install sbi)")
    rows = []
    for task in [t.strip() for t in args.tasks.split(",")]:
        for n in args.simulations:
            for seed in args.seeds:
                rows.extend(run(task, n, seed, args))
    info = report.machine()
    if have_sbi():
        import sbi

        info["versions"]["sbi"] = sbi.__version__
    cmd = report.command()
    table = report.markdown_table(
        ["task", "simulations", "seed", "method", "train s (epochs)", "C2ST", "KL(p || q)"],
        [
            [
                r["task"],
                r["simulations"],
                r["seed"],
                r["method"],
                f"{r['train_seconds']:.1f} ({r['epochs']})",
                f"{r['c2st']:.3f}",
                f"{r['kl']:.3f}",
            ]
            for r in rows
        ],
    )
    markdown = f"{report.header(info, cmd)}\n\n{table}\n"
    report.publish(args.stem, markdown, {"machine": info, "command": cmd, "rows": rows}, args.out)
    return rows


if __name__ == "__main__":
    main()
