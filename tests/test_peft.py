"""LoRA students: SODTrainer(peft_config=...) trains the adapters and nothing else."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from scripted import SCRIPTS, ScriptedBackend, dataset, reward
from sod_trainer import SODConfig, SODTrainer

peft = pytest.importorskip("peft")

def lora_trainer(tokenizer, tmp_path, **overrides):
    from peft import LoraConfig

    config = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=160,
                  max_steps=2, learning_rate=5e-2, report_to=[], use_cpu=True, save_strategy="no", seed=0,
                  max_tool_calling_iterations=4)
    config.update(overrides)
    trainer = SODTrainer(
        model=make_tiny_model(tokenizer, seed=0), teacher_model=make_tiny_model(tokenizer, hidden=96, seed=1),
        args=SODConfig(**config), train_dataset=dataset(), processing_class=tokenizer, reward_funcs=[reward],
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                               lora_dropout=0.0),
    )
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, SCRIPTS)
    return trainer


def test_lora_student_trains_only_the_adapters(tokenizer, tmp_path):
    trainer = lora_trainer(tokenizer, tmp_path)
    model = trainer.model
    assert isinstance(model, peft.PeftModel)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    # every adapter matrix moved (lora_B starts at 0, gets a gradient through lora_A's output, and vice versa
    # from the second step on), and no base weight did
    assert changed == trainable
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) for entry in logs)
    # the adapters change the policy: the student's log-probs are not the base model's any more
    base = make_tiny_model(tokenizer, seed=0)
    ids = torch.tensor([tokenizer.encode("Let me compute.\n```python\n1234 * 56\n```")])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        reference = base(input_ids=ids).logits
        with model.disable_adapter():
            without_adapters = model(input_ids=ids).logits
    assert torch.allclose(without_adapters, reference, atol=1e-5)
    assert not torch.allclose(tuned, reference, atol=1e-4)


def test_lora_student_still_gets_the_vocabulary_check(tokenizer, tmp_path):
    """peft_config wraps the student after the vocabulary check: a teacher of another vocabulary is still refused."""
    from peft import LoraConfig
    from transformers import Qwen3Config, Qwen3ForCausalLM

    teacher = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer) + 8, hidden_size=64, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                           head_dim=32))
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, report_to=[],
                     use_cpu=True)
    with pytest.raises(ValueError, match="vocabulary"):
        SODTrainer(model=make_tiny_model(tokenizer), teacher_model=teacher, args=args, train_dataset=dataset(),
                   processing_class=tokenizer, reward_funcs=[reward],
                   peft_config=LoraConfig(r=2, target_modules=["q_proj"]))
