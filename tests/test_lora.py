"""LoRA: the reference is the base model with the adapter disabled; checkpoints hold the adapter."""

from __future__ import annotations

import pytest
import torch

from selfcorrect.errors import ConfigError
from selfcorrect.logprobs import token_logprobs
from selfcorrect.lora import base_model_context
from selfcorrect.models import load_model
from selfcorrect.rollout import collate
from selfcorrect.trainer import TrainConfig, Trainer



def _trainer(model_dir, tmp_path, task, **overrides) -> Trainer:
    config = dict(model=str(model_dir), task=task, out=str(tmp_path / "run"), iterations=1,
                  stage1_steps=1, stage2_steps=1, problems_per_step=2, samples=2, max_new_tokens=4, eval_limit=2,
                  eval_max_new_tokens=2, autocast="none", report_to=["none"], log_samples_every=0, lr=0.05,
                  lora_r=4, lora_alpha=8.0)
    config.update(overrides)
    return Trainer.create(TrainConfig(**config))


def _scores(model, episodes, pad_id):
    batch = collate(episodes, pad_token_id=pad_id)
    with torch.no_grad():
        return token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["attempt_mask"].any(1))


@pytest.mark.long
def test_reference_is_the_base_model_with_the_adapter_disabled(tiny_model_dir, tmp_path, parity_task):
    trainer = _trainer(tiny_model_dir, tmp_path, parity_task)
    assert trainer.reference is None                        # no second copy of the weights
    trainable = [n for n, p in trainer.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train_step()
    trainer.train_step()
    episodes = trainer.last_episodes
    base = load_model(str(tiny_model_dir), dtype="float32")
    pad = trainer.tokenizer.pad_token_id
    trainer.policy.eval()
    with base_model_context(trainer.policy):
        disabled = _scores(trainer.policy, episodes, pad)
    assert torch.allclose(disabled, _scores(base, episodes, pad), atol=1e-6)
    assert not torch.allclose(_scores(trainer.policy, episodes, pad), disabled, atol=1e-4)   # the adapter learnt


@pytest.mark.long
def test_lora_checkpoint_loads_merged_and_resumes(tiny_model_dir, tmp_path, parity_task):
    trainer = _trainer(tiny_model_dir, tmp_path, parity_task)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "adapter_config.json").is_file() and not (checkpoint / "model.safetensors").exists()
    assert (tmp_path / "run" / "merged" / "config.json").is_file()
    trainer.policy.eval()
    episodes = trainer.last_episodes
    pad = trainer.tokenizer.pad_token_id
    expected = _scores(trainer.policy, episodes, pad)
    for spec in (checkpoint, tmp_path / "run" / "merged"):   # `selfcorrect eval --model RUN/checkpoint-N` works
        assert torch.allclose(_scores(load_model(str(spec), dtype="float32"), episodes, pad), expected, atol=1e-5)
    resumed = Trainer.resume(tmp_path / "run")
    assert resumed.step == 2 and resumed.reference is None
    resumed.policy.eval()
    assert torch.allclose(_scores(resumed.policy, episodes, pad), expected, atol=1e-6)


def test_bad_lora_values():
    with pytest.raises(ConfigError, match="lora_r"):
        TrainConfig(lora_r=-1)
    with pytest.raises(ConfigError, match="lora_dropout"):
        TrainConfig(lora_dropout=1.5)
