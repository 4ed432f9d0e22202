"""The candidate process: runs the model's program and answers the judge's calls.

Runs as ``python -I -S -c <wire.py + this file>`` inside the isolated view
(see ``judge.py``); nothing else runs here, and nothing here is trusted.  The
program may rewrite this harness, the codec, its own answers or the process
itself: the judge treats every byte that comes out as untrusted data, so the
worst a hostile program can do is answer wrongly.  The tests never enter this
process.

Protocol (length-prefixed frames, ``wire.frame``): the judge writes
``marshal`` data to fd 3 (trusted data, and ``marshal`` is built in: this
harness imports nothing), we answer on fd 4 with JSON text (``wire.node_text``
inside a tiny hand-built envelope whose strings are all tags or hex).  First ``{"t": "program", "code", "audit"}``; we answer ``ready`` (the
program ran to its end) or ``error``.  Then any number of
``{"t": "names", "names"}`` -> ``{"t": "names", "callable"}`` (a "1"/"0" flag per name) and
``{"t": "call", "name", "args", "kwargs"}`` -> ``return`` (the value and the
arguments after the call, for the copy-back of in-place mutation), ``raise``
(exception type name and message) or ``unencodable`` (why the value cannot
cross).
"""

import builtins
import marshal
import os
import sys

_REQUESTS, _ANSWERS = 3, 4
_read, _write, _exit = os.read, os.write, os._exit


def _read_exactly(n):
    chunks, left = [], n
    while left:
        chunk = _read(_REQUESTS, min(left, 1 << 20))
        if not chunk:
            _flush_and_exit()  # the judge is done (or gone)
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive():
    return marshal.loads(_read_exactly(frame_size(_read_exactly(4))))  # noqa: F821 (wire.py)


def _flush_and_exit():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    _exit(0)


def _send(message):
    """``message``: a dict of tags, hex strings and nodes (JSON once its quotes are swapped)."""
    for stream in (sys.stdout, sys.stderr):  # the program's output so far reaches the tails even if
        try:                                  # the judge ends the run right after this answer
            stream.flush()
        except BaseException:
            pass
    data = frame(node_text(message).encode("ascii"))  # noqa: F821 (wire.py)
    while data:
        data = data[_write(_ANSWERS, data):]


def _audit_hook():
    """Defence in depth only: the OS view and limits hold without it."""
    blocked = frozenset({
        "os.system", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit",
        "sys.settrace", "sys.setprofile", "sys._current_frames", "sys.addaudithook",
        "cpython.run_command", "cpython.run_file", "cpython.run_module", "cpython.run_startup",
    })
    prefixes = ("socket.", "ctypes.", "subprocess.", "os.fork", "os.exec", "os.spawn", "os.posix_spawn",
                "pty.", "gc.get_")
    # Subinterpreters raise no audit event of their own: refusing the import is the hook's part
    # (the view masks their extension files, which also stops loading them under another name).
    blocked_modules = ("_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels",
                       "_interpreters", "_testcapi", "_testinternalcapi", "_testmultiphase")

    def hook(event, args):
        if event in blocked or event.startswith(prefixes):
            raise RuntimeError("sandbox: %s is not allowed" % event)
        if event == "import" and args and isinstance(args[0], str):
            if args[0].rpartition(".")[2].startswith(blocked_modules):
                raise ImportError("sandbox: importing %s is not allowed" % args[0])

    sys.addaudithook(hook)


class _Objects:
    """Objects the tests built by calling one of the program's classes, kept here and known to the judge
    by number only (``wire.Handle``); kept alive so that their numbers stay valid."""

    def __init__(self):
        self.by_number, self.by_id = [], {}

    def add(self, value):
        if id(value) not in self.by_id:
            self.by_id[id(value)] = len(self.by_number)
            self.by_number.append(value)

    def number_of(self, value):
        return self.by_id.get(id(value))

    def resolve(self, number):
        if 0 <= number < len(self.by_number):
            return self.by_number[number]
        raise BoundaryError("no object #%d" % number)  # noqa: F821 (wire.py)


_OBJECTS = _Objects()


def _reply_to_call(ns, request):
    fn = ns.get(request["name"])
    try:
        args = decode(request["args"], 0, _OBJECTS)  # noqa: F821 (wire.py)
        kwargs = decode(request["kwargs"], 0, _OBJECTS)  # noqa: F821
        _realias(args, kwargs, request.get("alias") or [])
        result = fn(*args, **kwargs)
    except BaseException as exc:  # the program's exception is its answer
        return {"t": "raise", "type": _hexstr(_type_name(exc)), "message": _message(exc)}
    try:
        try:
            value = encode(result, 0, _OBJECTS)  # noqa: F821 (wire.py)
        except BoundaryError:  # noqa: F821 (wire.py)
            if not (isinstance(fn, type) and isinstance(result, fn)):
                raise
            _OBJECTS.add(result)  # the tests built an object of the program's class: it stays here
            value = encode(result, 0, _OBJECTS)  # noqa: F821 (wire.py)
        return {"t": "return", "value": value,
                "args": encode([list(args), kwargs], 0, _OBJECTS)}  # noqa: F821 (wire.py)
    except BaseException as exc:
        return {"t": "unencodable", "reason": _message(exc)}


def _realias(args, kwargs, alias):
    """Make arguments that were one object in the judge one object here again (top level only)."""
    keys = list(kwargs)
    values = args + [kwargs[k] for k in keys]
    for j, i in enumerate(alias[:len(values)]):
        if 0 <= i < j:
            values[j] = values[i]
    args[:] = values[:len(args)]
    for k, v in zip(keys, values[len(args):]):
        kwargs[k] = v


def _type_name(exc):
    """The builtin's name for a builtin exception; a qualified name for the program's own classes, so a
    class that merely shares a builtin's name (``class ValueError(Exception)``) never arrives as it."""
    kind = type(exc)
    if getattr(builtins, kind.__name__, None) is kind:
        return kind.__name__
    return "%s.%s" % (getattr(kind, "__module__", "?"), getattr(kind, "__qualname__", kind.__name__))


def _hexstr(text):
    return text.encode("utf-8", "replace").hex()


def _message(exc):
    try:
        return _hexstr(str(exc)[:2000])
    except BaseException:
        return _hexstr("(unprintable)")


def _main():
    request = _receive()
    if request["audit"]:
        _audit_hook()
    module = type(sys)("__candidate__")  # not "__main__": main-guarded code does not run
    sys.modules["__candidate__"] = module
    ns = module.__dict__
    try:
        exec(compile(request["code"], "<program>", "exec"), ns)
    except BaseException as exc:
        _send({"t": "error", "type": _hexstr(type(exc).__name__), "message": _message(exc)})
        _flush_and_exit()
    _send({"t": "ready"})
    while True:
        request = _receive()
        kind = request.get("t")
        if kind == "names":
            _send({"t": "names", "callable": ["1" if callable(ns.get(n)) else "0" for n in request["names"]]})
        elif kind == "call":
            _send(_reply_to_call(ns, request))
        else:
            _flush_and_exit()


_main()
