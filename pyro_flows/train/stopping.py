"""Stopping a run cleanly: SIGTERM and SIGUSR1 (a scheduler) and Ctrl-C while ``fit`` runs.

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
data, scoring the test split, plotting) the signal stops the run at once.

The first Ctrl-C (SIGINT) in the training loop does the same: the loop finishes its
step, saves it and raises :class:`RunInterrupted` (a ``KeyboardInterrupt``; the command
exits with status 130). On receiving it, rank 0 says on stderr which step it is
finishing and that a second Ctrl-C stops at once, even with ``--quiet``: that line
answers a key press, and without it a user waiting on a long step or write would press
again and lose the step. A second Ctrl-C (while the step finishes or is saved, or
while a SIGTERM stops the run) raises ``KeyboardInterrupt`` at once, and so does
Ctrl-C outside the loop, as before. Ctrl-C is taken over only where it raises
``KeyboardInterrupt`` (Python's default handler): a process that ignores it, or handles
it itself, keeps its own way.

Another SIGTERM or SIGUSR1 while the run is stopping changes nothing: the step is
finished and its checkpoint written (SLURM and ``torchrun`` may each deliver the same
SIGTERM to a worker). A second Ctrl-C or SIGKILL stop the process at once; a checkpoint
being written then is left out and the previous one stays whole (see
``pyro_flows.train.rundir.atomic_write``).

The in-memory :func:`~pyro_flows.train.fit` takes over Ctrl-C alone, the same way: the
first one in the loop lets the step finish and raises :class:`RunInterrupted` holding
the flow trained so far (``model``, with its best weights so far, as training ends) and
its validation ``history``: nothing was written, and the flow, built inside ``fit``,
would be lost with the exception. A second Ctrl-C raises ``KeyboardInterrupt`` at once.
SIGTERM and SIGUSR1 keep the process's own handlers there: with nothing written to
resume from, ending the process as they always did is all a clean stop could do.

The handlers are installed for the duration of the run only, from the main thread only
(elsewhere Python allows none and the run is not protected), and the previous handlers
are put back when the run ends, however it ends. A signal the process ignores
(``SIG_IGN``) stays ignored. Importing :mod:`pyro_flows` installs nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Dict, List, Optional, Tuple, Union

from .distributed import process_rank

__all__ = ["RunInterrupted", "RunTerminated", "StopSignals", "STOP_SIGNALS"]

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
        return _describe(
            f"stopped by {name}", self.run_dir, self.step, self.total_steps, self.started, self.resumable
        )


class RunInterrupted(KeyboardInterrupt):
    """``fit_run`` interrupted (Ctrl-C): what is in ``run_dir`` then; ``fit`` interrupted:
    the flow trained so far.

    After the first Ctrl-C in the training loop, ``step`` is the step the loop finished
    and saved on the way out (see the module ``pyro_flows.train.stopping``); after a
    second one, or one outside the loop, it is ``None`` and the folder holds what the
    last checkpoint holds.

    :param str run_dir: the run folder (``None``: nothing was written).
    :param bool started: the run had claimed the folder (for a new run: deleted the run
        it replaces and begun writing).
    :param bool resumable: the folder holds a checkpoint of the run to continue from.
    :param int step: the step whose full state the training loop saved.
    :param int total_steps: the run's number of steps.
    :param model: the flow as the loop left it at ``step`` (in eval mode, with the weights
        of its best validation so far, as at the end of training), or ``None``.
    :param list history: the validation records up to ``step``, or ``None``.

    >>> err = RunInterrupted("runs/a", started=True, resumable=True, step=7, total_steps=20)
    >>> isinstance(err, KeyboardInterrupt)
    True
    >>> print(err)
    interrupted after step 7 of 20; the run's state at that step is saved in runs/a/checkpoint.pt: continue it with `pyro-flows fit --resume runs/a`
    >>> print(RunInterrupted("runs/a", started=True, resumable=True))
    interrupted; continue from the last checkpoint with `pyro-flows fit --resume runs/a`
    >>> print(RunInterrupted(None, step=7, total_steps=20, model=object(), history=[]))
    interrupted after step 7 of 20; the flow trained so far is the exception's .model, its validation history .history (in IPython/Jupyter: `import sys; flow = sys.last_value.model`)
    """

    def __init__(
        self,
        run_dir: Optional[str],
        started: bool = False,
        resumable: bool = False,
        step: Optional[int] = None,
        total_steps: Optional[int] = None,
        model=None,
        history: Optional[List[dict]] = None,
    ):
        super().__init__(run_dir)
        self.run_dir, self.step, self.total_steps = run_dir, step, total_steps
        self.started, self.resumable = started or step is not None, resumable or step is not None
        self.model, self.history = model, history

    def __str__(self) -> str:
        # in memory (fit) the flow is all there is: say where it is
        held = (
            "the flow trained so far is the exception's .model, its validation history .history "
            "(in IPython/Jupyter: `import sys; flow = sys.last_value.model`)"
            if self.model is not None and not self.run_dir
            else None
        )
        return _describe(
            "interrupted", self.run_dir, self.step, self.total_steps, self.started, self.resumable, held
        )


def _describe(
    what: str,
    run_dir: Optional[str],
    step: Optional[int],
    total_steps: Optional[int],
    started: bool,
    resumable: bool,
    held: Optional[str] = None,
) -> str:
    """``what`` (how the run stopped) and what its folder holds, with the command to go on
    (without a folder: ``held``, what the caller holds, if anything)."""
    if step is not None:
        at = f"after step {step}" + (f" of {total_steps}" if total_steps else "")
        if not run_dir:
            return f"{what} {at}; {held or 'nothing was written'}"
        checkpoint = os.path.join(run_dir, "checkpoint.pt")
        return (
            f"{what} {at}; the run's state at that step is saved in {checkpoint}: "
            f"continue it with `pyro-flows fit --resume {run_dir}`"
        )
    if not run_dir or not started:
        return f"{what} before the run began" + (f"; {run_dir} is as it was" if run_dir else "")
    if resumable:
        return f"{what}; continue from the last checkpoint with `pyro-flows fit --resume {run_dir}`"
    config = os.path.join(run_dir, "config.toml")
    again = (
        f"`pyro-flows fit --config {config} --out {run_dir} --overwrite`"
        if os.path.exists(config)
        else f"--out {run_dir} --overwrite"
    )
    return (
        f"{what} before the run's first checkpoint (one is written at every evaluation, see --eval-every), "
        f"so there is nothing to resume; start it again with {again}"
    )


def _say(line: str) -> None:
    """``line`` on stderr, from a signal handler: below a progress bar on a terminal, and
    straight to the file descriptor when the signal came while stderr was being written
    (Python refuses a write into a write in progress)."""
    try:
        stream = sys.stderr
        text = ("\n" if stream.isatty() else "") + line + "\n"
        stream.write(text)
        stream.flush()
    except RuntimeError:
        try:
            os.write(2, ("\n" + line + "\n").encode())
        except OSError:
            pass
    except (AttributeError, OSError, ValueError):  # no stderr, or a closed one: nowhere to say it
        pass


class StopSignals:
    """Within the block (in the main thread), SIGTERM and SIGUSR1 stop the run cleanly,
    and so does a first Ctrl-C in the training loop.

    Inside :meth:`deferred` (the training loop) a signal is only recorded in
    :attr:`received`, for the loop to act on at the end of its step (raising what
    :meth:`stopped` gives); elsewhere SIGTERM and SIGUSR1 raise :class:`RunTerminated`
    at once, and Ctrl-C ``KeyboardInterrupt``. Only the first signal counts: a later
    SIGTERM or SIGUSR1 is ignored, a later Ctrl-C raises ``KeyboardInterrupt`` at once.
    On recording a Ctrl-C, rank 0 says on stderr that it finishes step :attr:`step` and
    that a second Ctrl-C stops at once. On leaving the block the previous handlers are
    restored; a signal that was recorded but stopped nothing (it arrived as the run
    ended) is then delivered again, to them.

    :param tuple signals: the signals that stop the run cleanly.
    :param bool interrupt: whether a first Ctrl-C in the loop does too; it is taken over
        only where it raises ``KeyboardInterrupt`` (Python's default handler).
    :param bool writes: whether the stop saves the step (``fit_run``) or, in memory, only
        finishes it (``fit``): what the line answering a Ctrl-C says.

    >>> before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    >>> with StopSignals() as stop:
    ...     signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == stop._handle
    True
    >>> (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    True
    """

    def __init__(self, signals: Tuple[int, ...] = STOP_SIGNALS, interrupt: bool = True, writes: bool = True):
        self.signals = signals
        self.interrupt = interrupt
        self.writes = writes
        #: the first signal received that stops the run (``None``: none yet)
        self.received: Optional[int] = None
        #: the step the loop would finish and save if a signal came now (for the message)
        self.step: Optional[int] = None
        self._deferring = self._closing = False
        self._announce = False
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a stopping signal has arrived."""
        return self.received is not None

    def __enter__(self) -> "StopSignals":
        self.received, self.step, self._previous = None, None, {}
        self._deferring = self._closing = False
        self._announce = process_rank() == 0  # under torchrun one process speaks
        if threading.current_thread() is not threading.main_thread():
            return self  # Python lets only the main thread install handlers
        for signum in self.signals + ((signal.SIGINT,) if self.interrupt else ()):
            previous = signal.getsignal(signum)
            if signum == signal.SIGINT and previous is not signal.default_int_handler:
                continue  # Ctrl-C is ignored, or handled in the process's own way: it stays so
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
        self._deferring = self._closing = True  # from here on a signal is only recorded
        try:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
        finally:
            self._previous = {}
        if exc_type is None and self.received is not None:
            # it stopped nothing: the process's own handler (by default, ending it) takes it
            signal.raise_signal(self.received)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self._closing:  # putting the handlers back: raised, it could leave some out
                if self.received is None:
                    self.received = signum  # delivered again once they are back
                return
            if self.received is not None or not self._deferring:
                # a second Ctrl-C, one while a SIGTERM stops the run, or one outside the loop
                raise KeyboardInterrupt
            self.received = signum
            if self._announce:
                step = f"step {self.step}" if self.step is not None else "this step"
                who, saving = ("pyro-flows fit", " and saving it") if self.writes else ("fit", "")
                _say(f"{who}: interrupted; finishing {step}{saving}; press Ctrl-C again to stop at once")
            return
        if self.received is not None:
            return  # stopping already
        self.received = signum
        if not self._deferring:
            raise RunTerminated(signum)

    def stopped(
        self,
        run_dir: Optional[str],
        step: int,
        total_steps: Optional[int] = None,
        model=None,
        history: Optional[List[dict]] = None,
    ) -> Union[RunInterrupted, RunTerminated]:
        """What the loop raises once it has saved ``step`` on a recorded signal:
        :class:`RunInterrupted` for Ctrl-C (holding ``model`` and ``history``), else
        :class:`RunTerminated` (with ``elsewhere`` when this process received none:
        another process of the run did)."""
        if self.received == signal.SIGINT:
            return RunInterrupted(run_dir, step=step, total_steps=total_steps, model=model, history=history)
        signum = self.received if self.received is not None else STOP_SIGNALS[0]
        return RunTerminated(signum, run_dir, step, total_steps, elsewhere=self.received is None)

    @contextlib.contextmanager
    def deferred(self):
        """Within the block a signal is recorded, for the caller to stop at a point of
        its choosing; a signal that arrived before it (already raised) is not recorded."""
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False
