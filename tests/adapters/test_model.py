"""The model-level API (surm_ops.adapters.model): inject by suffix / regex, freezing, atomic failures, merge and
exact unmerge, save / load round trips and their validation, CondLoRA's shared maps, the parameter report, a
Hugging Face model built from a config, and a torch.compile training step."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from torch import nn

import surm_ops
from surm_ops.adapters import (
    METHODS,
    AdaptedLinear,
    CondLoRALinear,
    SURMAdapter,
    adapter_layers,
    inject,
    load_adapters,
    merge,
    parameter_report,
    save_adapters,
    trainable_parameters,
    unmerge,
)
from surm_ops.adapters.model import _adapter_parameters
from tests.adapters._toy import METHOD_OPTIONS, TARGETS, all_methods, perturb, toy

ALL = all_methods()
MERGEABLE = [m for m in ALL if m in METHODS and METHODS[m].mergeable]
NOT_MERGEABLE = [m for m in ALL if m not in MERGEABLE]


def _inject(model, method, targets=TARGETS, **options):
    return inject(model, method, targets, **{**METHOD_OPTIONS.get(method, {}), **options})


def _x(seed=2, hidden=32):
    return torch.randn(3, 5, hidden, generator=torch.Generator().manual_seed(seed))


def _snapshot(model):
    """Everything an atomic failure must leave as it was."""
    return {
        "modules": [(n, id(m), type(m)) for n, m in model.named_modules()],
        "flags": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "attrs": [a for a in ("surm_adapter_config", "surm_condlora") if hasattr(model, a)],
    }


def _assert_same(model, snap):
    now = _snapshot(model)
    assert now["modules"] == snap["modules"]
    assert now["flags"] == snap["flags"]
    assert now["attrs"] == snap["attrs"]
    assert now["state"].keys() == snap["state"].keys()
    for k, v in snap["state"].items():
        assert torch.equal(now["state"][k], v), k


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------------------ inject


@pytest.mark.parametrize("method", ALL)
def test_inject_by_suffix_list_freezes_the_base_and_is_identity_at_init(method):
    model = toy()
    reference = copy.deepcopy(model)
    assert _inject(model, method, ["q", "v"]) is model
    names = [n for n, _ in adapter_layers(model)]
    assert names == ["blocks.0.q", "blocks.0.v", "blocks.1.q", "blocks.1.v"]
    meta = model.surm_adapter_config
    assert meta["method"] == method and meta["targets"] == names
    assert meta["surm_ops_version"] == surm_ops.__version__
    assert json.loads(json.dumps(meta)) == meta  # JSON-ready
    adapter = set(_adapter_parameters(model))
    assert adapter and _trainable(model) == adapter
    assert not any(n.startswith(("head.", "blocks.0.norm", "blocks.0.ff")) for n in adapter)
    x = _x()
    y = model(x)
    assert torch.equal(y, reference(x))  # dW = 0 (or M = 0) at init: exactly the base model
    y.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().max() > 0 for g in grads), "dead initialisation"
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_inject_by_regex_fullmatches_the_qualified_name():
    model = _inject(toy(), "lora", r"blocks\.\d+\.(q|ff)")
    assert [n for n, _ in adapter_layers(model)] == ["blocks.0.q", "blocks.0.ff", "blocks.1.q", "blocks.1.ff"]
    with pytest.raises(ValueError, match=r"no module.*regular expression.*'blocks.0.q'"):
        inject(toy(), "lora", "q")  # fullmatch: a bare "q" is no module's whole name


def test_none_targets_every_linear_but_the_out_proj_of_multihead_attention():
    model = nn.Module()
    model.attn = nn.MultiheadAttention(16, 2, batch_first=True)
    model.proj = nn.Linear(16, 16)
    inject(model, "lora", None, r=2)
    assert [n for n, _ in adapter_layers(model)] == ["proj"]
    assert isinstance(model.attn.out_proj, nn.Linear) and not isinstance(model.attn.out_proj, AdaptedLinear)
    other = nn.Module()
    other.attn = nn.MultiheadAttention(16, 2)
    with pytest.raises(ValueError, match="out_proj of an nn.MultiheadAttention"):
        inject(other, "lora", ["out_proj"])


def test_a_module_registered_under_two_names_is_replaced_under_both():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    inject(model, "lora", ["0"], r=2)
    assert isinstance(model[0], AdaptedLinear) and model[2] is model[0]
    assert model.surm_adapter_config["targets"] == ["0"]


def test_no_match_lists_available_names():
    with pytest.raises(ValueError, match=r"no module of Toy matched.*'blocks.0.q'"):
        inject(toy(), "lora", ["query"])


@pytest.mark.parametrize("target", [[], [""], 3, ["q", 3]])
def test_bad_target_modules(target):
    with pytest.raises(ValueError, match="target_modules"):
        inject(toy(), "lora", target)


def _bad_injections():
    return [
        pytest.param("lora", TARGETS, {"r": 0}, ValueError, "r must be positive", id="invalid-option"),
        pytest.param("lora", TARGETS, {"rank": 4}, ValueError, "rank", id="unknown-option"),
        pytest.param("nosuch", TARGETS, {}, ValueError, "unknown adapter method 'nosuch'", id="unknown-method"),
        pytest.param("adapter", TARGETS, {"structure": "dense"}, ValueError, "structure", id="adapter-option"),
        # the last matched layer fails: every earlier one was already built (and froze its base)
        pytest.param("kronecker", None, {"r": 8}, ValueError, "'head'", id="unsupported-shape"),
        pytest.param("lora", ["q", "norm"], {}, TypeError, "blocks.0.norm", id="not-a-linear"),
        pytest.param("condlora", ["q", "ff"], {"form": "square"}, ValueError, "blocks.0.ff", id="condlora-square"),
        pytest.param("sara", TARGETS, {"budget": 10}, ValueError, "below the minimum", id="budget-too-small"),
        pytest.param("adapter", ["blocks.0", "q"], {}, ValueError, "nest", id="adapter-nested"),
        pytest.param("adapter", ["blocks.0"], {}, ValueError, "features=n", id="adapter-unknown-size"),
    ]


@pytest.mark.parametrize("method,targets,options,error,match", _bad_injections())
def test_failed_injection_leaves_the_model_unchanged(method, targets, options, error, match):
    model = toy()
    model.head.weight.requires_grad_(False)  # a non-default flag that must survive
    snap = _snapshot(model)
    with pytest.raises(error, match=match):
        inject(model, method, targets, **options)
    _assert_same(model, snap)
    assert not any(isinstance(m, (AdaptedLinear, SURMAdapter)) for m in model.modules())


def test_injecting_twice_raises():
    model = _inject(toy(), "lora")
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="already has adapters"):
        _inject(model, "circulant")
    _assert_same(model, snap)


def test_sara_budget_resolves_one_global_threshold():
    budget = 3000
    model = _inject(toy(), "sara", budget=budget)
    resolved = model.surm_adapter_config["resolved"]
    ranks = {n: layer.rank for n, layer in adapter_layers(model)}
    assert ranks == resolved["ranks"] and 0 < resolved["threshold"] <= 1
    assert trainable_parameters(model)[1] <= budget


# ---------------------------------------------------------------------------------------------- merge / unmerge


@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_matches_the_unmerged_forward_and_unmerge_is_exact(method):
    model = _inject(toy(), method)
    perturb(_adapter_parameters(model).values())
    x = _x()
    weights = {n: layer.base.weight.detach().clone() for n, layer in adapter_layers(model)}
    with torch.no_grad():
        y = model(x)
        merge(model)
        assert all(layer.merged for _, layer in adapter_layers(model))
        assert any(not torch.equal(layer.base.weight, weights[n]) for n, layer in adapter_layers(model))
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
        unmerge(model)
        for _ in range(10):
            merge(model)
            unmerge(model)
        for n, layer in adapter_layers(model):
            assert torch.equal(layer.base.weight, weights[n]), n
        assert torch.equal(model(x), y)


@pytest.mark.parametrize("method", NOT_MERGEABLE)
def test_merging_a_non_mergeable_method_raises_before_changing_anything(method):
    model = _inject(toy(), method)
    perturb(_adapter_parameters(model).values())
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match=rf"{method} layer 'blocks\.0\.q'.*no layer was changed"):
        merge(model)
    _assert_same(model, snap)
    unmerge(model)  # a no-op: nothing is merged
    _assert_same(model, snap)


def test_merge_needs_adapters():
    with pytest.raises(ValueError, match="call inject first"):
        merge(toy())


# ------------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("method", ALL)
def test_save_then_load_into_a_fresh_model_reproduces_the_outputs(method, tmp_path):
    model = _inject(toy(), method)
    perturb(_adapter_parameters(model).values())
    save_adapters(model, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["adapter.safetensors", "adapter_config.json"]
    config = json.loads((tmp_path / "ckpt" / "adapter_config.json").read_text())
    params = _adapter_parameters(model)
    assert config["method"] == method and config["targets"] == model.surm_adapter_config["targets"]
    assert config["tensors"] == {n: {"shape": list(p.shape), "dtype": "float32"} for n, p in params.items()}

    fresh = _inject(toy(), method)  # same seed: same base weights, different adapter draws
    load_adapters(fresh, tmp_path / "ckpt")
    x = _x()
    assert torch.equal(fresh(x), model(x))


def test_save_keeps_float64_and_only_adapter_tensors(tmp_path):
    from safetensors.torch import load_file

    model = _inject(toy().double(), "circulant", ["q"])
    save_adapters(model, tmp_path)
    tensors = load_file(tmp_path / "adapter.safetensors")
    assert set(tensors) == {"blocks.0.q.c", "blocks.1.q.c"}
    assert all(t.dtype == torch.float64 for t in tensors.values())


def test_condlora_shares_one_map_per_module_type_through_inject(tmp_path):
    model = _inject(toy(), "condlora", ["q", "v", "ff"], r=4)
    maps = model.surm_condlora
    assert set(maps.keys()) == {"q", "v", "ff"}
    for kind in ("q", "v", "ff"):
        assert model.blocks[0].get_submodule(kind).cond_maps is maps[kind]
        assert model.blocks[1].get_submodule(kind).cond_maps is maps[kind]
    assert _trainable(model) == {f"surm_condlora.{k}.theta_{ab}" for k in ("q", "v", "ff") for ab in "AB"}
    assert not any(".cond_maps." in k for k in model.state_dict())  # stored once, under surm_condlora
    rows, total = trainable_parameters(model)
    assert [n for n, _ in rows] == ["surm_condlora.q", "surm_condlora.v", "surm_condlora.ff"]
    assert total == 4 * (32 + 32) * 2 + 4 * (32 + 64)  # r (d_in + d_out) per type, independent of depth
    assert "condlora (2 layers)" in parameter_report(model)


def test_copies_keep_condlora_sharing(tmp_path):
    model = _inject(toy(), "condlora", ["q"])
    torch.save(model, tmp_path / "model.pt")
    for copied in (copy.deepcopy(model), torch.load(tmp_path / "model.pt", weights_only=False)):
        maps = copied.surm_condlora["q"]
        assert copied.blocks[0].q.cond_maps is maps and copied.blocks[1].q.cond_maps is maps
        assert maps is not model.surm_condlora["q"]
        x = _x()
        assert torch.equal(copied(x), model(x))


def test_condlora_group_keys_are_sanitized():
    model = nn.Module()  # "keys" is a fine child name here but a method of nn.ModuleDict
    model.a, model.b = nn.Module(), nn.Module()
    model.a.keys, model.b.keys = nn.Linear(8, 8), nn.Linear(8, 8)
    inject(model, "condlora", ["keys"], r=2)
    assert list(model.surm_condlora.keys()) == ["keys_"]
    assert isinstance(model.a.keys, CondLoRALinear)
    assert model.a.keys.cond_maps is model.b.keys.cond_maps is model.surm_condlora["keys_"]


def _load_error(model, path, error=ValueError, match=""):
    snap = _snapshot(model)
    with pytest.raises(error, match=match):
        load_adapters(model, path)
    _assert_same(model, snap)


def test_load_rejects_a_mismatch_and_changes_nothing(tmp_path):
    saved = _inject(toy(), "lora", r=4)
    perturb(_adapter_parameters(saved).values())
    save_adapters(saved, tmp_path)
    _load_error(_inject(toy(hidden=48), "lora", r=4), tmp_path, match=r"shape mismatches.*saved \(4, 32\)")
    _load_error(_inject(toy(), "circulant"), tmp_path, match="method: saved 'lora', model 'circulant'")
    _load_error(_inject(toy(), "lora", r=8), tmp_path, match="option r: saved 4, model 8")
    _load_error(_inject(toy(), "lora", ["q"], r=4), tmp_path, match="not adapter tensors of the model")
    _load_error(_inject(toy(depth=3), "lora", r=4), tmp_path, match="missing from the file.*blocks.2")
    _load_error(toy(), tmp_path, match="call inject first")
    _load_error(_inject(toy(), "lora", r=4), tmp_path / "nowhere", match="does not exist")
    merged = merge(_inject(toy(), "lora", r=4))
    _load_error(merged, tmp_path, RuntimeError, "is merged")


def test_load_detects_files_from_different_saves(tmp_path):
    save_adapters(_inject(toy(), "lora", r=4), tmp_path / "a")
    save_adapters(_inject(toy(), "lora", ["q"], r=4), tmp_path / "b")
    os.replace(tmp_path / "b" / "adapter_config.json", tmp_path / "a" / "adapter_config.json")
    _load_error(_inject(toy(), "lora", r=4), tmp_path / "a", match="different saves")


def test_a_failed_save_leaves_no_half_written_directory(tmp_path, monkeypatch):
    import safetensors.torch

    model = _inject(toy(), "lora")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_adapters(model, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    save_adapters(model, tmp_path / "old")
    before = {f: (tmp_path / "old" / f).read_bytes() for f in os.listdir(tmp_path / "old")}
    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save_adapters(model, tmp_path / "old")
    assert {f: (tmp_path / "old" / f).read_bytes() for f in os.listdir(tmp_path / "old")} == before


def test_saving_a_merged_model_saves_the_adapters(tmp_path):
    model = _inject(toy(), "lora")
    perturb(_adapter_parameters(model).values())
    x = _x()
    y = model(x)
    save_adapters(merge(model), tmp_path)
    fresh = load_adapters(_inject(toy(), "lora"), tmp_path)
    torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------- reporting


@pytest.mark.parametrize("method", ALL)
def test_parameter_report_totals(method):
    model = _inject(toy(), method)
    rows, total = trainable_parameters(model)
    assert total == sum(c for _, c in rows) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    report = parameter_report(model)
    assert "<- differs" not in report  # every layer matches its formula
    last = report.splitlines()[-2].split()
    assert last[0] == "total" and last[1] == last[2] == f"{total:,}"


def test_parameter_report_counts_other_trainable_parameters():
    model = _inject(toy(), "lora", ["q"], r=2)
    model.head.weight.requires_grad_(True)
    rows, total = trainable_parameters(model)
    assert rows[-1] == ("(other trainable parameters)", 32 * 4)
    assert total == 2 * 2 * (2 * 32) + 32 * 4
    assert "(other trainable parameters)" in parameter_report(model)


# ------------------------------------------------------------------------------------------------ Hugging Face


@pytest.mark.parametrize("method,options", [("lora", {"r": 4}), ("circulant", {}), ("adapter", {})])
def test_hugging_face_bert_from_config(method, options, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=100)

    def build():
        torch.manual_seed(0)
        return transformers.BertModel(config).eval()

    # The adapter form sits at the Houlsby positions: after the attention output and the FFN output projections.
    targets = ["output.dense"] if method == "adapter" else ["query", "value"]
    model = inject(build(), method, targets, **options)
    expected = (["encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense",
                 "encoder.layer.1.attention.output.dense", "encoder.layer.1.output.dense"] if method == "adapter"
                else [f"encoder.layer.{i}.attention.self.{k}" for i in range(2) for k in ("query", "value")])
    assert model.surm_adapter_config["targets"] == expected
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    model(input_ids=ids, attention_mask=mask).last_hidden_state.square().mean().backward()
    adapter = _adapter_parameters(model)
    assert _trainable(model) == set(adapter)
    assert all(p.grad is not None for p in adapter.values())
    assert any(p.grad.abs().max() > 0 for p in adapter.values())
    perturb(adapter.values())
    with torch.no_grad():
        y = model(input_ids=ids, attention_mask=mask).last_hidden_state
    save_adapters(model, tmp_path)
    fresh = load_adapters(inject(build(), method, targets, **options), tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids, attention_mask=mask).last_hidden_state, y)


# ----------------------------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch internals
@pytest.mark.parametrize("method", ["lora", "circulant"])
def test_torch_compile_training_step_matches_eager(method):
    torch._dynamo.reset()
    models = [_inject(toy(), method) for _ in range(2)]
    for m in models:
        perturb(_adapter_parameters(m).values())
    x, target = _x(), torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(3))

    def loss_fn(model, x, target):
        return nn.functional.mse_loss(model(x), target)

    compiled = torch.compile(loss_fn, fullgraph=True)
    results = []
    for model, fn in zip(models, (loss_fn, compiled)):
        params = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        opt = torch.optim.SGD(params, lr=0.5)
        loss = fn(model, x, target)
        loss.backward()
        grads = [p.grad.clone() for p in params]
        opt.step()
        assert all(not torch.equal(p, b) for p, b in zip(params, before))  # the step trained every tensor
        results.append((loss.detach(), grads, [p.detach().clone() for p in params]))
    (l0, g0, p0), (l1, g1, p1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g0 + p0, g1 + p1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
