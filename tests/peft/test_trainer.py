"""transformers' Trainer on a tiny Llama built from a config (no download): training through a surm_ops PEFT
method, checkpoint save and resume, and loading back (~15 s for the file on 2 CPU cores)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model  # noqa: E402

import surm_ops  # noqa: E402
import surm_ops.peft as sp  # noqa: E402
from tests.peft._toy import perturb  # noqa: E402

VOCAB = 64


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)


def data(n: int = 16, length: int = 12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (n, length), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def trainer(model, out, max_steps=6, **kw):
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-2,
        logging_steps=1, save_steps=3, save_strategy="steps", report_to=[], use_cpu=True, seed=0,
        disable_tqdm=True, **kw)
    return transformers.Trainer(model=model, args=args, train_dataset=data())


def peft_llama(method="circulant", **options):
    return get_peft_model(tiny_llama(), sp.config(method, target_modules=["q_proj", "v_proj"], **options))


def adapter_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def losses(t):
    return {h["step"]: h["loss"] for h in t.state.log_history if "loss" in h}


@pytest.mark.parametrize("method,options", [("circulant", {"layout": "block", "block_size": 8}),
                                            ("condlora", {"r": 2})], ids=["circulant-block", "condlora"])
def test_trainer_trains_and_resumes_exactly(method, options, tmp_path):
    full = peft_llama(method, **options)
    start = adapter_state(full)
    t_full = trainer(full, tmp_path / "full")
    t_full.train()
    end = adapter_state(full)
    assert all(not torch.equal(start[n], end[n]) for n in start)  # every adapter tensor was trained
    assert (tmp_path / "full" / "checkpoint-3" / "adapter_model.safetensors").is_file()

    # stop after 3 steps' checkpoint, then resume in a fresh process-like setting: new model, new Trainer
    resumed = peft_llama(method, **options)
    perturb(resumed, seed=5)  # other adapter values: only the checkpoint can bring the run back in step
    t_resumed = trainer(resumed, tmp_path / "full")  # reads checkpoint-3 written above
    t_resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    got = adapter_state(resumed)
    for n in end:
        torch.testing.assert_close(got[n], end[n], rtol=1e-5, atol=1e-6)
    full_losses, resumed_losses = losses(t_full), losses(t_resumed)  # the resumed history starts with 1..3
    assert set(resumed_losses) == {1, 2, 3, 4, 5, 6}
    for step in (4, 5, 6):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-5)


def test_trained_adapter_loads_through_peft_and_transformers(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")  # a local "pretrained" base, for AutoPeftModel
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    # SARA's rank rule at creation, one threshold for the whole model from a parameter budget
    model = get_peft_model(base, sp.config("sara", budget=600, target_modules=["q_proj", "v_proj"]))
    assert 500 < model.get_nb_trainable_parameters()[0] <= 600
    trainer(model, tmp_path / "run", max_steps=2).train()
    model.eval()
    ids = data(2)[0]["input_ids"][None]
    want = model(ids).logits.detach()
    model.save_pretrained(tmp_path / "adapter")

    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    torch.testing.assert_close(auto(ids).logits, want, rtol=1e-5, atol=1e-5)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter").eval()
    torch.testing.assert_close(loaded(ids).logits, want, rtol=1e-5, atol=1e-5)

    # transformers' own adapter loading (PeftAdapterMixin) goes through the same registry
    base = tiny_llama().eval()
    base.load_adapter(str(tmp_path / "adapter"))
    torch.testing.assert_close(base(ids).logits, want, rtol=1e-5, atol=1e-5)


def test_rmlora_callback_masks_peft_layers_in_the_trainer(tmp_path):
    """surm_ops.RMLoRACallback finds the RM-LoRA layers inside a PEFT model: with mask="update", each step after the
    first moves exactly random_rank of the r rows of every A."""
    model = peft_llama("rmlora", r=4, random_rank=1, mask="update")
    layers = [m for m in model.modules() if type(m).__name__ == "RMLoRALinear"]
    assert len(layers) == 4
    snapshots = []

    class Spy(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            snapshots.append([layer.lora_A.detach().clone() for layer in layers])

    t = trainer(model, tmp_path, max_steps=3)
    t.add_callback(surm_ops.RMLoRACallback(torch.Generator().manual_seed(0)))
    t.add_callback(Spy())
    t.train()
    for before, after in zip(snapshots, snapshots[1:]):
        for a0, a1 in zip(before, after):
            assert (a0 != a1).any(1).sum().item() == 1
