"""Ctrl-C during the in-memory ``pyro_flows.train.fit``: the first lets the step finish and
hands the flow trained so far back on the exception; a second stops at once."""

from __future__ import annotations

import importlib
import os
import signal
import threading

import pytest
import torch

from pyro_flows.data import make_moons
from pyro_flows.train import RunInterrupted, fit

fit_module = importlib.import_module("pyro_flows.train.fit")  # the module, not the function
REAL_TRAIN = fit_module.train

# 270 training points in batches of 50; a constant rate without warm-up, so the first steps
# of a longer fit are those of a shorter one (a cosine schedule follows the total steps)
OPTIONS = dict(flow="real_nvp", num_layers=2, hidden_dims=(8,), batch_size=50, lr=5e-3)
OPTIONS.update(schedule="constant", eval_every=3, patience=0, seed=1)
ANNOUNCED = "fit: interrupted; finishing step {}; press Ctrl-C again to stop at once"


@pytest.fixture(scope="module")
def data():
    return make_moons(300)


def on_step_of_fit(monkeypatch, on_step):
    """Train inside ``fit`` with ``on_step`` (called at the end of every step)."""
    monkeypatch.setattr(fit_module, "train", lambda *a, **k: REAL_TRAIN(*a, **{**k, "on_step": on_step}))


def ctrl_c_at(step: int, presses: int = 1, after=None):
    """An ``on_step`` that presses Ctrl-C ``presses`` times at the end of ``step``; it
    appends ``step`` to ``after`` once past the presses."""

    def on_step(current: int) -> None:
        if current == step:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
            if after is not None:
                after.append(current)

    return on_step


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x, y = a.state_dict(), b.state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize(
    "stop_at, changes",
    [(6, {}), (6, dict(ema=0.9, noise=0.1)), (7, {}), (2, dict(ema=0.9))],
    ids=["at-an-evaluation", "averaged-with-noise", "between-evaluations", "before-any-evaluation"],
)
def test_a_first_ctrl_c_finishes_the_step_and_hands_back_the_flow_fit_returns_at_that_step(
    data, monkeypatch, capsys, stop_at, changes
):
    options = {**OPTIONS, **changes}
    # what fit returns when it ends at the last evaluation before the stop (at the stop
    # itself before any: a fit evaluates its last step, so that is its best)
    evaluated = stop_at - stop_at % 3 or stop_at
    expected, expected_history = fit(data, steps=evaluated, **options)

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert before[0] is signal.default_int_handler
    during = []
    on_step_of_fit(
        monkeypatch, lambda step: (during.append(signal.getsignal(signal.SIGINT)), ctrl_c_at(stop_at)(step))
    )
    with pytest.raises(RunInterrupted) as caught:
        fit(data, steps=10, **options)
    err = caught.value

    assert isinstance(err, KeyboardInterrupt)  # a script still stops, as asked
    assert (err.step, err.total_steps) == (stop_at, 10) and len(during) == stop_at
    assert signal.default_int_handler not in during  # fit's own while it trained
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert capsys.readouterr().err.splitlines() == [ANNOUNCED.format(stop_at)]

    model = err.model
    assert not model.training and same_weights(model, expected)
    assert bool(torch.isfinite(model.log_prob(data)).all())
    assert err.history == [r for r in expected_history if r["step"] % 3 == 0]  # the same evaluations
    assert [r["step"] for r in err.history] == list(range(3, stop_at + 1, 3))

    message = str(err)
    assert message.startswith(f"interrupted after step {stop_at} of 10; the flow trained so far is")
    assert "the exception's .model" in message and "`import sys; flow = sys.last_value.model`" in message
    assert "--resume" not in message and "checkpoint" not in message and "written" not in message


def test_a_second_ctrl_c_while_the_step_finishes_stops_at_once(data, monkeypatch, capsys):
    after = []
    on_step_of_fit(monkeypatch, ctrl_c_at(4, presses=2, after=after))
    with pytest.raises(KeyboardInterrupt) as caught:
        fit(data, steps=10, **OPTIONS)
    assert type(caught.value) is KeyboardInterrupt  # plain: raised by the second press, there and then
    assert after == []  # nothing after the second press ran
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert capsys.readouterr().err.splitlines() == [ANNOUNCED.format(4)]


def test_fit_takes_ctrl_c_over_only_while_it_trains_and_only_from_the_main_thread(data, monkeypatch):
    default = signal.default_int_handler
    flow, history = fit(data, steps=3, **OPTIONS)  # uninterrupted: as before
    assert [r["step"] for r in history] == [3] and signal.getsignal(signal.SIGINT) is default

    with pytest.raises(ValueError, match="val_fraction"):  # refused before training
        fit(data, steps=3, val_fraction=0, **OPTIONS)
    assert signal.getsignal(signal.SIGINT) is default

    # handled by the process itself: left as it is, and a press reaches it
    calls = []

    def own(signum, frame):
        calls.append(signum)

    signal.signal(signal.SIGINT, own)
    try:
        on_step_of_fit(monkeypatch, ctrl_c_at(1))
        kept, _ = fit(data, steps=3, **OPTIONS)
        assert calls == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is own
        assert same_weights(kept, flow)
    finally:
        signal.signal(signal.SIGINT, default)

    # another thread can install no handlers: there fit trains as it did
    during, results = [], []
    on_step_of_fit(monkeypatch, lambda step: during.append(signal.getsignal(signal.SIGINT)))
    thread = threading.Thread(target=lambda: results.append(fit(data, steps=3, **OPTIONS)))
    thread.start()
    thread.join()
    assert len(results) == 1 and same_weights(results[0][0], flow) and results[0][1] == history
    assert during == [default] * 3 and signal.getsignal(signal.SIGINT) is default
