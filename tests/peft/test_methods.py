"""Every surm_ops method through PEFT's own verbs, on a toy model (~10 s for the file on 2 CPU cores)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

import surm_ops.peft as sp
from surm_ops.adapters import CondLoRAMaps
from surm_ops.peft.layer import SurmLayer
from tests.peft._toy import CASES, NOT_MERGEABLE, perturb, toy

X = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
TARGETS = ["q", "v"]


def peft_model(method, options, seed=0, **extra):
    return get_peft_model(toy(seed), sp.config(method, target_modules=TARGETS, **options), **extra)


@pytest.mark.parametrize("method,options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_peft_round_trip(method, options, tmp_path):
    model = peft_model(method, options)
    layers = [m for m in model.modules() if isinstance(m, SurmLayer)]
    assert len(layers) == 4
    # our layers' own parameter formulas (CondLoRA: per module type, the maps being shared)
    ours = [layer.surm_layers["default"] for layer in layers]
    if method == "condlora":
        per_type = {id(m.cond_maps): m.expected_parameters() for m in ours}
        assert len(per_type) == 2 and len([m for m in model.modules() if isinstance(m, CondLoRAMaps)]) == 2
        expected = sum(per_type.values())
    else:
        expected = sum(m.expected_parameters() for m in ours)
    assert model.get_nb_trainable_parameters()[0] == expected

    model.eval()
    base_out = model(X).detach()
    perturb(model)
    out = model(X).detach()
    assert not torch.allclose(out, base_out, atol=1e-4)  # the update is live
    with model.disable_adapter():
        torch.testing.assert_close(model(X), base_out, rtol=0, atol=0)

    model.save_pretrained(tmp_path)
    # only adapter tensors are saved (Mo-SARA's frozen singular vectors are buffers of its layer, saved with it)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    buffers = sum(b.numel() for m in ours for b in m.buffers())
    assert sum(t.numel() for t in saved.values()) == expected + buffers
    loaded = PeftModel.from_pretrained(toy(), tmp_path).eval()
    torch.testing.assert_close(loaded(X), out, rtol=1e-6, atol=1e-6)  # same values; kernel choice may differ

    if method in NOT_MERGEABLE:
        before = [p.clone() for p in loaded.parameters()]
        with pytest.raises(RuntimeError, match="cannot merge"):
            loaded.merge_and_unload()
        assert all(torch.equal(a, b) for a, b in zip(before, loaded.parameters()))
        return
    loaded.merge_adapter(safe_merge=True)
    torch.testing.assert_close(loaded(X), out, rtol=1e-5, atol=1e-5)
    loaded.unmerge_adapter()
    weights = {n: p.clone() for n, p in loaded.named_parameters() if "base_layer" in n}
    merged = loaded.merge_and_unload()
    assert not any(isinstance(m, SurmLayer) for m in merged.modules())
    torch.testing.assert_close(merged(X), out, rtol=1e-5, atol=1e-5)
    assert weights  # the unmerge restored the exact weights before merge_and_unload
    fresh = toy()
    torch.testing.assert_close(weights["base_model.model.blocks.0.q.base_layer.weight"], fresh.blocks[0]["q"].weight,
                               rtol=0, atol=0)


@pytest.mark.parametrize("method,options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_two_named_adapters(method, options, tmp_path):
    model = peft_model(method, options).eval()
    perturb(model, seed=1)
    first = model(X).detach()
    model.add_adapter("second", sp.config(method, target_modules=TARGETS, **options))
    # an added adapter starts frozen and inactive
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".second." in n)
    torch.testing.assert_close(model(X), first, rtol=0, atol=0)
    model.set_adapter("second")
    assert all(p.requires_grad for n, p in model.named_parameters() if ".second." in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".default." in n)
    perturb(model, seed=3)
    second = model(X).detach()
    assert not torch.allclose(first, second, atol=1e-4)
    model.set_adapter("default")
    torch.testing.assert_close(model(X), first, rtol=0, atol=0)

    model.save_pretrained(tmp_path)  # writes default/ at the top and second/ in a subfolder
    loaded = PeftModel.from_pretrained(toy(), tmp_path).eval()
    loaded.load_adapter(tmp_path / "second", adapter_name="second")
    torch.testing.assert_close(loaded(X), first, rtol=1e-6, atol=1e-6)  # same values; kernel choice may differ
    loaded.set_adapter("second")
    torch.testing.assert_close(loaded(X), second, rtol=1e-6, atol=1e-6)
    loaded.delete_adapter("second")
    assert not any(".second." in n for n, _ in loaded.named_parameters())


def test_safe_merge_refuses_non_finite_update():
    model = peft_model("toeplitz", {})
    layer = model.base_model.model.blocks[0]["q"]
    with torch.no_grad():
        layer.surm_layers["default"].col[0] = float("nan")
    before = layer.base_layer.weight.clone()
    with pytest.raises(ValueError, match="NaNs detected"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, before) and not layer.merged
