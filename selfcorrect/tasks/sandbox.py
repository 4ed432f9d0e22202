"""Run model-written (hostile) Python programs against their tests.

Every program runs in a fresh ``python -I -S`` interpreter started with
:mod:`subprocess` (never a fork of the training process) and a small harness
(:data:`_HARNESS`) that is told what to do through its stdin.  The reward is 1
only when the process exits 0 *and* the last line of its stdout is a random
per-run token that the harness prints after the tests returned.

Threat model
============

The adversary is the policy being trained: it writes arbitrary Python, and RL
rewards it for anything that makes the verifier say "passed".  We defend
against two things.

1. **Harm to the machine** (the program is run as untrusted code):

   * runaway CPU / memory / output / files / processes: wall-clock timeout,
     ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE`` (stdout and stderr go to
     files, so a print loop is bounded too), ``RLIMIT_NOFILE``,
     ``RLIMIT_NPROC`` and ``RLIMIT_CORE=0``;
   * escaping processes: the program gets its own session and process group,
     which is SIGKILLed after every run (normal exit included); with
     namespaces it is also PID 1 of a fresh PID namespace, so everything it
     spawned -- even a child that called ``setsid()`` -- dies with it;
   * network: a fresh network namespace (no interfaces but a down loopback),
     plus a refusal of every ``socket.*`` audit event inside the interpreter;
   * the filesystem: when the parent is root the program runs as ``nobody``
     (65534) with ``PR_SET_NO_NEW_PRIVS`` (setuid binaries cannot give root
     back), so it cannot write files it does not own; with namespaces its
     working directory and ``/tmp``, ``/var/tmp``, ``/dev/shm`` and
     ``/run/lock`` are small private tmpfs mounts that vanish with it, and
     ``/proc`` only shows its own processes;
   * process creation, ``ctypes``, ``gc`` introspection, tracing hooks, new
     audit hooks, signals to other processes and writes outside the working
     directory are also refused by a :func:`sys.addaudithook` hook
     (``SandboxLimits.audit_hook``).  The hook is defence in depth only: the
     operating-system limits above hold without it, and the tests check both.

2. **Reward hacking** (the program fakes a pass):

   * exiting early (``sys.exit(0)``, ``os._exit(0)``, ``raise SystemExit``)
     and printing fake success lines: no token, so no pass;
   * redefining ``check``: the tests run in their own namespace, and only a
     ``check`` defined by the tests is called;
   * monkeypatching builtins (``abs``, ``isinstance``, ``print``, ...), stdlib
     modules the tests import (``math.isclose = ...``), ``sys.modules``,
     ``sys.path``: restored from a snapshot after the program is defined and
     after *every* call of the entry point;
   * signal handlers, interval timers, background threads and cyclic-GC
     finalizers that could change state in the middle of the tests: handlers
     and timers are reset, the garbage collector is off during the tests and
     a program that leaves a thread running fails;
   * "always equal" objects (``__eq__`` returning ``True``): with
     ``strict_results`` the entry point may only return builtin data
     (``int``, ``str``, ``list``, ``dict``, ... and the ``collections``
     containers, checked recursively);
   * the proof token is written to the child's stdin, read before the
     program is compiled, kept in a closure (not a global) and written to a
     duplicate of the original stdout only after the tests returned.

Not covered: the program runs in the *same interpreter* as the tests, so a
deliberate in-process adversary that walks frames (``sys._getframe().f_back``),
scans its own memory (``/proc/self/mem``) or patches class attributes of
stdlib types could find the token or change what the tests see.  That needs
knowledge of this harness rather than a generic hack; a separate-process test
runner would be the next step.  ``strict_results`` also rejects legitimate
non-builtin results (namedtuples, dataclasses); turn it off for such tasks.
Programs only get the interpreter's standard library (``-S``).  Without
namespaces (``isolation="basic"``, e.g. an unprivileged container) there is
no network namespace (only the audit hook blocks sockets), a child that calls
``setsid()`` can outlive the run until ``RLIMIT_CPU`` kills it or forever if it
sleeps, and world-writable directories such as ``/tmp`` are writable.
``RLIMIT_AS`` is per process, so the worst-case memory is
``max_processes * memory_mb``; ``RLIMIT_NPROC`` is counted per user, so all
sandboxes running at once share it.  Non-root parents cannot change user: the
program can then read and write whatever the parent user can (the audit hook
is the only guard against writes).  As root, ``nobody`` must be able to read
the interpreter's standard library; with namespaces the harness binds it into
view (e.g. a pyenv under ``/root``), without them set ``SandboxLimits.python``.
"""

from __future__ import annotations

import ast
import functools
import marshal
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import IO

from ..errors import ConfigError

__all__ = ["SandboxLimits", "SandboxResult", "run_tests", "run_many", "sandbox_isolation"]


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits and policy for one sandboxed program."""

    timeout_s: float = 10.0
    """Wall-clock limit for one run, interpreter start-up included."""
    cpu_s: float | None = None
    """CPU-time limit (``RLIMIT_CPU``); ``None`` means the same as ``timeout_s``."""
    memory_mb: int = 1024
    """Address-space limit of each process (``RLIMIT_AS``), in MiB."""
    max_processes: int = 16
    """``RLIMIT_NPROC``: processes *and threads* of the sandbox user, counted by the
    kernel per user across every sandbox running at the same time."""
    max_file_mb: int = 16
    """Largest file the program may write (``RLIMIT_FSIZE``); stdout and stderr included."""
    max_open_files: int = 64
    """``RLIMIT_NOFILE``."""
    disk_mb: int = 64
    """Size of the private tmpfs mounted on the working directory (namespaces only)."""
    isolation: str = "auto"
    """``"full"``: mount, PID and network namespaces; ``"net"``: network namespace only;
    ``"basic"``: rlimits and the user change only; ``"auto"``: the strongest that works
    here (probed once per process)."""
    audit_hook: bool = True
    """Refuse process creation, sockets, ctypes, introspection and outside writes from
    inside the interpreter (defence in depth on top of the OS limits)."""
    strict_results: bool = True
    """Reject entry-point return values that are not builtin data (defeats objects whose
    ``__eq__`` always returns ``True``)."""
    python: str | None = None
    """Interpreter for sandboxed programs; ``None`` means ``sys.executable``.  Programs
    only see its standard library (``-S``: no site-packages)."""
    uid: int = 65534
    """User the program runs as when the parent is root (``nobody``)."""
    gid: int = 65534
    """Group the program runs as when the parent is root (``nogroup``)."""


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run."""

    passed: bool
    """True only if the tests returned and the harness printed the run's token."""
    status: str
    """``passed``; ``failed`` (a test raised); ``error`` (the program raised while being
    defined); ``timeout``; ``killed`` (ended by a signal); ``exited`` (exited without
    finishing the tests, e.g. ``os._exit(0)``)."""
    duration_s: float
    """Wall-clock time of the run, interpreter start-up included."""
    stdout_tail: str
    """Last few KiB of stdout (the token line removed)."""
    stderr_tail: str
    """Last few KiB of stderr (tracebacks land here)."""


_TAIL_BYTES = 4096
_RELAY_GRACE_S = 2.0
_SETUP_FAILED_RC = 121  # the harness's own set-up failed (not the program's fault)
_ISOLATION_LEVELS = ("full", "net", "basic")

# Linux clone(2) flags, for unshare(2) in the harness.
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000


# ---------------------------------------------------------------------------
# The harness: runs inside the sandbox process.  It is a string because the
# child is a fresh ``python -I -S -c`` that must not import this package.
# ---------------------------------------------------------------------------
_HARNESS = r'''
import os, sys, marshal


def _read_job():
    chunks = []
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    # The program must not see the job (and its token) on stdin.
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return marshal.loads(b"".join(chunks))


def _reporters(token, fd, setup_rc):
    """Return (prove, setup_failed); the token lives only in their closure."""
    write, exit_ = os.write, os._exit
    token = token.encode()

    def flush():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass

    def prove():
        flush()
        write(fd, b"\n" + token + b"\n")
        exit_(0)

    def setup_failed(message):
        flush()
        write(fd, b"\n" + token + b" setup-failed " + message.encode("utf-8", "replace") + b"\n")
        exit_(setup_rc)

    return prove, setup_failed


def _libc():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    c_char_p, c_ulong, c_int = ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int
    libc.mount.argtypes = [c_char_p, c_char_p, c_char_p, c_ulong, c_char_p]
    libc.unshare.argtypes = [c_int]
    libc.prctl.argtypes = [c_int, c_ulong, c_ulong, c_ulong, c_ulong]

    def call(name, *args):
        if getattr(libc, name)(*args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "%s%r: %s" % (name, args, os.strerror(err)))

    return call


MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18


def _blocked_ancestor(path, uid, gid):
    """First directory on the way to ``path`` that ``uid`` cannot enter, or None."""
    current = "/"
    for part in [""] + path.strip("/").split("/"):
        current = os.path.join(current, part) if part else current
        st = os.stat(current)
        bits = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bits or (current == path and not st.st_mode & (bits << 2)):
            return current
    return None


def _expose_interpreter(call, uid, gid):
    """Make the standard library readable by ``uid`` inside our mount namespace.

    An interpreter under e.g. /root (mode 0700) cannot import anything once we
    are ``nobody``: hide the blocking directory under a tmpfs and bind the
    library directories back at their original paths.
    """
    needed = [p for p in sys.path if os.path.isdir(p)]
    by_ancestor = {}
    for path in needed:
        ancestor = _blocked_ancestor(path, uid, gid)
        if ancestor is not None and ancestor != path:
            by_ancestor.setdefault(ancestor, []).append(path)
    for ancestor, paths in by_ancestor.items():
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in paths]
        call("mount", b"tmpfs", ancestor.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=64k,mode=0755")
        for path, fd in zip(paths, fds):
            os.makedirs(path, mode=0o755, exist_ok=True)
            call("mount", ("/proc/self/fd/%d" % fd).encode(), path.encode(), None, MS_BIND | MS_REC, None)
            os.close(fd)


CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000


def _isolate(job, call):
    """Enter fresh namespaces; with a PID namespace, fork and relay the child's status.

    Every mount below happens only inside our own mount namespace (CLONE_NEWNS):
    mounting over /tmp or /proc anywhere else would hit the host.
    """
    flags = job["unshare"]
    if not flags:
        return
    own_mounts = bool(flags & CLONE_NEWNS)
    if flags & CLONE_NEWPID and not own_mounts:
        raise ValueError("a PID namespace needs a mount namespace too")
    call("unshare", flags)
    if own_mounts:
        call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
        if job["uid"] is not None:
            _expose_interpreter(call, job["uid"], job["gid"])
        for shared in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
            if os.path.isdir(shared) and not os.path.islink(shared):
                call("mount", b"tmpfs", shared.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                     b"size=1m,nr_inodes=256,mode=1777")
        workdir = job["workdir"]
        os.makedirs(workdir, mode=0o700, exist_ok=True)
        owner = "" if job["uid"] is None else ",uid=%d,gid=%d" % (job["uid"], job["gid"])
        data = "size=%dm,nr_inodes=4096,mode=0700%s" % (job["disk_mb"], owner)
        call("mount", b"tmpfs", workdir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, data.encode())
    if flags & CLONE_NEWPID:
        pid = os.fork()
        if pid:
            _relay(pid, job["deadline"])
        try:  # a /proc that hides host processes (and their command lines); best effort
            call("mount", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        except OSError:
            pass


def _relay(pid, deadline):
    """Outside the PID namespace: wait for its init (the program) and exit like it.

    The relay enforces the wall-clock limit itself so that it, not the host's
    init, reaps the namespace (killing init kills everything inside it).
    """
    import _signal, time
    expired = []

    def on_alarm(signum, frame):
        expired.append(True)
        os.kill(pid, 9)  # SIGKILL; waitpid below is retried after this handler (PEP 475)

    _signal.signal(_signal.SIGALRM, on_alarm)
    _signal.setitimer(_signal.ITIMER_REAL, max(0.001, deadline - time.monotonic()))
    _, status = os.waitpid(pid, 0)
    _signal.setitimer(_signal.ITIMER_REAL, 0)
    if os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    if expired and os.WTERMSIG(status) == 9:
        os._exit(124)
    os._exit(128 + os.WTERMSIG(status))


def _confine(job, call):
    """rlimits, no new privileges, then the unprivileged user; finally the workdir."""
    import resource, _signal
    for name, (soft, hard) in job["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    exit_ = os._exit
    # SIGXCPU at the soft CPU limit becomes a recognisable exit code.
    _signal.signal(_signal.SIGXCPU, lambda signum, frame: exit_(124))
    call("prctl", 38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    os.umask(0o077)
    if job["uid"] is not None:
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])
    os.chdir(job["workdir"])


# --- in-interpreter guards ---------------------------------------------------

def _install_audit_hook(workdir):
    realpath, join, getcwd, fsdecode = os.path.realpath, os.path.join, os.getcwd, os.fsdecode
    root = realpath(workdir)
    blocked = frozenset({
        "os.system", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit",
        "sys.settrace", "sys.setprofile", "sys._current_frames", "sys.addaudithook",
    })
    prefixes = ("socket.", "ctypes.", "subprocess.", "os.fork", "os.exec", "os.spawn",
                "os.posix_spawn", "pty.", "gc.get_")
    blocked_imports = frozenset({"_posixsubprocess", "_ctypes"})
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    path_args = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
                 "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,), "os.rename": (0, 1),
                 "os.link": (1,), "os.symlink": (1,), "sqlite3.connect": (0,)}

    def inside(path):
        if isinstance(path, int):
            return True
        try:
            resolved = realpath(join(getcwd(), fsdecode(path)))
        except BaseException:
            return False
        return resolved == root or resolved.startswith(root + "/") or resolved == "/dev/null"

    def hook(event, args):
        if event in blocked or event.startswith(prefixes):
            # RuntimeError also vetoes sys.addaudithook quietly, as documented.
            raise RuntimeError("sandbox: %s is not allowed" % event)
        if event == "import" and args[0] in blocked_imports:
            raise ImportError("sandbox: importing %s is not allowed" % args[0])
        if event == "open":
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            if flags & write_flags and not inside(args[0]):
                raise PermissionError("sandbox: writing outside the working directory")
        elif event in path_args:
            if not all(inside(args[i]) for i in path_args[event]):
                raise PermissionError("sandbox: %s outside the working directory" % event)
        elif event == "object.__setattr__" and args[1] == "__code__":
            raise RuntimeError("sandbox: replacing __code__ is not allowed")

    sys.addaudithook(hook)


def _snapshot(module_names, extra_classes):
    """Return restore(): undo the program's changes to shared interpreter state."""
    import builtins, gc, _signal, _thread
    modules = [sys.modules[n] for n in module_names if n in sys.modules]
    saved = [(m.__dict__, dict(m.__dict__)) for m in modules + [sys, os]]
    builtins_dict, saved_builtins = builtins.__dict__, dict(builtins.__dict__)
    saved_modules = dict(sys.modules)
    saved_lists = [(lst, list(lst)) for lst in (sys.path, sys.meta_path, sys.path_hooks)]
    saved_classes = [(cls, dict(cls.__dict__)) for cls in extra_classes]
    handlers = {}
    for signum in _signal.valid_signals():
        try:
            handlers[signum] = _signal.getsignal(signum)
        except (OSError, ValueError):
            pass
    timers = (_signal.ITIMER_REAL, _signal.ITIMER_VIRTUAL, _signal.ITIMER_PROF)
    missing = object()
    thread_count = _thread._count

    def restore():
        for key in [k for k in builtins_dict if k not in saved_builtins]:
            del builtins_dict[key]
        for live, snap in saved + [(builtins_dict, saved_builtins)]:
            for key, value in snap.items():
                if live.get(key, missing) is not value:
                    live[key] = value
        for name, module in saved_modules.items():
            if sys.modules.get(name) is not module:
                sys.modules[name] = module
        for live, snap in saved_lists:
            live[:] = snap
        for cls, snap in saved_classes:
            for key in [k for k in cls.__dict__ if k not in snap]:
                type.__delattr__(cls, key)
            for key, value in snap.items():
                if cls.__dict__.get(key, missing) is not value:
                    type.__setattr__(cls, key, value)
        for signum, handler in handlers.items():
            if _signal.getsignal(signum) is not handler and handler is not None:
                _signal.signal(signum, handler)
        for which in timers:
            _signal.setitimer(which, 0)
        # Only reachable without the audit hook (which refuses both calls).
        if sys.gettrace() is not None:
            sys.settrace(None)
        if sys.getprofile() is not None:
            sys.setprofile(None)
        gc.disable()  # no finalizer may run candidate code between two asserts
        if thread_count():
            raise RuntimeError("sandbox: the program left a thread running")
        if any(builtins_dict.get(k, missing) is not v for k, v in saved_builtins.items()):
            raise RuntimeError("sandbox: builtins changed while being restored")

    return restore


def _plain_checker(collections):
    plain = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray, list,
                       tuple, dict, set, frozenset, collections.OrderedDict,
                       collections.defaultdict, collections.deque, collections.Counter})
    sequences = frozenset({list, tuple, set, frozenset, collections.deque})
    dict_keys, dict_values = dict.keys, dict.values

    def is_plain(value, budget=200000):
        stack = [value]
        while stack and budget > 0:
            budget -= 1
            item = stack.pop()
            kind = type(item)
            if kind not in plain:
                return False
            if kind in sequences:
                stack.extend(item)
            elif issubclass(kind, dict):
                stack.extend(dict_keys(item))
                stack.extend(dict_values(item))
        return True

    return is_plain


def _guard(fn, restore, is_plain):
    """The entry point as the tests see it: state restored after every call."""
    def candidate(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        finally:
            restore()
        if is_plain is not None and not is_plain(result):
            raise TypeError("sandbox: the entry point returned an object that is not builtin "
                            "data (int, str, list, dict, ...)")
        return result
    return candidate


def _failer(job):
    write, exit_ = os.write, os._exit

    def fail(rc, exc, note=""):
        try:
            import linecache, traceback
            for name in ("code", "tests"):
                lines = job[name].splitlines(True)
                linecache.cache["<%s>" % name] = (len(job[name]), None, lines, "<%s>" % name)
            text = "".join(traceback.format_exception(exc))
        except BaseException:
            text = "sandbox: unprintable exception\n"
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        try:
            write(2, (note + text).encode("utf-8", "replace")[-8192:])
        finally:
            exit_(rc)

    return fail


def _run(job, prove):
    import builtins, collections
    fail = _failer(job)
    for name in job["preimport"]:
        try:
            __import__(name)
        except BaseException:
            pass
    module = type(sys)("__candidate__")  # not "__main__": no main-guarded code runs
    sys.modules["__candidate__"] = sys.modules["__main__"] = module
    restore = _snapshot(job["preimport"], [collections.Counter])
    is_plain = _plain_checker(collections) if job["strict"] else None
    if job["audit"]:
        _install_audit_hook(job["workdir"])

    ns = module.__dict__
    ns["__builtins__"] = builtins
    try:
        exec(compile(job["code"], "<code>", "exec"), ns)
    except BaseException as exc:
        fail(2, exc, "sandbox: the program raised while being defined\n")
    try:
        restore()
    except BaseException as exc:
        fail(1, exc)

    # The tests get their own namespace: a copy, so the program cannot plant
    # names (e.g. ``check``) in it later, with pristine builtins.
    tests_ns = dict(ns)
    tests_ns["__builtins__"] = builtins
    tests_ns.pop("check", None)
    entry_point = job["entry_point"]
    entry = None
    if entry_point:
        fn = ns.get(entry_point)
        if not callable(fn):
            fail(1, NameError("the program does not define %s()" % entry_point))
        entry = tests_ns[entry_point] = _guard(fn, restore, is_plain)
    try:
        exec(compile(job["tests"], "<tests>", "exec"), tests_ns)
        restore()
        check = tests_ns.get("check")
        if entry is not None and check is not None:
            tests_ns[entry_point] = entry  # the tests may have re-run the stub
            check(entry)
            restore()
    except BaseException as exc:
        fail(1, exc)
    prove()


def _main():
    import time
    job = _read_job()
    job["deadline"] = time.monotonic() + job["timeout_s"]
    prove, setup_failed = _reporters(job.pop("token"), os.dup(1), job["setup_rc"])
    try:
        call = _libc()
        _isolate(job, call)
        _confine(job, call)
    except BaseException as exc:
        setup_failed(repr(exc))
    del call
    _run(job, prove)


_main()
'''


# ---------------------------------------------------------------------------
# Parent side.
# ---------------------------------------------------------------------------
class _SetupFailed(Exception):
    """The harness could not set up the requested isolation."""


def _check_limits(limits: SandboxLimits) -> None:
    if limits.isolation not in ("auto",) + _ISOLATION_LEVELS:
        raise ConfigError(
            f"SandboxLimits.isolation must be one of auto, full, net, basic; got {limits.isolation!r}"
        )
    for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb", "max_open_files", "disk_mb"):
        if not getattr(limits, name) > 0:
            raise ConfigError(f"SandboxLimits.{name} must be positive; got {getattr(limits, name)!r}")
    if limits.cpu_s is not None and not limits.cpu_s > 0:
        raise ConfigError(f"SandboxLimits.cpu_s must be positive; got {limits.cpu_s!r}")


def _is_root() -> bool:
    return os.geteuid() == 0


def _unshare_flags(level: str) -> int:
    """The namespaces the harness enters for an isolation level, given who we are."""
    if level == "full" and _is_root():
        return _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET
    if level == "net":
        # Unprivileged users can still get a network namespace inside a user namespace.
        return _CLONE_NEWNET if _is_root() else _CLONE_NEWUSER | _CLONE_NEWNET
    if level == "basic":
        return 0
    raise _SetupFailed(f"isolation {level!r} needs root")


def _rlimits(limits: SandboxLimits) -> dict:
    cpu = math.ceil(limits.cpu_s if limits.cpu_s is not None else limits.timeout_s)
    mib = 1 << 20
    return {
        "RLIMIT_CPU": (cpu, cpu + 1),
        "RLIMIT_AS": (limits.memory_mb * mib,) * 2,
        "RLIMIT_FSIZE": (limits.max_file_mb * mib,) * 2,
        "RLIMIT_NOFILE": (limits.max_open_files,) * 2,
        "RLIMIT_NPROC": (limits.max_processes,) * 2,
        "RLIMIT_CORE": (0, 0),
    }


@functools.lru_cache(maxsize=4096)
def _imported_modules(tests: str) -> tuple[str, ...]:
    """Modules the tests import, so the harness can snapshot them before the program runs."""
    try:
        tree = ast.parse(tests)
    except SyntaxError:
        return ()
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    # "a.b" also needs "a" (its attribute "b" can be patched too).
    expanded = {".".join(n.split(".")[: i + 1]) for n in names for i in range(n.count(".") + 1)}
    return tuple(sorted(expanded))


def _tail(f: IO[bytes]) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - _TAIL_BYTES))
    return f.read().decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _child_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": workdir, "TMPDIR": workdir}


def _status(rc: int, timed_out: bool) -> str:
    if timed_out or rc == 124:
        return "timeout"
    if rc == 1:
        return "failed"
    if rc == 2:
        return "error"
    signum = -rc if rc < 0 else rc - 128 if rc > 128 else 0
    if signum == signal.SIGXCPU:
        return "timeout"
    return "killed" if signum else "exited"


def _run_once(
    code: str, tests: str, entry_point: str | None, limits: SandboxLimits, level: str
) -> SandboxResult:
    token = secrets.token_hex(16)
    as_root = _is_root()
    workdir = tempfile.mkdtemp(prefix="selfcorrect-sandbox-")
    try:
        if as_root:
            os.chown(workdir, limits.uid, limits.gid)
        job = {
            "token": token, "setup_rc": _SETUP_FAILED_RC, "workdir": workdir,
            "code": code, "tests": tests, "entry_point": entry_point, "preimport": _imported_modules(tests),
            "uid": limits.uid if as_root else None, "gid": limits.gid if as_root else None,
            "rlimits": _rlimits(limits), "disk_mb": limits.disk_mb, "timeout_s": limits.timeout_s,
            "audit": limits.audit_hook, "strict": limits.strict_results,
            "unshare": _unshare_flags(level),
        }
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.monotonic()
            proc = subprocess.Popen(
                [limits.python or sys.executable, "-I", "-S", "-c", _HARNESS],
                stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir,
                env=_child_env(workdir), start_new_session=True, close_fds=True,
            )
            timed_out = False
            # With a PID namespace the harness enforces timeout_s itself (and reaps
            # everything); our own limit is then only a backstop.
            grace = _RELAY_GRACE_S if job["unshare"] & _CLONE_NEWPID else 0.0
            try:
                proc.communicate(marshal.dumps(job), timeout=limits.timeout_s + grace)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Kill the whole group, also after a normal exit: nothing may survive.
                _kill_group(proc.pid)
                proc.kill()  # no-op once reaped; covers a refused group kill
                proc.wait()
            duration = time.monotonic() - start
            stdout, stderr = _tail(out), _tail(err)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    lines = stdout.rstrip("\n").split("\n")
    last = lines[-1]
    if last.startswith(token + " setup-failed") and proc.returncode == _SETUP_FAILED_RC:
        raise _SetupFailed(last[len(token) + 1 :])
    passed = not timed_out and proc.returncode == 0 and last == token
    if last.startswith(token):
        stdout = "\n".join(lines[:-1])
    return SandboxResult(
        passed=passed,
        status="passed" if passed else _status(proc.returncode, timed_out),
        duration_s=duration,
        stdout_tail=stdout[-_TAIL_BYTES:],
        stderr_tail=stderr[-_TAIL_BYTES:],
    )


_PROBE_CODE = "import json\n"
_PROBE_TESTS = "assert json.loads('[1]') == [1]\n"
_isolation_cache: dict[tuple, str] = {}
_isolation_lock = threading.Lock()


def _resolve_isolation(limits: SandboxLimits) -> str:
    """The isolation level to use; probed once per (settings, interpreter) and cached."""
    key = (limits.isolation, limits.python or sys.executable, limits.uid, limits.gid, os.geteuid())
    with _isolation_lock:
        if key in _isolation_cache:
            return _isolation_cache[key]
        levels = _ISOLATION_LEVELS if limits.isolation == "auto" else (limits.isolation,)
        probe_limits = SandboxLimits(**{**asdict(limits), "timeout_s": max(30.0, limits.timeout_s)})
        reasons = []
        for level in levels:
            try:
                result = _run_once(_PROBE_CODE, _PROBE_TESTS, None, probe_limits, level)
            except _SetupFailed as exc:
                reasons.append(f"{level}: {exc}")
                continue
            except OSError as exc:  # e.g. the interpreter does not exist
                python = probe_limits.python or sys.executable
                raise ConfigError(f"cannot start the sandbox interpreter {python!r}: {exc}") from exc
            if result.passed:
                _isolation_cache[key] = level
                return level
            reasons.append(f"{level}: {result.status}: {result.stderr_tail.strip()[-300:]}")
        hint = ""
        if _is_root():
            hint = (f" As root the program runs as uid {limits.uid}, which must be able to read the "
                    "interpreter's standard library; set SandboxLimits(python=...) to a system "
                    "interpreter (e.g. /usr/bin/python3) if yours lives under /root.")
        raise ConfigError("the code sandbox does not work here (" + "; ".join(reasons) + ")." + hint)


def sandbox_isolation(limits: SandboxLimits | None = None) -> str:
    """The isolation level (``full``, ``net`` or ``basic``) runs with ``limits`` get here.

    Probes on first use; raises :class:`ConfigError` when no level works.
    """
    limits = limits or SandboxLimits()
    _check_limits(limits)
    return _resolve_isolation(limits)


def run_tests(
    code: str,
    tests: str,
    entry_point: str | None = None,
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Run ``code`` and then ``tests`` in a fresh sandboxed interpreter.

    ``tests`` run in a copy of the program's namespace.  When ``entry_point`` is
    given and the tests define ``check``, the harness calls
    ``check(<entry point>)`` (HumanEval style); otherwise the tests are plain
    statements (MBPP-style asserts) that call the program's functions by name.
    """
    if not isinstance(code, str) or not isinstance(tests, str):
        raise TypeError("code and tests must be strings")
    limits = limits or SandboxLimits()
    _check_limits(limits)
    level = _resolve_isolation(limits)
    try:
        return _run_once(code, tests, entry_point, limits, level)
    except _SetupFailed as exc:  # worked when probed, so this is the machine, not the program
        raise RuntimeError(f"sandbox set-up failed: {exc}") from exc


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
    """Run many ``(code, tests[, entry_point])`` jobs concurrently; results keep job order.

    Each job is still its own process; threads only wait on them.  The default
    pool size is twice the usable CPUs: part of every run is kernel latency
    (namespace teardown), not CPU.
    """
    jobs = [tuple(job) for job in jobs]
    if not jobs:
        return []
    limits = limits or SandboxLimits()
    _check_limits(limits)
    _resolve_isolation(limits)  # probe once, in the caller's thread, so errors surface here
    workers = max_workers or 2 * _usable_cpus()
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(lambda job: run_tests(*job[:3], limits=limits), jobs))
