"""The raw per-run data behind docs/results: packed into one compressed archive, restored on demand.

docs/results keeps what the docs cite (tables, plots, summaries and logs: ``*.md``, ``*.png``, ``*.log``,
the comparisons' ``*.json``).  Everything a run wrote per episode or per step -- each run directory under a
``seed-N/``, ``samples.jsonl`` and ``metrics.jsonl`` files, configs, ``report.html`` pages, per-run
``metrics.json`` -- lives in ``docs/results/raw.tar.xz``, so a clone is mostly code.  Restore it before
regenerating a table from raw data (the tables regenerate byte-identical; tests/test_results_data.py
checks one)::

    python scripts/results_data.py restore      # unpack into docs/results (ignored by git)
    python scripts/results_data.py pack         # after adding raw results: re-pack them (then commit)
    python scripts/results_data.py list         # what the archive holds
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
ARCHIVE = RESULTS / "raw.tar.xz"
RAW_SUFFIXES = (".jsonl", ".html", ".yaml")


def is_raw(relative: str) -> bool:
    """Whether a path under docs/results is raw per-run data (the module docstring's rule; .gitignore
    holds the same rule, so restored files never show up as changes)."""
    name = relative.rsplit("/", 1)[-1]
    return (bool(re.search(r"(^|/)seed-\d+/", relative)) or relative.endswith(RAW_SUFFIXES)
            or name == "metrics.json")


def raw_files(root: Path = RESULTS) -> list[Path]:
    """The raw files now under ``root``, sorted (the archive itself excluded)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p != root / ARCHIVE.name
                  and is_raw(p.relative_to(root).as_posix()))


def pack(root: Path = RESULTS, archive: Path | None = None) -> int:
    """Write every raw file under ``root`` into the archive (deterministic: sorted names, no times or
    owners) and delete the files; returns how many were packed."""
    archive = archive or root / ARCHIVE.name
    files = raw_files(root)
    known = set(members(archive)) if archive.is_file() else set()
    missing = {name for name in known if is_raw(name)} - {p.relative_to(root).as_posix() for p in files}
    if missing:                       # packing a partial restore would silently drop data
        raise SystemExit(f"results_data: {len(missing)} archived files are not restored here "
                         f"(e.g. {sorted(missing)[0]}): run `restore` first, then `pack`")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", preset=9) as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(buffer.getvalue())
    for path in files:
        path.unlink()
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    return len(files)


def members(archive: Path = ARCHIVE) -> list[str]:
    with tarfile.open(archive, mode="r:xz") as tar:
        return tar.getnames()


def restore(root: Path = RESULTS, archive: Path | None = None) -> int:
    """Unpack the archive into ``root`` (files already there are replaced); returns how many files."""
    archive = archive or root / ARCHIVE.name
    with tarfile.open(archive, mode="r:xz") as tar:
        names = tar.getnames()
        bad = [n for n in names if n.startswith("/") or ".." in Path(n).parts or not is_raw(n)]
        if bad:
            raise SystemExit(f"results_data: {archive} holds an unexpected path: {bad[0]}")
        tar.extractall(root, filter="data")
    return len(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("pack", "restore", "list"))
    args = parser.parse_args(argv)
    if args.action == "list":
        print("\n".join(members()))
    elif args.action == "pack":
        print(f"packed {pack()} files into {ARCHIVE.relative_to(ROOT)} ({ARCHIVE.stat().st_size:,} bytes)")
    else:
        print(f"restored {restore()} files from {ARCHIVE.relative_to(ROOT)} into {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
