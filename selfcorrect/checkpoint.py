"""Checkpoints: Hugging Face model directories plus the exact training state, written atomically.

``RUN/checkpoint-N/`` holds

* the policy in Hugging Face format (``config.json``, ``model.safetensors``,
  tokenizer files) — loadable by transformers and by
  ``selfcorrect eval --model RUN/checkpoint-N``;
* ``trainer_state.pt`` — optimizer, scheduler, RNG states (python, numpy,
  torch, CUDA), data position, step, stage, iteration, best score;
* ``anchor.safetensors`` — only when a resume from here continues a Stage I
  whose anchor is not the initial model (inside Stage I of iterations after
  the first), so the resumed steps pin attempt 1 to the very same weights;
  elsewhere the anchor is rebuilt before it is read again;
* ``deepspeed/`` — only for DeepSpeed runs: its per-process checkpoint (fp32
  master weights and partitioned Adam state).

A checkpoint is written to ``RUN/.tmp-checkpoint-N`` and renamed into place,
so a crash mid-write never leaves a directory that looks complete.  Its last
file is ``manifest.json`` (every other file's size and SHA-256): a resume
verifies it and falls back to the newest intact checkpoint, naming the damaged
file (:func:`intact_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_file, save_model

from . import faults
from .errors import ConfigError

MANIFEST_FILE = "manifest.json"
STATE_FILE = "trainer_state.pt"
ANCHOR_FILE = "anchor.safetensors"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict[str, Any], anchor=None,
                    weights: dict[str, torch.Tensor] | None = None,
                    anchor_weights: dict[str, torch.Tensor] | None = None,
                    extra: dict[str, Path] | None = None) -> Path:
    """Write ``run_dir/checkpoint-step`` atomically and return its path.

    ``weights`` / ``anchor_weights``: the full state dicts of sharded models
    (gathered by the caller), written instead of the modules' own tensors.
    ``extra``: directories already written elsewhere, moved in under these names.
    """
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if weights is not None:
            weights = _without_tied_copies(model, weights)     # gathered copies no longer share memory
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": weights} if weights else {}))
        tokenizer.save_pretrained(tmp)
        torch.save({**state, "rng": rng_state()}, tmp / STATE_FILE)
        if anchor_weights is not None:
            save_file(_without_tied_copies(anchor, anchor_weights), str(tmp / ANCHOR_FILE))
        elif anchor is not None:  # save_model handles tied (shared) tensors
            save_model(anchor, str(tmp / ANCHOR_FILE))
        for name, directory in (extra or {}).items():
            shutil.move(str(directory), str(tmp / name))
        faults.point("save")
        write_manifest(tmp)                                   # last: its presence says the rest is complete
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for directory in (extra or {}).values():
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return final


def _without_tied_copies(model, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` keeping one name per tied parameter, as :func:`safetensors.torch.load_model` expects."""
    seen: set[int] = set()
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.add(id(param))
    return {k: v.contiguous() for k, v in weights.items() if k not in tied}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """``directory/manifest.json``: the size and SHA-256 of every other file in it (recursively)."""
    files = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}
    tmp = directory / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1) + "\n")
    tmp.replace(directory / MANIFEST_FILE)


def damage(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be trusted (a missing, truncated or changed file), or None when intact.

    Checkpoints written before manifests existed have none; they are taken as they are.
    """
    manifest = checkpoint / MANIFEST_FILE
    if not manifest.is_file():
        return None if (checkpoint / STATE_FILE).is_file() else f"{STATE_FILE} is missing"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is unreadable"
    for name, entry in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{name} is {path.stat().st_size} bytes, the manifest says {entry['size']}"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def intact_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint that passes :func:`damage`; one warning line per damaged newer one."""
    found = list_checkpoints(run_dir)
    if not found:
        raise ConfigError(f"--resume {run_dir}: no complete checkpoint-N directory in it")
    reasons = []
    for _, path in reversed(found):
        reason = damage(path)
        if reason is None:
            for bad, why in reasons:
                print(f"selfcorrect: warning: {bad} is damaged ({why}); resuming from {path.name}", file=sys.stderr)
            return path
        reasons.append((path.name, reason))
    raise ConfigError(f"--resume {run_dir}: no intact checkpoint ("
                      + "; ".join(f"{name}: {why}" for name, why in reasons) + ")")


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    found = []
    for path in run_dir.iterdir() if run_dir.is_dir() else []:
        m = _NAME.match(path.name)
        if m and (path / STATE_FILE).is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path:
    found = list_checkpoints(run_dir)
    if not found:
        raise ConfigError(f"--resume {run_dir}: no complete checkpoint-N directory in it")
    return found[-1][1]


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)


def has_anchor(checkpoint: Path) -> bool:
    return (checkpoint / ANCHOR_FILE).is_file()


def load_anchor(checkpoint: Path, model) -> None:
    """Load the saved Stage I anchor weights into ``model`` (same architecture)."""
    load_model(model, str(checkpoint / ANCHOR_FILE), strict=True)


def prune_checkpoints(run_dir: Path, keep_last: int, protect: set[Path]) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, never those in ``protect`` (e.g. the best)."""
    found = list_checkpoints(run_dir)
    for _, path in found[: max(0, len(found) - keep_last)]:
        if path.resolve() not in {p.resolve() for p in protect}:
            shutil.rmtree(path, ignore_errors=True)


def write_best(run_dir: Path, checkpoint: Path, score: float, step: int) -> None:
    tmp = run_dir / ".best.json.tmp"
    tmp.write_text(json.dumps({"checkpoint": checkpoint.name, "score": score, "step": step}, indent=2) + "\n")
    tmp.replace(run_dir / "best.json")
