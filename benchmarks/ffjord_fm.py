"""FFJORD trained by flow matching against FFJORD trained by maximum likelihood and RealNVP.

Side by side in one process and one thread, on 2-D toy targets whose entropy is known
(see :mod:`benchmarks.toy_targets`). Each model trains for a budget of CPU seconds
(``time.process_time()``, which counts only this process's work, so a busy machine slows
the run but does not change the numbers); its held-out NLL is measured at fixed CPU
times, with the evaluation itself not counted. The models (``--models``):

* ``ffjord_ml``: FFJORD with a concat-squash field (``--hidden``, tanh) trained by
  maximum likelihood (Grathwohl et al., 2019): every step solves the ODE with dopri5 and
  the exact trace and backpropagates through the solver;
* ``ffjord_fm``: FFJORD with the field of ``--fm-field`` (by default the velocity field,
  :class:`~pyro_flows.nn.VelocityNet`, at its own size and with its default state
  features) trained by conditional flow matching with minibatch-OT pairs (Lipman et al.,
  2023; Tong et al., 2023): no ODE solve in training;
* ``real_nvp``: 8 affine couplings (the library's best coupling flow on these targets);
* ``spline_flow`` (only when named in ``--models``): :func:`pyro_flows.spline_flow` with
  ``--spline-bins`` bins on ``[-B, B]``, ``B`` from ``--spline-tail-bound`` (by default
  8 bins on [-3, 3], the 2-D default when the first runs were made).

Every FFJORD NLL is the exact change of variables through the ODE (exact trace, dopri5 at
rtol = atol = 1e-5). Reported: NLL and KL gap (NLL minus the true entropy) over CPU time;
the CPU time flow matching needs to reach maximum likelihood's final NLL; and, for the
flow-matching model at the end, the accuracy of the log-density with cheaper solvers
(against dopri5 at 1e-10 in float64) and the time and sample quality of fixed-step
sampling (the KL gap of a kernel density estimate fitted to 10k samples).

    OMP_NUM_THREADS=1 python -m benchmarks.ffjord_fm --targets checkerboard
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch

import pyro_flows
from pyro_flows.nn import default_state_features
from pyro_flows.train.flow_matching import flow_matching_loss

from . import report
from .toy_targets import TARGETS


def cosine(lr: float, fraction: float, warmup: float = 0.0) -> float:
    """``lr`` after a linear warm-up over the first ``warmup`` of the budget, then a cosine
    decay to zero at its end."""
    if warmup > 0 and fraction < warmup:
        return lr * fraction / warmup
    fraction = (fraction - warmup) / (1 - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


#: the models of a run, in the order of its records
MODELS = ("ffjord_fm", "ffjord_ml", "real_nvp", "spline_flow")

MARKS = (5, 10, 20, 34, 50, 85, 120, 170, 250, 340, 500, 700, 1000)


def marks_up_to(budget: float, base=MARKS):
    return [m for m in base if m < budget] + [budget]


def run_budget(
    name,
    model,
    loss_fn,
    parameters,
    lr,
    budget,
    train,
    batch,
    evaluate,
    seed,
    log,
    warmup=0.0,
    ema=0.0,
    marks=MARKS,
    noise_sd=None,
):
    """Adam with a cosine schedule over the CPU budget; returns the NLL curve. With
    ``ema > 0`` the evaluations score an exponential moving average of the weights
    (decay ``ema``, shorter while few steps have been taken), updated after every step.
    With ``noise_sd`` (per coordinate) each batch gets Gaussian noise of that sd times
    the current learning rate over ``lr``, as ``fit``'s ``noise`` does."""
    torch.manual_seed(seed)
    parameters = list(parameters)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    batches = torch.Generator().manual_seed(seed)
    average = copy.deepcopy(model) if ema > 0 else None
    marks = marks_up_to(budget, marks)
    used, steps, curve = 0.0, 0, []
    while marks:
        start = time.process_time()
        for _ in range(5):
            for group in optimizer.param_groups:
                group["lr"] = cosine(lr, used / budget, warmup)
            x = train[torch.randint(len(train), (batch,), generator=batches)]
            if noise_sd is not None:
                x = x + (optimizer.param_groups[0]["lr"] / lr) * noise_sd * torch.randn_like(x)
            loss = loss_fn(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if average is not None:
                decay = min(ema, (1 + steps) / (10 + steps))
                with torch.no_grad():
                    for kept, current in zip(average.parameters(), model.parameters(), strict=True):
                        kept.lerp_(current, 1 - decay)
        used += time.process_time() - start
        if used >= marks[0]:
            while marks and used >= marks[0]:
                marks.pop(0)
            nll, se, nfe = evaluate(model if average is None else average)
            curve.append({"cpu": round(used, 2), "steps": steps, "nll": nll, "se": se, "nfe": nfe})
            log(f"{name}: {used:7.1f} CPU-s, step {steps}, NLL {nll:.4f} ± {se:.4f}, nfe {nfe}")
    return curve, (model if average is None else average)


def paired_kl(flow, points, target, ode: bool) -> dict:
    """KL(p || q) estimated on ``points`` drawn from p: the mean of log p(x) - log q(x) and
    its standard error. On training points it is biased low by as much as the model has
    fitted their sampling noise, so its difference from the held-out estimate measures
    overfitting (the paired difference removes most of the sampling noise of the NLL)."""
    nll, _ = (ode_nlls if ode else plain_nlls)(flow, points)
    return kl_estimate(nll, points, target)


def kl_estimate(nll, points, target) -> dict:
    """:func:`paired_kl` from per-point NLLs already computed."""
    mean, se = report.mean_se(target.log_prob(points.double()) + nll.double())
    return {"kl": mean, "se": se, "points": len(points)}


def points_key(points) -> str:
    """A fingerprint of a set of points: per-point NLLs of two models are paired only when
    their keys agree (a merge may bring runs of other seeds or test sizes together)."""
    x = points.double()
    return f"{len(x)}:{float(x.sum()):.9e}:{float((x * x).sum()):.9e}"


def ode_nlls(flow, points):
    """Per-point NLLs through the ODE (eval mode, exact trace, dopri5 at 1e-5) and the
    solver's evaluations."""
    transform = flow.transform
    saved = transform.rtol, transform.atol
    transform.rtol = transform.atol = 1e-5
    flow.eval()
    try:
        with torch.no_grad():
            nll = -flow.log_prob(points)
    finally:
        transform.rtol, transform.atol = saved
        flow.train()
    return nll, transform.nfe


def plain_nlls(flow, points):
    flow.eval()
    with torch.no_grad():
        nll = -flow.log_prob(points)
    flow.train()
    return nll, None


def ffjord_nll(flow, test):
    """Held-out NLL through the ODE: its mean, standard error and the solver's evaluations."""
    nll, nfe = ode_nlls(flow, test)
    return (*report.mean_se(nll), nfe)


def plain_nll(flow, test):
    nll, _ = plain_nlls(flow, test)
    return (*report.mean_se(nll), None)


def log_density_accuracy(flow, points, settings):
    """Mean and max |log p - log p_ref| and CPU time of scoring ``points`` with each
    solver setting; the reference is dopri5 at 1e-10 in float64."""
    model = copy.deepcopy(flow).double().eval()
    x = points.double()
    transform = model.transform

    def score(method, rtol=1e-10, atol=1e-10, options=None):
        transform.method, transform.rtol, transform.atol = method, rtol, atol
        transform.options = dict(options or {})
        start = time.process_time()
        with torch.no_grad():
            # a new tensor each time: the transform caches the last (input, log-det) pair,
            # and a solver setting is not part of its key
            value = model.log_prob(x.clone())
        return value, time.process_time() - start, transform.nfe

    reference, ref_seconds, ref_nfe = score("dopri5")
    rows = [
        {
            "solver": "dopri5 1e-10 (reference)",
            "mean_abs": 0.0,
            "max_abs": 0.0,
            "cpu": ref_seconds,
            "nfe": ref_nfe,
        }
    ]
    for label, kwargs in settings:
        value, seconds, nfe = score(**kwargs)
        error = (value - reference).abs()
        rows.append(
            {
                "solver": label,
                "mean_abs": float(error.mean()),
                "max_abs": float(error.max()),
                "cpu": seconds,
                "nfe": nfe,
            }
        )
    return rows


def kde_gap(samples, test, entropy):
    """NLL of ``test`` under a Gaussian KDE of ``samples`` (Scott's bandwidth) minus the
    entropy: the KL gap of the samples' density estimate."""
    samples = samples.double()
    n, d = samples.shape
    bandwidth = samples.std(0) * n ** (-1.0 / (d + 4))
    parts = []
    for block in test.double().split(1000):
        z = (block.unsqueeze(1) - samples.unsqueeze(0)) / bandwidth
        log_k = -0.5 * z.square().sum(-1) - 0.5 * d * math.log(2 * math.pi) - bandwidth.log().sum()
        parts.append(torch.logsumexp(log_k, -1) - math.log(n))
    nll = -torch.cat(parts)
    return float(nll.mean()) - (entropy if entropy is not None else 0.0)


def sampling_speed(flow, target, test, entropy, settings, num=10000, seed=0):
    """CPU time to draw ``num`` samples with each sampling solver and the KL gap of their KDE."""
    rows = []
    reference = kde_gap(target.sample(num, seed=seed + 99), test, entropy)
    rows.append({"solver": "true samples (KDE floor)", "cpu": None, "nfe": None, "kde_gap": reference})
    transform = flow.transform
    flow.eval()
    for label, kwargs in settings:
        saved = (
            transform.sample_method,
            transform.sample_rtol,
            transform.sample_atol,
            transform.sample_options,
        )
        transform.sample_method = kwargs.get("method")
        transform.sample_rtol = kwargs.get("rtol")
        transform.sample_atol = kwargs.get("atol")
        transform.sample_options = kwargs.get("options")
        torch.manual_seed(seed)
        start = time.process_time()
        with torch.no_grad():
            samples = flow.sample((num,))
        seconds = time.process_time() - start
        nfe = transform.nfe
        transform.sample_method, transform.sample_rtol, transform.sample_atol, transform.sample_options = (
            saved
        )
        rows.append({"solver": label, "cpu": seconds, "nfe": nfe, "kde_gap": kde_gap(samples, test, entropy)})
    flow.train()
    return rows


SCORING = [
    ("dopri5 1e-5 (default)", dict(method="dopri5", rtol=1e-5, atol=1e-5)),
    ("dopri5 1e-3", dict(method="dopri5", rtol=1e-3, atol=1e-3)),
    ("rk4 32 steps", dict(method="rk4", options={"step_size": 1 / 32})),
    ("rk4 8 steps", dict(method="rk4", options={"step_size": 1 / 8})),
]
SAMPLING = [
    ("dopri5 1e-5", dict(method="dopri5", rtol=1e-5, atol=1e-5)),
    ("rk4 8 steps", dict(method="rk4", options={"step_size": 1 / 8})),
    ("rk4 4 steps", dict(method="rk4", options={"step_size": 1 / 4})),
    ("midpoint 8 steps", dict(method="midpoint", options={"step_size": 1 / 8})),
    ("euler 8 steps", dict(method="euler", options={"step_size": 1 / 8})),
    ("euler 32 steps", dict(method="euler", options={"step_size": 1 / 32})),
]


def fm_state_features(args) -> dict:
    """The velocity field's state features of the flow-matching model (the library's
    default unless ``--fm-state-features`` is given; concat-squash fields have none)."""
    if args.fm_field != "velocity":
        return {}
    count = None if args.fm_state_features < 0 else args.fm_state_features
    return dict(state_features=count, state_frequency=args.fm_state_frequency)


#: options added after the first records, with the value those records ran with
RECORDED_BEFORE = {
    "fm_state_features": 0,
    "fm_state_frequency": 1.0,
    "spline_bins": 8,
    "spline_tail_bound": 3.0,
}


def fm_field_summary(args) -> str:
    """The flow-matching field of a run, as its record describes it."""
    size = "default size" if args.fm_hidden is None else "-".join(map(str, args.fm_hidden))
    if args.fm_field != "velocity":
        return f"{args.fm_field} field, {size}"
    count = default_state_features(2) if args.fm_state_features < 0 else args.fm_state_features
    return f"velocity field, {size}, {count} state features"


def run_target(name, args, log, on_progress=lambda out: None):
    target = TARGETS[name]
    entropy, entropy_se = target.entropy(args.entropy_samples)
    train = target.sample(args.train, seed=args.seed).float()
    test = target.sample(args.test, seed=args.seed + 1).float()
    hidden = tuple(args.hidden)
    out = {"entropy": entropy, "entropy_se": entropy_se, "models": {}}

    def ffjord(tol):
        torch.manual_seed(args.seed)
        return pyro_flows.Flow(pyro_flows.ffjord(2, hidden, "tanh", rtol=tol, atol=tol))

    order = args.models
    for model_name in order:
        if model_name == "ffjord_fm":
            torch.manual_seed(args.seed)
            flow = pyro_flows.Flow(
                pyro_flows.ffjord(
                    2,
                    None if args.fm_hidden is None else tuple(args.fm_hidden),
                    args.fm_activation,
                    field=args.fm_field,
                    **fm_state_features(args),
                )
            )

            def loss_fn(x, flow=flow):
                z = torch.randn_like(x)
                return flow_matching_loss(
                    flow.transform,
                    x,
                    z,
                    path=args.path,
                    sigma=args.fm_sigma,
                    ot_block=args.fm_ot_block or None,
                    time_exponent=args.fm_time_exponent,
                ).mean()

            curve, scored = run_budget(
                model_name,
                flow,
                loss_fn,
                flow.parameters(),
                args.fm_lr,
                args.fm_seconds,
                train,
                args.fm_batch,
                lambda m: ffjord_nll(m, test),
                args.seed,
                log,
                warmup=args.fm_warmup,
                ema=args.fm_ema,
                marks=args.marks,
                noise_sd=args.fm_noise * train.std(0) if args.fm_noise > 0 else None,
            )
            fm_flow = scored  # scored by the solver tables after the loop
        elif model_name == "ffjord_ml":
            flow = ffjord(args.ml_tol)

            def loss_fn(x, flow=flow):
                return -flow.log_prob(x).mean()

            curve, scored = run_budget(
                model_name,
                flow,
                loss_fn,
                flow.parameters(),
                args.ml_lr,
                args.ml_seconds,
                train,
                args.batch,
                lambda m: ffjord_nll(m, test),
                args.seed,
                log,
                marks=args.marks,
            )
        elif model_name in ("real_nvp", "spline_flow"):
            torch.manual_seed(args.seed)
            if model_name == "real_nvp":
                flow = pyro_flows.Flow(pyro_flows.real_nvp(2, num_layers=8, hidden_dims=(64, 64)))
            else:
                # 8 bins on [-3, 3] by default: the 2-D default when the first runs were made;
                # --spline-bins 16 --spline-tail-bound 2 is the library's 2-D default now
                flow = pyro_flows.Flow(
                    pyro_flows.spline_flow(2, num_bins=args.spline_bins, tail_bound=args.spline_tail_bound)
                )

            def loss_fn(x, flow=flow):
                return -flow.log_prob(x).mean()

            curve, scored = run_budget(
                model_name,
                flow,
                loss_fn,
                flow.parameters(),
                args.nvp_lr,
                args.nvp_seconds,
                train,
                args.batch,
                lambda m: plain_nll(m, test),
                args.seed,
                log,
                marks=args.marks,
            )
        else:
            raise ValueError(model_name)
        out["models"][model_name] = curve
        if args.generalization:
            ode = model_name.startswith("ffjord")
            test_nlls = (ode_nlls if ode else plain_nlls)(scored, test)[0]
            out.setdefault("generalization", {})[model_name] = {
                "train": paired_kl(scored, train[: args.generalization], target, ode),
                "test": kl_estimate(test_nlls, test, target),
                # per point, so that models are compared on the same points (paired_table)
                "test_nlls": [round(float(v), 6) for v in test_nlls],
                "test_key": points_key(test),
            }
            g = out["generalization"][model_name]
            log(f"generalization {model_name}: train {g['train']}, test {g['test']}")
        on_progress(out)  # a long run leaves its finished models behind
    if "ffjord_fm" in order and not args.skip_solvers:
        out["scoring"] = log_density_accuracy(fm_flow, test[: args.accuracy_points], SCORING)
        for row in out["scoring"]:
            log(f"score {row}")
        out["sampling"] = sampling_speed(fm_flow, target, test, entropy, SAMPLING, num=args.sample_count)
        for row in out["sampling"]:
            log(f"sample {row}")
    out["summary"] = summarize(out, args)
    log(f"summary {out['summary']}")
    return out


def summarize(out, args):
    models, entropy = out["models"], out["entropy"]
    summary = {}
    if "ffjord_ml" in models and "ffjord_fm" in models:
        ml = models["ffjord_ml"]
        best = min(ml, key=lambda r: r["nll"])
        reach = next((r for r in models["ffjord_fm"] if r["nll"] <= best["nll"]), None)
        summary["ml_best_nll"] = best["nll"]
        summary["ml_best_cpu"] = best["cpu"]
        summary["fm_cpu_to_reach"] = None if reach is None else reach["cpu"]
        summary["ratio"] = None if reach is None else reach["cpu"] / best["cpu"]
    for name in ("ffjord_fm", "real_nvp", "spline_flow", "ffjord_ml"):
        if name in models:
            # a mark is taken after the block of steps that crosses it, so a model whose
            # budget runs past compare_at records it up to a block late (ML: about 0.7 CPU-s)
            at = [r for r in models[name] if r["cpu"] <= args.compare_at * 1.01] or models[name][:1]
            last = at[-1]
            summary[f"{name}_nll_at_{args.compare_at:g}"] = last["nll"]
            if entropy is not None:
                summary[f"{name}_gap_at_{args.compare_at:g}"] = last["nll"] - entropy
    return summary


def model_settings(model: str, a) -> str:
    """The settings of one model of a record, from the options of the run that trained it."""
    if model == "ffjord_ml":
        return (
            f"ML: FFJORD concat-squash field {'-'.join(map(str, a.hidden))} tanh, Adam lr {a.ml_lr}, "
            f"batch {a.batch}, dopri5 at {a.ml_tol}, exact trace"
        )
    if model == "ffjord_fm":
        return f"FM: {fm_field_summary(a)}, Adam lr {a.fm_lr}, batch {a.fm_batch}, path {a.path}"
    if model == "real_nvp":
        return f"RealNVP: 8 couplings 64-64, Adam lr {a.nvp_lr}, batch {a.batch}"
    bound = f"{a.spline_tail_bound:g}"
    return f"spline flow: {a.spline_bins} bins on [-{bound}, {bound}], Adam lr {a.nvp_lr}, batch {a.batch}"


def render(results, info, cmd, args, model_args=None) -> str:
    """The record as Markdown; ``model_args`` (model name to the options of the run that
    trained it, for a merged record) defaults to ``args`` for every model."""
    model_args = model_args or {}
    present = [m for m in MODELS if any(m in res["models"] for res in results.values())]
    settings = "; ".join(model_settings(m, model_args.get(m, args)) for m in present)
    lines = [
        "# FFJORD by flow matching vs maximum likelihood vs RealNVP (held-out NLL, nats/point)",
        "",
        report.header(info, cmd),
        f"- settings: {settings}{'; ' if settings else ''}cosine decay over each model's CPU budget; "
        f"{args.train} training / {args.test} test points; NLL of FFJORD through the ODE "
        "(dopri5 1e-5, exact trace)",
        "",
        "## Time to reach maximum likelihood's NLL, and the KL gap at equal CPU time",
        "",
        f"| target | H(p) | ML best NLL (CPU-s) | FM reaches it at (CPU-s) | ratio | gap at {args.compare_at:g} s: FM "
        "| RealNVP | spline | ML |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        s = res["summary"]
        key = f"{args.compare_at:g}"

        def fmt(v, spec=".3f"):
            return "-" if v is None else format(v, spec)

        lines.append(
            f"| {name} | {fmt(res['entropy'])} | {fmt(s.get('ml_best_nll'))} ({fmt(s.get('ml_best_cpu'), '.0f')}) | "
            f"{fmt(s.get('fm_cpu_to_reach'), '.0f')} | {fmt(s.get('ratio'), '.2f')} | "
            f"{fmt(s.get('ffjord_fm_gap_at_' + key))} | {fmt(s.get('real_nvp_gap_at_' + key))} | "
            f"{fmt(s.get('spline_flow_gap_at_' + key))} | {fmt(s.get('ffjord_ml_gap_at_' + key))} |"
        )
    lines += generalization_table(results)
    lines += ["", "## NLL over CPU time", ""]
    for name, res in results.items():
        lines += [f"### {name}", "", "| model | CPU-s | steps | NLL | nfe |", "|---|---|---|---|---|"]
        for model, curve in res["models"].items():
            for r in curve:
                lines.append(
                    f"| {model} | {r['cpu']:.0f} | {r['steps']} | {r['nll']:.3f} ± {r['se']:.3f} | {r['nfe'] or '-'} |"
                )
        lines.append("")
        if "scoring" in res:
            lines += [
                "Log-density of the flow-matching model with cheaper solvers, against dopri5 at 1e-10 "
                f"(float64, {args.accuracy_points} test points):",
                "",
                "| solver | mean abs error | max abs error | CPU-s | nfe |",
                "|---|---|---|---|---|",
            ]
            for r in res["scoring"]:
                lines.append(
                    f"| {r['solver']} | {r['mean_abs']:.2e} | {r['max_abs']:.2e} | {r['cpu']:.2f} | {r['nfe']} |"
                )
            lines += [
                "",
                f"Sampling {args.sample_count} points (float32): CPU time and the KL gap of a KDE of the samples "
                "(test NLL under the KDE minus H(p); the first row is the KDE of true samples):",
                "",
                "| solver | CPU-s | nfe | KDE gap |",
                "|---|---|---|---|",
            ]
            for r in res["sampling"]:
                cpu = "-" if r["cpu"] is None else f"{r['cpu']:.2f}"
                lines.append(f"| {r['solver']} | {cpu} | {r['nfe'] or '-'} | {r['kde_gap']:.3f} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def generalization_table(results) -> list:
    """Rows of the KL estimated on training and on test points, for the runs that made them."""
    rows = [
        (name, model, g)
        for name, res in results.items()
        for model, g in res.get("generalization", {}).items()
    ]
    if not rows:
        return []
    lines = [
        "",
        "## Fit and generalization: KL(p || q) estimated on training and on test points",
        "",
        "mean of log p(x) - log q(x) over the points ± its standard error, at the end of each model's "
        "budget; the test column differs from the gaps above by the test set's own sampling noise",
        "",
        "| target | model | on training points | on test points | difference |",
        "|---|---|---|---|---|",
    ]
    for name, model, g in rows:
        tr, te = g["train"], g["test"]
        lines.append(
            f"| {name} | {model} | {tr['kl']:.4f} ± {tr['se']:.4f} ({tr['points']}) | "
            f"{te['kl']:.4f} ± {te['se']:.4f} ({te['points']}) | {te['kl'] - tr['kl']:.4f} |"
        )
    return lines + paired_table(results)


def scored_on_the_same_points(first, second) -> bool:
    """Whether two generalization entries kept their per-point NLLs on the same test points."""
    return (
        bool(first)
        and bool(second)
        and "test_nlls" in first
        and "test_nlls" in second
        and first.get("test_key") == second.get("test_key")
    )


def paired_difference(first, second) -> str:
    """``"mean ± se (n)"`` of NLL_first(x) - NLL_second(x) over the test points that both
    generalization entries (``test_nlls``) were scored on."""
    diff = torch.tensor(first["test_nlls"], dtype=torch.float64) - torch.tensor(
        second["test_nlls"], dtype=torch.float64
    )
    mean, se = report.mean_se(diff)
    return f"{mean:+.4f} ± {se:.4f} ({len(diff)})"


def load_record(path) -> dict:
    """The ``.json`` record of a run of this benchmark, or an exit that names the file and
    what is wrong with it."""
    import json

    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise SystemExit(f"no record at {path}: give the .json a run of this benchmark wrote") from None
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path} is not JSON ({err})") from None
    missing = [key for key in ("command", "results") if key not in data]
    if missing:
        raise SystemExit(f"{path} is not a record of this benchmark: it has no {' or '.join(missing)}")
    return data


def paired_table(results) -> list:
    """Flow matching against every other model on the same test points: the mean of
    NLL_FM(x) - NLL_model(x) ± its standard error. Pairing removes the test set's own
    sampling noise (shared by both models), which dominates the standard error of either
    NLL alone; negative means flow matching is closer to the truth."""
    lines = []
    for name, res in results.items():
        g = res.get("generalization", {})
        fm = g.get("ffjord_fm")
        for model, other in g.items():
            if model == "ffjord_fm" or not scored_on_the_same_points(fm, other):
                continue
            lines.append(f"| {name} | {model} | {paired_difference(fm, other)} |")
    if not lines:
        return []
    return [
        "",
        "## Flow matching against each model on the same test points",
        "",
        "mean of NLL_FM(x) - NLL_model(x) over the test points ± its standard error (negative: flow "
        "matching is closer to the truth); pairing removes the test points' own sampling noise",
        "",
        "| target | model | NLL difference |",
        "|---|---|---|",
        *lines,
    ]


def paired_records(base_path, other_path, args):
    """Two runs of the same models compared point by point: for every target and model
    both records scored on the same test points (``--generalization``), the mean of
    NLL_other(x) - NLL_base(x) over those points ± its standard error (negative: the
    second run is closer to the truth). This is how one option is measured against
    another (``--fm-noise 0.15`` against 0, say) without the test set's own sampling
    noise, which dominates the standard error of either NLL alone."""
    base, other = load_record(base_path), load_record(other_path)
    rows = []
    for target, res in base["results"].items():
        theirs = other["results"].get(target, {}).get("generalization", {})
        for model, mine in res.get("generalization", {}).items():
            match = theirs.get(model)
            if not scored_on_the_same_points(mine, match):
                continue
            rows.append((target, model, paired_difference(match, mine)))
    if not rows:
        raise SystemExit(f"{base_path} and {other_path} share no model scored on the same test points")
    cmd = report.command()
    lines = [
        "# Two runs compared on the same test points",
        "",
        f"- command: `{cmd}`",
        f"- base: `{base['command']}`",
        f"- other: `{other['command']}`",
        "",
        "mean of NLL_other(x) - NLL_base(x) over the test points ± its standard error "
        "(negative: the other run is closer to the truth)",
        "",
        report.markdown_table(("target", "model", "NLL difference"), rows),
    ]
    text = "\n".join(lines) + "\n"
    data = {"command": cmd, "base": base["command"], "other": other["command"], "rows": rows}
    report.write(args.stem, text, data, directory=args.out)
    print(text)
    return rows


def merge(paths, args):
    """One table from several result files (targets and models are combined)."""
    results, commands, info, first_args, model_args = {}, [], None, None, {}
    for path in paths:
        data = load_record(path)
        info = info or data["info"]
        first_args = first_args or data["args"]
        commands.append(data["command"])
        for target, res in data["results"].items():
            into = results.setdefault(
                target, {"entropy": res["entropy"], "entropy_se": res["entropy_se"], "models": {}}
            )
            into["models"].update(res["models"])
            if "generalization" in res:
                into.setdefault("generalization", {}).update(res["generalization"])
            for key in ("scoring", "sampling"):
                if key in res:
                    into[key] = res[key]
            # each model is described by the options of the run that trained it (a merged
            # record keeps them per model, so that it can be merged again)
            for model in res["models"]:
                model_args[model] = data.get("model_args", {}).get(model, data["args"])
        for key in ("train", "test", "compare_at", "accuracy_points", "sample_count"):
            setattr(args, key, data["args"][key])
    for res in results.values():
        order = [m for m in MODELS if m in res["models"]]
        res["models"] = {m: res["models"][m] for m in order}
        res["summary"] = summarize(res, args)
    cmd = "; ".join(dict.fromkeys(commands))
    # options newer than some records: what those records ran with
    described = {m: argparse.Namespace(**{**RECORDED_BEFORE, **a}) for m, a in model_args.items()}
    text = render(results, info, cmd, args, described)
    report.write(
        args.stem,
        text,
        # the layout of a run's own record, so that a merged record can be merged again
        {
            "info": info,
            "command": cmd,
            "args": first_args,
            "model_args": model_args,
            "results": results,
            "commands": commands,
        },
        directory=args.out,
    )
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--targets",
        nargs="+",
        default=["moons", "8gaussians", "checkerboard", "rings"],
        choices=list(TARGETS),
    )
    p.add_argument("--models", nargs="+", default=["ffjord_fm", "real_nvp", "ffjord_ml"])
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--ml-seconds", type=float, default=300.0)
    p.add_argument("--fm-seconds", type=float, default=170.0)
    p.add_argument("--nvp-seconds", type=float, default=170.0)
    p.add_argument("--compare-at", type=float, default=170.0)
    p.add_argument("--ml-lr", type=float, default=5e-3)
    p.add_argument("--ml-tol", type=float, default=1e-4)
    p.add_argument("--fm-lr", type=float, default=3e-3)
    p.add_argument("--fm-batch", type=int, default=512)
    p.add_argument("--fm-warmup", type=float, default=0.02, help="fraction of the FM budget to warm up over")
    p.add_argument("--fm-ema", type=float, default=0.999, help="EMA decay of the scored FM weights; 0: none")
    p.add_argument("--fm-field", default="velocity", choices=["velocity", "concat-squash"])
    p.add_argument("--fm-hidden", type=int, nargs="+", default=None, help="default: the field's own")
    p.add_argument("--fm-activation", default=None, help="default: the field's own")
    p.add_argument(
        "--fm-state-features",
        type=int,
        default=-1,
        help="random Fourier features of z in the velocity field; negative: the library's default "
        "(128); 0 for the runs recorded before they existed",
    )
    p.add_argument("--fm-state-frequency", type=float, default=1.0)
    p.add_argument("--fm-sigma", type=float, default=0.0)
    p.add_argument(
        "--fm-noise",
        type=float,
        default=0.0,
        help="Gaussian noise on each FM training batch, in units of each coordinate's sd, scaled with the rate",
    )
    p.add_argument("--fm-ot-block", type=int, default=128, help="rows per OT assignment; 0: whole batch")
    p.add_argument("--fm-time-exponent", type=float, default=1.0)
    p.add_argument("--path", default="ot", choices=["ot", "independent"])
    p.add_argument("--nvp-lr", type=float, default=1e-3)
    p.add_argument("--spline-bins", type=int, default=8, help="spline_flow's bins (16: the 2-D default now)")
    p.add_argument(
        "--spline-tail-bound",
        type=float,
        default=3.0,
        help="spline_flow's tail bound (2: the 2-D default now)",
    )
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--train", type=int, default=20000)
    p.add_argument("--test", type=int, default=5000)
    p.add_argument("--entropy-samples", type=int, default=200_000)
    p.add_argument("--accuracy-points", type=int, default=500)
    p.add_argument("--sample-count", type=int, default=10000)
    p.add_argument("--skip-solvers", action="store_true")
    p.add_argument(
        "--generalization",
        type=int,
        default=0,
        metavar="N",
        help="also estimate each model's KL on N of its training points and on the test points "
        "(the difference measures overfitting); 0: not",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--marks",
        type=float,
        nargs="+",
        default=list(MARKS),
        help="CPU-s at which the held-out NLL is measured",
    )
    p.add_argument("--stem", default="ffjord_fm")
    p.add_argument(
        "--out", default=str(report.RESULTS), help="folder of the .md and .json results (ignored by git)"
    )
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="only combine the .json results of runs that each trained some of the models (run at "
        "the same time, one process per model, to share a busy machine) into one table",
    )
    p.add_argument(
        "--paired",
        nargs=2,
        metavar=("BASE_JSON", "OTHER_JSON"),
        help="only compare two runs' models point by point on their shared test points (both run "
        "with --generalization): NLL_other - NLL_base ± its standard error",
    )
    args = p.parse_args(argv)
    if not 0 <= args.generalization <= args.train:
        p.error(f"--generalization must be between 0 and --train ({args.train}), got {args.generalization}")
    torch.set_num_threads(1)
    if args.merge:
        return merge(args.merge, args)
    if args.paired:
        return paired_records(*args.paired, args)

    def log(message):
        print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)

    results = {}
    info = report.machine()
    cmd = report.command()

    def save(name, out):
        results[name] = out
        out.setdefault("summary", {})
        data = {"info": info, "command": cmd, "args": vars(args), "results": results}
        report.write(args.stem, render(results, info, cmd, args), data, directory=args.out)

    for name in args.targets:
        save(name, run_target(name, args, log, on_progress=lambda out, name=name: save(name, out)))
    print(render(results, info, cmd, args))


if __name__ == "__main__":
    main()
