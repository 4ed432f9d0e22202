"""The run directory: one writer at a time, fresh starts that never mix runs, and output checks up front.

* :class:`RunLock` -- an OS advisory lock (``flock``) on ``RUN/.lock``, held for
  the whole run by the process that writes the run (the main process of a
  multi-process job).  A second writer -- another job, a second ``--resume`` --
  is refused with one line naming the holder's PID and host.  The kernel drops
  the lock when its process dies, so a dead job's lock file is simply taken
  over.  (``flock`` is advisory and local: on a network file system that does
  not support it, the lock protects only processes on the same machine.)
* :func:`clear_run` -- ``--overwrite``: the old run's files leave the directory
  before anything new is written (moved aside atomically, then deleted).
* :func:`check_output_dir` -- an ``--out`` that is a file, or lies under
  something unwritable, is one clear line before any model is loaded.
* :func:`claim_run_dir` -- all of the above for a new run or a resume, decided
  on the main process and shared with the others.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

from .errors import ConfigError

LOCK_FILE = ".lock"
TRASH_PREFIX = ".overwritten-"


def check_output_dir(path: Path, what: str = "--out") -> None:
    """Refuse an output directory that cannot be used, before any work starts (nothing is created)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path}: exists and is not a directory")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {path}: cannot be created, {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot write in {probe} (permission denied)")
    try:  # access() says yes to root everywhere (/proc, read-only mounts): make and remove a directory
        os.rmdir(tempfile.mkdtemp(prefix=".selfcorrect-check-", dir=probe))
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot write in {probe} ({exc.strerror or exc})") from None


class RunLock:
    """``flock`` on ``RUN/.lock`` for the life of a run (see the module docstring)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"run directory {self.run_dir}: cannot lock {self.path} ({error})") from None
            raise ConfigError(f"run directory {self.run_dir} is in use by {self.holder()} "
                              f"(lock {self.path}); wait for that run to end, or use another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> str:
        """"PID <pid> on <host>" as the lock's holder wrote it."""
        try:
            pid, host = self.path.read_text().split()[:2]
            return f"PID {pid} on {host}"
        except (OSError, ValueError):
            return "another process"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self, _close=os.close) -> None:
        # ``_close`` is bound at definition: at interpreter exit ``__del__`` may run after ``os`` is gone.
        if self._fd is not None:
            _close(self._fd)                # closing the descriptor drops the flock
            self._fd = None

    def __del__(self):
        self.release()


def clear_run(run_dir: Path) -> None:
    """Remove everything of an earlier run from ``run_dir`` except the lock we hold.

    Each entry is first renamed into one trash folder (atomic per entry, so no half-deleted run is
    left looking like a run), then the folder is deleted; leftovers of an interrupted clear go too.
    """
    trash = run_dir / f"{TRASH_PREFIX}{uuid.uuid4().hex[:8]}"
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_FILE]
    if not entries:
        return
    trash.mkdir()
    for entry in entries:
        if entry.name.startswith(TRASH_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.rename(trash / entry.name)
    shutil.rmtree(trash, ignore_errors=True)


def has_run_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds anything besides a lock file (an earlier run, or someone's files).

    A ``config.yaml`` alone is a start that failed before its first step wrote anything (a logger that
    could not start, say): there is nothing to resume or protect, so a new run may take the directory."""
    if not run_dir.is_dir():
        return False
    return bool({p.name for p in run_dir.iterdir()} - {LOCK_FILE, "config.yaml"})


def write_config(run_dir: Path, config) -> None:
    """``run_dir/config.yaml`` (atomically)."""
    import yaml

    from .config import to_dict

    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    tmp.replace(run_dir / "config.yaml")


def claim_run_dir(run_dir: Path, dist, overwrite: bool, fresh: bool) -> RunLock | None:
    """Lock ``run_dir`` on the main process of ``dist`` (a new run: create it; refuse an earlier run's files
    unless ``overwrite``, which removes them).  Every process gets the main process's verdict."""

    def claim() -> RunLock:
        lock = None
        try:
            if fresh:
                run_dir.mkdir(parents=True, exist_ok=True)
            lock = RunLock(run_dir).acquire()
            if fresh and has_run_files(run_dir):
                if not overwrite:
                    raise ConfigError(f"run directory {run_dir} is not empty: use --resume {run_dir} to continue it, "
                                      "--overwrite true to replace it, or another --out")
                clear_run(run_dir)
            return lock
        except (ConfigError, OSError) as exc:
            if lock is not None:
                lock.release()
            raise exc if isinstance(exc, ConfigError) else ConfigError(f"run directory {run_dir}: {exc}") from None

    return dist.on_main(claim)
