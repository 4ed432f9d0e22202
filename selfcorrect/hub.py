"""The Hugging Face hub, when it cannot be reached: load from the local cache only, and say so in one line.

Without this, a hub model or dataset that is not cached on an offline machine costs the hub client's
retries (51 s for a model, 25 s for a dataset, measured here) before its error.  :func:`hub_unreachable`
asks the hub once per process (one HEAD request, :data:`PROBE_TIMEOUT_S`); when the answer is no, model
loads pass ``local_files_only`` and dataset loads run in the libraries' offline mode, so a cached model or
dataset still loads and an uncached one fails at once.  ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``)
says the same without asking.  Getting models and data into the cache first: docs/data.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

PROBE_TIMEOUT_S = 3.0
"""How long the one reachability request may take before the hub counts as unreachable."""

OFFLINE_HINT = ("the Hugging Face hub cannot be reached and it is not in the local cache: download it first "
                "on a machine with access (docs/data.md, 'Models and data without the internet')")

CACHE_ONLY = "the Hugging Face hub cannot be reached, so only the local cache was read (docs/data.md)"


def _env_offline(*names: str) -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in names)


@functools.lru_cache(maxsize=1)
def _probe(endpoint: str) -> bool:
    import requests

    try:
        requests.head(endpoint, timeout=PROBE_TIMEOUT_S, allow_redirects=False)
    except requests.RequestException:
        return True                                    # no DNS, no route, refused, timed out: unreachable
    return False                                       # any HTTP answer at all: the hub is there


def hub_unreachable() -> bool:
    """True when hub files can only come from the local cache: offline mode is set, or the hub's endpoint
    (``HF_ENDPOINT``) does not answer.  Asked once per process."""
    if _env_offline("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        return True
    from huggingface_hub import constants

    return _probe(constants.ENDPOINT)


@contextlib.contextmanager
def datasets_offline_if_unreachable(dataset: str) -> Iterator[bool]:
    """Around ``datasets.load_dataset(dataset, ...)``: when the hub is unreachable (and ``dataset`` is not a
    local directory), run the load in offline mode, so a cached dataset loads and an uncached one fails at
    once.  ``datasets`` reads its offline switch at import, so the switch is set on the imported modules and
    restored afterwards.  Yields whether the load ran offline."""
    env_offline = _env_offline("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if os.path.isdir(os.path.expanduser(dataset)) or env_offline or not hub_unreachable():
        yield env_offline
        return
    import datasets.config
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def load_hub_dataset(dataset: str, config: str | None, split: str, where: str):
    """``datasets.load_dataset(dataset, config, split=split)`` (offline when the hub is unreachable), with one
    line naming ``where`` and the cause for anything that goes wrong: not installed, not found, no cache."""
    from .errors import ConfigError, DataError, first_line

    try:
        import datasets  # lazy: a heavy import, needed only for hub data
    except ImportError as exc:
        raise ConfigError(f"{where}: loading a dataset by name needs the 'datasets' package "
                          "(pip install datasets)") from exc
    offline = False
    try:
        with datasets_offline_if_unreachable(dataset) as offline:
            return datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # not found, offline, a bad split or config, ...: the message names the cause
        cause = f"{CACHE_ONLY}: {first_line(exc)}" if offline else first_line(exc)
        raise DataError(f"{where}: could not load dataset ({cause})") from exc
