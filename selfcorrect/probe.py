"""``selfcorrect probe``: can RL teach this model to correct itself on this task, at this temperature?

RL can only reinforce what the policy already samples.  SCoRe's reward for a second attempt pays off when
attempt 2 turns a wrong answer into a right one; if the model (almost) never does that under training
sampling, every method ends up copying its first answer (Δ = 0), whatever the estimator.  The probe
measures that signal *before* training, on the run's own settings: ``N`` training problems × ``k``
samples (the RLOO group size) × the run's attempts, at the training temperature and token limit, with
the correction instruction.  Per episode it compares attempt 1 with attempt 2:

* **answer correction** -- attempt 1 wrong, attempt 2 right, and attempt 1 did not hold the right answer
  in some other form (the task's lenient reader finds no right answer in it);
* **form repair** -- attempt 1 wrong under the reward but right under the lenient reader (the right answer,
  not in the instructed form), attempt 2 right: a formatting lesson, not self-correction;
* **break** -- attempt 1 right, attempt 2 wrong;  **unchanged** -- the same reward at both.

and, from the ``k`` samples of each problem:

* **anchoring** -- P(attempt 2 right | it changed a wrong answer) beside the success rate of an independent
  re-sample of the same problem (the other samples' first attempts): a model that re-answers from scratch
  would reach the second; one anchored on its own mistake stays far below it;
* **self-consistency** -- how many of the other samples give attempt 1's answer, as a detector of whether
  attempt 1 is right (AUROC), and the Δ ceiling of the policy "keep attempt 1 when at least half of the
  other samples agree with it, otherwise re-answer independently" (the re-answer counted at the other
  samples' success rate), beside the oracle ceiling (re-answer exactly the wrong ones);
* **RLOO groups with reward variance** -- the share of a problem's ``k`` samples whose rewards at attempt t
  are not all equal: a group without variance gives RLOO's policy gradient nothing.

Every rate carries a 95% interval from a cluster bootstrap over problems (samples of one problem are
correlated).  The verdict applies two thresholds, both settings of the run (``probe_min_corrections``,
``probe_min_variance``), and says what the rate means for the run's episode budget.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .files import write_json, write_jsonl
from .intervals import bootstrap_interval, ratio_interval
from .models import resolve_device
from .results import episode_record
from .training.config import TrainConfig

PROBE_SEED_OFFSET = 7_777_777
"""Added to the run's seed for the probe's per-row sampling seeds: its samples are not training's step 0."""
N_BOOT = 2000


@dataclass
class ProbeConfig(TrainConfig):
    """Settings of ``selfcorrect probe``: every ``selfcorrect train`` setting (so ``--config arithmetic`` probes
    exactly what the demo trains) -- the probe reads the model, task, template, temperature, token limit,
    samples per problem, attempts, seed and the ``probe_*`` settings -- and its own output directory."""

    out: str = "runs/probe"
    """Output directory: probe.json, probe.md, samples.jsonl (existing files of those names are replaced)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 2:
            raise ConfigError(f"probe: samples must be >= 2 (the re-sample and agreement estimates use a "
                              f"problem's other samples), got {self.samples}")


@dataclass(frozen=True)
class EpisodeOutcome:
    """What the probe needs of one episode (the unit its fixtures are counted in)."""

    problem: str
    """Problem id: the cluster of the bootstrap and the group of RLOO and of the re-sample estimates."""
    rewards: tuple[float, ...]
    """The task's reward per attempt (1 right, 0 wrong)."""
    lenient: tuple[float, ...] | None = None
    """The reward under the task's lenient reader per attempt; ``None`` where the task has none."""
    answers: tuple[str | None, ...] = field(default=())
    """The answer read from each attempt (the lenient reader where the task has one): whether attempt 2
    changed the *answer*, and whether samples agree."""


def outcomes_from_episodes(episodes: Sequence[Any], task) -> list[EpisodeOutcome]:
    """:class:`EpisodeOutcome` of sampled episodes (:class:`~selfcorrect.rollout.Episode`)."""
    read = task.lenient_answer or task.extract_answer
    out = []
    for ep in episodes:
        texts = [a.text for a in ep.attempts]
        lenient = (None if task.lenient_verify is None else
            tuple(float(task.lenient_verify(t, ep.problem)) for t in texts))
        out.append(EpisodeOutcome(ep.problem.id, tuple(float(a.reward) for a in ep.attempts), lenient,
                                  tuple(read(t) for t in texts)))
    return out


# --------------------------------------------------------------------------- the statistics


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` (ties count one half); ``None`` without both
    classes.  The Mann-Whitney form: (sum of the positives' mid-ranks − n₊(n₊+1)/2) / (n₊·n₋)."""
    labels = labels.astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        return None
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    midrank = (upper - (counts - 1) / 2.0)[inverse]                 # 1-based mid-ranks of tied groups
    return float((midrank[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _auroc_interval(scores: np.ndarray, labels: np.ndarray, codes: np.ndarray, seed: int) -> list[float] | None:
    """Cluster-bootstrap 95% interval of :func:`auroc` (resamples without both classes left out)."""
    n_groups = int(codes.max()) + 1
    members = [np.flatnonzero(codes == g) for g in range(n_groups)]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(N_BOOT // 4):                                    # an AUROC per resample: fewer, still stable
        rows = np.concatenate([members[g] for g in rng.integers(0, n_groups, size=n_groups)])
        value = auroc(scores[rows], labels[rows])
        if value is not None:
            boots.append(value)
    return [float(v) for v in np.quantile(boots, [0.025, 0.975])] if boots else None


def _rate(values: np.ndarray, problems: list[str], seed: int, scale: float = 1.0) -> dict[str, Any]:
    low, high = bootstrap_interval(values, n_boot=N_BOOT, seed=seed, groups=problems)
    return {"value": scale * float(values.mean()), "ci95": [scale * low, scale * high]}


def _ratio(numerator: np.ndarray, denominator: np.ndarray, problems: list[str], seed: int) -> dict[str, Any]:
    n = int(denominator.sum())
    ci = ratio_interval(numerator, denominator, n_boot=N_BOOT, seed=seed, groups=problems) if n else None
    return {"value": float(numerator.sum() / n) if n else None, "ci95": list(ci) if ci else None, "n": n}


def analyze(outcomes: Sequence[EpisodeOutcome], *, budget: int, min_corrections: float = 2.0,
            min_variance: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """The probe's statistics of sampled episodes (module docstring); ``budget``: the run's episodes.

    Attempt pairs are attempt 1 → attempt 2 (with K > 2 attempts the later ones count in the accuracies and
    the RLOO variance only).  Every problem needs at least two samples (the re-sample and agreement
    estimates use a problem's *other* samples).
    """
    if not outcomes:
        raise ConfigError("probe: no episodes to analyse")
    k_attempts = len(outcomes[0].rewards)
    if k_attempts < 2 or any(len(o.rewards) != k_attempts for o in outcomes):
        raise ConfigError("probe: every episode needs the same number (>= 2) of attempts")
    by_problem: dict[str, list[int]] = defaultdict(list)
    for i, o in enumerate(outcomes):
        by_problem[o.problem].append(i)
    if min(len(v) for v in by_problem.values()) < 2:
        raise ConfigError("probe: every problem needs at least 2 samples (samples >= 2)")
    problems = [o.problem for o in outcomes]
    codes = np.array([list(by_problem).index(o.problem) for o in outcomes])
    r = np.array([o.rewards for o in outcomes], dtype=float)                      # [N, K]
    has_lenient = all(o.lenient is not None for o in outcomes)
    lenient = np.array([o.lenient for o in outcomes], dtype=float) if has_lenient else r
    r1, r2 = r[:, 0], r[:, 1]

    # attempt 1 → 2 transitions, per 100 episodes
    i2c = (r1 == 0) & (r2 == 1)
    form_repair = i2c & (lenient[:, 0] == 1)
    answer_correction = i2c & ~form_repair
    broke = (r1 == 1) & (r2 == 0)
    transitions = {name: {**_rate(mask.astype(float), problems, seed, 100.0), "count": int(mask.sum())}
                   for name, mask in (("answer_corrections", answer_correction), ("form_repairs", form_repair),
                                      ("breaks", broke), ("unchanged", r1 == r2))}

    # the other samples of the same problem: an independent re-sample and the agreement with attempt 1
    resample = np.empty(len(outcomes))                                            # [N] others' mean r1
    agreement = np.empty(len(outcomes))                                           # [N] share agreeing
    for members in by_problem.values():
        for i in members:
            others = [j for j in members if j != i]
            resample[i] = r1[others].mean()
            mine = outcomes[i].answers[0] if outcomes[i].answers else None
            agreement[i] = (0.0 if mine is None else
                float(np.mean([outcomes[j].answers[0] == mine for j in others])))
    changed = np.array([bool(o.answers) and o.answers[1] != o.answers[0] for o in outcomes])
    changed_wrong = (r1 == 0) & changed
    anchoring = {
        "changed_wrong_right": _ratio(r2 * changed_wrong, changed_wrong.astype(float), problems, seed),
        "resample_right_same_episodes": _ratio(resample * changed_wrong, changed_wrong.astype(float), problems, seed),
        "resample_right_wrong_first": _ratio(resample * (r1 == 0), (r1 == 0).astype(float), problems, seed),
    }

    keep = agreement >= 0.5                               # at least half of the other samples agree
    policy_gain = np.where(keep, 0.0, resample - r1)      # re-answer: the others' success rate replaces r1
    oracle_gain = np.where(r1 == 0, resample, 0.0)        # re-answer exactly the wrong first attempts
    detector = {"auroc": auroc(agreement, r1), "auroc_ci95": _auroc_interval(agreement, r1, codes, seed),
                "keep_share": float(keep.mean()),
                "policy_delta": _rate(policy_gain, problems, seed, 100.0),
                "oracle_delta": _rate(oracle_gain, problems, seed, 100.0)}

    variance = {}
    for t in range(k_attempts):
        groups = [np.ptp(r[members, t]) > 0 for members in by_problem.values()]
        variance[f"t{t + 1}"] = float(np.mean(groups))

    result = {
        "episodes": len(outcomes), "problems": len(by_problem), "samples": len(outcomes) // len(by_problem),
        "attempts": k_attempts, "lenient_reader": has_lenient,
        "accuracy": {f"t{t + 1}": _rate(r[:, t], problems, seed, 100.0) for t in range(k_attempts)},
        "accuracy_lenient": {f"t{t + 1}": _rate(lenient[:, t], problems, seed, 100.0) for t in range(k_attempts)}
        if has_lenient else None,
        "per_100": transitions, "anchoring": anchoring, "self_consistency": detector,
        "rloo_variance": variance, "budget_episodes": int(budget),
        "thresholds": {"min_corrections_per_100": float(min_corrections), "min_variance_t2": float(min_variance)},
    }
    result["verdict"] = verdict(result)
    return result


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """``{"signal": bool, "line": str, "expected_corrections": float}`` of :func:`analyze`'s result.

    The signal is present when answer corrections reach ``min_corrections_per_100`` per 100 episodes with
    their 95% interval above 0, and at least ``min_variance_t2`` of the RLOO groups have reward variance at
    attempt 2 (below it most groups give the attempt-2 policy gradient nothing).
    """
    rate = result["per_100"]["answer_corrections"]
    thresholds = result["thresholds"]
    variance = result["rloo_variance"]["t2"]
    expected = rate["value"] / 100.0 * result["budget_episodes"]
    fails = []
    if rate["value"] < thresholds["min_corrections_per_100"] or rate["ci95"][0] <= 0:
        fails.append("too few answer corrections")
    if variance < thresholds["min_variance_t2"]:
        fails.append("too few attempt-2 groups with reward variance")
    low, high = rate["ci95"]
    line = (f"probe: {'SIGNAL' if not fails else 'NO SIGNAL'} — answer corrections {rate['value']:.1f} "
            f"[{low:.1f}, {high:.1f}] per 100 episodes (needs >= {thresholds['min_corrections_per_100']:g} with "
            f"the 95% CI above 0), attempt-2 RLOO groups with reward variance {100 * variance:.0f}% (needs >= "
            f"{100 * thresholds['min_variance_t2']:.0f}%); at this rate a run of {result['budget_episodes']} "
            f"episodes samples about {expected:.0f} answer corrections"
            + (f" ({'; '.join(fails)})" if fails else ""))
    return {"signal": not fails, "line": line, "expected_corrections": expected, "failed": fails}


# --------------------------------------------------------------------------- what it prints and writes


def _ci(rate: dict[str, Any] | None, digits: int = 1) -> str:
    if rate is None or rate.get("value") is None:
        return "n/a"
    ci = rate.get("ci95")
    return f"{rate['value']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _pct(rate: dict[str, Any] | None) -> dict[str, Any] | None:
    if rate is None or rate.get("value") is None:
        return rate
    return {"value": 100 * rate["value"], "ci95": [100 * c for c in rate["ci95"]] if rate.get("ci95") else None}


def report_lines(result: dict[str, Any]) -> list[str]:
    """The probe as plain lines (what the CLI prints off a terminal, and probe.md's body)."""
    acc, lenient, per = result["accuracy"], result["accuracy_lenient"], result["per_100"]
    anchoring, sc = result["anchoring"], result["self_consistency"]
    lines = [f"{result['problems']} training problems x {result['samples']} samples x {result['attempts']} attempts "
             f"({result['episodes']} episodes); 95% CIs: cluster bootstrap over problems",
             "Acc@t1 " + _ci(acc["t1"]) + "%, Acc@t2 " + _ci(acc["t2"]) + "% (the task's reward)"]
    if lenient:
        lines.append("Acc@t1 " + _ci(lenient["t1"]) + "%, Acc@t2 " + _ci(lenient["t2"]) +
                     "% (lenient reader: the answer whatever its form)")
    lines.append("per 100 episodes (attempt 1 → 2): " + ", ".join(
        f"{name.replace('_', ' ')} {_ci(per[name])}" for name in ("answer_corrections", "form_repairs", "breaks",
                                                                   "unchanged")))
    if not result["lenient_reader"]:
        lines.append("(the task has no lenient reader: form repairs cannot be told from answer corrections)")
    cw = anchoring["changed_wrong_right"]
    lines.append(f"anchoring: attempt 2 right when it changed a wrong answer {_ci(_pct(cw))}% (n={cw['n']}) vs an "
                 f"independent re-sample of the same problems {_ci(_pct(anchoring['resample_right_same_episodes']))}%"
                 f" (all wrong first attempts: {_ci(_pct(anchoring['resample_right_wrong_first']))}%)")
    auc = ("n/a" if sc["auroc"] is None else f"{sc['auroc']:.2f}" +
        (f" [{sc['auroc_ci95'][0]:.2f}, {sc['auroc_ci95'][1]:.2f}]" if sc["auroc_ci95"] else ""))
    lines.append(f"self-consistency of attempt 1 as a detector of its correctness: AUROC {auc}; "
                 f"'keep if >= half the other samples agree, else re-answer' Δ ceiling {_ci(sc['policy_delta'])} "
                 f"points (keeps {100 * sc['keep_share']:.0f}%), oracle re-answer ceiling {_ci(sc['oracle_delta'])}")
    lines.append("RLOO groups with reward variance: " + ", ".join(
        f"attempt {t[1:]} {100 * v:.0f}%" for t, v in result["rloo_variance"].items()))
    lines.append(result["verdict"]["line"])
    return lines


def report_markdown(result: dict[str, Any], title: str) -> str:
    return f"# {title}\n\n" + "\n".join(f"- {line}" for line in report_lines(result)) + "\n"


# --------------------------------------------------------------------------- running it


def probe_problems(problems: Sequence[Any], n: int, seed: int) -> list[Any]:
    """``n`` of the training problems, a seeded choice (all of them when there are fewer)."""
    order = list(range(len(problems)))
    random.Random(f"probe:{seed}").shuffle(order)
    return [problems[i] for i in sorted(order[:n])]


def sample_and_analyze(config: TrainConfig, task, backend, builder,
                       progress: Callable[[str, int], Callable[[int], None]] | None = None) -> tuple[dict, list]:
    """Roll out the probe's episodes with ``backend`` (the run's sampler) and analyse them.

    Returns ``(result, episodes)``.  Sampling uses per-row seeds of its own (``PROBE_SEED_OFFSET``) and never
    torch's global generator, so a training run that probes first trains exactly as one that does not.
    """
    from .rollout import sample_episodes

    if config.samples < 2:
        raise ConfigError(f"probe: samples must be >= 2 (the re-sample and agreement estimates use a problem's "
                          f"other samples), got {config.samples}")
    problems = probe_problems(task.problems, config.probe_problems, config.seed)
    advance = (progress or (lambda d, t: None))("probe", len(problems) * config.samples * config.attempts)
    started = time.perf_counter()
    episodes = sample_episodes(backend, builder, task, problems, samples=config.samples, attempts=config.attempts,
                               params=config.sampling_params(), per_row_seed=config.seed + PROBE_SEED_OFFSET,
                               progress=advance)
    result = analyze(outcomes_from_episodes(episodes, task), budget=config.sampled_episodes,
                     min_corrections=config.probe_min_corrections, min_variance=config.probe_min_variance,
                     seed=config.seed)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["setting"] = {"model": config.model, "chat_template": config.chat_template, "task": config.task,
                         "task_options": dict(config.task_options), "temperature": config.temperature,
                         "max_new_tokens": config.max_new_tokens, "seed": config.seed, "method": config.method}
    return result, episodes


def write_probe(out: Path, result: dict[str, Any], episodes: Sequence[Any], title: str,
                samples_name: str = "samples.jsonl") -> None:
    """probe.json, probe.md and the probe's episodes (``samples_name``: a training run calls them
    probe-samples.jsonl, beside its own samples.jsonl)."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / samples_name, [episode_record(ep) for ep in episodes])
    (out / "probe.md").write_text(report_markdown(result, title))
    write_json(out / "probe.json", result)               # last: its presence means the probe is complete


def run_probe(config: TrainConfig, progress: Callable[[str, int], Callable[[int], None]] | None = None,
              out: Path | None = None, announce: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The probe as a function: load the run's training problems, model and sampler, sample, analyse,
    write ``probe.json``, ``probe.md`` and ``samples.jsonl`` to ``out`` (default ``config.out``).
    ``announce(line)`` is told what is sampled once every input has been checked and the model loaded."""
    import torch

    from .models import load_model, load_tokenizer
    from .rollout import ConversationBuilder, TransformersBackend
    from .run_dir import check_output_dir
    from .training.config import run_splits
    from .training.step import autocast

    out = Path(config.out if out is None else out)
    check_output_dir(out)                                   # before the model loads
    if config.samples < 2:
        raise ConfigError(f"probe: samples must be >= 2, got {config.samples}")
    device = resolve_device(config.device)
    task = run_splits(config).train                         # the training problems, validation carved off
    tokenizer = load_tokenizer(config.model, chat_template=config.chat_template)
    model = load_model(config.model, dtype=config.dtype, device=device)
    model.eval()
    backend = TransformersBackend(model, tokenizer, batch_size=config.generation_batch_size, decode=config.decode)
    builder = ConversationBuilder(tokenizer, task.correction_instruction)
    if announce is not None:
        announce(f"probing {config.model} on {config.task} at T={config.temperature}: "
                 f"{min(config.probe_problems, len(task.problems))} training problems x {config.samples} samples x "
                 f"{config.attempts} attempts")
    with torch.no_grad(), autocast(config, torch.device(device)):
        result, episodes = sample_and_analyze(config, task, backend, builder, progress)
    write_probe(out, result, episodes, f"Probe: {config.model} on {config.task} (T={config.temperature})")
    return result


def probe_trainer(trainer, progress: Callable[[str, int], Callable[[int], None]] | None = None) -> dict[str, Any]:
    """The probe of a new training run, with its own sampler and policy (still the initial model), before
    the first step: ``probe.json``, ``probe.md`` and ``probe-samples.jsonl`` in the run directory."""
    import torch

    with torch.no_grad(), trainer.engine.gathered(), trainer._generation_autocast():
        result, episodes = sample_and_analyze(trainer.config, trainer.task, trainer.backend, trainer.builder,
                                              progress)
    if trainer.dist.main:
        write_probe(trainer.run_dir, result, episodes, f"Probe: {trainer.config.model} on {trainer.config.task} "
                    f"(T={trainer.config.temperature})", samples_name="probe-samples.jsonl")
    return result


def read_probe(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's probe.json, or ``None``."""
    path = Path(run_dir) / "probe.json"
    return json.loads(path.read_text()) if path.is_file() else None
