"""surm_ops.peft.accelerate on PEFT's own C3A (~2 s)."""

from __future__ import annotations

import pytest
import torch
from peft import C3AConfig, PeftModel, get_peft_model

import surm_ops.peft as sp
from tests.peft._toy import perturb, toy

X = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))


def c3a_model(init_weights="xavier_uniform"):
    return get_peft_model(toy(), C3AConfig(block_size=8, target_modules=["q", "v"], init_weights=init_weights))


def grads(model):
    model.zero_grad()
    model(X).square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


class _AutogradC3A:
    """PEFT's own block-circulant matrix (``get_circulant_fast``), differentiated by autograd: the true gradients.

    PEFT 0.21.2's hand-written ``BlockCircularConvolution.backward`` returns a wrong gradient for the layer input
    (``torch.autograd.gradcheck`` fails on it: the product's adjoint needs the conjugate spectrum), so gradients are
    compared with this, and outputs with PEFT's forward."""

    @staticmethod
    def apply(x, w):
        from peft.tuners.c3a.utils import get_circulant_fast

        return x @ get_circulant_fast(w).T


def test_accelerate_matches_peft_outputs_and_true_gradients(tmp_path, monkeypatch):
    import peft.tuners.c3a.layer as c3a_layer

    model = c3a_model()
    perturb(model)
    ref_out = model(X).detach()
    with monkeypatch.context() as m:
        m.setattr(c3a_layer, "BlockCircularConvolution", _AutogradC3A)
        torch.testing.assert_close(model(X), ref_out, rtol=1e-5, atol=1e-6)
        ref_grads = grads(model)
    assert sp.accelerate(model) == 4
    assert sp.accelerate(model) == 0  # already accelerated
    out, fast_grads = model(X).detach(), grads(model)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    assert ref_grads.keys() == fast_grads.keys() and len(ref_grads) == 4
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-4, atol=1e-6)
    with model.disable_adapter():
        torch.testing.assert_close(model(X), toy()(X), rtol=0, atol=0)

    # same checkpoints: saved accelerated, loaded by plain PEFT
    model.save_pretrained(tmp_path)
    plain = PeftModel.from_pretrained(toy(), tmp_path)
    torch.testing.assert_close(plain(X), ref_out, rtol=0, atol=0)

    # merge is PEFT's own and unchanged
    model.merge_adapter()
    torch.testing.assert_close(model(X), ref_out, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()

    assert sp.restore(model) == 4
    assert sp.restore(model) == 0
    # PEFT's unmerge subtracts dW again, so the weights carry its rounding
    torch.testing.assert_close(model(X), ref_out, rtol=1e-6, atol=1e-6)


def test_accelerate_counts_only_c3a_layers():
    model = get_peft_model(toy(), sp.config("circulant", layout="block", block_size=8, target_modules=["q"]))
    assert sp.accelerate(model) == 0
    assert sp.accelerate(torch.nn.Linear(2, 2)) == 0


def test_c3a_filter_maps_peft_kernel_to_our_circulant():
    from peft.tuners.c3a.utils import get_circulant_fast

    from surm_ops.peft.c3a import c3a_filter
    from surm_ops.reference import dense

    kernel = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dense.block_circulant(c3a_filter(kernel)), get_circulant_fast(kernel))


def test_accelerated_c3a_passes_gradcheck():
    model = c3a_model().double()
    layer = model.base_model.model.blocks[0]["q"]
    sp.accelerate(model)
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    # float32 inside (as PEFT's C3A), so a loose tolerance; a wrong input gradient is off by O(1)
    assert torch.autograd.gradcheck(lambda x: layer(x), (x,), eps=1e-3, atol=1e-3, rtol=1e-2)


def _trainer_losses(model, tmp_path, steps=4):
    import transformers

    ids = torch.randint(0, 64, (16, 12), generator=torch.Generator().manual_seed(0))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4, learning_rate=3e-2,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in ids])
    trainer.remove_callback(transformers.PrinterCallback)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trainer_losses_accelerated_equal_true_gradient_run(tmp_path, monkeypatch):
    """A Trainer run of a tiny 2-layer Llama with C3A on q_proj/v_proj: accelerated, the losses equal those of PEFT's
    C3A forward differentiated by autograd; PEFT's own backward (wrong input gradient) drifts from step 2 on."""
    transformers = pytest.importorskip("transformers")
    import peft.tuners.c3a.layer as c3a_layer

    def llama_c3a():
        torch.manual_seed(0)
        base = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
        return get_peft_model(base, C3AConfig(block_size=8, target_modules=["q_proj", "v_proj"]))

    fast = llama_c3a()
    assert sp.accelerate(fast) == 4
    accelerated = _trainer_losses(fast, tmp_path / "fast")
    plain = _trainer_losses(llama_c3a(), tmp_path / "plain")
    with monkeypatch.context() as m:
        m.setattr(c3a_layer, "BlockCircularConvolution", _AutogradC3A)
        true = _trainer_losses(llama_c3a(), tmp_path / "true")
    assert accelerated == pytest.approx(true, rel=1e-6, abs=0)
    assert plain[0] == pytest.approx(accelerated[0], rel=1e-6, abs=0)  # same forward, same first loss
    # PEFT's wrong input gradient changes every later step (measured: by ~1e-4 here, 100x the float32 noise)
    assert all(abs(p - a) > 1e-5 for p, a in zip(plain[1:], accelerated[1:]))
