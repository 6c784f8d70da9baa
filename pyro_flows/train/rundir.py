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

A folder holds a run when its ``config.toml`` starts with :data:`RUN_CONFIG_HEADER`, the
line every run writes first; only then are files named as a run's (:data:`RUN_FILES`)
taken for the run's own and deleted by ``--overwrite``. Files with those names in any
other folder belong to the user (``fit`` refuses such a folder, see
:func:`foreign_files`).

``sample`` writes its ``.npy`` through a ``.tmp-*.npy`` file that it holds an
operating-system lock on while writing (:func:`locked_temporary`), so a temporary left
by a killed ``sample`` (unlocked) is told apart from one being written (locked) and
removed by :func:`remove_stale_temporaries`.
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
    "FIT_FILES",
    "RUN_CONFIG_HEADER",
    "is_run_folder",
    "foreign_files",
    "run_files",
    "locked_temporary",
    "remove_run_files",
    "remove_stale_temporaries",
    "atomic_write",
    "atomic_write_text",
    "LOCK_NAME",
]

LOCK_NAME = ".lock"
#: the first line of the ``config.toml`` a run writes (first of its files): what marks a run folder
RUN_CONFIG_HEADER = "# pyro-flows run configuration"
#: the files ``fit`` writes into a run folder
FIT_FILES = (
    "config.toml",
    "metrics.jsonl",
    "results.json",
    "checkpoint.pt",
    "best.pt",
    "nll_curves.png",
    "samples.png",
    "density.png",
)
#: those and the files ``sample`` writes there by default
RUN_FILES = FIT_FILES + ("samples.npy", "samples_grid.png")
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

    @staticmethod
    def holder(run_dir: str) -> Optional[str]:
        """The process id (as written in the lock file) of a process that holds the lock
        of ``run_dir`` now, else ``None``; creates nothing."""
        path = os.path.join(run_dir, LOCK_NAME)
        if fcntl is None or not os.path.isfile(path):
            return None
        try:
            fh = open(path)
        except OSError:
            return None
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return fh.read().strip() or "unknown"
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fh, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
    except OSError:
        return False


def is_run_folder(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a run: a ``config.toml`` that a run wrote (it starts with
    :data:`RUN_CONFIG_HEADER`)."""
    try:
        with open(os.path.join(run_dir, "config.toml"), encoding="utf-8", errors="replace") as fh:
            return fh.readline().startswith(RUN_CONFIG_HEADER)
    except OSError:
        return False


def run_files(run_dir: str) -> List[str]:
    """The files named as a run's (see :data:`RUN_FILES`) that ``run_dir`` holds."""
    if not os.path.isdir(run_dir):
        return []
    return [name for name in RUN_FILES if os.path.exists(os.path.join(run_dir, name))]


def foreign_files(run_dir: str) -> List[str]:
    """The files named as a run's in a folder that holds no run (:func:`is_run_folder`):
    the user's, which a run in the folder would overwrite or take for its own."""
    return [] if is_run_folder(run_dir) else run_files(run_dir)


def remove_run_files(run_dir: str, keep=()) -> List[str]:
    """Delete the files of the run in ``run_dir`` and its stale temporaries; other files
    stay, and so do the paths in ``keep`` (the new run's inputs, such as its data file).
    A folder that holds no run (:func:`is_run_folder`) is left as it is."""
    if not is_run_folder(run_dir):
        return []
    kept = {os.path.realpath(path) for path in keep}
    removed = []
    # config.toml last: until it goes, what is left is still recognised as a run
    for name in sorted(run_files(run_dir), key=lambda n: n == "config.toml"):
        path = os.path.join(run_dir, name)
        if os.path.realpath(path) in kept:
            continue
        os.unlink(path)
        removed.append(name)
    return removed + remove_stale_temporaries(run_dir)


def remove_stale_temporaries(run_dir: str, suffixes=(".pt", ".txt", ".npy")) -> List[str]:
    """Delete the ``.tmp-*`` files a killed write left behind (those ending in one of
    ``suffixes``): checkpoints and metrics, and ``sample``'s ``.npy``; a temporary that a
    live process holds locked (a ``sample`` writing into the folder, see
    :func:`locked_temporary`) stays.

    Call it with ``.pt`` or ``.txt`` only while holding the folder's :class:`RunLock`:
    then no ``fit`` can be writing one of them.
    """
    removed = []
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name.startswith(TEMP_PREFIX) and name.endswith(suffixes) and os.path.isfile(path):
            if _remove_unless_locked(path):
                removed.append(name)
    return removed


def _remove_unless_locked(path: str) -> bool:
    """Delete ``path`` unless a process holds a lock on it (see :func:`locked_temporary`)."""
    if fcntl is None:  # no locks to tell a live writer by: only the writes of fit's own kind
        if path.endswith(".npy"):
            return False
        os.unlink(path)
        return True
    try:
        fh = open(path, "rb")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # being written
        try:
            os.unlink(path)  # while holding the lock: a writer that locks it next starts over
        except OSError:
            return False
    return True


def locked_temporary(folder: str, suffix: str):
    """A new ``.tmp-*`` file in ``folder`` and an open handle that holds an exclusive lock
    on it (released when the handle is closed or the process ends, however it ends), so
    :func:`remove_stale_temporaries` leaves it alone while it is written and removes it
    once its writer is gone. Returns ``(handle, path)``."""
    import tempfile

    while True:
        fd, path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=folder)
        fh = os.fdopen(fd, "r+b")
        if fcntl is None:
            return fh, path
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # waits out a cleaner that is deleting it
        if _same_file(fh, path):
            return fh, path
        fh.close()  # deleted by a cleaner between its creation and the lock: take another


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
