"""selfcorrect: train language models to find and fix their own mistakes (SCoRe, Kumar et al. 2024).

The data flows task → rollout → reward → log-probs → loss → update → eval:

* :mod:`selfcorrect.tasks` — problems, prompts, verifiers, the code sandbox;
* :mod:`selfcorrect.rollout` — multi-attempt episodes as exact token ids;
* :mod:`selfcorrect.metrics` — the paper's self-correction metrics with CIs;
* :mod:`selfcorrect.evaluation` — ``selfcorrect eval``;
* :mod:`selfcorrect.results` — episodes to metrics and the files every evaluation writes
  (:mod:`selfcorrect.files`: atomic writes);
* :mod:`selfcorrect.models` — loading models from one spec string.
"""

__version__ = "0.1.0"
