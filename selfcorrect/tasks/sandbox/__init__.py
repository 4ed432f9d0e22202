"""Run model-written (hostile) programs against trusted tests: two processes per program.

The **candidate** process runs only the model's program, in a fresh
interpreter inside its own mount / PID / network / IPC / UTS namespaces with a
root that holds the interpreter and its standard library and nothing else (no
site-packages, no datasets, no project tree), resource limits, a per-run
memory + pids cgroup where the machine allows one, as ``nobody`` with no new
privileges.  The **judge** process runs only trusted code -- the dataset's
tests and the helpers its prompt defines -- and calls the program's functions
through proxies: arguments and results cross as plain data (``wire.py``), so
nothing the program prints, returns, raises or exits with can make a test
pass, and the tests never enter the candidate.  The verdict is the judge's.

Files: ``wire.py`` (the plain-data codec), ``candidate.py`` (the harness in
the candidate), ``confine.py`` (the candidate's isolation), ``judge.py`` (zygote, judge),
``view.py`` (the candidate's filesystem view), ``cgroups.py`` (per-run
cgroups), this module (the parent side: limits, the zygote client and the
public functions).  The threat model -- what is guaranteed at
each isolation level and what no verifier can stop -- is in
``docs/sandbox.md``.
"""

from __future__ import annotations

import ast
import atexit
import builtins
import functools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...errors import ConfigError
from . import wire
from .cgroups import _cgroup_bases, _cgroup_limits, _cleaner, _make_cgroups
from .view import _filesystem_view

__all__ = ["SandboxLimits", "SandboxResult", "run_tests", "run_many", "sandbox_isolation", "sandbox_info",
           "WEAKER_LEVEL_WARNING", "ISOLATION_ENV"]

_HERE = Path(__file__).resolve().parent
_ISOLATION_LEVELS = ("full", "net", "basic")
_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_BACKSTOP_S = 5.0
ISOLATION_ENV = "SELFCORRECT_SANDBOX_ISOLATION"
"""Environment variable: the default isolation level (an explicit opt-in to a weaker one)."""

WEAKER_LEVEL_WARNING = {
    "net": ("no filesystem view (the program can read whatever `nobody` -- or, as non-root, you -- can read, "
            "installed datasets with their canonical solutions included), no PID namespace (a setsid() child "
            "outlives the run unless a cgroup is available), no IPC namespace (SysV IPC objects persist)"),
    "basic": ("no filesystem view (the program can read installed datasets with their canonical solutions and "
              "anything else this user can read, and write wherever this user can), no network isolation, no "
              "PID namespace (setsid() children can outlive the run unless a cgroup is available), no IPC "
              "namespace (SysV IPC objects persist)"),
}
"""What each weaker isolation level gives up against ``full`` (used in warnings and docs)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits and policy for one sandboxed program."""

    timeout_s: float = 10.0
    """Wall-clock limit for one run: interpreter start-up, the program and all calls."""
    call_timeout_s: float | None = None
    """Limit for one call of the program's function; ``None`` means ``timeout_s``."""
    cpu_s: float | None = None
    """CPU-time limit of the candidate (``RLIMIT_CPU``); ``None`` means ``timeout_s``."""
    memory_mb: int = 1024
    """Memory of the candidate: ``RLIMIT_AS`` per process and, where a cgroup is available,
    all its processes together with their tmpfs, ``memfd`` and shared-memory pages."""
    max_processes: int = 16
    """Processes and threads: ``pids.max`` of the run's cgroup where available, and
    ``RLIMIT_NPROC`` (counted per user across all sandboxes running at once)."""
    max_file_mb: int = 16
    """Largest file the program may write (``RLIMIT_FSIZE``); stdout and stderr included."""
    max_open_files: int = 64
    """``RLIMIT_NOFILE``."""
    disk_mb: int = 64
    """Size of the program's private scratch directory (``full`` isolation)."""
    max_message_mb: float = 8.0
    """Largest value (encoded) one call may return; a larger one fails the run."""
    isolation: str = field(default_factory=lambda: os.environ.get(ISOLATION_ENV, "full"))
    """``"full"``: two processes, namespaces, the filesystem view (needs root).  Weaker levels
    must be asked for, here or for a whole job with ``SELFCORRECT_SANDBOX_ISOLATION``:
    ``"net"`` (network namespace only), ``"basic"`` (rlimits, the user change and the
    judge/candidate split only), ``"auto"`` (the strongest that works here).
    ``docs/sandbox.md`` lists what each level gives up."""
    memory_cgroup: bool = True
    """Put each run in its own memory + pids cgroup where the machine allows it (v1 or v2)."""
    audit_hook: bool = True
    """Defence in depth inside the candidate (no subprocesses, sockets, ctypes, subinterpreters,
    tracing); the OS isolation holds without it."""
    python: str | None = None
    """Interpreter for the judge and the candidate; ``None`` means the base interpreter of
    ``sys.executable`` (a virtual environment's site-packages are never visible)."""
    uid: int = 65534
    """User the program runs as when the parent is root (``nobody``)."""
    gid: int = 65534
    """Group the program runs as when the parent is root (``nogroup``)."""


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run."""

    passed: bool
    """True only if the judge ran every test to the end against the program's answers."""
    status: str
    """``passed``; ``failed`` (a test failed); ``error`` (the program raised while being defined);
    ``timeout``; ``killed`` (the program died of a signal: memory, processes); ``exited`` (it
    exited while being tested); ``boundary`` (a value could not cross as plain data)."""
    duration_s: float
    """Wall-clock time of the run."""
    stdout_tail: str
    """Last few KiB of the program's stdout."""
    stderr_tail: str
    """Last few KiB of the program's stderr."""
    reason: str = ""
    """Why it did not pass: the first failing assert (``tests line N: ...``), the timeout,
    the value that could not cross, ..."""


class _SetupFailed(Exception):
    """The requested isolation cannot be set up here."""


def _check_limits(limits: SandboxLimits) -> None:
    if limits.isolation not in ("auto",) + _ISOLATION_LEVELS:
        raise ConfigError(
            f"SandboxLimits.isolation must be one of full, net, basic, auto; got {limits.isolation!r}")
    for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb", "max_open_files", "disk_mb",
                 "max_message_mb"):
        value = getattr(limits, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"SandboxLimits.{name} must be positive; got {value!r}")
    for name in ("cpu_s", "call_timeout_s"):
        value = getattr(limits, name)
        if value is not None and not value > 0:
            raise ConfigError(f"SandboxLimits.{name} must be positive; got {value!r}")


def _is_root() -> bool:
    return os.geteuid() == 0


def _base_interpreter(limits: SandboxLimits) -> str:
    python = limits.python or getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(python)


# --------------------------------------------------------------------------- the zygote
def _source(*names: str) -> str:
    return "\n".join((_HERE / name).read_text(encoding="utf-8") for name in names)


_CANDIDATE_SOURCE = _source("wire.py", "candidate.py")
_JUDGE_SOURCE = _source("wire.py", "confine.py", "judge.py")


class _Zygote:
    """One trusted zygote process per (parent process, interpreter, view); it forks the judges."""

    def __init__(self, python: str, view: tuple) -> None:
        self.control, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        settings = {"python": python, "candidate_source": _CANDIDATE_SOURCE, "view": [list(e) for e in view],
                    "control_fd": child.fileno()}
        self.proc = subprocess.Popen(
            [python, "-I", "-S", "-c", _JUDGE_SOURCE], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(child.fileno(),), start_new_session=True, cwd="/",
            env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
        )
        child.close()
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(settings) + "\n").encode())
        self.proc.stdin.close()
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, job: dict, timeout_s: float) -> dict:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.lock:
                socket.send_fds(self.control, [b"j"], [theirs.fileno()])
            theirs.close()
            mine.settimeout(timeout_s)            # before sending: a large job must not block past the limit
            mine.sendall(wire.pack_json(job))
            return wire.read_json_frame(mine)
        finally:
            mine.close()
            theirs.close()

    def close(self) -> None:
        self.control.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_zygotes: dict[tuple, _Zygote] = {}
_zygote_lock = threading.Lock()


def _zygote(python: str) -> _Zygote:
    view = _filesystem_view(python)
    key = (os.getpid(), python, view)
    with _zygote_lock:
        zygote = _zygotes.get(key)
        if zygote is None or not zygote.alive():
            zygote = _zygotes[key] = _Zygote(python, view)
        return zygote


@atexit.register
def _close_zygotes() -> None:
    for key, zygote in list(_zygotes.items()):
        if key[0] == os.getpid():
            zygote.close()
    _zygotes.clear()


def _verdict(python: str, job: dict, backstop_s: float) -> dict:
    """The judge's verdict on ``job``; a judge that dies or hangs is the program's failure.

    A hostile program can make its judge slow (a hash-flooded set to decode): the
    judge's own CPU limit then kills it, which must fail the program, never raise.
    Only a dead *zygote* (killed from outside) is retried, once, on a fresh one.
    """
    def failed(status: str, reason: str) -> dict:
        return {"status": status, "reason": reason, "duration_s": backstop_s, "stdout": "", "stderr": ""}

    for attempt in range(2):
        zygote = _zygote(python)
        try:
            return zygote.run(job, backstop_s)
        except (socket.timeout, TimeoutError):
            return failed("timeout", "the judge gave no verdict within the run's limit")
        except (EOFError, OSError, wire.BoundaryError) as exc:
            if zygote.alive() or attempt:
                if not zygote.alive():
                    raise _SetupFailed(f"the sandbox zygote died twice: {exc!r}") from exc
                return failed("killed", "the judge died before its verdict (its CPU limit)")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- one run
def _unshare_flags(level: str) -> int:
    if level == "full":
        if not _is_root():
            raise _SetupFailed("isolation 'full' needs root (mount, PID and IPC namespaces)")
        return _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    if level == "net":
        return _CLONE_NEWNET if _is_root() else _CLONE_NEWUSER | _CLONE_NEWNET
    return 0


_NPROC_WITH_PIDS_CGROUP = 1 << 15


def _rlimits(limits: SandboxLimits, pids_cgroup: bool) -> dict:
    cpu = math.ceil(limits.cpu_s if limits.cpu_s is not None else limits.timeout_s)
    mib = 1 << 20
    # RLIMIT_NPROC counts every process of the sandbox user across all runs at once: one program
    # holding threads would make *other* runs' exec fail.  With a per-run pids cgroup (pids.max) it
    # is only a loose ceiling.
    nproc = _NPROC_WITH_PIDS_CGROUP if pids_cgroup else limits.max_processes
    return {
        "RLIMIT_CPU": [cpu, cpu + 1],
        "RLIMIT_AS": [limits.memory_mb * mib] * 2,
        "RLIMIT_FSIZE": [limits.max_file_mb * mib] * 2,
        "RLIMIT_NOFILE": [limits.max_open_files] * 2,
        "RLIMIT_NPROC": [nproc] * 2,
        "RLIMIT_CORE": [0, 0],
    }


_BUILTIN_NAMES = frozenset(dir(builtins))


@functools.lru_cache(maxsize=4096)
def _proxied_names(context: str, tests: str, entry_point: str | None) -> tuple[str, ...]:
    """Names the judge asks the program for: the entry point, and the free names of the tests.

    A name the trusted code binds anywhere (a helper of the prompt, an import, a
    variable) or a builtin is never taken from the program, so a program cannot
    shadow ``abs`` or the prompt's ``poly`` in the tests' namespace.
    """
    loaded, bound = set(), set()
    for source in (context, tests):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                bound.update(node.names)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
    names = sorted(loaded - bound - _BUILTIN_NAMES)
    return tuple(([entry_point] if entry_point else []) + [n for n in names if n != entry_point])


def _run_once(code: str, tests: str, entry_point: str | None, context: str, limits: SandboxLimits,
              level: str) -> SandboxResult:
    python = _base_interpreter(limits)
    as_root = _is_root()
    flags = _unshare_flags(level)
    max_bytes = int(limits.max_message_mb * (1 << 20))
    if len(code) + len(tests) + len(context) > max_bytes:
        return SandboxResult(passed=False, status="boundary", duration_s=0.0, stdout_tail="", stderr_tail="",
                             reason=f"the program and its tests are larger than max_message_mb "
                                    f"({limits.max_message_mb:g} MiB)")
    plan = _cgroup_limits(limits)
    cgroups = _make_cgroups(plan)
    # Named after this process, like the cgroups: a host check can tell its own runs from another program's.
    scratch = tempfile.mkdtemp(prefix=f"selfcorrect-sandbox-{os.getpid()}-")
    try:
        if as_root:
            os.chown(scratch, limits.uid, limits.gid)
        job = {
            "code": code, "tests": tests, "context": context, "entry_point": entry_point,
            "names": list(_proxied_names(context, tests, entry_point)), "audit": limits.audit_hook,
            "timeout_s": float(limits.timeout_s),
            "call_timeout_s": float(limits.call_timeout_s or limits.timeout_s),
            "max_bytes": max_bytes,
            "uid": limits.uid if as_root else None, "gid": limits.gid if as_root else None,
            "rlimits": _rlimits(limits, pids_cgroup=any(name == "pids.max" for _, values in plan
                                                        for name, _ in values)),
            "disk_mb": limits.disk_mb, "memory_mb": limits.memory_mb,
            "unshare": flags, "root": scratch, "workdir": scratch, "cgroups": cgroups, "seccomp": True,
        }
        verdict = _verdict(python, job, limits.timeout_s + _BACKSTOP_S)
    finally:
        _cleaner.remove(cgroups)
        shutil.rmtree(scratch, ignore_errors=True)
    if verdict["status"] == "setup":
        raise _SetupFailed(str(verdict.get("reason")))
    return SandboxResult(
        passed=verdict["status"] == "passed", status=str(verdict["status"]),
        duration_s=float(verdict.get("duration_s", 0.0)), stdout_tail=str(verdict.get("stdout", "")),
        stderr_tail=str(verdict.get("stderr", "")), reason=str(verdict.get("reason", "")),
    )


# --------------------------------------------------------------------------- isolation levels
_PROBE_CODE = "import json\ndef f(x):\n    return json.loads(x)\n"
_PROBE_TESTS = "assert f('[1, 2.5]') == [1, 2.5]\n"
_isolation_cache: dict[tuple, str] = {}
_isolation_lock = threading.Lock()


def _resolve_isolation(limits: SandboxLimits) -> str:
    """The level runs with ``limits`` get here; probed once per (settings, interpreter) and cached."""
    python = _base_interpreter(limits)
    key = (limits.isolation, python, limits.uid, limits.gid, os.geteuid(), limits.memory_cgroup)
    with _isolation_lock:
        if key in _isolation_cache:
            return _isolation_cache[key]
        levels = _ISOLATION_LEVELS if limits.isolation == "auto" else (limits.isolation,)
        probe_limits = SandboxLimits(**{**asdict(limits), "timeout_s": max(30.0, limits.timeout_s)})
        reasons = []
        for level in levels:
            try:
                result = _run_once(_PROBE_CODE, _PROBE_TESTS, None, "", probe_limits, level)
            except _SetupFailed as exc:
                reasons.append(f"{level}: {exc}")
                continue
            if result.passed:
                _isolation_cache[key] = level
                return level
            reasons.append(f"{level}: {result.status}: {result.reason} {result.stderr_tail.strip()[-300:]}")
        hint = ""
        if limits.isolation == "full":
            hint = (" Ask for a weaker level explicitly (SandboxLimits(isolation='net' or 'basic'), or the "
                    "code task option -o isolation=basic); docs/sandbox.md lists what each one gives up.")
        elif _is_root():
            hint = (f" As root the program runs as uid {limits.uid}; without a filesystem view it must be able "
                    "to read the interpreter's standard library: set SandboxLimits(python=...) to a system "
                    "interpreter (e.g. /usr/bin/python3) if yours lives under /root.")
        raise ConfigError("the code sandbox does not work here (" + "; ".join(reasons) + ")." + hint)


def sandbox_isolation(limits: SandboxLimits | None = None) -> str:
    """The isolation level (``full``, ``net`` or ``basic``) runs with ``limits`` get here.

    Probes on first use; raises :class:`ConfigError` when the requested level does not work.
    """
    limits = limits or SandboxLimits()
    _check_limits(limits)
    return _resolve_isolation(limits)


def sandbox_info(limits: SandboxLimits | None = None) -> dict:
    """The level, whether runs get a memory cgroup (and why not), and the candidate's view."""
    limits = limits or SandboxLimits()
    level = sandbox_isolation(limits)
    bases, why_not = _cgroup_bases()
    return {
        "isolation": level,
        "gives_up": WEAKER_LEVEL_WARNING.get(level, ""),
        "cgroup": [base for _, base in bases] if limits.memory_cgroup else [],
        "cgroup_unavailable": "" if bases and limits.memory_cgroup else (why_not or "turned off"),
        "view": [list(e) for e in _filesystem_view(_base_interpreter(limits))] if level == "full" else [],
    }


def run_tests(
    code: str,
    tests: str,
    entry_point: str | None = None,
    limits: SandboxLimits | None = None,
    context: str = "",
) -> SandboxResult:
    """Run the program ``code`` in the candidate process and ``tests`` in the judge.

    ``context`` is trusted code the judge runs first (HumanEval's prompt with its
    helpers, MBPP's imports and set-up code); names it binds are never taken from
    the program.  The program's functions that the tests name (and
    ``entry_point``) become proxies in the judge.  When ``entry_point`` is given
    and the tests define ``check``, the judge calls ``check(<entry point>)``
    (HumanEval style); otherwise the tests are plain statements (MBPP asserts).
    """
    if not all(isinstance(s, str) for s in (code, tests, context)):
        raise TypeError("code, tests and context must be strings")
    limits = limits or SandboxLimits()
    _check_limits(limits)
    level = _resolve_isolation(limits)
    try:
        return _run_once(code, tests, entry_point, context, limits, level)
    except _SetupFailed as exc:
        # It worked when probed, so the machine changed or ran short (processes, memory) under load.
        # One run's failure, never an exception out of a reward: a program must not be able to crash
        # training by starving its neighbours.
        _warn_setup_once(str(exc))
        return SandboxResult(passed=False, status="setup", duration_s=0.0, stdout_tail="", stderr_tail="",
                             reason=f"sandbox set-up failed: {exc}")


_setup_warned = threading.Event()


def _warn_setup_once(reason: str) -> None:
    if not _setup_warned.is_set():
        _setup_warned.set()
        print(f"WARNING: a sandbox run could not be set up ({reason}); it scored 0. Later failures of this "
              "kind are counted in samples.jsonl (status 'setup') without another warning.",
              file=sys.stderr, flush=True)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_many(
    jobs: Iterable[Sequence],
    max_workers: int | None = None,
    limits: SandboxLimits | None = None,
) -> list[SandboxResult]:
    """Run many ``(code, tests[, entry_point[, context]])`` jobs concurrently; results keep job order.

    Each job is its own judge and candidate; threads only wait on them.  The
    default pool is twice the usable CPUs: part of every run is kernel latency
    (namespace set-up and teardown), not CPU.
    """
    jobs = [tuple(job) for job in jobs]
    if not jobs:
        return []
    limits = limits or SandboxLimits()
    _check_limits(limits)
    _resolve_isolation(limits)  # probe once, in the caller's thread, so errors surface here
    workers = max_workers or 2 * _usable_cpus()

    def one(job: tuple) -> SandboxResult:
        code, tests, entry_point, context = (list(job) + [None, ""])[:4]
        return run_tests(code, tests, entry_point, limits, context or "")

    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(one, jobs))
