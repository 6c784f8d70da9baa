"""Two Gloo processes on CPU train together like one process on the global batch."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from pyro_flows.data.splits import Splits
from pyro_flows.data.toy import make_moons
from pyro_flows.train.config import RunConfig
from pyro_flows.train.distributed import setup, teardown
from pyro_flows.train.loop import train
from pyro_flows.train.registry import build_model
from pyro_flows.train.run import fit_run

from .helpers import free_port, join_gloo_environment

STEPS = 6


def _config(batch_norm: bool) -> RunConfig:
    return RunConfig(
        flow="real_nvp",  # batch norm, and no data-dependent initialisation (tested below with glow)
        num_layers=3,
        hidden_dims=(16,),
        batch_norm=batch_norm,
        steps=STEPS,
        batch_size=64,
        eval_every=3,
        lr=1e-2,
        dtype="float64",
        quiet=True,
        plots=False,
        seed=3,
    )


def _splits() -> Splits:
    x = make_moons(400, seed=5, dtype=torch.float64)
    return Splits("moons", x[:300], x[300:350], x[350:])


def _trained(config: RunConfig, context=None) -> dict:
    torch.manual_seed(config.seed)
    splits = _splits()
    flow = build_model(config, splits.event_shape).double()
    kwargs = {"context": context} if context is not None else {}
    train(flow, splits, config, None, **kwargs)
    return {k: v.clone() for k, v in flow.state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    join_gloo_environment(rank, world, port)
    context = setup(torch.device("cpu"))
    try:
        for batch_norm in (False, True):
            config = _config(batch_norm)
            # Rank 1 starts from other weights: DDP must make the initial parameters equal.
            torch.manual_seed(config.seed + rank)
            flow = build_model(config, _splits().event_shape).double()
            train(flow, _splits(), config, None, context=context)
            state = {k: v.clone() for k, v in flow.state_dict().items()}
            torch.save(state, os.path.join(out, f"bn{int(batch_norm)}_rank{rank}.pt"))
        # Glow's ActNorm initialises itself from the first (local) batch: the processes
        # must still end with identical parameters.
        images = torch.randint(0, 4, (200, 1, 4, 4), generator=torch.Generator().manual_seed(0)).double()
        glow_data = Splits("images", images[:160], images[160:180], images[180:], levels=4)
        glow_config = RunConfig(
            flow="glow",
            num_scales=1,
            steps_per_scale=1,
            hidden_channels=4,
            num_blocks=1,
            steps=3,
            batch_size=40,
            eval_every=3,
            logit_alpha=0.05,
            quiet=True,
            plots=False,
        )
        torch.manual_seed(rank)
        flow = build_model(glow_config, (1, 4, 4), discrete=True)
        train(flow, glow_data, glow_config, None, context=context)
        torch.save(dict(flow.state_dict()), os.path.join(out, f"glow_rank{rank}.pt"))
        # The whole fit job: every rank runs it, only rank 0 writes the run folder.
        fit_run(
            RunConfig(
                num_layers=2,
                hidden_dims=(8,),
                num_samples=400,
                batch_size=40,
                steps=8,
                eval_every=4,
                quiet=True,
                out=os.path.join(out, "run"),
                plot_samples=100,
            )
        )
    finally:
        teardown(context)


def _initial_state(config: RunConfig) -> dict:
    torch.manual_seed(config.seed)
    return build_model(config, _splits().event_shape).double().state_dict()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("batch_norm", [False, True])
def test_two_gloo_processes_match_one_process(two_process_results, batch_norm):
    out = two_process_results
    ranks = [torch.load(out / f"bn{int(batch_norm)}_rank{r}.pt", weights_only=True) for r in (0, 1)]
    # Both ranks hold identical parameters and buffers (batch-norm running averages too).
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    single = _trained(_config(batch_norm))
    start = _initial_state(_config(batch_norm))
    moved = max(float((single[k] - start[k]).abs().max()) for k in single if single[k].is_floating_point())
    assert moved > 1e-3  # training changed the parameters, so the comparison below means something
    diffs = {k: float((ranks[0][k] - single[k]).abs().max()) for k in single if single[k].is_floating_point()}
    if batch_norm:
        # Each process normalizes with its local batch's statistics (documented in
        # pyro_flows.train.distributed), so the weights and running averages are close to,
        # not equal to, the single-process ones (measured: 0.021 for both; the running
        # averages were 0.17 away when initialised from rank 0's half of the first batch).
        assert max(diffs.values()) < 0.05, diffs
    else:
        assert max(diffs.values()) < 1e-10, diffs


def test_only_rank_zero_writes_the_run_folder(two_process_results):
    run = two_process_results / "run"
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in records if r["split"] == "val"] == [4, 8]  # written once, not twice
    results = json.loads((run / "results.json").read_text())
    assert results["processes"] == 2 and results["splits"]["train"] == 320
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "checkpoint.pt",
        "config.toml",
        "metrics.jsonl",
        "nll_curves.png",
        "results.json",
        "samples.png",
    ]


def test_data_dependent_initialisation_is_the_same_on_every_process(two_process_results):
    ranks = [torch.load(two_process_results / f"glow_rank{r}.pt", weights_only=True) for r in (0, 1)]
    actnorm = [k for k in ranks[0] if "initialized" in k]
    assert actnorm and all(bool(ranks[0][k]) for k in actnorm)
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
