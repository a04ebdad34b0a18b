"""PEFT features around the layers: Conv1D targets (GPT-2's fan_in_fan_out), modules_to_save, RM-LoRA's training
pieces on a PEFT model, config errors, and the error when a checkpoint is loaded without surm_ops.peft (~10 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from peft import PeftConfig, PeftModel, get_peft_model  # noqa: E402

import surm_ops.peft as sp  # noqa: E402
from surm_ops.adapters import CirculantConfig as SurmCirculantOptions  # noqa: E402
from surm_ops.adapters import CondLoRAMaps, RandomMasker, orthogonality_loss  # noqa: E402
from surm_ops.peft.layer import SurmLayer  # noqa: E402
from tests.peft._toy import perturb, toy  # noqa: E402

X = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2,
                                                                n_head=4))


@pytest.mark.parametrize("method,options", [("circulant", {}), ("condlora", {"r": 2}), ("sara", {"rank": 2})])
def test_conv1d_targets(method, options, tmp_path):
    """GPT-2's c_attn (32 -> 96), attn.c_proj (32 -> 32) and mlp.c_proj (128 -> 32) are Conv1D (weight stored
    (in, out)): adapted, merged, reloaded. CondLoRA: one map for c_attn, one per c_proj shape."""
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model = get_peft_model(tiny_gpt2(), sp.config(method, target_modules=["c_attn", "c_proj"], **options)).eval()
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(layer, SurmLayer) and layer.fan_in_fan_out
    assert len([m for m in model.modules() if isinstance(m, SurmLayer)]) == 6
    if method == "condlora":
        maps = {(m.d_in, m.d_out) for m in model.modules() if isinstance(m, CondLoRAMaps)}
        assert maps == {(32, 96), (32, 32), (128, 32)}
    assert layer.surm_layers["default"].in_features == 32 and layer.surm_layers["default"].out_features == 96
    perturb(model)
    want = model(ids).logits.detach()
    # the update is dW (out, in) added to x @ W: checked against the dense product on one layer
    x = torch.randn(3, 32)
    ours = layer.surm_layers["default"]
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ ours.delta_weight().T, rtol=1e-5, atol=1e-5)

    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_gpt2(), tmp_path).eval()
    torch.testing.assert_close(loaded(ids).logits, want, rtol=1e-5, atol=1e-5)
    stored = loaded.base_model.model.transformer.h[0].attn.c_attn.base_layer.weight.clone()
    merged = loaded.merge_and_unload(safe_merge=True)  # the check adds dW to the (out, in) view
    assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert not torch.equal(merged.transformer.h[0].attn.c_attn.weight, stored)  # written into the (in, out) weight
    torch.testing.assert_close(merged(ids).logits, want, rtol=1e-4, atol=1e-4)


def test_modules_to_save(tmp_path):
    model = get_peft_model(toy(), sp.config("toeplitz", target_modules=["q", "v"], modules_to_save=["head"])).eval()
    assert any(p.requires_grad for n, p in model.named_parameters() if "head" in n)
    perturb(model)
    want = model(X).detach()
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    assert any("head" in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    loaded = PeftModel.from_pretrained(toy(), tmp_path).eval()
    torch.testing.assert_close(loaded(X), want, rtol=1e-6, atol=1e-6)


def test_rmlora_training_pieces_find_peft_layers():
    model = get_peft_model(toy(), sp.config("rmlora", r=4, random_rank=2, target_modules=["q", "v"]))
    perturb(model)
    reg = orthogonality_loss(model)
    (model(X).sum() + reg).backward()
    masker = RandomMasker(model, generator=torch.Generator().manual_seed(0))
    assert len(masker.layers) == 4
    masker.apply()  # the first call leaves the gradients whole
    masker.apply()
    for _, layer in masker.layers:
        zero_rows = (layer.lora_A.grad.abs().sum(1) == 0).sum().item()
        assert zero_rows == 2  # r - random_rank rows masked


def test_config_classes_and_errors():
    cfg = sp.config("circulant", layout="block", block_size=8, target_modules=["q"])
    assert type(cfg) is sp.CirculantConfig and cfg.peft_type.value == "SURM_CIRCULANT"
    assert sp.peft_type_name("mosara") == "SURM_MOSARA"
    assert set(sp.CONFIGS) == {"adapter", "circulant", "condlora", "kronecker", "ldr", "lora", "mosara", "rmlora",
                               "sara", "toeplitz"}
    for method, cls in sp.CONFIGS.items():
        assert isinstance(sp.config(method), cls)
    with pytest.raises(ValueError, match="unknown surm_ops method 'c3a'"):
        sp.config("c3a")
    with pytest.raises(ValueError, match="block_siz"):
        sp.config("circulant", block_siz=8)
    with pytest.raises(ValueError, match="layout"):
        sp.CirculantConfig(layout="diagonal")
    with pytest.raises(ValueError, match="set target_modules"):
        get_peft_model(toy(), sp.config("circulant"))
    with pytest.raises(ValueError, match="block_size=5 must divide"):
        get_peft_model(toy(), sp.config("circulant", layout="block", block_size=5, target_modules=["q"]))
    # the option fields are the surm_ops method's, defaults included
    assert {f: getattr(sp.CirculantConfig(), f) for f in ("factored", "layout", "block_size")} == \
        {f: getattr(SurmCirculantOptions(), f) for f in ("factored", "layout", "block_size")}


def test_config_round_trip(tmp_path):
    cfg = sp.config("sara", threshold=0.7, max_rank=3, target_modules=["q", "v"])
    cfg.save_pretrained(tmp_path)
    again = PeftConfig.from_pretrained(tmp_path)
    assert type(again) is sp.SARAConfig and again.threshold == 0.7 and again.max_rank == 3


def test_loading_without_the_plugin_fails_naming_our_type(tmp_path):
    """PEFT looks the saved peft_type up in its registry before any code of ours can run, so without
    ``import surm_ops.peft`` the load fails with PEFT's KeyError; it names our distinctive type (README documents the
    fix). Run in a fresh interpreter, where surm_ops.peft is not imported."""
    model = get_peft_model(toy(), sp.config("circulant", target_modules=["q"]))
    model.save_pretrained(tmp_path)
    code = ("import sys; from peft import PeftConfig\n"
            "try:\n    PeftConfig.from_pretrained(sys.argv[1])\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n"
            "print('surm_ops.peft' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[:2] == ["KeyError 'SURM_CIRCULANT'", "False"], out.stdout + out.stderr


def test_peft_version_range():
    from surm_ops.peft._compat import check_peft_version

    check_peft_version("0.21.2")
    with pytest.raises(ImportError, match=r"peft>=0.21.0,<0.22.0.*found peft 0.20.0"):
        check_peft_version("0.20.0")
    with pytest.warns(UserWarning, match="tested with"):
        check_peft_version("0.22.0")


def test_condlora_maps_live_in_the_model_without_a_peft_model():
    """peft.inject_adapter_in_model drops the tuner: the shared maps must still be the model's parameters, once."""
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(sp.config("condlora", r=2, target_modules=["q", "v"]), toy())
    maps = {id(m) for m in model.modules() if isinstance(m, CondLoRAMaps)}
    layers = [m.surm_layers["default"] for m in model.modules() if isinstance(m, SurmLayer)]
    assert len(maps) == 2 and {id(layer.cond_maps) for layer in layers} == maps
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * (16 + 32) + 2 * (16 + 16)


def test_bfloat16_base_keeps_float32_adapters():
    model = get_peft_model(toy().to(torch.bfloat16), sp.config("toeplitz", target_modules=["q", "v"]))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    perturb(model)
    y = model(X.bfloat16())
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        model.merge_adapter()
        torch.testing.assert_close(model(X.bfloat16()), y.detach(), rtol=2e-2, atol=2e-2)
