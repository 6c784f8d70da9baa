"""Held-out density fit of each library's flows, at equal steps and at equal CPU time.

Every model (see :func:`benchmarks.contenders.build_fit`) is trained with the same
optimizer (Adam), learning rate and the very same mini-batches drawn from a fixed
training set, then scored on a separate test set. The data are standardised with the
training mean and standard deviations for every model (zuko's NSF, whose splines act on
[-5, 5], asks for it, and ``pyro-flows fit`` does it to tabular files), and the test NLL
is reported in the data's units (``--no-standardize``: the raw data, as the records made
before this option). Every target has an exact density
(:mod:`benchmarks.toy_targets`), so the reported figure is the KL gap
:math:`\\mathrm{NLL}_{test} - H(p)`, an estimate of :math:`\\mathrm{KL}(p \\,\\|\\, q)` in nats
(zero for a perfect model, up to test-set noise), averaged over seeds with its standard
error across seeds.

The test NLL is recorded every ``--eval-every`` steps together with the CPU time spent
training so far (``time.process_time()`` with one torch thread, evaluation excluded).
Reported: the gap after each of ``--steps``, and the gap at equal CPU time: for each
budget, the CPU time the first contender (our default flow) needed for that many steps,
each model's last checkpoint within it (faster models train beyond the step count until
they reach the budget).

    OMP_NUM_THREADS=1 python -m benchmarks.fit --steps 800 3000 --seeds 0 1
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch

from . import report
from .contenders import (
    FIT_NAMES,
    FIT_PACKAGES,
    OUR_VARIANTS,
    PACKAGES,
    build_fit,
    fit_available,
    set_validation,
)
from .toy_targets import TARGETS

GAUSSIAN = "gaussian"
#: a contender name ending in this trains with our training recipe (see :func:`recipe_of`)
RECIPE = "+recipe"
#: ... and ending in this, as :func:`pyro_flows.train.fit` trains it: the recipe, a part of
#: the training points held out for validation, and scored with the weights of the best
#: validation NLL so far (see :func:`selection_of`)
FIT = "+fit"


def recipe_of(args, input_dim: int = 2) -> dict:
    """The training recipe of ``NAME+recipe`` contenders on data of ``input_dim``
    dimensions: by default that of :func:`pyro_flows.train.train` for ``--flow spline``
    (the defaults of :class:`~pyro_flows.train.RunConfig`), with the benchmark's batches;
    ``--recipe-*`` options override each part."""
    from pyro_flows.train import RunConfig
    from pyro_flows.train.loop import learning_rate

    defaults = RunConfig(flow="spline")
    lr, warmup_steps = learning_rate(defaults, max(args.steps), input_dim)
    recipe = {
        "lr": lr,
        "warmup_steps": warmup_steps,
        "schedule": defaults.schedule,
        "grad_clip": defaults.grad_clip,
        "ema": defaults.ema,
        "weight_decay": defaults.weight_decay,
        # our spline flows only (peers' flows take the optimizer part of the recipe)
        "dropout": defaults.dropout,
        "noise": defaults.noise,
    }
    for key in recipe:
        value = getattr(args, f"recipe_{key}", None)
        if value is not None:
            recipe[key] = value
    return recipe


def selection_of(args) -> dict:
    """How ``NAME+fit`` contenders hold out and select, by default as
    :func:`pyro_flows.train.fit` does (its ``val_fraction``, :class:`~pyro_flows.train.RunConfig`'s
    ``eval_every``); ``--fit-*`` options override each part."""
    import inspect

    from pyro_flows.train import RunConfig
    from pyro_flows.train.fit import fit as train_fit

    selection = {
        "val_fraction": inspect.signature(train_fit).parameters["val_fraction"].default,
        "val_every": RunConfig(flow="spline").eval_every,
    }
    for key in selection:
        value = getattr(args, f"fit_{key}", None)
        if value is not None:
            selection[key] = value
    return selection


def split_name(name: str):
    """``"ours+recipe"`` -> ``("ours", True, False)``; ``"ours+fit"`` -> ``("ours", True,
    True)``; ``"zuko_nsf"`` -> ``("zuko_nsf", False, False)``: the flow, whether it trains with
    our recipe and whether it is scored with its best validation weights."""
    if name.endswith(RECIPE):
        return name[: -len(RECIPE)], True, False
    if name.endswith(FIT):
        return name[: -len(FIT)], True, True
    return name, False, False


def gaussian_nll(train: torch.Tensor, test: torch.Tensor) -> float:
    """Test NLL of the maximum-likelihood Gaussian fitted to ``train``."""
    mean = train.double().mean(0)
    cov = torch.cov(train.double().T)
    return float(-torch.distributions.MultivariateNormal(mean, cov).log_prob(test.double()).mean())


def test_nll(contender, test: torch.Tensor) -> float:
    contender.module.eval()
    with torch.no_grad():
        nll = torch.cat([-contender.log_prob(chunk.clone()) for chunk in test.split(5000)])
    contender.module.train()
    return report.mean_se(nll)[0]


def standardization(train: torch.Tensor):
    """``(shift, scale, log_scale)``: the training mean and standard deviations, and
    ``sum(log scale)``, the NLL that standardised data lack against the data's units."""
    shift, scale = train.double().mean(0), train.double().std(0)
    return shift.to(train.dtype), scale.to(train.dtype), float(scale.log().sum())


def fit_one(name, train, test, seed, args, cpu_budget=0.0, nll_offset=0.0):
    """Train ``name`` for ``max(args.steps)`` steps and until ``cpu_budget`` CPU seconds;
    return its checkpoints ``[(step, cpu_seconds, test_nll), ...]``, each test NLL plus
    ``nll_offset`` (the log-scale of a standardisation, to report it in the data's units)."""
    from pyro_flows.train.averaging import WeightAverage
    from pyro_flows.train.loop import lr_factor

    base, with_recipe, with_selection = split_name(name)
    recipe = recipe_of(args, train.shape[-1]) if with_recipe else None
    val = None
    if with_selection:  # hold out as `fit` does: a random part of the training points
        selection = selection_of(args)
        n_val = max(1, round(selection["val_fraction"] * len(train)))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        val, train = train[order[:n_val]], train[order[n_val:]]
    from pyro_flows.train.loop import SPLINE_FAST_MAX_DIM
    from pyro_flows.train.registry import spline_dropout

    torch.manual_seed(seed)
    options = {}
    if recipe and base in OUR_VARIANTS and "dropout" not in OUR_VARIANTS[base]:
        # the conditioner dropout `pyro-flows fit --flow spline` trains with on this data
        # for a run as long as the longest --steps
        passes = max(args.steps) * args.batch / len(train)
        options["dropout"] = spline_dropout(recipe["dropout"], train.shape[-1], passes)
    contender = build_fit(base, train.shape[-1], args.layers, args.hidden, **options)
    dropouts = [m for m in contender.module.modules() if isinstance(m, torch.nn.Dropout)]
    in_run_ramp = bool(recipe) and getattr(args, "recipe_dropout_in_run", False) and dropouts
    lr = recipe["lr"] if recipe else args.lr
    weight_decay = recipe.get("weight_decay", 0.0) if recipe else 0.0
    optimizer = torch.optim.Adam(contender.module.parameters(), lr=lr, weight_decay=weight_decay)
    average = WeightAverage(contender.module, recipe["ema"]) if recipe and recipe["ema"] > 0 else None
    batches = torch.Generator().manual_seed(seed)  # the same batches for everyone
    noise = None
    if recipe and base in OUR_VARIANTS:  # the training noise of `fit --flow spline` on this data
        from pyro_flows.train.registry import training_noise

        level = training_noise(recipe["noise"], "spline", train.shape[-1])
        noise = level * train.std(0) if level > 0 else None  # in units of each coordinate's sd
    contender.module.train()
    checkpoints, cpu, step = [], 0.0, 0
    last_step = max(args.steps)
    best_val, best_test = math.inf, None  # NAME+fit: the best validation NLL so far and its test NLL
    while step < last_step or cpu < cpu_budget:
        start = time.process_time()
        x = train[torch.randint(len(train), (args.batch,), generator=batches)]
        if recipe:  # the schedule spans the longest --steps, as `fit --steps N` would
            factor = lr_factor(step, last_step, recipe["warmup_steps"], recipe["schedule"])
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
        if noise is not None:  # scaled as the rate, as in `fit` (unless --recipe-constant-noise)
            x = x + (
                1.0 if getattr(args, "recipe_constant_noise", False) else factor
            ) * noise * torch.randn_like(x)
        if in_run_ramp:  # the ramp's rate for the passes made so far, not the run's total
            rate = spline_dropout(-1.0, SPLINE_FAST_MAX_DIM + 1, step * args.batch / len(train))
            for m in dropouts:
                m.p = min(rate, options["dropout"])
        optimizer.zero_grad(set_to_none=True)
        loss = -contender.log_prob(x).mean()
        loss.backward()
        if recipe and recipe["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(contender.module.parameters(), recipe["grad_clip"])
        optimizer.step()
        if average is not None:
            average.update()
        cpu += time.process_time() - start
        step += 1
        if not math.isfinite(float(loss.detach())):
            checkpoints.append((step, cpu, float("nan")))
            break
        # `fit` validates every val_every steps and at its last step (any of --steps)
        if val is not None and (step % selection["val_every"] == 0 or step in args.steps):
            start = time.process_time()  # part of the training's cost
            with _evaluated(average):
                val_nll = test_nll(contender, val)
            cpu += time.process_time() - start
            if val_nll < best_val:  # these weights are what `fit` would return now
                best_val = val_nll
                with _evaluated(average):
                    best_test = test_nll(contender, test)
        if step % args.eval_every == 0 or step in args.steps:
            if best_test is None:
                with _evaluated(average):
                    checkpoints.append((step, cpu, test_nll(contender, test) + nll_offset))
            else:
                checkpoints.append((step, cpu, best_test + nll_offset))
    return checkpoints


def _evaluated(average):
    """The evaluated weights in place: the EMA if there is one, else the live weights."""
    return average.applied() if average is not None else contextlib.nullcontext()


def at_step(checkpoints, step):
    return next((nll for s, _, nll in checkpoints if s == step), float("nan"))


def merge(paths, names, steps):
    """The results of several runs (their ``.json`` files, same settings but different
    contenders, seeds or step counts) as one: checkpoints joined per target, seed and
    contender (a later file wins on a clash). Runs on other data or models (the settings
    in ``_SAME_DATA``) are refused."""
    import json

    results, first = {}, None
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        same = {key: data["settings"].get(key, default) for key, default in _SAME_DATA.items()}
        if first is None:
            first = (path, same)
        for key, value in same.items():
            if value != first[1][key]:
                raise ValueError(
                    f"{path}: --{key.replace('_', '-')} {value} but {first[0]} has {first[1][key]}; "
                    "merge runs on the same data and models only"
                )
        for target, res in data["results"].items():
            merged = results.setdefault(
                target,
                {"entropy": res["entropy"], "entropy_se": res["entropy_se"], "by_seed": {}, "gaussians": {}},
            )
            if abs(merged["entropy"] - res["entropy"]) > 1e-9:
                raise ValueError(f"{path}: entropy of {target} differs; use the same --entropy-samples")
            for seed, run, gaussian in zip(
                data["settings"]["seeds"],
                res["checkpoints"],
                res.get("gaussians", [res["gaussian"]] * len(res["checkpoints"])),
                strict=True,
            ):
                merged["by_seed"].setdefault(seed, {}).update(
                    {k: [tuple(c) for c in v] for k, v in run.items()}
                )
                merged["gaussians"][seed] = gaussian
    for res in results.values():
        runs = [res["by_seed"][seed] for seed in sorted(res["by_seed"])]
        res["gaussian"] = sum(res["gaussians"].values()) / len(res["gaussians"])
        res["summary"] = summarize(runs, res["entropy"], names, steps)
        res["checkpoints"] = runs
        res["seeds"] = sorted(res["by_seed"])
        del res["by_seed"], res["gaussians"]
    return results


#: the settings that merged runs share (the data, the models, the plain loop), with the
#: value of records that predate a setting
_SAME_DATA = {
    "layers": None,
    "hidden": None,
    "batch": None,
    "lr": None,
    "train": None,
    "test": None,
    "standardize": False,
}


def within(checkpoints, budget):
    """The test NLL of the last checkpoint whose CPU time is within ``budget`` (10% slack
    for timer noise); NaN if none."""
    inside = [nll for _, cpu, nll in checkpoints if cpu <= 1.1 * budget]
    return inside[-1] if inside else float("nan")


def mean_se(values):
    t = torch.tensor(values, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        return float("nan"), float("nan")
    se = float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan")
    return float(t.mean()), se


def summarize(runs, entropy, names, steps):
    """Per contender: the mean gap and its standard error over seeds at each step count
    and at each CPU budget (the first contender's CPU time for that many steps). Seeds
    where a contender (or, for the CPU budget, the first contender) did not run or
    stopped before that step are left out of its figures."""
    reference = names[0]
    out = {}
    for name in names:
        by_step, by_cpu = {}, {}
        for step in steps:
            mine = [run[name] for run in runs if name in run and _reached(run[name], step)]
            by_step[step] = mean_se([at_step(c, step) - entropy for c in mine]) if mine else _NONE
            pairs = [
                (run[name], next(c for s, c, _ in run[reference] if s == step))
                for run in runs
                if name in run and reference in run and _reached(run[reference], step)
            ]
            gaps = [within(c, b) - entropy for c, b in pairs]
            budget = sum(b for _, b in pairs) / len(pairs) if pairs else float("nan")
            by_cpu[step] = (*(mean_se(gaps) if pairs else _NONE), budget)
        out[name] = {"steps": by_step, "cpu": by_cpu}
    return out


#: the figure of a contender that did not run at that step (or seed)
_NONE = (None, None)


def _reached(checkpoints, step):
    """Whether a run recorded ``step`` (or diverged before it, which counts as a result)."""
    return any(s == step for s, _, _ in checkpoints) or (
        bool(checkpoints) and not math.isfinite(checkpoints[-1][2]) and checkpoints[-1][0] <= step
    )


def _cell(mean, se):
    if mean is None:
        return "-"
    if not math.isfinite(mean):
        return "diverged"
    return f"{mean:.3f}" + (f" ± {se:.3f}" if math.isfinite(se) else "")


def _peers(names):
    return [n for n in names if not n.startswith("ours") and split_name(n)[0] == n]


def render(results, names, info, cmd, args) -> str:
    lines = [
        f"# Fit: KL gap (test NLL - exact entropy, nats) of each library's flows, "
        f"{args.layers} transforms, conditioners {'x'.join(map(str, args.hidden))}",
        "",
        report.header(info, cmd),
        f"- settings: Adam lr {args.lr}, batches of {args.batch} (identical for all), "
        f"{args.train} training / {args.test} test points, seeds {args.seeds} (mean ± standard error "
        "over seeds), each library's own initialisation, "
        + (
            "data standardised with the training mean and sd for every model (NLL in the data's units)"
            if getattr(args, "standardize", False)
            else "the raw data for every model"
        ),
    ]
    if any(split_name(n)[1] for n in names):
        recipe, above_2d = recipe_of(args), recipe_of(args, 3)
        rate = (
            f"{recipe['lr']}"
            if recipe["lr"] == above_2d["lr"]
            else f"{recipe['lr']} (2-D; {above_2d['lr']} from 3 to 10 dimensions, as `fit` trains a spline flow)"
        )
        lines.append(
            f"- `NAME{RECIPE}`: trained with our recipe instead: Adam lr {rate}, "
            f"{recipe['warmup_steps']} warm-up steps, {recipe['schedule']} schedule over "
            + (
                "the steps of its run (the largest --steps of that run)"
                if args.merge
                else f"{max(args.steps)} steps"
            )
            + ", "
            f"gradient norm clipped at {recipe['grad_clip'] or 'no limit'}, "
            + (
                f"evaluated with the EMA of the weights (decay {recipe['ema']})"
                if recipe["ema"]
                else "no weight averaging"
            )
            + (f", Adam weight decay {recipe['weight_decay']}" if recipe.get("weight_decay") else "")
            + (
                "; our spline flows with the conditioner dropout of `fit` (none up to 10 dimensions; above,"
                " none up to 10 passes over the training set, then 0.02 more per pass up to 0.2)"
                if recipe.get("dropout", -1) < 0
                else f"; our spline flows with conditioner dropout {recipe['dropout']}"
            )
            + (
                " and the training noise of `fit` (0.05 of each coordinate's sd from 3 to 10 dimensions)"
                if recipe.get("noise", -1) < 0
                else (f" and training noise {recipe['noise']} sd" if recipe.get("noise") else "")
            )
        )
    if any(split_name(n)[2] for n in names):
        selection = selection_of(args)
        lines.append(
            f"- `NAME{FIT}`: as `pyro_flows.train.fit` trains it: the recipe, with "
            f"{selection['val_fraction']:.0%} of the training points held out (trained on the rest), "
            f"their NLL every {selection['val_every']} steps and at each reported step (CPU time "
            "included), and each figure the test NLL of the weights with the best validation NLL "
            "so far"
        )
    lines.append("")
    if args.merge:
        at = next(i for i, line in enumerate(lines) if line.startswith("- settings"))
        lines[at] = lines[at].replace(f"seeds {args.seeds}", "seeds as counted below")
        counts = []
        for step in args.steps:
            per = []
            for name in names:
                n = {
                    sum(1 for run in res["checkpoints"] if name in run and _reached(run[name], step))
                    for res in results.values()
                }
                per.append(f"{name} {'/'.join(map(str, sorted(n)))}")
            counts.append(f"after {step} steps: " + ", ".join(per))
        lines.insert(-1, "- seeds per figure (merged runs): " + "; ".join(counts))
    peers = _peers(names)
    conditions = [("steps", s, f"after {s} steps") for s in args.steps]
    conditions += [("cpu", s, f"at equal CPU time: what {names[0]} needs for {s} steps") for s in args.steps]
    for kind, step, title in conditions:
        header = ["target", "H(p)"] + ([GAUSSIAN] if kind == "steps" else []) + list(names)
        if peers and names[0] not in peers:
            header += ["best peer", f"{names[0]} / best peer"]
        rows = []
        for target, res in results.items():
            row = [target, f"{res['entropy']:.3f}"]
            if kind == "steps":
                row.append(f"{res['gaussian'] - res['entropy']:.3f}")
            summary = res["summary"]
            cells = {n: summary[n][kind][step] for n in names}
            row += [_cell(*cells[n][:2]) for n in names]
            if kind == "cpu":
                row[1] += f" ({cells[names[0]][2]:.1f} s)"
            if peers and names[0] not in peers:
                finite = [p for p in peers if cells[p][0] is not None and math.isfinite(cells[p][0])]
                if finite:
                    best = min(finite, key=lambda p: cells[p][0])
                    ours = cells[names[0]][0]
                    ratio = ours / cells[best][0] if ours is not None and cells[best][0] > 0 else float("nan")
                    row += [f"{best} {cells[best][0]:.3f}", f"{ratio:.2f}"]
                else:
                    row += ["-", "-"]
            rows.append(row)
        lines += [f"## KL gap {title}", "", report.markdown_table(header, rows), ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choices = list(dict.fromkeys(FIT_NAMES + tuple(OUR_VARIANTS)))
    choices += [n + suffix for n in choices for suffix in (RECIPE, FIT)]
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--libs", nargs="+", default=list(FIT_NAMES), choices=choices)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--steps", type=int, nargs="+", default=[800], help="report the gap after these steps")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train", type=int, default=50_000)
    p.add_argument("--test", type=int, default=10_000)
    p.add_argument("--entropy-samples", type=int, default=200_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--recipe-lr", type=float, help="NAME+recipe contenders: base learning rate")
    p.add_argument("--recipe-warmup-steps", type=int, help="NAME+recipe contenders: linear warm-up steps")
    p.add_argument("--recipe-schedule", choices=("constant", "cosine"), help="NAME+recipe contenders")
    p.add_argument("--recipe-grad-clip", type=float, help="NAME+recipe contenders: 0 disables clipping")
    p.add_argument(
        "--recipe-ema", type=float, help="NAME+recipe contenders: EMA decay of the evaluated weights, 0 off"
    )
    p.add_argument(
        "--recipe-weight-decay", type=float, help="NAME+recipe contenders: Adam's (L2) weight decay"
    )
    p.add_argument(
        "--recipe-dropout",
        type=float,
        help="NAME+recipe contenders of ours: conditioner dropout (negative: fit's default for the data)",
    )
    p.add_argument(
        "--recipe-dropout-in-run",
        action="store_true",
        help="NAME+recipe contenders of ours: the default dropout grows with the passes made so far",
    )
    p.add_argument(
        "--fit-val-fraction", type=float, help="NAME+fit contenders: fraction of the training points held out"
    )
    p.add_argument("--fit-val-every", type=int, help="NAME+fit contenders: steps between validations")
    p.add_argument(
        "--recipe-noise",
        type=float,
        help="NAME+recipe contenders of ours: Gaussian noise added to each training batch, in units of each "
        "coordinate's sd (negative: fit's default for the data)",
    )
    p.add_argument(
        "--recipe-constant-noise",
        action="store_true",
        help="NAME+recipe contenders of ours: the training noise at its full level throughout (fit fades it with the rate)",
    )
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="standardise the data with the training mean and sd for every model (NLL in the data's units)",
    )
    p.add_argument("--no-cpu", action="store_true", help="skip the equal-CPU-time comparison")
    p.add_argument("--validate", action="store_true", help="turn distribution validation on for all")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="run nothing: join the .json results of earlier runs (same settings) and report --libs at --steps",
    )
    p.add_argument("--out", default=str(report.RESULTS))
    p.add_argument("--stem", default="fit")
    args = p.parse_args(argv)
    args.steps = sorted(set(args.steps))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    names = fit_available(args.libs)
    # import every library that runs before setting validation: importing changes it
    packages = {FIT_PACKAGES[split_name(name)[0]] for name in names}
    set_validation([lib for lib, package in PACKAGES.items() if package in packages], args.validate)
    info, cmd = report.machine("cpu"), report.command()
    if args.merge:
        import json

        with open(args.merge[0]) as fh:  # the runs' settings (data sizes, loop, recipe), not merge's defaults
            saved = json.load(fh)["settings"]
        for key in ("layers", "hidden", "batch", "lr", "train", "test") + tuple(
            k for k in saved if k.startswith(("recipe_", "fit_"))
        ):
            setattr(args, key, saved[key])
        args.standardize = saved.get("standardize", _SAME_DATA["standardize"])
        results = merge(args.merge, names, args.steps)
        markdown = render(results, names, info, cmd, args)
        data = {"machine": info, "command": cmd, "settings": vars(args), "results": results}
        report.publish(args.stem, markdown, data, args.out)
        return data
    results = {}
    for target_name in args.targets:
        target = TARGETS[target_name]
        entropy, entropy_se = target.entropy(args.entropy_samples)
        runs, gaussians = [], []
        for seed in args.seeds:
            train = target.sample(args.train, seed=1000 * seed + 2)
            test = target.sample(args.test, seed=1000 * seed + 3)
            gaussians.append(gaussian_nll(train, test))
            offset = 0.0
            if args.standardize:
                shift, scale, offset = standardization(train)
                train, test = (train - shift) / scale, (test - shift) / scale
            run = {}
            for name in names:
                budget = 0.0
                if not args.no_cpu and name != names[0]:
                    budget = next(c for s, c, _ in run[names[0]] if s == max(args.steps))
                run[name] = fit_one(name, train, test, seed, args, budget, offset)
                step, cpu, nll = run[name][-1]
                print(
                    f"{target_name} seed {seed} {name}: gap {nll - entropy:.3f} at step {step}, "
                    f"{cpu:.1f} CPU s",
                    flush=True,
                )
            runs.append(run)
        results[target_name] = {
            "entropy": entropy,
            "entropy_se": entropy_se,
            "gaussian": sum(gaussians) / len(gaussians),
            "gaussians": gaussians,
            "summary": summarize(runs, entropy, names, args.steps),
            "checkpoints": runs,
        }
    markdown = render(results, names, info, cmd, args)
    data = {"machine": info, "command": cmd, "settings": vars(args), "results": results}
    report.publish(args.stem, markdown, data, args.out)
    return data


if __name__ == "__main__":
    main()
