"""The pieces of a training run around the loop in :mod:`selfcorrect.trainer`.

* :mod:`.config` -- :class:`~.config.TrainConfig`, every setting (YAML + flags);
* :mod:`.methods` -- each method as a list of phases, each with its objective;
* :mod:`.step` -- one micro-batch: collate → log-probs → objective, and a step's metrics;
* :mod:`.sft_data` -- the STaR / Pair-SFT datasets;
* :mod:`.run_log` -- metrics.jsonl, TensorBoard, W&B, samples, plots.
"""
