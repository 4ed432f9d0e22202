"""The code sandbox's contract: correct programs pass, wrong ones fail, and values cross as plain data.

The hostile programs are in ``test_sandbox_attacks.py``; this file covers the
judge/candidate protocol (proxies, equality, floats, exceptions, mutation,
timeouts, MBPP-style multi-function tests), the codec on its own, limits and
isolation levels.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections import deque

import pytest

from selfcorrect.errors import ConfigError
from selfcorrect.tasks.sandbox import SandboxLimits, run_many, run_tests, sandbox_info, sandbox_isolation, wire

IS_ROOT = os.geteuid() == 0
LEVEL = sandbox_isolation(SandboxLimits(isolation="auto"))
needs_full = pytest.mark.skipif(LEVEL != "full", reason="needs root with mount/PID/network/IPC namespaces")

TESTS = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 9\n"
GOOD = "def square(x):\n    return x * x\n"
WRONG = "def square(x):\n    return x + x\n"  # right for 2, wrong for 3
QUICK = SandboxLimits(timeout_s=3.0)


def run(code: str, tests: str, entry: str | None = None, context: str = "", **limits):
    return run_tests(code, tests, entry, SandboxLimits(**{"timeout_s": 5.0, **limits}), context=context)


# --------------------------------------------------------------------------- verdicts
def test_correct_solution_passes():
    result = run_tests(GOOD, TESTS, "square")
    assert result.passed and result.status == "passed" and result.reason == "", result


def test_wrong_solution_fails_with_the_first_failing_assert():
    result = run_tests(WRONG, TESTS, "square")
    assert not result.passed and result.status == "failed"
    assert result.reason == "AssertionError at tests line 3: assert candidate(3) == 9", result.reason


def test_exception_in_solution_fails_with_its_type():
    result = run_tests("def square(x):\n    raise ValueError('boom')\n", TESTS, "square")
    assert result.status == "failed" and result.reason.startswith("ValueError: boom at tests line 2"), result


def test_exception_while_defining_is_an_error():
    result = run_tests("def square(x):\n    return x *\n", TESTS, "square")
    assert result.status == "error" and "SyntaxError" in result.reason
    result = run_tests("import no_such_module_xyz\n", TESTS, "square")
    assert result.status == "error" and "ModuleNotFoundError" in result.reason


def test_missing_entry_point_fails():
    result = run_tests("def cube(x):\n    return x ** 3\n", TESTS, "square")
    assert result.status == "failed" and result.reason == "the program does not define square()"


def test_program_output_is_captured():
    code = "print('héllo')\nimport sys\nprint('warn', file=sys.stderr)\n" + GOOD
    result = run_tests(code, TESTS, "square")
    assert result.passed and "héllo" in result.stdout_tail and "warn" in result.stderr_tail


def test_stdlib_and_scratch_directory_are_usable():
    code = (
        "import collections, fractions, heapq, itertools, json, re, string, typing, os\n"
        "with open('scratch.txt', 'w') as f:\n    f.write('ok')\n"
        "assert open(os.path.join(os.getcwd(), 'scratch.txt')).read() == 'ok'\n"
        "def square(x):\n    return int(fractions.Fraction(x) ** 2)\n"
    )
    assert run_tests(code, TESTS, "square").passed


def test_run_many_keeps_order_and_forms():
    jobs = [(GOOD if i % 3 else WRONG, TESTS, "square") for i in range(9)]
    jobs.append((GOOD, "assert square(3) == 9\n"))                   # (code, tests): MBPP style
    jobs.append((GOOD, "assert sq(3) == 9\n", "square", "sq = lambda x: x * x\n"))  # with context
    results = run_many(jobs, max_workers=3)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(9)] + [True, True]
    assert run_many([]) == []


# --------------------------------------------------------------------------- the proxy: values across
@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 10 ** 5000, -(2 ** 200), 1.5, -0.0, math.inf, -math.inf, 1e-310, complex(1, -2),
    "", "héllo\n\t\"'\\", "\ud800 lone surrogate", b"\x00\xff", bytearray(b"ab"), [1, [2, [3]]], (1, (2,)), (),
    {1, 2}, frozenset({(1, 2)}), {"a": [1], (1, 2): {3: None}}, deque([1, 2]),
], ids=lambda value: type(value).__name__)
def test_codec_round_trips_exact_builtins(value):
    back = wire.decode(wire.parse_json(wire.node_text(wire.encode(value)).encode()))
    assert type(back) is type(value) and (back == value or (value != value and back != back))
    if isinstance(value, float):
        assert math.copysign(1, back) == math.copysign(1, value)


def test_codec_nan_and_subclasses_cross_as_their_base_type():
    from collections import Counter, OrderedDict, defaultdict, namedtuple
    assert math.isnan(wire.decode(wire.encode(float("nan"))))
    point = namedtuple("P", "x y")(1, 2)
    for value, kind in ((point, tuple), (Counter("aab"), dict), (OrderedDict(a=1), dict),
                        (defaultdict(list, a=[1]), dict), (True, bool)):
        assert type(wire.decode(wire.encode(value))) is kind


@pytest.mark.parametrize("node", [
    [], ["zz"], ["i"], ["i", "xyz"], ["i", 5], ["b", "2"], ["s", "0g"], ["s", "ff"], ["l", "notalist"],
    ["S", [["l", []]]], ["d", [[["l", []], ["n"]]]], ["d", [["n"]]], "str", None, ["n", "extra"],
])
def test_codec_rejects_malformed_nodes(node):
    with pytest.raises(wire.BoundaryError):
        wire.decode(node)


def test_codec_refuses_objects_and_deep_nesting():
    for value in (object(), lambda: 1, type, ...):
        with pytest.raises(wire.BoundaryError, match="cannot cross"):
            wire.encode(value)
    crossed = wire.decode(wire.encode(x * x for x in range(3)))     # an iterator crosses drained, as one
    assert next(crossed) == 0 and list(crossed) == [1, 4] and crossed != [0, 1, 4]
    with pytest.raises(wire.BoundaryError):
        wire.decode(["h", "0"])                                     # a handle needs a table to resolve it
    deep: list = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(wire.BoundaryError, match="deeper"):
        wire.encode(deep)
    node: list = ["n"]
    for _ in range(wire.MAX_DEPTH + 5):
        node = ["l", [node]]
    with pytest.raises(wire.BoundaryError, match="deeper"):
        wire.decode(node)


def test_equality_semantics_follow_python():
    code = (
        "def tup():\n    return (1, 2)\n"
        "def lst():\n    return [1, 2]\n"
        "def nan():\n    return float('nan')\n"
        "def inf():\n    return float('-inf')\n"
        "def st():\n    return {3, 1}\n"
        "def dct():\n    return {(1, 2): 'a', 'b': None}\n"
        "def none():\n    return None\n"
        "def byt():\n    return 'é'.encode()\n"
        "def big():\n    return 3 ** 10000\n"
        "def flt():\n    return 0.1 + 0.2\n"
    )
    tests = (
        "import math\n"
        "assert tup() == (1, 2) and tup() != [1, 2] and isinstance(tup(), tuple)\n"
        "assert lst() == [1, 2] and lst() != (1, 2)\n"
        "assert math.isnan(nan()) and nan() != nan()\n"
        "assert inf() == -math.inf\n"
        "assert st() == {1, 3} and type(st()) is set\n"
        "assert dct() == {'b': None, (1, 2): 'a'}\n"
        "assert none() is None\n"
        "assert byt() == b'\\xc3\\xa9'\n"
        "assert big() == 3 ** 10000\n"
        "assert flt() != 0.3 and math.isclose(flt(), 0.3)\n"
    )
    result = run(code, tests)
    assert result.passed, result


def test_a_tuple_is_not_a_list():
    result = run("def f():\n    return (1, 2)\n", "assert f() == [1, 2]\n")
    assert result.status == "failed" and "line 1" in result.reason


def test_tests_that_expect_exceptions():
    code = ("def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
            "class Oops(Exception):\n    pass\n"
            "def g():\n    raise Oops('custom')\n")
    tests = (
        "try:\n    f(-1)\n    raise AssertionError('no exception')\nexcept ValueError as e:\n"
        "    assert str(e) == 'negative'\n"
        "try:\n    g()\nexcept Exception as e:\n    assert 'Oops: custom' in str(e)\n"
        "assert f(2) == 2\n"
    )
    assert run(code, tests).passed
    # The wrong exception type does not satisfy `except ValueError`.
    wrong = "def f(x):\n    raise KeyError('k')\ndef g():\n    pass\n"
    assert run(wrong, tests).status == "failed"


def test_a_swallowed_crash_still_fails():
    """A dataset's bare ``except`` cannot turn the program's crash, exit or timeout into a pass."""
    tests = "try:\n    f(1)\nexcept BaseException:\n    pass\n"
    for code, status in (("import os\ndef f(x):\n    os._exit(0)\n", "exited"),
                         ("def f(x):\n    raise SystemExit(0)\n", "exited"),
                         ("def f(x):\n    while True:\n        pass\n", "timeout")):
        result = run(code, tests, timeout_s=3.0, call_timeout_s=0.5)
        assert result.status == status and not result.passed, (code, result)


def test_in_place_mutation_is_copied_back():
    code = ("def sort_in_place(xs):\n    xs.sort()\n"
            "def fill(d, s, b):\n    d['k'] = 1\n    s.add(2)\n    b.extend(b'z')\n    return len(d)\n")
    tests = ("xs = [3, 1, 2]\nassert sort_in_place(xs) is None\nassert xs == [1, 2, 3]\n"
             "d, s, b = {}, set(), bytearray()\nassert fill(d, s, b) == 1\n"
             "assert d == {'k': 1} and s == {2} and b == bytearray(b'z')\n")
    assert run(code, tests).passed


def test_arguments_cross_by_value_and_objects_fail_closed():
    # An argument the judge cannot send (a function) fails closed, with the reason.
    result = run("def apply(f, x):\n    return f(x)\n", "assert apply(lambda v: v, 1) == 1\n")
    assert result.status == "boundary" and "argument of apply()" in result.reason and "function" in result.reason
    # A result that is not plain data fails closed too (a dataclass instance).
    code = ("from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\n"
            "def make():\n    return P(1)\n")
    result = run(code, "assert make() is not None\n")
    assert result.status == "boundary" and "cannot cross" in result.reason and "P" in result.reason


def test_mbpp_style_tests_with_several_functions_and_setup():
    code = "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n"
    context = "import math\nOFFSET = 10\n"
    tests = "assert add(1, 2) == 3\nassert mul(add(1, 1), OFFSET) == 20\nassert math.floor(mul(1.5, 2)) == 3\n"
    assert run(code, tests, "add", context).passed
    # The context's names are trusted: a program defining OFFSET or math does not replace them.
    hack = code + "OFFSET = 0\nmath = None\n"
    assert run(hack, tests, "add", context).passed
    assert run(code.replace("a * b", "a - b"), tests, "add", context).status == "failed"


def test_top_level_side_effects_and_loops():
    assert run("print('side effect')\n" + GOOD, TESTS, "square").passed
    result = run("while True:\n    pass\n" + GOOD, TESTS, "square", timeout_s=2.0)
    assert result.status == "timeout" and result.duration_s < 5


def test_per_call_timeout_is_separate_from_the_run():
    code = "import time\ndef slow(x):\n    time.sleep(x)\n    return x\n"
    assert run(code, "assert slow(0.1) == 0.1\nassert slow(0.1) == 0.1\n", call_timeout_s=0.5).passed
    result = run(code, "assert slow(2) == 2\n", call_timeout_s=0.5, timeout_s=5.0)
    assert result.status == "timeout" and result.duration_s < 2.5, result


def test_huge_results_fail_closed():
    result = run("def f():\n    return 'x' * (20 * 2 ** 20)\n", "assert f() == ''\n", max_message_mb=1)
    assert result.status == "boundary" and "larger than" in result.reason


def test_bad_limits_are_config_errors():
    with pytest.raises(ConfigError, match="isolation"):
        run_tests(GOOD, TESTS, "square", SandboxLimits(isolation="bogus"))
    with pytest.raises(ConfigError, match="memory_mb"):
        run_tests(GOOD, TESTS, "square", SandboxLimits(memory_mb=0))
    with pytest.raises(ConfigError, match="call_timeout_s"):
        run_tests(GOOD, TESTS, "square", SandboxLimits(call_timeout_s=-1))


# --------------------------------------------------------------------------- isolation levels
def test_full_is_the_default_and_a_weaker_level_must_be_asked_for(monkeypatch):
    monkeypatch.delenv("SELFCORRECT_SANDBOX_ISOLATION", raising=False)
    assert SandboxLimits().isolation == "full"
    monkeypatch.setenv("SELFCORRECT_SANDBOX_ISOLATION", "basic")
    assert SandboxLimits().isolation == "basic"  # the explicit opt-in for a whole job
    monkeypatch.delenv("SELFCORRECT_SANDBOX_ISOLATION")
    if LEVEL != "full":
        with pytest.raises(ConfigError, match="Ask for a weaker level explicitly"):
            sandbox_isolation(SandboxLimits())


@needs_full
def test_sandbox_info_reports_the_view_and_the_cgroup():
    info = sandbox_info()
    assert info["isolation"] == "full" and info["gives_up"] == ""
    binds = [path for kind, path, _ in info["view"] if kind in ("dir", "file")]
    assert not any("site-packages" in p or p.startswith(os.getcwd()) for p in binds), binds
    masked = [path for kind, path, _ in info["view"] if kind == "mask-dir"]
    assert any(p.endswith("site-packages") for p in masked)
    assert info["cgroup"] or info["cgroup_unavailable"]


def _basic_limits() -> SandboxLimits | None:
    for python in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if not python:
            continue
        limits = SandboxLimits(isolation="basic", python=python, timeout_s=3.0)
        try:
            sandbox_isolation(limits)
            return limits
        except ConfigError:
            continue
    return None


def test_basic_level_keeps_the_verdict_honest():
    """Without namespaces the judge/candidate split still decides the verdict."""
    limits = _basic_limits()
    if limits is None:
        pytest.skip("no interpreter the sandbox user can run without namespaces")
    assert run_tests(GOOD, TESTS, "square", limits).passed
    assert not run_tests(WRONG, TESTS, "square", limits).passed
    assert not run_tests("import os\nos._exit(0)\n", TESTS, "square", limits).passed
    always_equal = "class A:\n    __eq__ = lambda s, o: True\ndef square(x):\n    return A()\n"
    assert run_tests(always_equal, TESTS, "square", limits).status == "boundary"


def test_basic_level_explains_an_unreadable_interpreter():
    if not IS_ROOT:
        pytest.skip("only root changes user")
    try:
        sandbox_isolation(SandboxLimits(isolation="basic", python=sys.executable))
    except ConfigError as exc:
        assert "python=" in str(exc)
