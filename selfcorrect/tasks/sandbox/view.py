"""The candidate's filesystem view: the host paths its interpreter needs (itself, its loader and
libraries, its standard library), everything else absent, and the extension modules that reach around
the OS limits masked.  ``judge.py`` builds the view from these entries (docs/sandbox.md)."""

from __future__ import annotations

import functools
import glob
import json
import os
import struct
import subprocess
from collections.abc import Iterable

from ...errors import ConfigError

# Parts of the standard library no program needs (its own test suite, GUI and IDE packages, the build
# configuration with the static library): masked, which keeps the view small enough to be pinned in the
# page cache whole (judge.py: the view is a store no run can write only if all of it stays resident).
_MASKED_STDLIB = ("test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "config-*")

# Extension modules that reach around the OS limits or the interpreter; masked in the view.
_MASKED_EXTENSIONS = ("_ctypes", "_ctypes_test", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels",
                      "_interpreters", "_interpchannels", "_interpqueues", "_testcapi", "_testinternalcapi",
                      "_testmultiphase", "_testsinglephase", "_testbuffer", "_testclinic", "_testimportmultiple",
                      "_xxtestfuzz", "xxlimited", "xxlimited_35")

_PROBE = r"""
import json, os, sys
blocked = set(json.loads(sys.argv[1]))
for d in [p for p in sys.path if os.path.isdir(p) and p.endswith("lib-dynload")]:
    for f in sorted(os.listdir(d)):
        name = f.split(".")[0]
        if f.endswith(".so") and name not in blocked:
            try:
                __import__(name)
            except BaseException:
                pass
maps = set()
with open("/proc/self/maps") as f:
    for line in f:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            maps.add(parts[5].strip())
print(json.dumps({"path": sys.path, "maps": sorted(maps), "executable": sys.executable}))
"""


def _elf_interpreter(path: str) -> str | None:
    """PT_INTERP of an ELF executable (the dynamic loader the kernel opens by that path)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
                return None
            end = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack(end + "Q", head[32:40])
            phentsize, phnum = struct.unpack(end + "HH", head[54:58])
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                p_type, _, p_offset, _, _, p_filesz = struct.unpack(end + "IIQQQQ", f.read(40))
                if p_type == 3:
                    f.seek(p_offset)
                    return f.read(p_filesz).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


class _View:
    """The paths of the host that the candidate sees, as judge.py's entries."""

    def __init__(self) -> None:
        self.dirs: set[str] = set()
        self.files: set[str] = set()
        self.links: dict[str, str] = {}

    def add(self, path: str, as_dir: bool) -> None:
        """Make ``path`` resolve in the view as on the host: its symlinks replicated, the end bound."""
        parts = [p for p in os.path.normpath(path).split("/") if p]
        current = ""
        for i, part in enumerate(parts):
            current += "/" + part
            if os.path.islink(current):
                target = os.readlink(current)
                self.links[current] = target
                resolved = os.path.normpath(os.path.join(os.path.dirname(current), target))
                self.add(os.path.join(resolved, *parts[i + 1:]), as_dir)
                return
        if not current:
            return
        (self.dirs if as_dir else self.files).add(current)

    def _covered(self, path: str, dirs: Iterable[str]) -> bool:
        return any(path == d or path.startswith(d + "/") for d in dirs)

    def entries(self) -> list[list[str]]:
        dirs = sorted(d for d in self.dirs if not any(d != o and d.startswith(o + "/") for o in self.dirs))
        files = sorted(f for f in self.files if not self._covered(f, dirs))
        links = sorted((p, t) for p, t in self.links.items() if not self._covered(p, dirs))
        masks: list[list[str]] = []
        for d in dirs:
            for pattern in ("site-packages", "dist-packages", "python3*/site-packages", "python3*/dist-packages",
                            "python3/dist-packages"):
                for hit in sorted(glob.glob(os.path.join(d, pattern))):
                    hit = os.path.normpath(hit)
                    if os.path.isdir(hit) and not os.path.islink(hit) and ["mask-dir", hit, ""] not in masks:
                        masks.append(["mask-dir", hit, ""])
            if os.path.isfile(os.path.join(d, "os.py")):  # the standard library
                for pattern in _MASKED_STDLIB:
                    for hit in sorted(glob.glob(os.path.join(d, pattern))):
                        if os.path.isdir(hit) and not os.path.islink(hit):
                            masks.append(["mask-dir", os.path.normpath(hit), ""])
            for dynload in glob.glob(os.path.join(d, "**", "lib-dynload"), recursive=True) + [d]:
                for name in _MASKED_EXTENSIONS:
                    for hit in sorted(glob.glob(os.path.join(dynload, name + ".*so"))):
                        if ["mask-file", hit, ""] not in masks:
                            masks.append(["mask-file", hit, ""])
        return ([["dir", d, ""] for d in dirs] + [["file", f, ""] for f in files]
                + [["symlink", p, t] for p, t in links] + masks)


@functools.lru_cache(maxsize=8)
def _filesystem_view(python: str) -> tuple[tuple[str, str, str], ...]:
    """What the candidate interpreter needs: itself, its loader and libraries, its standard library."""
    try:
        out = subprocess.run([python, "-I", "-S", "-c", _PROBE, json.dumps(_MASKED_EXTENSIONS)],
                             capture_output=True, text=True, timeout=60, env={"LC_ALL": "C.UTF-8"}, check=True)
        probe = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise ConfigError(f"cannot start the sandbox interpreter {python!r}: {exc}") from exc
    view = _View()
    view.add(python, as_dir=False)
    loader = _elf_interpreter(python)
    if loader:
        view.add(loader, as_dir=False)
    # Shared libraries file by file (a library directory can hold a gigabyte), with the symlinks the
    # loader finds them by (libz.so.1 -> libz.so.1.2.13); locale data directory by directory.
    mapped = {m for m in probe["maps"] if os.path.isfile(m) and not m.startswith(("/proc/", "/dev/", "/memfd:"))}
    real = {os.path.realpath(m) for m in mapped}
    for path in sorted(mapped):
        if os.path.basename(os.path.dirname(os.path.dirname(path))) == "locale":
            view.add(os.path.dirname(path), as_dir=True)
            continue
        view.add(path, as_dir=False)
        directory = os.path.dirname(path)
        for name in sorted(os.listdir(directory)):
            link = os.path.join(directory, name)
            if os.path.islink(link) and os.path.realpath(link) in real:
                view.add(link, as_dir=False)
    for entry in probe["path"]:
        if os.path.isdir(entry):
            view.add(entry, as_dir=True)
    if os.path.isfile("/etc/ld.so.cache"):
        view.add("/etc/ld.so.cache", as_dir=False)
    for top in ("/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"):
        if os.path.islink(top):  # merged /usr: the loader's default search paths go through these
            view.links[top] = os.readlink(top)
    return tuple(tuple(e) for e in view.entries())  # type: ignore[misc]
