"""Stopping a run cleanly when a scheduler asks: SIGTERM and SIGUSR1 while ``fit`` runs.

Clusters end a job by sending SIGTERM, then SIGKILL after a grace period (SLURM,
Kubernetes, torchrun's elastic agent); SLURM can also send SIGUSR1 ahead of the time
limit (``sbatch --signal=USR1@120``). While :func:`~pyro_flows.train.run.fit_run` runs,
:class:`StopSignals` catches both: during the training loop the signal is only recorded,
the loop finishes the step it is in, writes ``checkpoint.pt`` at that step (atomically,
as every checkpoint) and raises :class:`RunTerminated`, whose exit status is
``128 + signal`` (143 for SIGTERM, 138 for SIGUSR1). The saved state holds everything
the next step depends on (weights, optimizer, schedule, moving average, generator
states; the batch order is a function of the seed and the step), so ``fit --resume``
ends with the parameters an uninterrupted run ends with. Outside the loop (reading the
data, scoring the test split, plotting) the signal stops the run at once, as Ctrl-C does.

A signal that arrives while the run is stopping already changes nothing: the step is
finished and its checkpoint written (SLURM and ``torchrun`` may each deliver the same
SIGTERM to a worker). Ctrl-C or SIGKILL still stop the process at once; a checkpoint
being written then is left out and the previous one stays whole (see
``pyro_flows.train.rundir.atomic_write``).

The handlers are installed for the duration of the run only, from the main thread only
(elsewhere Python allows none and the run is not protected), and the previous handlers
are put back when the run ends, however it ends. A signal the process ignores
(``SIG_IGN``) stays ignored. Importing :mod:`pyro_flows` installs nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Dict, Optional, Tuple

__all__ = ["RunTerminated", "StopSignals", "STOP_SIGNALS"]

#: the signals that stop a run cleanly (SIGUSR1 where the platform has it)
STOP_SIGNALS: Tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class RunTerminated(SystemExit):
    """``fit`` stopped by SIGTERM or SIGUSR1 (see the module ``pyro_flows.train.stopping``).

    Its ``code`` is the exit status ``128 + signum`` (143 for SIGTERM), so a script that
    does not catch it ends with the status schedulers expect; its text says what the run
    folder holds and the command that continues the run.

    :param int signum: the signal received.
    :param str run_dir: the run folder (``None``: nothing was written).
    :param int step: the step whose full state the training loop saved on the way out
        (``None``: the signal arrived outside the loop).
    :param bool started: the run had claimed its folder.
    :param bool resumable: the folder holds a checkpoint of the run to continue from.
    :param bool elsewhere: the signal went to another process of the run (``torchrun``),
        which this one stopped with; ``signum`` is then SIGTERM's.

    >>> err = RunTerminated(signal.SIGTERM, "runs/a", step=7, total_steps=20)
    >>> err.code
    143
    >>> print(err)
    stopped by SIGTERM after step 7 of 20; the run's state at that step is saved in runs/a/checkpoint.pt: continue it with `pyro-flows fit --resume runs/a`
    """

    def __init__(
        self,
        signum: int,
        run_dir: Optional[str] = None,
        step: Optional[int] = None,
        total_steps: Optional[int] = None,
        started: bool = False,
        resumable: bool = False,
        elsewhere: bool = False,
    ):
        super().__init__(128 + signum)
        self.signum, self.run_dir, self.step, self.total_steps = signum, run_dir, step, total_steps
        self.elsewhere = elsewhere
        self.started, self.resumable = started or step is not None, resumable or step is not None

    def where(self, run_dir: str, started: bool, resumable: bool) -> "RunTerminated":
        """This stop, told what the run had done with its folder ``run_dir`` (a signal
        outside the loop is raised before the run knows)."""
        if self.step is not None:
            return self
        return RunTerminated(self.signum, run_dir, started=started, resumable=resumable)

    def __str__(self) -> str:
        name = "a signal to another process of the run" if self.elsewhere else _signal_name(self.signum)
        if self.step is not None:
            at = f"after step {self.step}" + (f" of {self.total_steps}" if self.total_steps else "")
            if not self.run_dir:
                return f"stopped by {name} {at}; nothing was written"
            checkpoint = os.path.join(self.run_dir, "checkpoint.pt")
            return (
                f"stopped by {name} {at}; the run's state at that step is saved in {checkpoint}: "
                f"continue it with `pyro-flows fit --resume {self.run_dir}`"
            )
        if not self.run_dir or not self.started:
            return f"stopped by {name} before the run began" + (
                f"; {self.run_dir} is as it was" if self.run_dir else ""
            )
        if self.resumable:
            return (
                f"stopped by {name}; continue from the last checkpoint with "
                f"`pyro-flows fit --resume {self.run_dir}`"
            )
        config = os.path.join(self.run_dir, "config.toml")
        again = (
            f"`pyro-flows fit --config {config} --out {self.run_dir} --overwrite`"
            if os.path.exists(config)
            else f"--out {self.run_dir} --overwrite"
        )
        return f"stopped by {name} before the run's first checkpoint, so there is nothing to resume; start it again with {again}"


class StopSignals:
    """Within the block (in the main thread), SIGTERM and SIGUSR1 stop the run cleanly.

    Inside :meth:`deferred` (the training loop) a signal is only recorded in
    :attr:`received`, for the loop to act on at the end of its step; elsewhere it raises
    :class:`RunTerminated` at once. Only the first signal counts: later ones are ignored.
    On leaving the block the previous handlers are restored; a signal that was recorded
    but stopped nothing (it arrived as the run ended) is then delivered again, to them.

    >>> before = signal.getsignal(signal.SIGTERM)
    >>> with StopSignals() as stop:
    ...     signal.getsignal(signal.SIGTERM) == stop._handle
    True
    >>> signal.getsignal(signal.SIGTERM) is before
    True
    """

    def __init__(self, signals: Tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        #: the first stopping signal received (``None``: none yet)
        self.received: Optional[int] = None
        self._deferring = False
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a stopping signal has arrived."""
        return self.received is not None

    def __enter__(self) -> "StopSignals":
        self.received, self._deferring, self._previous = None, False, {}
        if threading.current_thread() is not threading.main_thread():
            return self  # Python lets only the main thread install handlers
        for signum in self.signals:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN or previous is None:
                # ignored on purpose, or a handler not set from Python (which could not be put back)
                continue
            try:
                signal.signal(signum, self._handle)
            except (ValueError, OSError):
                continue
            self._previous[signum] = previous
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._deferring = True  # from here on a signal is only recorded
        try:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
        finally:
            self._previous = {}
        if exc_type is None and self.received is not None:
            # it stopped nothing: the process's own handler (by default, ending it) takes it
            signal.raise_signal(self.received)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            return  # stopping already
        self.received = signum
        if not self._deferring:
            raise RunTerminated(signum)

    @contextlib.contextmanager
    def deferred(self):
        """Within the block a signal is recorded, for the caller to stop at a point of
        its choosing; a signal that arrived before it (already raised) is not recorded."""
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False
