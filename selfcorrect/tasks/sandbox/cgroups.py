"""Per-run cgroups (memory + pids) for the candidate: where they can be made (v1 or a delegated v2
hierarchy), their limits, and their removal in a background thread once a run is over."""

from __future__ import annotations

import atexit
import functools
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import SandboxLimits


def _own_cgroups() -> dict[str, str]:
    """controller (or "" for the v2 unified hierarchy) -> this process's cgroup path."""
    found = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for controller in controllers.split(",") if controllers else [""]:
                    found[controller] = path
    except (OSError, ValueError):
        pass
    return found


def _try_mkdir(base: str) -> bool:
    probe = os.path.join(base, f"selfcorrect-probe-{os.getpid()}-{os.urandom(3).hex()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def _cgroup_bases() -> tuple[tuple[tuple[str, str], ...], str]:
    """((kind, base directory), ...) where per-run cgroups can be made, and why not when empty.

    kind is ``v1-memory``, ``v1-pids`` or ``v2``.
    """
    own = _own_cgroups()
    root = "/sys/fs/cgroup"
    bases: list[tuple[str, str]] = []
    if "memory" in own and os.path.isdir(os.path.join(root, "memory")):
        for controller in ("memory", "pids"):
            base = os.path.normpath(os.path.join(root, controller) + own.get(controller, "/"))
            if controller in own and os.path.isdir(base) and _try_mkdir(base):
                bases.append((f"v1-{controller}", base))
        if bases and bases[0][0] == "v1-memory":
            return tuple(bases), ""
        return (), "cgroup v1: cannot create a memory cgroup under " + os.path.join(root, "memory")
    if "" in own and os.path.isfile(os.path.join(root, "cgroup.controllers")):
        base = os.path.normpath(root + own[""])
        try:
            enabled = Path(base, "cgroup.subtree_control").read_text().split()
        except OSError:
            enabled = []
        if "memory" not in enabled:
            try:  # refused (EBUSY) when our own cgroup holds processes: the v2 no-internal-process rule
                Path(base, "cgroup.subtree_control").write_text("+memory +pids")
                enabled = Path(base, "cgroup.subtree_control").read_text().split()
            except OSError:
                pass
        if "memory" in enabled and _try_mkdir(base):
            return (("v2", base),), ""
        return (), (f"cgroup v2: the memory controller is not delegated to {base} (set up a delegated "
                    "cgroup, e.g. systemd-run --user -p Delegate=yes)")
    return (), "no cgroup hierarchy is mounted at /sys/fs/cgroup"


def _make_cgroups(plan: Sequence[Sequence]) -> list[str]:
    """This run's cgroup directories (one per hierarchy of ``plan``), limits written; the candidate
    joins them.  Made and removed here, not in the judge: a judge that dies (its CPU limit) must not
    leak them.
    """
    made: list[str] = []
    tag = f"selfcorrect-{os.getpid()}-{os.urandom(6).hex()}"
    try:
        for base, values in plan:
            directory = os.path.join(base, tag)
            os.mkdir(directory)
            made.append(directory)
            for name, value in values:
                Path(directory, name).write_text(str(value))
    except OSError:
        _cleaner.remove(made)
        raise
    return made


class _CgroupCleaner:
    """Removes finished runs' cgroups in one background thread (off the caller's critical path).

    A run's processes are SIGKILLed first (a setsid() child included, at any isolation level);
    removal is retried while a dying PID namespace drains.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[str] = []
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def remove(self, directories: Sequence[str]) -> None:
        if not directories:
            return
        with self.lock:
            self.pending.extend(directories)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="sandbox-cgroup-cleaner", daemon=True)
                self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait(timeout=1.0)
            self.wake.clear()
            self.drain(seconds=0.05)

    def drain(self, seconds: float) -> None:
        """One attempt at every pending directory; a directory stays pending until it is gone, so
        the exit-time drain also sees the ones this thread is working on."""
        with self.lock:
            todo = list(dict.fromkeys(self.pending))
        busy = False
        for directory in todo:
            if _remove_cgroup(directory, seconds):
                with self.lock:
                    self.pending = [d for d in self.pending if d != directory]
            else:
                busy = True
        if busy:
            self.wake.set()


def _remove_cgroup(directory: str, seconds: float) -> bool:
    """Kill what is still in ``directory`` and remove it; False if it is still busy after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            pids = [int(x) for x in Path(directory, "cgroup.procs").read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


_cleaner = _CgroupCleaner()


@atexit.register
def _drain_cgroups() -> None:
    _cleaner.drain(seconds=2.0)


@functools.lru_cache(maxsize=8)
def _v2_pids_enabled(base: str) -> bool:
    return "pids" in Path(base, "cgroup.subtree_control").read_text().split()


def _cgroup_limits(limits: SandboxLimits) -> list[list]:
    """[[base directory, [[file, value], ...]], ...]: the cgroups a run gets and their limits."""
    if not limits.memory_cgroup:
        return []
    memory = limits.memory_mb << 20
    plan = []
    for kind, base in _cgroup_bases()[0]:
        if kind == "v1-memory":
            values = [["memory.limit_in_bytes", memory]]
            if os.path.exists(os.path.join(base, "memory.memsw.limit_in_bytes")):
                values.append(["memory.memsw.limit_in_bytes", memory])
        elif kind == "v1-pids":
            values = [["pids.max", limits.max_processes]]
        else:
            values = [["memory.max", memory], ["memory.swap.max", 0]]
            if _v2_pids_enabled(base):
                values.append(["pids.max", limits.max_processes])
        plan.append([base, values])
    return plan
