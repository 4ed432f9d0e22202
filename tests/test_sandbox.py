"""The code sandbox: correct programs pass, attacks get reward 0 quickly and leave no trace.

Attacks run twice where it matters: with the in-interpreter audit hook
("audit") and without it ("os-only"), so each OS-level defence is exercised on
its own.  OS-only variants that need root or namespaces skip elsewhere.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time

import pytest

from selfcorrect.errors import ConfigError
from selfcorrect.tasks.sandbox import SandboxLimits, run_many, run_tests, sandbox_isolation

IS_ROOT = os.geteuid() == 0
LEVEL = sandbox_isolation()
NOBODY = 65534

TESTS = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 9\n"
GOOD = "def square(x):\n    return x * x\n"
WRONG = "def square(x):\n    return x + x\n"  # right for 2, wrong for 3

ATTACK_TIMEOUT = 3.0
BOUND = ATTACK_TIMEOUT + 4.0  # generous: start-up, kill, clean-up on a loaded 2-core box

layers = pytest.mark.parametrize("audit", [True, False], ids=["audit", "os-only"])
needs_root = pytest.mark.skipif(not IS_ROOT, reason="the user change only happens when the parent is root")
needs_pidns = pytest.mark.skipif(LEVEL != "full", reason="needs mount/PID/network namespaces")
needs_netns = pytest.mark.skipif(LEVEL == "basic", reason="needs a network namespace")


def _sandbox_pids() -> set[int]:
    """Processes of the sandbox user (only meaningful when the parent is root)."""
    if not IS_ROOT:
        return set()
    pids = set()
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == NOBODY:
                            pids.add(int(status.split("/")[2]))
                        break
        except OSError:
            pass
    return pids


def _workdirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "selfcorrect-sandbox-*")))


def _eventually(predicate, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def no_trace():
    """Fail the test if a sandbox process or working directory outlives it."""
    before_dirs = _workdirs()
    yield
    assert _eventually(lambda: not _sandbox_pids()), f"sandbox processes left: {_sandbox_pids()}"
    assert _eventually(lambda: _workdirs() <= before_dirs), f"workdirs left: {_workdirs() - before_dirs}"


def attack(code: str, audit: bool = True, tests: str = TESTS, entry: str | None = "square", **kw):
    limits = SandboxLimits(timeout_s=ATTACK_TIMEOUT, audit_hook=audit, **kw)
    result = run_tests(code, tests, entry, limits)
    assert not result.passed, result
    assert result.status != "passed"
    assert result.duration_s < BOUND, result
    return result


# --------------------------------------------------------------------------- positive cases
def test_correct_solution_passes(no_trace):
    result = run_tests(GOOD, TESTS, "square")
    assert result.passed and result.status == "passed", result
    assert result.duration_s < 5


def test_wrong_solution_fails():
    result = run_tests(WRONG, TESTS, "square")
    assert not result.passed and result.status == "failed"
    assert "AssertionError" in result.stderr_tail


def test_exception_in_solution_fails():
    result = run_tests("def square(x):\n    raise ValueError('boom')\n", TESTS, "square")
    assert result.status == "failed" and "ValueError: boom" in result.stderr_tail


def test_exception_while_defining_is_an_error():
    assert run_tests("def square(x):\n    return x *\n", TESTS, "square").status == "error"
    assert run_tests("import no_such_module_xyz\n", TESTS, "square").status == "error"


def test_missing_entry_point_fails():
    result = run_tests("def cube(x):\n    return x ** 3\n", TESTS, "square")
    assert result.status == "failed" and "square" in result.stderr_tail


def test_plain_assert_tests_call_functions_by_name():
    tests = "assert square(2) == 4\nassert square(3) == 9\n"
    assert run_tests(GOOD, tests).passed
    assert run_tests(GOOD, tests, "square").passed
    assert not run_tests(WRONG, tests, "square").passed


def test_output_is_captured_and_does_not_break_the_proof():
    code = "print('héllo')\nimport sys\nprint('warn', file=sys.stderr)\n" + GOOD
    result = run_tests(code, TESTS, "square")
    assert result.passed
    assert "héllo" in result.stdout_tail and "warn" in result.stderr_tail


def test_stdlib_imports_and_working_directory_are_usable():
    code = (
        "import collections, fractions, heapq, itertools, json, re, string\n"
        "with open('scratch.txt', 'w') as f:\n    f.write('ok')\n"
        "def square(x):\n    return int(fractions.Fraction(x) ** 2)\n"
    )
    assert run_tests(code, TESTS, "square").passed


def test_counter_results_are_plain_data():
    code = "from collections import Counter\ndef square(x):\n    return Counter('ab')\n"
    tests = "def check(c):\n    assert c(1) == {'a': 1, 'b': 1}\n"
    assert run_tests(code, tests, "square").passed


def test_run_many_keeps_order():
    jobs = [(GOOD if i % 3 else WRONG, TESTS, "square") for i in range(9)]
    results = run_many(jobs, max_workers=3)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(9)]
    assert run_many([]) == []


def test_bad_limits_are_config_errors():
    with pytest.raises(ConfigError, match="isolation"):
        run_tests(GOOD, TESTS, "square", SandboxLimits(isolation="bogus"))
    with pytest.raises(ConfigError, match="memory_mb"):
        run_tests(GOOD, TESTS, "square", SandboxLimits(memory_mb=0))


# --------------------------------------------------------------------------- resource attacks
def test_infinite_loop_times_out(no_trace):
    result = attack("while True:\n    pass\n")
    assert result.status == "timeout"


def test_sleeping_forever_times_out(no_trace):
    result = attack("import time\ntime.sleep(3600)\n")
    assert result.status == "timeout"


def test_cpu_limit_stops_a_spin_before_the_wall_clock():
    limits = SandboxLimits(timeout_s=8.0, cpu_s=1.0)
    result = run_tests("while True:\n    pass\n", TESTS, "square", limits)
    assert result.status == "timeout" and result.duration_s < 5, result


@layers
def test_fork_bomb_is_contained(audit, no_trace):
    code = (
        "import os\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    peak = []
    done = threading.Event()

    def sample():  # how many sandbox processes exist while the bomb runs
        while not done.is_set():
            peak.append(len(_sandbox_pids()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        attack(code, audit=audit, max_processes=8)
    finally:
        done.set()
        sampler.join()
    if IS_ROOT:
        assert max(peak) <= 8, max(peak)  # RLIMIT_NPROC held (the audit hook allows only 1)


@layers
def test_children_are_killed_after_a_normal_exit(audit, no_trace):
    # A passing program that leaves a sleeping child behind: the child must not survive.
    code = "import os, time\ntry:\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n" \
           "except RuntimeError:\n    pass\n" + GOOD
    result = run_tests(code, TESTS, "square", SandboxLimits(timeout_s=ATTACK_TIMEOUT, audit_hook=audit))
    assert result.passed, result


@needs_pidns
@layers
def test_setsid_escapee_dies_with_the_sandbox(audit, no_trace, tmp_path):
    # A child that leaves the process group (setsid) is out of killpg's reach;
    # the PID namespace still takes it down.
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(3600)\n"
        "os._exit(0)\n"
    )
    attack(code, audit=audit)


@layers
def test_memory_bomb_fails(audit, no_trace):
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))\n"
    result = attack(code, audit=audit, memory_mb=256)
    assert "MemoryError" in result.stderr_tail or result.status in ("killed", "timeout")


def test_huge_allocation_fails(no_trace):
    result = attack("x = bytearray(8 * 1024 ** 3)\n", memory_mb=256)
    assert "MemoryError" in result.stderr_tail


def test_output_flood_is_bounded(no_trace):
    result = attack("while True:\n    print('x' * 10000)\n", max_file_mb=1)
    assert len(result.stdout_tail) <= 4096


# --------------------------------------------------------------------------- escape attempts
@pytest.fixture
def victim():
    """A root-owned directory (0755) and file (0644) the sandbox can see but must not change."""
    for parent in ("/var/cache", "/var/lib", "/opt", "/srv"):
        if os.path.isdir(parent) and os.access(parent, os.W_OK):
            break
    else:
        pytest.skip("no writable non-tmp directory for the victim")
    directory = tempfile.mkdtemp(prefix="selfcorrect-victim-", dir=parent)
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "precious.txt")
    with open(path, "w") as f:
        f.write("original\n")
    os.chmod(path, 0o644)
    before = os.stat(path)
    yield directory, path
    after = os.stat(path)
    with open(path) as f:
        assert f.read() == "original\n", "the victim file was modified"
    assert (after.st_mtime_ns, after.st_size, stat.S_IMODE(after.st_mode)) == (
        before.st_mtime_ns, before.st_size, 0o644)
    assert os.listdir(directory) == ["precious.txt"], "the sandbox created files outside its directory"
    shutil.rmtree(directory)


def _os_only_needs_root(audit: bool) -> None:
    if not audit and not IS_ROOT:
        pytest.skip("without root the program runs as this user and may write its files")


@layers
def test_shell_command_cannot_touch_files_outside(audit, victim, no_trace):
    _os_only_needs_root(audit)
    directory, path = victim
    code = (
        "import os\n"
        f"print(open({path!r}).read())\n"  # the file is visible...
        f"os.system('touch {directory}/marker; echo pwned > {path}; rm -f {path}')\n"
        + GOOD
    )
    result = attack(code, audit=audit, tests=TESTS + "    assert 1 == 2\n")
    assert "original" in result.stdout_tail  # ...so only permissions protect it


@layers
def test_subprocess_cannot_touch_files_outside(audit, victim, no_trace):
    _os_only_needs_root(audit)
    directory, path = victim
    code = (
        "import subprocess\n"
        f"subprocess.run(['touch', {directory + '/marker'!r}])\n"
        f"subprocess.run(['rm', '-f', {path!r}])\n"
        "raise SystemExit(0)\n"
    )
    attack(code, audit=audit)


@layers
def test_python_cannot_write_or_delete_outside(audit, victim, no_trace):
    _os_only_needs_root(audit)
    directory, path = victim
    for code in (
        f"open({path!r}, 'w').write('pwned')\n",
        f"open({path!r}, 'a').write('pwned')\n",
        f"import os\nos.remove({path!r})\n",
        f"import os\nos.rename({path!r}, {path + '.bak'!r})\n",
        f"import os\nos.chmod({path!r}, 0o777)\n",
        f"open({directory + '/marker'!r}, 'w').write('x')\n",
        f"import shutil\nshutil.rmtree({directory!r})\n",
    ):
        result = attack(code + GOOD, audit=audit)
        assert result.status == "error", (code, result)


@layers
def test_no_network(audit, no_trace):
    if not audit and LEVEL == "basic":
        pytest.skip("without namespaces only the audit hook blocks sockets")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "s.sendall(b'leak')\n" + GOOD
    )
    try:
        attack(code, audit=audit)
        with pytest.raises(socket.timeout):
            conn, _ = server.accept()
            conn.close()
    finally:
        server.close()


@needs_root
def test_runs_as_nobody_with_no_new_privileges():
    code = (
        "import os\n"
        "status = open('/proc/self/status').read()\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), 'NoNewPrivs:\\t1' in status)\n" + GOOD
    )
    result = run_tests(code, TESTS, "square")
    assert result.passed and f"{NOBODY} {NOBODY} [] True" in result.stdout_tail


@needs_pidns
def test_private_tmp_and_process_view():
    code = (
        "import os\n"
        "print(sorted(os.listdir('/tmp')), len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
        + GOOD
    )
    result = run_tests(code, TESTS, "square")
    # Only this sandbox's own (empty) working directory is in its /tmp; /proc shows one process.
    names, count = result.stdout_tail.strip().rsplit(" ", 1)
    assert result.passed and int(count) == 1 and names.count("selfcorrect-sandbox-") == 1


# --------------------------------------------------------------------------- reward hacks
@pytest.mark.parametrize(
    "exit_code",
    ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n", "raise SystemExit(0)\n",
     "exit()\n", "quit(0)\n"],
)
def test_exiting_before_the_tests_fails(exit_code, no_trace):
    attack(exit_code + GOOD.replace("x * x", "0"))


def test_exiting_inside_the_entry_point_fails(no_trace):
    attack("import os\ndef square(x):\n    os._exit(0)\n")
    attack("import sys\ndef square(x):\n    sys.exit(0)\n")


@pytest.mark.parametrize("then", ["import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n", WRONG])
def test_printing_fake_success_fails(then, no_trace):
    code = (
        "import secrets, sys\n"
        "for _ in range(2000):\n    print(secrets.token_hex(16))\n"
        "print('passed')\nprint('All tests passed', file=sys.stderr)\n"
        "sys.stdout.flush()\n" + then
    )
    attack(code)


def test_stdin_does_not_leak_the_token(no_trace):
    code = "import sys, os\nleak = sys.stdin.read() + os.read(0, 100).decode()\nprint(leak)\nos._exit(0)\n"
    result = attack(code)
    assert result.stdout_tail.strip() == ""


def test_redefining_check_does_not_help(no_trace):
    attack("def check(candidate):\n    pass\n" + WRONG)


def test_redefining_assert_helpers_does_not_help(no_trace):
    # Tests with helpers: the program's helpers are not the tests' helpers.
    tests = "def _eq(a, b):\n    return a == b\n\ndef check(candidate):\n    assert _eq(candidate(3), 9)\n"
    attack("def _eq(a, b):\n    return True\n" + WRONG, tests=tests)


@layers
def test_monkeypatching_builtins_does_not_help(audit, no_trace):
    tests = "def check(candidate):\n    assert abs(candidate(3) - 9) < 1e-9\n    assert isinstance(candidate(3), str)\n"
    code = (
        "import builtins\n"
        "builtins.abs = lambda x: 0\n"
        "builtins.isinstance = lambda *a: True\n"
        "builtins.len = lambda x: 0\n" + WRONG
    )
    attack(code, audit=audit, tests=tests)


@layers
def test_monkeypatching_builtins_during_a_call_does_not_help(audit, no_trace):
    tests = "def check(candidate):\n    r = candidate(3)\n    assert abs(r - 9) < 1e-9\n"
    code = "import builtins\ndef square(x):\n    builtins.abs = lambda v: 0\n    return 0\n"
    attack(code, audit=audit, tests=tests)


def test_monkeypatching_modules_the_tests_use_does_not_help(no_trace):
    tests = "import math\ndef check(candidate):\n    assert math.isclose(candidate(3), 9)\n"
    attack("import math\nmath.isclose = lambda *a, **k: True\n" + WRONG, tests=tests)
    attack("import math, sys\nsys.modules['math'] = type(sys)('math')\nsys.modules['math'].isclose = "
           "lambda *a, **k: True\n" + WRONG, tests=tests)


@pytest.mark.parametrize(
    "code",
    [
        "class A:\n    def __eq__(self, other):\n        return True\ndef square(x):\n    return A()\n",
        "class I(int):\n    def __eq__(self, other):\n        return True\ndef square(x):\n    return I(0)\n",
        "class L(list):\n    __eq__ = lambda s, o: True\ndef square(x):\n    return [L()]\n",
    ],
    ids=["object", "int-subclass", "nested"],
)
def test_always_equal_objects_fail(code, no_trace):
    attack(code)


def test_strict_results_can_be_disabled():
    code = "from collections import namedtuple\nP = namedtuple('P', 'x')\ndef square(x):\n    return P(x * x)\n"
    tests = "def check(c):\n    assert c(3) == (9,)\n"
    assert not run_tests(code, tests, "square").passed
    assert run_tests(code, tests, "square", SandboxLimits(strict_results=False)).passed


@layers
def test_background_thread_fails(audit, no_trace):
    code = (
        "import threading, builtins\n"
        "def spin():\n    while True:\n        builtins.abs = lambda x: 0\n"
        "threading.Thread(target=spin, daemon=True).start()\n" + WRONG
    )
    result = attack(code, audit=audit)
    assert "thread" in result.stderr_tail


@layers
def test_signal_handlers_and_timers_are_reset(audit, no_trace):
    tests = "def check(candidate):\n    for _ in range(200000):\n        pass\n    assert abs(candidate(3) - 9) < 1e-9\n"
    code = (
        "import signal, builtins\n"
        "signal.signal(signal.SIGALRM, lambda *a: setattr(builtins, 'abs', lambda x: 0))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n" + WRONG
    )
    attack(code, audit=audit, tests=tests)


@layers
def test_trace_functions_cannot_skip_asserts(audit, no_trace):
    # A tracer could jump over failing assert lines by setting frame.f_lineno.
    code = (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_name == 'check' and event == 'line':\n"
        "        try:\n            frame.f_lineno = frame.f_code.co_firstlineno + 4\n"
        "        except Exception:\n            pass\n"
        "    return tracer\n"
        "sys.settrace(tracer)\n" + WRONG
    )
    tests = "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(3) == 9\n    return\n"
    attack(code, audit=audit, tests=tests)


def test_replacing_function_code_is_refused(no_trace):
    code = "import gc\nfor o in gc.get_objects():\n    pass\n" + WRONG
    assert attack(code).status == "error"
    code = "def square(x):\n    return 0\nsquare.__code__ = (lambda x: x * x).__code__\n"
    assert attack(code).status == "error"


def test_basic_isolation_with_an_accessible_interpreter(no_trace):
    """Without namespaces the user change, rlimits and the token still hold."""
    python = None
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        try:
            limits = SandboxLimits(isolation="basic", python=candidate, timeout_s=ATTACK_TIMEOUT)
            sandbox_isolation(limits)
            python = candidate
            break
        except ConfigError:
            continue
    if python is None:
        pytest.skip("no interpreter the sandbox user can run without namespaces")
    assert run_tests(GOOD, TESTS, "square", limits).passed
    assert not run_tests("import os\nos._exit(0)\n", TESTS, "square", limits).passed
    sleeper = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\n" + GOOD
    assert run_tests(sleeper, TESTS, "square", SandboxLimits(**{**limits.__dict__, "audit_hook": False})).passed
    assert not run_tests("while True:\n    pass\n", TESTS, "square", limits).passed
    assert not run_tests("import socket\nsocket.socket()\n" + GOOD, TESTS, "square", limits).passed


def test_basic_isolation_explains_an_unreadable_interpreter():
    if not IS_ROOT:
        pytest.skip("only root changes user")
    try:
        sandbox_isolation(SandboxLimits(isolation="basic"))
    except ConfigError as exc:
        assert "python=" in str(exc)
