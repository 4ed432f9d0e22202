"""A controlled testbed for self-correction: a real model warm-started by SFT to a *known* kind of slip.

**What it is, and what it is not.** The embedded 135M model, prompted as it ships, almost never turns a
wrong answer into a right one (``selfcorrect probe``; docs/probe.md), so no method trained here can show
the paper's effect on it.  An RL library proves an algorithm on a control task before a hard one; this
module builds that control task.  It demonstrates the *algorithm* (does SCoRe learn to correct where
single-turn RL and the SFT baselines do not?), not the 135M model's own ability to self-correct.

The task is ``strings`` / ``copy``: copy a digit string.  The warm start is supervised fine-tuning of the
model on two-attempt episodes written by a rule (:func:`written_attempts`):

* **attempt 1 slips** on every source that contains a doubled digit (``77``): it drops one of the pair,
  the classic copying slip; on every other source it copies exactly.  With 6 digits, 1 − 0.9⁵ ≈ 41% of
  the sources have a doubled digit, so a model that learnt the rule scores about 59% at attempt 1;
* **attempt 2**, after the task's correction turn (which never says whether attempt 1 was right), copies
  the source again correctly with probability ``fix_rate`` (0.4) and otherwise repeats attempt 1 -- it
  is anchored on its own answer, as small models are.  So under sampling the warm model corrects about
  16 slips in 100 episodes and never breaks a right answer, while greedy decoding (the mode: repeat
  attempt 1) corrects nothing.  (0.4, not the first try's 0.25: at 0.25 the probe measured 5.5
  [1.6, 9.8] corrections per 100 but attempt-2 reward variance in only 17% of RLOO groups, below its
  20% line, so that warm start was not trained; docs/testbed.md.)

A wrong first attempt can always be fixed by re-reading the source, which stays in the context.  The
numbers above are what the rule writes; what the fine-tuned model actually does is measured by the
probe and the evaluations, never assumed.  Only training-split problems are written; validation and
test problems are never seen by the warm start.

    python -m selfcorrect.testbed --out runs/testbed/model      # ~12 minutes on 2 CPU cores
    selfcorrect probe --config testbed
    selfcorrect compare --config testbed --methods score,single-turn,... --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TESTBED_TASK = {"operation": "copy", "length": 6}
"""The task options of the testbed (``strings``)."""
RECORD = "testbed.json"
"""The file beside a warm start's weights that records how it was built (and marks the directory as one)."""
SLIPS = {
    "doubled": "attempt 1 drops one digit of the first doubled pair of the source (exact copy when there is none)",
    "mixed": ("attempt 1 drops one digit of the first doubled pair of the source; without one, it swaps the first "
              "ascending pair 'd, d+1'; exact copy when there is neither"),
}
"""The kinds of first-attempt slips a warm start can be written with, and their rule."""
SECOND = "attempt 2 re-copies the source correctly with probability fix_rate, else repeats attempt 1"


def rule(slips: str) -> str:
    """The rule the warm start's episodes are written by (recorded beside the model)."""
    return f"{SLIPS[slips]}; {SECOND}"


@dataclass
class WarmStartConfig:
    """How the warm start is written and trained."""

    model: str = "default"
    """The model to fine-tune (the embedded SmolLM2-135M-Instruct by default)."""
    task_options: dict[str, Any] = field(default_factory=lambda: dict(TESTBED_TASK), metadata={"append": True})
    """Options of the ``strings`` task the episodes come from (its training split)."""
    fix_rate: float = 0.4
    """Probability that the written attempt 2 re-copies the source correctly (else it repeats attempt 1)."""
    slips: str = "doubled"
    """First-attempt slips written: doubled (drop a digit of the first doubled pair: about 41% of 6-digit
    sources) or mixed (that, or else swap the first ascending pair 'd, d+1': about 65%, two kinds of error,
    one of which keeps the length)."""
    problems: int = 1600
    """Training problems written (one episode each)."""
    steps: int = 60
    """Optimizer steps of the fine-tuning."""
    batch: int = 16
    """Episodes per step."""
    lr: float = 1e-4
    """AdamW learning rate."""
    seed: int = 0
    """Seed of the episodes' coin flips, the data order and the initialisation of nothing else."""
    out: str = "runs/testbed/model"
    """Where the fine-tuned model (a Hugging Face directory, usable as ``--model``) is written."""


def slip(source: str, slips: str = "doubled") -> str:
    """The rule's first attempt: ``source`` with one digit of its first doubled pair dropped; under ``mixed``,
    a source without one has its first ascending pair ``d, d+1`` swapped instead; else unchanged."""
    for i in range(len(source) - 1):
        if source[i] == source[i + 1]:
            return source[:i] + source[i + 1:]
    if slips == "mixed":
        for i in range(len(source) - 1):
            if source[i] != "9" and source[i + 1] == str(int(source[i]) + 1):
                return source[:i] + source[i + 1] + source[i] + source[i + 2:]
    return source


def written_attempts(source: str, rng: random.Random, fix_rate: float, slips: str = "doubled") -> tuple[str, str]:
    """The two attempt texts the warm start is trained on for one source string."""
    first = slip(source, slips)
    second = source if rng.random() < fix_rate else first
    return f"The final answer is {first}.", f"The final answer is {second}."


def build_warm_start(config: WarmStartConfig, log=lambda line: print(line, flush=True)) -> Path:
    """Write the episodes, fine-tune ``config.model`` on both attempts, save it to ``config.out``."""
    import torch

    from .algorithms.sft import sft_loss
    from .errors import ConfigError
    from .logprobs import token_logprobs
    from .models import load_model, load_tokenizer
    from .rollout import ConversationBuilder
    from .rollout.episodes import collate
    from .run_dir import check_output_dir
    from .tasks import load_task

    if not 0.0 <= config.fix_rate <= 1.0:
        raise ConfigError(f"fix_rate must be in [0, 1], got {config.fix_rate!r}")
    if config.slips not in SLIPS:
        raise ConfigError(f"slips must be one of {', '.join(SLIPS)}, got {config.slips!r}")
    out = Path(config.out)
    check_output_dir(out)
    if out.is_dir() and any(out.iterdir()) and not (out / RECORD).is_file():
        raise ConfigError(f"--out {out}: exists and holds something other than a warm start; choose another "
                          "directory (a warm start's directory is replaced when rebuilt)")
    task = load_task("strings", **{**config.task_options, "split": "train", "n": config.problems})
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, dtype="float32", device="cpu")
    model.train()
    builder = ConversationBuilder(tokenizer, task.correction_instruction)
    rng = random.Random(f"testbed:{config.seed}")
    episodes = []
    for problem in task.problems:
        texts = written_attempts(problem.meta["source"], rng, config.fix_rate, config.slips)
        episodes.append(builder.episode_from_ids(problem, task.first_prompt(problem),
                                                 [builder.encode_attempt(t) for t in texts]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=0.0)
    order = list(range(len(episodes)))
    started = time.perf_counter()
    for step in range(config.steps):
        if step * config.batch % len(order) < config.batch:
            rng.shuffle(order)
        start = step * config.batch % len(order)
        batch = [episodes[i] for i in (order * 2)[start:start + config.batch]]
        tensors = collate(batch, tokenizer.pad_token_id, num_attempts=2)
        mask = tensors["attempt_mask"]
        logp = token_logprobs(model, tensors["input_ids"], tensors["attention_mask"], mask.any(1))
        loss = sft_loss(logp, mask, trained=[True, True])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0 or step == config.steps - 1:
            log(f"testbed SFT step {step + 1}/{config.steps}: loss {loss.item():.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    # Written beside and renamed into place: an interrupted save leaves no half model where the demo looks.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / RECORD).write_text(json.dumps({**asdict(config), "rule": rule(config.slips)}, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


DEMO_MODEL = "runs/testbed/demo-model"
"""Where ``selfcorrect demo`` keeps its warm start (built on the first run, reused after)."""
DEMO_WARM_START = {"steps": 25, "lr": 2e-4, "slips": "mixed", "fix_rate": 0.25}
"""The demo's warm start: shorter than the testbed's 60 steps at 1e-4, so warm start + probe + SCoRe fit
about 15 minutes of a 2-core CPU; two kinds of slip and a low fix rate, chosen among three candidates as
the one that passes the probe with the smallest greedy Δ on the validation split before any RL
(docs/results/demo-testbed)."""


def ensure_demo_warm_start(model: str, log=lambda line: print(line, flush=True)) -> None:
    """Build the demo's warm start at ``model`` when it is :data:`DEMO_MODEL` and not there yet, or was built
    with other settings than :data:`DEMO_WARM_START` (an older version's); say when one is reused.  Any other
    model is the user's and left alone."""
    if Path(model) != Path(DEMO_MODEL):
        return
    config = WarmStartConfig(out=model, **DEMO_WARM_START)
    wanted = {k: v for k, v in asdict(config).items() if k != "out"}
    record = Path(model) / RECORD
    if record.is_file():
        built = json.loads(record.read_text())
        if all(built.get(k) == v for k, v in wanted.items()):
            log(f"warm start: reusing {model} ({built['steps']} SFT steps at lr {built['lr']:g}, {built['slips']} "
                f"slips, fix_rate {built['fix_rate']}; remove it to rebuild)")
            return
        log(f"warm start: {model} was built with other settings; rebuilding it")
    log(f"warm start: fine-tuning {config.model} on {config.problems} written two-attempt episodes "
        f"({config.steps} steps x {config.batch}, lr {config.lr:g}, fix_rate {config.fix_rate}; "
        f"{rule(config.slips)}) ...")
    started = time.perf_counter()
    build_warm_start(config, log)
    log(f"warm start: wrote {model} ({time.perf_counter() - started:.0f} s)")


def main(argv=None) -> int:
    from .config import add_arguments, build_config
    from .errors import SelfCorrectError

    parser = argparse.ArgumentParser(prog="python -m selfcorrect.testbed", description=__doc__.splitlines()[0])
    add_arguments(parser, WarmStartConfig)
    args = parser.parse_args(argv)
    try:
        config = build_config(WarmStartConfig, args)
        out = build_warm_start(config)
    except SelfCorrectError as err:
        print(f"testbed: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
