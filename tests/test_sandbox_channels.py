"""Cross-run channels, a judge that cannot be stalled or made to misreport, and correct programs that
must not fail (false fails).

Every hostile program here is wrong and must get reward 0 in bounded time with no trace on the host
(the ``no_trace`` fixture of the hostile suite); every honest one must pass.  The cross-run store the
red team found is the host's page cache of the read-only view: a program sets it by reading a page and
a later run reads it back (``preadv2(RWF_NOWAIT)`` or the timing of a plain read), so it can count its
own resubmissions and learn an answer by trial.  :data:`LEARNER` is that program, and the test that it
works on the host shows the test can fail.
"""

from __future__ import annotations

import ctypes
import os
import time

import pytest

from selfcorrect.tasks.sandbox import SandboxLimits, run_tests, sandbox_isolation

from test_sandbox_attacks import BOUND, TIMEOUT, attack, no_trace  # noqa: F401 (a fixture)

LEVEL = sandbox_isolation(SandboxLimits(isolation="auto"))
pytestmark = pytest.mark.skipif(LEVEL != "full", reason="the hostile suite targets the full isolation level")

# --------------------------------------------------------------------------- a store across runs
# Counts its own runs in unary: page 0 of the files of STORE, in order, cached or not.  Each run measures
# the files until the first uncached one, and the measuring read caches it (count + 1 for the next run).
LEARNER_CORE = r'''
import os, time

def _cached(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)    # reports residency, never fills
            return True
        except BlockingIOError:
            os.pread(fd, 4096, 0)                                 # write: cache it for the next run
            return False
        except OSError:                                           # denied: the timing of a plain read
            start = time.perf_counter_ns()
            os.pread(fd, 4096, 0)
            return time.perf_counter_ns() - start < 30000
    finally:
        os.close(fd)

def count(store):
    n = 0
    while n < len(store) and _cached(store[n]):
        n += 1
    return n
'''
LEARNER = LEARNER_CORE + r'''
_dir = os.path.join(os.path.dirname(os.__file__), "encodings")
STORE = sorted(os.path.join(_dir, f) for f in os.listdir(_dir) if f.endswith(".py"))[:40]

def f():
    return count(STORE)
'''


def test_the_learner_counts_runs_on_the_host(tmp_path):
    """On uncached files outside the sandbox the store works: a later run reads what an earlier one set
    (so the test below would see a pass if the view's page cache were a store).  Exactly 0, 1, 2 where the
    kernel reads nothing ahead; on a loaded machine the kernel may cache more pages than were read (seen:
    0, 5, 5), which still carries state from one run to the next."""
    store = []
    for i in range(5):
        path = tmp_path / f"page-{i}"
        path.write_bytes(os.urandom(8192))
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        store.append(str(path))
    ns: dict = {}
    exec(LEARNER_CORE, ns)
    counts = [ns["count"](store) for _ in range(3)]
    if counts[0] != 0:
        pytest.skip(f"{tmp_path} keeps its pages cached (tmpfs?): counts {counts}")
    assert counts[1] > counts[0] == 0 and counts[2] >= counts[1], counts


@pytest.mark.usefixtures("no_trace")
def test_twenty_resubmissions_learn_nothing():
    """The program returns how many times it ran before; the answer is 13.  Through a working store it
    would pass at the 14th run; every page of the view is resident for as long as the zygote lives and
    the syscalls that evict or report residency are denied, so every run reads the same count (all 40)."""
    directory = os.path.join(os.path.dirname(os.__file__), "encodings")    # the view shows the host's stdlib
    for name in sorted(f for f in os.listdir(directory) if f.endswith(".py"))[:40]:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)              # uncache what the host can:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)                    # a fresh store, unless pinned
        os.close(fd)
    counts = []
    for _ in range(20):
        result = run_tests(LEARNER, "print('count', f())\nassert f() == 13\n", "f",
                           SandboxLimits(timeout_s=TIMEOUT))
        counts.append(result.stdout_tail.strip())
        assert not result.passed, counts      # (the counts may differ where a loaded host stalls a read)


STATE_SYSCALLS = r'''
import fcntl, mmap, os, sys
fd = os.open(sys.executable, os.O_RDONLY)
def attempt(name, call):
    try:
        call()
        print(name, "allowed")
    except OSError as exc:
        print(name, type(exc).__name__)
attempt("fadvise", lambda: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED))
attempt("preadv2", lambda: os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT))
attempt("flock", lambda: fcntl.flock(fd, fcntl.LOCK_SH))
attempt("lockf", lambda: fcntl.lockf(fd, fcntl.LOCK_SH))
attempt("ofd-lock", lambda: fcntl.fcntl(fd, fcntl.F_OFD_SETLK, bytes(32)))
view = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
attempt("pageout", lambda: view.madvise(21))         # MADV_PAGEOUT (no constant before 3.12 here)
attempt("cold", lambda: view.madvise(20))
attempt("wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
attempt("read", lambda: os.pread(fd, 16, 0))
attempt("rw-map", lambda: mmap.mmap(-1, 4096))
for name in ("stat", "loadavg", "vmstat", "meminfo", "locks", "diskstats", "interrupts"):
    with open("/proc/" + name) as counter:
        print("/proc/" + name, len(counter.read()))
def f():
    return 0
'''


@pytest.mark.usefixtures("no_trace")
def test_page_cache_and_lock_syscalls_are_denied():
    """From plain Python: eviction (fadvise, madvise PAGEOUT/COLD), residency (preadv2 RWF_NOWAIT),
    locks on view files (flock, lockf, OFD locks), W+X memory; host-wide counters in /proc read empty.
    Ordinary reads and writable anonymous memory still work."""
    result = run_tests(STATE_SYSCALLS, "assert f() == 0\n", "f", SandboxLimits(timeout_s=TIMEOUT, audit_hook=False))
    assert result.passed, result
    lines = set(result.stdout_tail.splitlines())
    for name in ("fadvise", "preadv2", "flock", "lockf", "ofd-lock", "pageout", "cold", "wx"):
        assert f"{name} PermissionError" in lines, (name, result.stdout_tail)
    assert {"read allowed", "rw-map allowed"} <= lines, result.stdout_tail
    for name in ("stat", "loadavg", "vmstat", "meminfo", "locks", "diskstats", "interrupts"):
        assert f"/proc/{name} 0" in lines, result.stdout_tail


def test_seccomp_denies_residency_eviction_and_wx_by_number(under_seccomp):
    """The filter, applied to a forked child, by raw syscall: mincore, cachestat, readahead, fadvise,
    preadv2, flock get EPERM; mprotect to W+X gets EPERM, mprotect to R+X and R+W do not."""
    plain = ("mincore", "cachestat", "readahead", "fadvise64", "preadv2", "flock")

    def probe(libc, numbers):
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        page = libc.mmap(None, 4096, 3, 0x22, -1, 0)       # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS

        def calls():
            results = []
            for name in plain:
                rc = libc.syscall(ctypes.c_long(numbers[name]), 0, 0, 0, 0, 0, 0)
                results.append(f"{name}={rc}/{ctypes.get_errno()}")
            for prot, label in ((7, "rwx"), (5, "rx"), (3, "rw")):
                ctypes.set_errno(0)
                rc = libc.syscall(ctypes.c_long(numbers["mprotect"]), ctypes.c_void_p(page), ctypes.c_size_t(4096),
                                  ctypes.c_long(prot))
                results.append(f"mprotect-{label}={rc}/{ctypes.get_errno()}")
            return results
        return calls

    report = under_seccomp(probe)
    for name in plain:
        assert f"{name}=-1/1" in report, report
    assert "mprotect-rwx=-1/1" in report and "mprotect-rx=0/0" in report and "mprotect-rw=0/0" in report, report


# --------------------------------------------------------------------------- a judge that cannot be stalled
def test_the_judges_last_message_never_blocks(monkeypatch):
    """After the run's alarm is cleared the judge writes one last message to the program.  A program
    that shrank its request pipe (F_SETPIPE_SZ) and stopped reading leaves it full: the write must return
    at once instead of holding the judge and the program forever (a full pipe stands in for it here)."""
    import fcntl
    import threading

    from selfcorrect.tasks.sandbox import judge, wire

    monkeypatch.setattr(judge, "frame", wire.frame, raising=False)   # judge.py runs with wire.py in front
    read, write = os.pipe()
    fcntl.fcntl(write, 1031, 4096)                                   # F_SETPIPE_SZ: one page
    os.set_blocking(write, False)
    try:
        while True:
            os.write(write, b"x")
    except BlockingIOError:
        pass
    os.set_blocking(write, True)                                     # as the judge holds it
    done = threading.Event()
    worker = threading.Thread(target=lambda: (judge.say_bye(write), done.set()), daemon=True)
    worker.start()
    returned = done.wait(2.0)
    os.close(read)                                                   # frees a blocked writer (EPIPE)
    worker.join(2.0)
    os.close(write)
    assert returned, "the judge's last write blocked on a full pipe"


@pytest.mark.usefixtures("no_trace")
@pytest.mark.long
def test_a_judge_side_hash_flood_is_bounded():
    """The program returns a list of ints that share one hash; the tests' set() of it runs in the judge,
    in one C call no alarm interrupts.  The judge's CPU limit ends it; the run fails."""
    flood = "def f():\n    return [1 + i * (2 ** 61 - 1) for i in range(60000)]\n"
    start = time.monotonic()
    result = run_tests(flood, "assert len(set(f())) == 0\n", "f", SandboxLimits(timeout_s=1.0))
    assert not result.passed and result.status in ("killed", "timeout"), result
    assert time.monotonic() - start < 1.0 + 4.0 + BOUND


@pytest.mark.usefixtures("no_trace")
def test_the_judge_has_a_memory_limit():
    """A value the tests blow up inside the judge (a 1 MiB answer times 4096) meets the judge's own
    address-space limit instead of the host's memory."""
    result = attack("def f():\n    return b'x' * (1 << 20)\n", "assert f() * 4096 is not None\n", "f")
    assert result.status == "failed" and "MemoryError" in result.reason, result


@pytest.mark.parametrize("tests", [
    "try:\n    f()\nexcept:\n    pass\n",
    "while True:\n    try:\n        f()\n    except BaseException:\n        pass\n",
], ids=["swallowed-once", "swallowed-forever"])
@pytest.mark.usefixtures("no_trace")
def test_a_deadline_swallowed_by_the_tests_still_fails(tests):
    """A bare ``except:`` in the tests catches the run's deadline; the run still fails, in bounded time."""
    result = attack("import time\ndef f():\n    time.sleep(30)\n", tests, "f")
    assert result.status in ("timeout", "killed"), result


@pytest.mark.usefixtures("no_trace")
def test_an_exception_class_named_like_a_builtin_does_not_pass_as_it():
    code = "class ValueError(Exception):\n    pass\ndef f():\n    raise ValueError('spoofed')\n"
    tests = "try:\n    f()\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError\n"
    result = attack(code, tests, "f")
    assert "__candidate__.ValueError" in result.reason, result
    honest = run_tests("def f():\n    raise ValueError('x')\n", tests, "f", SandboxLimits(timeout_s=TIMEOUT))
    assert honest.passed, honest


# --------------------------------------------------------------------------- correct programs pass
def test_an_entry_point_named_check_is_called_as_itself():
    """MBPP has entries named ``check``: the tests call the program's check(), never check(candidate)."""
    code = "def check(n):\n    return n > 0\n"
    result = run_tests(code, "assert check(3)\nassert not check(-3)\n", "check", SandboxLimits(timeout_s=TIMEOUT))
    assert result.passed, result


def test_the_same_list_passed_twice_stays_one_list():
    code = "def f(a, b):\n    a.append(1)\n    return len(b)\n"
    tests = "x = []\nassert f(x, x) == 1 and x == [1]\nd = {}\nassert f(a=[], b=[]) == 0\n"
    result = run_tests(code, tests, "f", SandboxLimits(timeout_s=TIMEOUT))
    assert result.passed, result


@pytest.mark.usefixtures("no_trace")
def test_objects_the_tests_build_stay_in_the_program_and_compare_by_identity():
    """An object the tests build by calling the program's class stays in the candidate; the judge holds
    a handle that is equal only to itself.  So a class whose __eq__ says True to everything gets no
    pass from comparisons, and an entry point that returns such an object still fails closed."""
    evil = ("class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
            "    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
            "def f(p):\n    return Pair(0, 0)\n")
    result = attack(evil, "assert Pair(1, 2) == Pair(3, 4)\n", "f")
    assert result.status == "failed", result
    result = attack(evil, "assert f(Pair(1, 2)) == 5\n", "f")
    assert result.status == "boundary", result
    honest = run_tests(evil.replace("return Pair(0, 0)", "return p.a + p.b"),
                       "p = Pair(1, 2)\nassert f(p) == 3 and f(p) == 3\nassert p is p and p != Pair(1, 2)\n",
                       "f", SandboxLimits(timeout_s=TIMEOUT))
    assert honest.passed, honest


@pytest.mark.usefixtures("no_trace")
def test_a_forged_handle_is_an_opaque_object():
    """A program that answers with a handle number of its own making gets an object equal to nothing."""
    forged = ("import sys\n_main = sys.modules['__main__']\n"
              "_real = _main.encode\n"
              "def _forge(value, depth=0, handles=None):\n"
              "    return ['h', '0'] if type(value) is int and value == 5 else _real(value, depth, handles)\n"
              "_main.encode = _forge\n"
              "def f():\n    return 5\n")
    result = attack(forged, "assert f() == 5\n", "f", audit=False)
    assert result.status == "failed", result
