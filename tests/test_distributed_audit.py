"""Two Gloo processes on CPU: random streams per process, exact resume, the caller's
process group, and clear errors for a misconfigured launch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_flows import Flow, affine_coupling
from pyro_flows.data.splits import Splits
from pyro_flows.data.toy import make_moons
from pyro_flows.train.checkpoint import check_run_state, load_checkpoint
from pyro_flows.train.config import RunConfig
from pyro_flows.train.distributed import setup
from pyro_flows.train.loop import train
from pyro_flows.train.registry import build_model
from pyro_flows.train.run import fit_run
from pyro_flows.transforms import act_norm

from .helpers import free_port, join_gloo_environment

STEPS = 6
INTERRUPT_AT = 3


class _Interrupted(Exception):
    pass


def _discrete_splits() -> Splits:
    # integer data: every training batch is dequantized with noise from the global generator
    x = torch.randint(0, 4, (400, 2), generator=torch.Generator().manual_seed(7)).double()
    return Splits("grid", x[:300], x[300:350], x[350:], levels=4)


def _config() -> RunConfig:
    return RunConfig(
        flow="real_nvp",
        num_layers=2,
        hidden_dims=(8,),
        steps=STEPS,
        batch_size=40,
        eval_every=INTERRUPT_AT,
        lr=1e-2,
        dtype="float64",
        quiet=True,
        plots=False,
        seed=11,
    )


def _recording(splits: Splits, noises: list) -> Splits:
    """``splits`` whose training batches' dequantization noise is appended to ``noises``."""
    prepare = splits.prepare

    def recorded(x, generator=None, dtype=None):
        y = prepare(x, generator=generator, dtype=dtype)
        if generator is None:  # training batches (held-out data have their own generator)
            noises.append((splits.to_data_units(y) - x.to(y)).clone())  # U(0, 1) per value
        return y

    splits.prepare = recorded
    return splits


def _flow(config: RunConfig, seed: int):
    torch.manual_seed(seed)
    return build_model(config, (2,), discrete=True, levels=4).double()


def _live_state_at(flow, step: int, into: dict):
    def on_step(s: int) -> None:
        if s == step:
            into.update({k: v.detach().clone() for k, v in flow.state_dict().items()})

    return on_step


def _moons() -> Splits:
    x = make_moons(400, seed=5, dtype=torch.float64)
    return Splits("moons", x[:300], x[300:350], x[350:])


def _actnorm_flow(seed: int) -> Flow:
    """A vector flow whose ActNorm sits after a coupling, so what it is initialised from
    depends on the data and on the weights before it."""
    torch.manual_seed(seed)
    layers = [affine_coupling(2, (8,)), act_norm(2, event_dim=1), affine_coupling(2, (8,), parity=1)]
    return Flow(layers).double()


def _actnorm_trained(context=None) -> dict:
    flow = _actnorm_flow(_config().seed)
    train(flow, _moons(), _config(), None, **({} if context is None else {"context": context}))
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    join_gloo_environment(rank, world, port)
    # The caller owns the process group: pyro-flows joins it and must leave it open.
    dist.init_process_group("gloo", rank=rank, world_size=world)
    context = setup(torch.device("cpu"))
    config = _config()
    for run in ("a", "b"):
        os.makedirs(os.path.join(out, run), exist_ok=True)

    # An uninterrupted run, recording each process's dequantization noise.
    noises = []
    torch.manual_seed(config.seed)
    flow = _flow(config, config.seed)
    final = {}
    train(
        flow,
        _recording(_discrete_splits(), noises),
        config,
        os.path.join(out, "a"),
        context=context,
        on_step=_live_state_at(flow, STEPS, final),
    )
    torch.save(
        {"noise": torch.stack(noises), "final": final}, os.path.join(out, f"uninterrupted_rank{rank}.pt")
    )

    # The same run interrupted after its checkpoint at step 3, then resumed from it.
    def interrupt(step: int) -> None:
        if step == INTERRUPT_AT:
            raise _Interrupted

    torch.manual_seed(config.seed)
    try:
        flow = _flow(config, config.seed)
        train(flow, _discrete_splits(), config, os.path.join(out, "b"), context=context, on_step=interrupt)
    except _Interrupted:
        pass
    dist.barrier()  # rank 0 has written the checkpoint
    saved = load_checkpoint(os.path.join(out, "b", "checkpoint.pt"))
    best = load_checkpoint(os.path.join(out, "b", "best.pt"))["model"]
    torch.manual_seed(1000 + rank)  # a fresh process: another generator state, other weights
    flow = _flow(config, 1000 + rank)
    resumed = {}
    train(
        flow,
        _discrete_splits(),
        config,
        os.path.join(out, "b"),
        context=context,
        resume_state=saved,
        best_model_state=best,
        on_step=_live_state_at(flow, STEPS, resumed),
    )
    torch.save(resumed, os.path.join(out, f"resumed_rank{rank}.pt"))

    # ActNorm initialised from data (rank 0's weights, every process's first local batch).
    torch.save(_actnorm_trained(context), os.path.join(out, f"actnorm_rank{rank}.pt"))

    # The whole fit job inside the caller's process group.
    fit_run(
        RunConfig(
            num_layers=2,
            hidden_dims=(8,),
            num_samples=300,
            batch_size=40,
            steps=2,
            eval_every=2,
            quiet=True,
            plots=False,
            out=os.path.join(out, "run"),
        )
    )
    alive = dist.is_initialized()
    total = torch.tensor([float(rank + 1)])
    if alive:
        dist.all_reduce(total)
        dist.destroy_process_group()
    torch.save({"alive": alive, "total": float(total)}, os.path.join(out, f"group_rank{rank}.pt"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_audit")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


def _load(path):
    return torch.load(path, weights_only=True)


def test_processes_draw_their_own_noise(results):
    ranks = [_load(results / f"uninterrupted_rank{r}.pt") for r in (0, 1)]
    noise = [r["noise"][-STEPS:] for r in ranks]  # the training steps
    assert noise[0].shape == noise[1].shape == (STEPS, 20, 2)  # one local batch of 40 / 2 per step
    # Dequantization noise is U(0, 1): the two processes' draws for the same step must be
    # independent, not one stream used twice (which halves the noise a global batch sees).
    assert all(0 <= float(n.min()) and float(n.max()) < 1 for n in noise)
    assert float((noise[0] - noise[1]).abs().min()) > 0
    assert abs(float((noise[0] - noise[1]).abs().mean()) - 1 / 3) < 0.05  # E|u - u'| = 1/3
    # ... and the parameters still agree on every process.
    for key, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][key]), key


def test_resume_on_two_processes_continues_exactly(results):
    for rank in (0, 1):
        uninterrupted = _load(results / f"uninterrupted_rank{rank}.pt")["final"]
        resumed = _load(results / f"resumed_rank{rank}.pt")
        assert uninterrupted.keys() == resumed.keys()
        for key, value in uninterrupted.items():
            assert torch.equal(value, resumed[key]), (rank, key)


def test_checkpoint_holds_every_process_generator_state(results):
    state = load_checkpoint(str(results / "b" / "checkpoint.pt"))
    ranks = state["rng"]["ranks"]
    assert len(ranks) == 2
    assert torch.equal(ranks[0]["torch"], state["rng"]["torch"])
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])


def test_actnorm_starts_from_the_global_first_batch(results):
    ranks = [_load(results / f"actnorm_rank{r}.pt") for r in (0, 1)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # Without batch norm two processes must match one process on the global batch, ActNorm's
    # data-dependent start included (initialised from half the batch it would differ by ~0.1).
    single = _actnorm_trained()
    assert bool(single["transform.1.initialized"])
    start = _actnorm_flow(_config().seed).state_dict()
    assert float((single["transform.1.loc"] - start["transform.1.loc"]).abs().max()) > 1e-2
    diffs = {k: float((ranks[0][k] - v).abs().max()) for k, v in single.items() if v.is_floating_point()}
    assert max(diffs.values()) < 1e-10, diffs


def _run_state(rng: dict) -> dict:
    trainer = {"step": 3, "best_val_nll": 1.0, "best_step": 3, "bad_evals": 0, "stopped_early": False}
    trainer.update(total_steps=6, history=[], running_loss=None, seconds=0.0)
    return {
        "model": {},
        "step": 3,
        "config": {},
        "data": {"event_shape": [2], "levels": 0},
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {},
        "trainer": trainer,
        "rng": rng,
    }


def test_check_run_state_refuses_bad_per_process_generator_states():
    good = {"torch": torch.get_rng_state()}
    check_run_state(_run_state({**good, "ranks": [good, good]}), "c.pt", resume=True)
    for ranks in ([], [good, "x"], [good, {"torch": torch.zeros(3)}], good):
        with pytest.raises(ValueError, match="rng.ranks"):
            check_run_state(_run_state({**good, "ranks": ranks}), "c.pt", resume=True)


def test_fit_leaves_the_callers_process_group_open(results):
    for rank in (0, 1):
        group = _load(results / f"group_rank{rank}.pt")
        assert group["alive"], rank
        assert group["total"] == 3.0  # 1 + 2: the group still works after fit_run


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "2"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "two"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK 2"),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "x"}, "LOCAL_RANK"),
    ],
)
def test_setup_names_a_misconfigured_launch(monkeypatch, env, message):
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        setup(torch.device("cpu"))
    assert not dist.is_initialized()


def _failing_writer(rank: int, world: int, port: int, out: str) -> None:
    import datetime

    import pyro_flows.train.loop as loop

    join_gloo_environment(rank, world, port)
    # a short timeout: without the shared failure the other process would wait for it
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    context = setup(torch.device("cpu"))
    if rank == 0:

        def full_disk(path, state):
            raise OSError(f"No space left on device: {path}")

        loop.save_checkpoint = full_disk
    os.makedirs(os.path.join(out, "run"), exist_ok=True)
    torch.manual_seed(0)
    flow = _flow(_config(), 0)
    try:
        train(flow, _discrete_splits(), _config(), os.path.join(out, "run"), context=context)
        outcome = "finished"
    except Exception as err:  # recorded, so the test can say what each process met
        outcome = f"{type(err).__name__}: {err}"
    with open(os.path.join(out, f"outcome_rank{rank}.txt"), "w") as fh:
        fh.write(outcome)
    # leave without tearing the failed group down: Gloo's threads may abort the process
    # at teardown after a failure, which is not what this test is about
    os._exit(0)


def test_a_failed_write_on_rank_0_stops_every_process_with_its_message(tmp_path):
    mp.spawn(_failing_writer, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    outcomes = [(tmp_path / f"outcome_rank{rank}.txt").read_text() for rank in (0, 1)]
    assert outcomes[0].startswith("OSError: No space left on device"), outcomes
    assert outcomes[1].startswith("FailedElsewhere") and "No space left on device" in outcomes[1], outcomes
