"""A run folder while a process writes it: the lock, the files that make a run, cleaning up.

One process at a time writes a run folder. :class:`RunLock` holds an operating-system
lock (``fcntl.flock``) on ``DIR/.lock`` for as long as ``fit`` runs; the operating
system releases it when the process ends, however it ends (``kill -9`` included), so a
crashed run never leaves a folder locked. A second ``fit`` on the same folder is
refused with the process id that holds it.

The lock file exists while the run holds it and is deleted (still locked) when the run
ends; one left behind by a killed process is simply locked again. A process that locks
a file which was deleted meanwhile (it opened it just before the holder finished) notices
that the name now points elsewhere and starts over, so two processes never hold locks
on two different files of the same name.
"""

from __future__ import annotations

import os
from typing import IO, Callable, List, Optional

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected there
    fcntl = None

__all__ = [
    "RunLock",
    "RunLockedError",
    "RUN_FILES",
    "run_files",
    "remove_run_files",
    "remove_stale_temporaries",
    "atomic_write",
    "atomic_write_text",
    "LOCK_NAME",
]

LOCK_NAME = ".lock"
#: the files ``fit`` writes into a run folder, and those ``sample`` writes there by default
RUN_FILES = (
    "config.toml",
    "metrics.jsonl",
    "results.json",
    "checkpoint.pt",
    "best.pt",
    "nll_curves.png",
    "samples.png",
    "density.png",
    "samples.npy",
    "samples_grid.png",
)
#: prefix of the temporary files that checkpoints and metrics are written to before the rename
TEMP_PREFIX = ".tmp-"


class RunLockedError(ValueError):
    """Another process is writing the run folder."""


class RunLock:
    """Exclusive lock of a run folder, as a context manager.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with RunLock(folder):
    ...     RunLock(folder).acquire()
    Traceback (most recent call last):
    ...
    pyro_flows.train.rundir.RunLockedError: run folder ... is in use by another pyro-flows process (pid ...); wait for it to finish, or write to another --out
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self._fh = None

    def acquire(self) -> "RunLock":
        for _ in range(100):
            fh = open(self.path, "a+")
            if fcntl is None:
                break
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                fh.close()
                raise RunLockedError(
                    f"run folder {self.run_dir} is in use by another pyro-flows process (pid {holder}); "
                    "wait for it to finish, or write to another --out"
                ) from None
            if _same_file(fh, self.path):
                break
            fh.close()  # the holder deleted this file as we locked it: lock the current one
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            # Delete while still holding the lock, then close (which releases it).
            try:
                if _same_file(self._fh, self.path):
                    os.unlink(self.path)
            except OSError:
                pass
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fh, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
    except OSError:
        return False


def run_files(run_dir: str) -> List[str]:
    """The files of a run (see :data:`RUN_FILES`) that ``run_dir`` holds."""
    if not os.path.isdir(run_dir):
        return []
    return [name for name in RUN_FILES if os.path.exists(os.path.join(run_dir, name))]


def remove_run_files(run_dir: str) -> List[str]:
    """Delete the run files of ``run_dir`` and every temporary file; other files stay."""
    removed = run_files(run_dir)
    for name in removed:
        os.unlink(os.path.join(run_dir, name))
    return removed + remove_stale_temporaries(run_dir, suffixes=("",))


def remove_stale_temporaries(run_dir: str, suffixes=(".pt", ".txt")) -> List[str]:
    """Delete the ``.tmp-*`` files a killed checkpoint or metrics write left behind
    (those ending in one of ``suffixes``; ``sample``'s ``.npy`` temporaries are left to
    a ``sample`` that may be writing into the folder at the same time).

    Call it only while holding the folder's :class:`RunLock`: then no ``fit`` can be
    writing one of them.
    """
    removed = []
    for name in os.listdir(run_dir):
        if (
            name.startswith(TEMP_PREFIX)
            and name.endswith(suffixes)
            and os.path.isfile(os.path.join(run_dir, name))
        ):
            os.unlink(os.path.join(run_dir, name))
            removed.append(name)
    return removed


def atomic_write(
    path: str,
    write: Callable[[IO], None],
    binary: bool = False,
    suffix: str = ".txt",
    tmp_dir: Optional[str] = None,
) -> None:
    """Call ``write(file)`` on a temporary file beside ``path`` (or in ``tmp_dir``), flush it
    to disk and :func:`os.replace` it onto ``path``, so a crash leaves either the old file
    or the new one, never a truncated one; a failed write removes the temporary. The
    temporary is named ``.tmp-*`` + ``suffix``, which :func:`remove_stale_temporaries`
    recognises after a crash."""
    import tempfile

    folder = tmp_dir or os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str, tmp_dir: Optional[str] = None) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(text), tmp_dir=tmp_dir)
