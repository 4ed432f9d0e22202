"""Plain data across the judge/candidate boundary: tagged JSON, length-prefixed frames.

This file imports nothing at module level but a builtin module: its source is
prepended to the judge's and the candidate's harness (fresh ``python -I -S``
interpreters that cannot import ``selfcorrect``), and the candidate's start-up
is on the hot path (``json`` alone costs it ~16 ms).

Every value becomes a node ``[tag, payload...]`` of lists whose leaves are
tags and hex tokens; the decoder builds
only exact builtin types (``None``, ``bool``, ``int``, ``float``, ``complex``,
``str``, ``bytes``, ``bytearray``, ``list``, ``tuple``, ``set``,
``frozenset``, ``dict`` and ``collections.deque``), so comparing a decoded
value in the judge never runs code the candidate wrote.  No pickle, no
``eval``.

Encoding is by value: subclasses of builtins cross as their base type
(a namedtuple as a tuple, ``Counter`` / ``OrderedDict`` / ``defaultdict`` as a
dict -- ``defaultdict``'s factory is *not* carried), so a subclass's
``__eq__`` stays behind.  Anything else (functions, generators, class
instances) cannot cross: :class:`BoundaryError` with the type name.
Integers travel in hexadecimal (no 4300-digit ``str(int)`` limit), floats as
``float.hex`` (``nan``, ``inf`` and ``-0.0`` exact), text as its UTF-8 bytes
in hex (lone surrogates kept).

Directions: the judge's requests reach the candidate as ``marshal`` (trusted
data into the untrusted process: safe, and free to import there); the
candidate's answers come back as JSON text (:func:`node_text`) that the judge
parses with ``json`` and :func:`decode` -- never ``marshal``, ``pickle`` or
``eval`` on anything the candidate wrote.
"""

from _collections import deque  # a builtin module: the candidate pays no import for it

MAX_DEPTH = 100
"""Deepest nesting of containers that may cross (deeper: BoundaryError)."""


class BoundaryError(Exception):
    """A value cannot cross the boundary (type, size, depth or a malformed message)."""


class Handle:
    """In the judge: an object of the program's own class that stays in the candidate, held by number.

    Tests that build the program's classes (MBPP's ``Pair(5, 24)``) get one back from the constructor
    and can pass it to the program's functions, where it is the real object again.  In the judge it is
    opaque: equal only to itself, no attributes, so comparing it runs no code the program wrote.
    """

    __slots__ = ("number",)

    def __init__(self, number):
        self.number = number

    def __repr__(self):
        return "<object #%d of the program>" % self.number


def _hex(value):
    return format(value, "x")  # hex is exempt from the int/str digit limit


def _text(value):
    return str.__str__(value).encode("utf-8", "surrogatepass").hex()


def encode(value, depth=0, handles=None):
    """``value`` as a node: nested lists whose leaves are tags and hex tokens (BoundaryError otherwise).

    ``handles`` (a table with ``number_of(value)``) lets objects that stay on one side cross as
    ``["h", number]``: the judge's :class:`Handle` objects, the candidate's objects built by the tests."""
    if depth > MAX_DEPTH:
        raise BoundaryError("nested deeper than %d levels" % MAX_DEPTH)
    d = depth + 1
    if value is None:
        return ["n"]
    if value is True or value is False:
        return ["b", "1" if value else "0"]
    if isinstance(value, int):
        return ["i", _hex(int(value))]
    if isinstance(value, float):
        return ["f", float.hex(float(value))]
    if isinstance(value, complex):
        return ["c", float.hex(value.real), float.hex(value.imag)]
    if isinstance(value, str):
        return ["s", _text(value)]
    if isinstance(value, bytes):
        return ["y", bytes(value).hex()]
    if isinstance(value, bytearray):
        return ["a", bytes(value).hex()]
    if isinstance(value, deque):
        return ["q", [encode(v, d, handles) for v in list(value)]]
    if isinstance(value, list):
        return ["l", [encode(v, d, handles) for v in list.__iter__(value)]]
    if isinstance(value, tuple):
        return ["t", [encode(v, d, handles) for v in tuple.__iter__(value)]]
    if isinstance(value, frozenset):
        return ["F", [encode(v, d, handles) for v in frozenset.__iter__(value)]]
    if isinstance(value, set):
        return ["S", [encode(v, d, handles) for v in set.__iter__(value)]]
    if isinstance(value, dict):
        return ["d", [[encode(k, d, handles), encode(v, d, handles)] for k, v in dict.items(value)]]
    number = None if handles is None else handles.number_of(value)
    if number is not None:
        return ["h", _hex(number)]
    kind = type(value)
    if hasattr(kind, "__next__") and getattr(kind, "__iter__", None) is not None and iter(value) is value:
        # An iterator (map, filter, a generator) crosses drained, as an iterator over its items: list(it)
        # works as in one interpreter, and it == [...] stays False as it would be there.
        return ["I", [encode(v, d, handles) for v in value]]
    raise BoundaryError("a value of type %s cannot cross the sandbox boundary" % type(value).__name__)


def node_text(node):
    """A node as JSON text.  Every leaf is a tag or a hex/float.hex token (no quote, no
    backslash), so the C ``repr`` of the lists is JSON once its quotes are swapped."""
    return repr(node).replace("'", '"')


def _items(payload, depth, handles):
    if not isinstance(payload, list):
        raise BoundaryError("malformed container")
    return [decode(v, depth + 1, handles) for v in payload]


FLOOD_CHECK_SIZE = 1000
"""Sets and dicts larger than this are checked for hash flooding before they are built."""


def _hashable(items, what, keys=None):
    """``what(items)`` (set, frozenset, dict); BoundaryError when unhashable or hash-flooded.

    Elements whose hashes collide make building the container quadratic (ints equal modulo
    2**61 - 1 share one hash): a program could make the judge spend its whole CPU limit on one
    value.  Honest data has (nearly) distinct hashes; counting them costs one pass.
    """
    keys = items if keys is None else keys
    try:
        if len(keys) > FLOOD_CHECK_SIZE and len({hash(k) for k in keys}) < 0.9 * len(keys):
            raise BoundaryError("a %s whose elements share hashes (hash flooding)" % what.__name__)
        return what(items)
    except TypeError as exc:
        raise BoundaryError("unhashable element in a %s: %s" % (what.__name__, exc)) from None


def decode(node, depth=0, handles=None):
    """The exact-builtin value of a ``node`` (raises BoundaryError when malformed); ``["h", number]``
    only with a ``handles`` table (``resolve(number)``)."""
    if depth > MAX_DEPTH:
        raise BoundaryError("nested deeper than %d levels" % MAX_DEPTH)
    if type(node) is not list or not node or type(node[0]) is not str:
        raise BoundaryError("malformed value")
    tag, n = node[0], len(node)
    leaf = n == 2 and type(node[1]) is str
    try:
        if tag == "n" and n == 1:
            return None
        if tag == "b" and leaf and node[1] in ("0", "1"):
            return node[1] == "1"
        if tag == "i" and leaf:
            return int(node[1], 16)
        if tag == "f" and leaf:
            return float.fromhex(node[1])
        if tag == "c" and n == 3 and type(node[1]) is str and type(node[2]) is str:
            return complex(float.fromhex(node[1]), float.fromhex(node[2]))
        if tag == "s" and leaf:
            return bytes.fromhex(node[1]).decode("utf-8", "surrogatepass")
        if tag == "h" and leaf and handles is not None:
            return handles.resolve(int(node[1], 16))
        if tag in ("y", "a") and leaf:
            raw = bytes.fromhex(node[1])
            return raw if tag == "y" else bytearray(raw)
        if n == 2 and tag in ("l", "t", "q", "S", "F", "I"):
            items = _items(node[1], depth, handles)
            if tag == "l":
                return items
            if tag == "I":
                return iter(items)
            if tag == "t":
                return tuple(items)
            if tag == "q":
                return deque(items)
            return _hashable(items, set if tag == "S" else frozenset)
        if tag == "d" and n == 2 and type(node[1]) is list:
            pairs = []
            for pair in node[1]:
                if type(pair) is not list or len(pair) != 2:
                    raise BoundaryError("malformed dict item")
                pairs.append((decode(pair[0], depth + 1, handles), decode(pair[1], depth + 1, handles)))
            return _hashable(pairs, dict, [k for k, _ in pairs])
    except (ValueError, OverflowError, UnicodeDecodeError) as exc:
        raise BoundaryError("malformed %r value: %s" % (tag, exc)) from None
    raise BoundaryError("unknown or malformed tag %r" % (tag,))


def frame(data):
    """``data`` (bytes) behind a 4-byte big-endian length."""
    return len(data).to_bytes(4, "big") + data


def frame_size(header):
    return int.from_bytes(header, "big")


def pack_json(message):
    """A frame of JSON, for the trusted parent <-> judge messages and the candidate's answers."""
    import json
    return frame(json.dumps(message, separators=(",", ":"), allow_nan=False).encode("utf-8"))


def parse_json(body):
    """A frame's JSON body (raises BoundaryError when it is not JSON)."""
    import json
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise BoundaryError("malformed message: %s" % type(exc).__name__) from None


def read_json_frame(sock):
    """One :func:`pack_json` frame from a socket, read in place (EOFError if it closes first)."""
    def exactly(n):
        data = bytearray(n)
        view, got = memoryview(data), 0
        while got < n:
            count = sock.recv_into(view[got:])
            if not count:
                raise EOFError
            got += count
        return bytes(data)
    return parse_json(exactly(frame_size(exactly(4))))
