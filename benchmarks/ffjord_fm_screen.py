"""A quick screen of flow-matching recipes for FFJORD on the 2-D toy targets.

Each variant trains the field by conditional flow matching for a budget of CPU seconds
(one thread; Adam, linear warm-up over ``warmup`` of the budget, then a cosine decay to
zero), and its held-out NLL is measured through the ODE (dopri5 at 1e-5, exact trace,
2,000 test points; the KL gap is NLL minus the true entropy) at the marks. At the end of
a run the score is also checked against dopri5 at 1e-7 in float64 on 500 test points
(``tight_minus_default_500``) and, with an EMA, the raw weights are scored too
(``gap_raw``). ``base`` is the recipe of ``benchmarks/ffjord_fm.py`` without its later
additions (an MLP 256-256-256, SiLU, on ``z`` and Fourier features of ``t``, batch 512,
lr 3e-3, EMA 0.999, minibatch-OT pairs over the whole batch; that benchmark now pairs in
blocks of 128 rows and gives the field 128 state features by default). ``old`` is the
earlier recipe (concat-squash 128-128 tanh, batch 256, lr 2e-3, no warm-up or EMA);
``ot128`` pairs in blocks of 128 rows, and most other variants do so and change one
thing more. ``xff`` and ``rff`` add
Fourier features of the state ``z`` to the field's input: ``xff`` axis-aligned
``sin/cos(pi k z_j)`` for ``k = 1, 2, 4, 8``, ``rff`` 64 random ones ``sin/cos(2 pi B z)``
with ``B ~ N(0, rff_scale^2)`` (what ``pyro_flows.nn.VelocityNet`` does by default, with
128; ``--set rff=128`` here). The training times are ``t = tmin + (1 - tmin) u^tpow``
(``--set tpow=0.7``, ``--set tmin=0.1``: none nearer the data than ``tmin``).

    OMP_NUM_THREADS=1 python -m benchmarks.ffjord_fm_screen --targets checkerboard --variants ot128 tpow2
    OMP_NUM_THREADS=1 python -m benchmarks.ffjord_fm_screen --targets rings --variants rff --set rff=128
    OMP_NUM_THREADS=1 python -m benchmarks.ffjord_fm_screen --step-costs   # the cost of OT pairing

Results (JSON) go to ``--out``; the log lines to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time

import torch
from torch import nn

import pyro_flows
from pyro_flows.nn import DynamicsNet
from pyro_flows.train.flow_matching import flow_matching_loss, ot_pairing
from pyro_flows.transforms import FFJORD

from .toy_targets import TARGETS

ACT = {"silu": nn.SiLU, "selu": nn.SELU, "elu": nn.ELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


class TimeMLP(nn.Module):
    """An MLP on ``[z, t, sin(pi k t), cos(pi k t)]`` (``pyro_flows.nn.VelocityNet`` without
    its zero initialisation of the last layer)."""

    def __init__(self, dim, hidden, act, freqs, xfreqs=(), rff=0, rff_scale=1.0):
        super().__init__()
        self.register_buffer("freqs", torch.tensor(freqs, dtype=torch.float32) * math.pi)
        n_t = 1 + 2 * len(freqs)
        # spatial features: axis-aligned sin/cos(pi k z_j) and random Fourier features
        eye = torch.eye(dim)
        mats = [k * math.pi * eye for k in xfreqs]
        if rff:
            g = torch.Generator().manual_seed(1234)
            mats.append(2 * math.pi * rff_scale * torch.randn(rff, dim, generator=g))
        self.register_buffer("xmat", torch.cat(mats) if mats else torch.zeros(0, dim))
        sizes = [dim + n_t + 2 * self.xmat.shape[0], *hidden]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), ACT[act]()]
        layers.append(nn.Linear(sizes[-1], dim))
        self.net = nn.Sequential(*layers)

    def forward(self, t, z):
        t = torch.as_tensor(t).to(z).reshape(-1, 1).expand(z.shape[0], 1)
        a = t * self.freqs
        parts = [z, t, a.sin(), a.cos()]
        if self.xmat.shape[0]:
            b = z @ self.xmat.T
            parts += [b.sin(), b.cos()]
        return self.net(torch.cat(parts, -1))


def build(cfg):
    torch.manual_seed(cfg["seed"])
    if cfg["arch"] == "cs":
        net = DynamicsNet(2, cfg["hidden"], cfg["act"], zero_init=True)
    else:
        net = TimeMLP(
            2,
            cfg["hidden"],
            cfg["act"],
            cfg["freqs"],
            cfg.get("xfreqs", ()),
            cfg.get("rff", 0),
            cfg.get("rff_scale", 1.0),
        )
    return pyro_flows.Flow(FFJORD(net, 2))


def nll(flow, test, tol):
    t = flow.transform
    t.rtol = t.atol = tol
    flow.eval()
    with torch.no_grad():
        v = -flow.log_prob(test.clone())
    flow.train()
    return float(v.mean()), t.nfe


def learning_rate(cfg, frac):
    w = cfg["warmup"]
    if w > 0 and frac < w:
        return cfg["lr"] * min(1.0, frac / w)
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - w) / (1 - w))))


def run(cfg, target, log):
    tg = TARGETS[target]
    entropy, _ = tg.entropy(200000)
    train = tg.sample(20000, seed=0).float()
    test = tg.sample(2000, seed=1).float()
    flow = build(cfg)
    ema = copy.deepcopy(flow) if cfg["ema"] else None
    opt = torch.optim.Adam(list(flow.parameters()), lr=cfg["lr"])
    gen = torch.Generator().manual_seed(0)
    budget = cfg["budget"]
    marks = [m for m in cfg["marks"] if m < budget] + [budget]
    used, steps, curve = 0.0, 0, []
    while marks:
        t0 = time.process_time()
        for _ in range(5):
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, used / budget)
            x = train[torch.randint(len(train), (cfg["batch"],), generator=gen)]
            z = torch.randn_like(x)
            tt = cfg["tmin"] + (1 - cfg["tmin"]) * torch.rand(x.shape[0]) ** cfg["tpow"]
            path = cfg["path"]
            if path.startswith("ot") and path != "ot":  # "otK": exact OT within blocks of K rows
                k = int(path[2:])
                path = "independent"
                z = torch.cat([zb[ot_pairing(xb, zb)] for xb, zb in zip(x.split(k), z.split(k), strict=True)])
            loss = flow_matching_loss(
                flow.transform, x, z, path=path, sigma=cfg["sigma"], t=tt, ot_block=None
            ).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if ema is not None:
                d = min(cfg["ema"], (1 + steps) / (10 + steps))
                with torch.no_grad():
                    for pe, p in zip(ema.parameters(), flow.parameters(), strict=True):
                        pe.lerp_(p, 1 - d)
        used += time.process_time() - t0
        if used >= marks[0]:
            while marks and used >= marks[0]:
                marks.pop(0)
            m = ema if ema is not None else flow
            v, nfe = nll(m, test, 1e-5)
            row = {"cpu": round(used, 1), "steps": steps, "gap": v - entropy, "nfe": nfe}
            if not marks:
                md = copy.deepcopy(m).double()
                v5, _ = nll(m, test[:500], 1e-5)
                v7, nfe7 = nll(md, test[:500].double(), 1e-7)
                row["tight_minus_default_500"] = v7 - v5
                row["nfe7"] = nfe7
                if ema is not None:
                    vr, _ = nll(flow, test, 1e-5)
                    row["gap_raw"] = vr - entropy
            curve.append(row)
            log(f"{cfg['name']} {target} {row}")
    return curve


BASE = dict(
    arch="mlp",
    hidden=(256, 256, 256),
    act="silu",
    freqs=(1, 2, 4, 8, 16),
    lr=3e-3,
    warmup=0.02,
    batch=512,
    ema=0.999,
    path="ot",
    sigma=0.0,
    tpow=1.0,
    tmin=0.0,
    seed=0,
    budget=60,
    marks=(10, 20, 34, 50, 85, 120, 170),
)
VARIANTS = {
    "old": dict(arch="cs", hidden=(128, 128), act="tanh", lr=2e-3, warmup=0.0, batch=256, ema=0.0),
    "base": {},
    "ot128": dict(path="ot128"),
    "w128x3": dict(hidden=(128, 128, 128), path="ot128"),
    "noema": dict(ema=0.0, path="ot128"),
    "indep": dict(path="independent"),
    "sig03": dict(sigma=0.03, path="ot128"),
    "tpow2": dict(tpow=2.0, path="ot128"),
    "xff": dict(xfreqs=(1, 2, 4, 8), path="ot128"),
    "rff": dict(rff=64, rff_scale=1.0, path="ot128"),
}


def step_costs(repeats: int = 20):
    """CPU milliseconds of the exact OT pairing of a batch of 512 (whole, and in blocks of
    128) and of one Adam step of the 256-256-256 field on it, one thread."""
    torch.manual_seed(0)
    x, z = torch.randn(512, 2), torch.randn(512, 2)
    net = TimeMLP(2, (256, 256, 256), "silu", (1, 2, 4, 8, 16))
    opt = torch.optim.Adam(net.parameters())
    t = torch.rand(512)

    def step():
        loss = (net(t, x) - z).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    out = {}
    for name, fn in (
        ("pair 512 at once", lambda: ot_pairing(x, z)),
        ("pair 512 in blocks of 128", lambda: ot_pairing(x, z, block_size=128)),
        ("step of the 256-256-256 field", step),
    ):
        fn()  # warm up
        start = time.process_time()
        for _ in range(repeats):
            fn()
        out[name] = 1000 * (time.process_time() - start) / repeats
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=[], choices=list(TARGETS))
    p.add_argument("--variants", nargs="+", default=[], choices=list(VARIANTS))
    p.add_argument("--step-costs", action="store_true", help="only time the OT pairing and a step")
    p.add_argument("--budget", type=float, default=60)
    p.add_argument("--out")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="override a setting")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.step_costs:
        for name, ms in step_costs().items():
            print(f"{name}: {ms:.2f} CPU-ms")
        return None

    def log(message):
        print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)

    results = {}
    for v in a.variants:
        for tg in a.targets:
            cfg = dict(BASE)
            cfg.update(VARIANTS[v])
            cfg["name"] = v
            cfg["budget"] = a.budget
            for kv in a.set:
                k, val = kv.split("=", 1)
                cfg[k] = json.loads(val)
            results[f"{v}/{tg}"] = run(cfg, tg, log)
            if a.out:
                with open(a.out, "w") as fh:
                    json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
