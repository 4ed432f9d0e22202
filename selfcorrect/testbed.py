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
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TESTBED_TASK = {"operation": "copy", "length": 6}
"""The task options of the testbed (``strings``)."""
RULE = ("attempt 1 drops one digit of the first doubled pair of the source (exact copy when there is none); "
        "attempt 2 re-copies the source correctly with probability fix_rate, else repeats attempt 1")
"""The rule the warm start's episodes are written by (recorded beside the model)."""


@dataclass
class WarmStartConfig:
    """How the warm start is written and trained."""

    model: str = "default"
    """The model to fine-tune (the embedded SmolLM2-135M-Instruct by default)."""
    task_options: dict[str, Any] = field(default_factory=lambda: dict(TESTBED_TASK), metadata={"append": True})
    """Options of the ``strings`` task the episodes come from (its training split)."""
    fix_rate: float = 0.4
    """Probability that the written attempt 2 re-copies the source correctly (else it repeats attempt 1)."""
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


def slip(source: str) -> str:
    """The rule's first attempt: ``source`` with one digit of its first doubled pair dropped (unchanged if
    it has none)."""
    for i in range(len(source) - 1):
        if source[i] == source[i + 1]:
            return source[:i] + source[i + 1:]
    return source


def written_attempts(source: str, rng: random.Random, fix_rate: float) -> tuple[str, str]:
    """The two attempt texts the warm start is trained on for one source string."""
    first = slip(source)
    second = source if rng.random() < fix_rate else first
    return f"The final answer is {first}.", f"The final answer is {second}."


def build_warm_start(config: WarmStartConfig, log=lambda line: print(line, flush=True)) -> Path:
    """Write the episodes, fine-tune ``config.model`` on both attempts, save it to ``config.out``."""
    import torch

    from .algorithms.sft import sft_loss
    from .logprobs import token_logprobs
    from .models import load_model, load_tokenizer
    from .rollout import ConversationBuilder
    from .rollout.episodes import collate
    from .run_dir import check_output_dir
    from .tasks import load_task

    out = Path(config.out)
    check_output_dir(out)
    task = load_task("strings", **{**config.task_options, "split": "train", "n": config.problems})
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, dtype="float32", device="cpu")
    model.train()
    builder = ConversationBuilder(tokenizer, task.correction_instruction)
    rng = random.Random(f"testbed:{config.seed}")
    episodes = []
    for problem in task.problems:
        texts = written_attempts(problem.meta["source"], rng, config.fix_rate)
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
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "testbed.json").write_text(json.dumps({**asdict(config), "rule": RULE}, indent=1) + "\n")
    return out


def main(argv=None) -> int:
    from .config import add_arguments, build_config
    from .errors import SelfCorrectError

    parser = argparse.ArgumentParser(prog="python -m selfcorrect.testbed", description=__doc__.splitlines()[0])
    add_arguments(parser, WarmStartConfig)
    args = parser.parse_args(argv)
    try:
        config = build_config(WarmStartConfig, args)
        if not 0.0 <= config.fix_rate <= 1.0:
            raise SelfCorrectError(f"fix_rate must be in [0, 1], got {config.fix_rate!r}")
        out = build_warm_start(config)
    except SelfCorrectError as err:
        print(f"testbed: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
