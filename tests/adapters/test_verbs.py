"""The model-level verbs a PEFT user reaches for, on the toy model: unload (merged or removed), modules_to_save,
adapters found from an outer model, tied weights, option names and types, load errors that name the file, float32
adapters after ``model.to(bfloat16)``, and the warning when a merged model trains."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

import surm_ops
from surm_ops.adapters import (
    METHODS,
    AdaptedLinear,
    SURMAdapter,
    adapter_layers,
    inject,
    load_adapters,
    merge,
    save_adapters,
    unload,
)
from surm_ops.adapters.model import _adapter_parameters
from tests.adapters._toy import TARGETS, all_methods, perturb, toy

ALL = all_methods()
MERGEABLE = [m for m in ALL if m in METHODS and METHODS[m].mergeable]
NOT_MERGEABLE = [m for m in ALL if m not in MERGEABLE]


def _x(seed=2, hidden=32):
    return torch.randn(3, 5, hidden, generator=torch.Generator().manual_seed(seed))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------------- unload


@pytest.mark.parametrize("method", MERGEABLE)
def test_unload_merged_returns_plain_modules_computing_the_adapted_outputs(method):
    original = toy()
    original.blocks[0].norm.requires_grad_(False)  # a user's flag, which unload must give back
    flags = {n: p.requires_grad for n, p in original.named_parameters()}
    model = inject(copy.deepcopy(original), method, TARGETS)
    perturb(_adapter_parameters(model).values())
    x = _x()
    with torch.no_grad():
        y = model(x)
    assert unload(model) is model
    assert not any(isinstance(m, (AdaptedLinear, SURMAdapter)) for m in model.modules())
    assert all(type(model.blocks[i].q) is nn.Linear for i in range(2))
    assert not hasattr(model, "surm_adapter_config") and not hasattr(model, "surm_condlora")
    assert model.state_dict().keys() == original.state_dict().keys()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in original.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x), original(x), atol=1e-4)  # the update is really in the weights


@pytest.mark.parametrize("method", ALL)
def test_unload_without_merge_gives_back_the_original_model_exactly(method):
    original = toy()
    model = inject(copy.deepcopy(original), method, TARGETS)
    perturb(_adapter_parameters(model).values())
    if method in MERGEABLE:
        merge(model)  # unload(merge=False) of a merged model restores W0 bit for bit
    unload(model, merge=False)
    assert not any(isinstance(m, (AdaptedLinear, SURMAdapter)) for m in model.modules())
    after = _state(model)
    assert after.keys() == original.state_dict().keys()
    for k, v in original.state_dict().items():
        assert torch.equal(after[k], v), k
    assert all(p.requires_grad for p in model.parameters())
    x = _x()
    assert torch.equal(model(x), original(x))
    inject(model, "lora", ["q"])  # a plain model again: injectable


@pytest.mark.parametrize("method", NOT_MERGEABLE)
def test_unload_merged_refuses_a_non_mergeable_method_before_changing_anything(method):
    model = inject(toy(), method, TARGETS)
    before = _state(model)
    with pytest.raises(RuntimeError, match="cannot be merged.*no layer was changed"):
        unload(model)
    assert len(adapter_layers(model)) == 8 and hasattr(model, "surm_adapter_config")
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())


def test_unload_handles_a_module_registered_under_two_names():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    inject(model, "lora", ["0"], r=2)
    unload(model, merge=False)
    assert model[0] is shared and model[2] is shared


# ------------------------------------------------------------------------------------------------ tied weights


class TiedLM(nn.Module):
    def __init__(self, vocab=20, hidden=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.lm_head.weight = self.embed.weight  # tied, as GPT-2 and many LMs

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.proj(self.embed(ids))))


def _tied(seed=0):
    torch.manual_seed(seed)
    return TiedLM()


def test_default_targets_skip_a_tied_output_layer():
    model = inject(_tied(), "lora", None, r=2)
    assert [n for n, _ in adapter_layers(model)] == ["proj"]
    assert model.lm_head.weight is model.embed.weight


def test_merging_into_a_tied_weight_is_refused_and_changes_nothing():
    model = inject(_tied(), "lora", ["proj", "lm_head"], r=2)
    perturb(_adapter_parameters(model).values())
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        y = model(ids)
    before = _state(model)
    for verb in (merge, unload):
        with pytest.raises(RuntimeError, match=r"'lm_head' cannot be merged: its weight is shared with 'embed.weight'"):
            verb(model)
        assert not any(layer.merged for _, layer in adapter_layers(model))
        assert all(torch.equal(v, before[k]) for k, v in _state(model).items())
    with torch.no_grad():
        assert torch.equal(model(ids), y)
    unload(model, merge=False)  # removing the adapters is fine
    assert model.lm_head.weight is model.embed.weight


# ---------------------------------------------------------------------------------------------- modules_to_save


def test_modules_to_save_train_and_round_trip_through_the_adapter_file(tmp_path):
    model = inject(toy(), "lora", ["q", "v"], modules_to_save=["head"], r=2)
    assert model.surm_adapter_config["modules_to_save"] == ["head"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == (
        set(_adapter_parameters(model)) | {"head.weight", "head.bias"})
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    head = model.head.weight.detach().clone()
    model(_x()).square().mean().backward()
    opt.step()
    assert not torch.equal(model.head.weight, head)
    save_adapters(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert {"head.weight", "head.bias"} <= set(config["tensors"])

    fresh = load_adapters(inject(toy(), "lora", ["q", "v"], modules_to_save=["head"], r=2), tmp_path)
    x = _x(5)
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(ValueError, match=r"saved tensors are not adapter tensors.*'head.weight'"):
        load_adapters(inject(toy(), "lora", ["q", "v"], r=2), tmp_path)  # a model injected without the head
    unload(fresh)
    assert torch.equal(fresh.head.weight, model.head.weight)  # the trained head stays


def test_parameter_report_lists_the_modules_to_save():
    outer = nn.Module()
    outer.body = inject(toy(), "lora", ["q"], modules_to_save=["head"], r=2)
    rows, total = surm_ops.adapters.trainable_parameters(outer)
    assert rows[-1] == ("body.head", 32 * 4 + 4)
    assert total == 2 * 2 * (2 * 32) + 32 * 4 + 4
    assert "body.head" in surm_ops.parameter_report(outer) and "saved whole" in surm_ops.parameter_report(outer)


@pytest.mark.parametrize("modules,match", [
    (["classifier"], r"no module of Toy is named 'classifier'.*'blocks.0.q'"),
    (["blocks.0"], "overlaps the adapted layer 'blocks.0.q'"),
    (["q"], "overlaps the adapted layer"),
    ("head", "list of module name suffixes"),
])
def test_modules_to_save_errors_leave_the_model_unchanged(modules, match):
    model = toy()
    before = _state(model)
    with pytest.raises(ValueError, match=match):
        inject(model, "lora", ["q"], modules_to_save=modules)
    assert not hasattr(model, "surm_adapter_config") and not adapter_layers(model)
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())


def test_adapters_in_a_submodule_are_found_from_the_outer_model(tmp_path):
    def outer(seed):
        m = nn.Module()
        m.body = toy(seed)
        m.extra = nn.Linear(4, 4)
        return m

    model = outer(0)
    inject(model.body, "circulant", ["q"], modules_to_save=["head"])
    perturb(_adapter_parameters(model.body).values())
    save_adapters(model, tmp_path / "outer")  # was: "has no surm_ops adapters (call inject first)"
    save_adapters(model.body, tmp_path / "inner")
    assert (tmp_path / "outer" / "adapter.safetensors").read_bytes() == (
        tmp_path / "inner" / "adapter.safetensors").read_bytes()
    fresh = outer(0)
    inject(fresh.body, "circulant", ["q"], modules_to_save=["head"])
    assert load_adapters(fresh, tmp_path / "outer") is fresh
    x = _x()
    assert torch.equal(fresh.body(x), model.body(x))
    unload(fresh)
    assert not adapter_layers(fresh) and not hasattr(fresh.body, "surm_adapter_config")


# --------------------------------------------------------------------------------------------- option checking


@pytest.mark.parametrize("method,options,match", [
    ("lora", {"rank": 4}, r"unknown option 'rank' \(did you mean 'r'\?\); valid options: r, alpha, dropout"),
    ("lora", {"lora_alpha": 16}, r"unknown option 'lora_alpha' \(did you mean 'alpha'\?\)"),
    ("ldr", {"rnak": 2}, r"unknown option 'rnak' \(did you mean 'rank'\?\); valid options: rank, layout"),
    ("adapter", {"structur": "ldr"}, r"did you mean 'structure'"),
    ("lora", {"r": "8"}, r"lora: option r must be int; got '8' \(str\)"),
    ("lora", {"r": 8.0}, r"option r must be int; got 8.0"),
    ("lora", {"alpha": "16"}, r"option alpha must be float; got '16'"),
    ("circulant", {"factored": 1}, r"option factored must be bool; got 1"),
    ("circulant", {"block_size": "4"}, r"option block_size must be int or None"),
    ("rmlora", {"version": 2}, r"option version must be str; got 2"),
    ("sara", {"budget": 1.5}, r"option budget must be int or None"),
])
def test_option_names_and_types_are_checked_by_name(method, options, match):
    with pytest.raises(ValueError, match=match):
        inject(toy(), method, TARGETS, **options)


def test_an_int_is_a_fine_float_option():
    inject(toy(), "lora", ["q"], r=2, alpha=4)


# ----------------------------------------------------------------------------------------------- load errors


def _saved(tmp_path):
    model = inject(toy(), "lora", ["q"], r=2)
    save_adapters(model, tmp_path)
    return tmp_path


def _corruptions():
    def truncate(d):
        data = (d / "adapter.safetensors").read_bytes()
        (d / "adapter.safetensors").write_bytes(data[: len(data) // 2])

    def empty(d):
        (d / "adapter.safetensors").write_bytes(b"")

    def garbage(d):
        (d / "adapter.safetensors").write_bytes(b"\x07" * 64)

    def bad_json(d):
        (d / "adapter_config.json").write_text('{"method": "lora", ')

    def json_list(d):
        (d / "adapter_config.json").write_text("[1, 2]")

    def options_str(d):
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg["options"] = "r=2"
        (d / "adapter_config.json").write_text(json.dumps(cfg))

    def no_tensors(d):
        cfg = json.loads((d / "adapter_config.json").read_text())
        del cfg["tensors"]
        (d / "adapter_config.json").write_text(json.dumps(cfg))

    return [
        pytest.param(truncate, r"adapter.safetensors \(\d+ bytes\) is not a readable safetensors", id="truncated"),
        pytest.param(empty, r"adapter.safetensors \(0 bytes\) is not a readable safetensors", id="empty"),
        pytest.param(garbage, r"adapter.safetensors \(64 bytes\) is not a readable safetensors", id="garbage"),
        pytest.param(bad_json, r"adapter_config.json is not valid JSON", id="corrupt-json"),
        pytest.param(json_list, r"adapter_config.json is not an adapter config: the top level is a list",
                     id="json-list"),
        pytest.param(options_str, r"adapter_config.json is not an adapter config: 'options' is str, expected dict",
                     id="options-not-a-dict"),
        pytest.param(no_tensors, r"adapter_config.json is not an adapter config: 'tensors' is missing",
                     id="no-tensors"),
    ]


@pytest.mark.parametrize("corrupt,match", _corruptions())
def test_a_broken_file_is_a_value_error_naming_it_and_the_model_is_untouched(corrupt, match, tmp_path):
    corrupt(_saved(tmp_path))
    model = inject(toy(1), "lora", ["q"], r=2)
    before = _state(model)
    with pytest.raises(ValueError, match=match) as info:
        load_adapters(model, tmp_path)
    assert str(tmp_path) in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())


# ------------------------------------------------------------------------------------------------ dtype, merged


@pytest.mark.parametrize("method", ["lora", "condlora", "mosara", "adapter"])
def test_adapters_stay_float32_when_the_model_is_cast_to_bfloat16(method):
    model = inject(toy(), method, TARGETS)
    perturb(_adapter_parameters(model).values())
    adapter = {n: p.detach().clone() for n, p in _adapter_parameters(model).items()}
    ids = {n: id(p) for n, p in _adapter_parameters(model).items()}
    model.to(torch.bfloat16)
    assert model.blocks[0].q.base.weight.dtype == torch.bfloat16 if method != "adapter" else True
    assert model.head.weight.dtype == torch.bfloat16
    now = _adapter_parameters(model)
    assert {n: id(p) for n, p in now.items()} == ids  # the same Parameter objects (optimizers keep them)
    for n, p in now.items():
        assert p.dtype == torch.float32 and torch.equal(p, adapter[n]), n
    if method == "mosara":
        assert model.blocks[0].q.mosara_U.dtype == torch.float32
    y = model(_x().to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in now.values())
    model.double()  # a float64 cast is not a half cast: it applies
    assert all(p.dtype == torch.float64 for p in _adapter_parameters(model).values())


def test_training_a_merged_model_warns_that_the_adapter_gets_no_gradient():
    model = inject(toy(), "lora", ["q"], modules_to_save=["head"], r=2)  # the head trains: backward runs
    merge(model)
    with pytest.warns(UserWarning, match="'blocks.0.q' is merged: its adapter gets no gradient"):
        model(_x()).sum().backward()
    assert model.blocks[0].q.lora_B.grad is None and model.head.weight.grad is not None
    fresh = merge(inject(toy(), "lora", ["q"], r=2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh(_x())  # inference after merge: no warning


def test_top_level_exports():
    assert surm_ops.unload is unload
    assert surm_ops.RMLoRATraining.__name__ == "RMLoRATraining"
