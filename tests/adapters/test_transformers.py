"""Adapters on transformers models built from tiny configs (GPT-2, Llama, BERT, ViT): tied weights, GPT-2's Conv1D
for every method, unload then save_pretrained / from_pretrained, resize_token_embeddings and tie_weights after
injection, the adapter form on attention blocks that return tuples, a task head kept with modules_to_save, and
RM-LoRA inside the Trainer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from surm_ops.adapters import (
    METHODS,
    AdaptedLinear,
    adapter_layers,
    inject,
    load_adapters,
    merge,
    save_adapters,
    unload,
    unmerge,
)
from surm_ops.adapters.model import _adapter_parameters
from tests.adapters._toy import all_methods, perturb

transformers = pytest.importorskip("transformers")
Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D

ALL = all_methods()
LAYER_METHODS = sorted(METHODS)
MERGEABLE = [m for m in LAYER_METHODS if METHODS[m].mergeable]
IDS = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()


def gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def llama(seed=0, tied=False):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=50,
                                      tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


def bert_config(**kw):
    return transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   vocab_size=50, max_position_embeddings=16, **kw)


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------------------------------------ tied weights


def test_gpt2_default_targets_skip_the_tied_lm_head_and_merge_keeps_the_outputs():
    model = gpt2()
    inject(model, "lora", None, r=2)
    names = [n for n, _ in adapter_layers(model)]
    assert "lm_head" not in names and len(names) == 8  # c_attn, c_proj, c_fc, mlp.c_proj per block (Conv1D)
    assert model.lm_head.weight is model.transformer.wte.weight
    perturb(_adapter_parameters(model).values())
    y = _logits(model)
    wte = model.transformer.wte.weight.detach().clone()
    merge(model)
    assert torch.equal(model.transformer.wte.weight, wte)
    torch.testing.assert_close(_logits(model), y, rtol=1e-5, atol=1e-5)


def test_tied_llama_generate_is_unchanged_by_merge_and_lm_head_cannot_be_merged():
    model = llama(tied=True)
    inject(model, "lora", None, r=2)
    assert "lm_head" not in [n for n, _ in adapter_layers(model)]
    perturb(_adapter_parameters(model).values(), scale=0.3)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    out = model.generate(IDS[:1], **kw)
    merge(model)
    assert torch.equal(model.generate(IDS[:1], **kw), out)

    explicit = inject(llama(tied=True), "lora", ["q_proj", "lm_head"], r=2)
    with pytest.raises(RuntimeError, match=r"'lm_head' cannot be merged: its weight is shared with "
                                           r"'model.embed_tokens.weight'"):
        merge(explicit)
    explicit.tie_weights()  # ties by assignment to lm_head.weight: reaches the frozen base
    assert explicit.lm_head.weight is explicit.model.embed_tokens.weight


# ---------------------------------------------------------------------------------------------- GPT-2 Conv1D


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_conv1d_layer_equals_the_same_adapter_on_the_equivalent_linear(method):
    torch.manual_seed(0)
    conv = Conv1D(24, 16)  # x @ W + b, W (16, 24)
    with torch.no_grad():
        conv.bias.normal_()
    linear = nn.Linear(16, 24)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    cls = METHODS[method]
    torch.manual_seed(1)
    a = cls(conv, cls.config_class(), "c_attn")
    torch.manual_seed(1)
    b = cls(linear, cls.config_class(), "c_attn")
    assert a.fan_in_fan_out and not b.fan_in_fan_out and (a.in_features, a.out_features) == (16, 24)
    perturb([p for n, p in a.named_parameters() if not n.startswith("base.")], seed=3)
    perturb([p for n, p in b.named_parameters() if not n.startswith("base.")], seed=3)
    x = torch.randn(3, 16)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)
    if cls.mergeable:
        torch.testing.assert_close(a.delta_weight(), b.delta_weight())
        y = a(x).detach()
        a.merge()
        torch.testing.assert_close(a.base.weight, b.base.weight.T + b.delta_weight().T, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a(x), y, rtol=1e-5, atol=1e-5)
        a.unmerge()
        assert torch.equal(a.base.weight, linear.weight.T)


@pytest.mark.parametrize("method", ALL)
def test_every_method_on_gpt2(method):
    reference = gpt2()
    model = copy.deepcopy(reference)
    options = {"features": 32} if method == "adapter" else {}
    targets = ["attn.c_proj", "mlp.c_proj"] if method == "adapter" else None
    inject(model, method, targets, **options)
    assert len(adapter_layers(model)) == (4 if method == "adapter" else 8)
    torch.testing.assert_close(_logits(model), _logits(reference), rtol=0, atol=0)  # identity at init
    model(input_ids=IDS).logits.square().mean().backward()
    params = _adapter_parameters(model)
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in params.values())
    perturb(params.values())
    y = _logits(model)
    if method in MERGEABLE:
        merge(model)
        torch.testing.assert_close(_logits(model), y, rtol=1e-5, atol=1e-5)
        unload(model)
        assert all(type(m) is Conv1D for n, m in model.named_modules() if n.endswith(("c_attn", "c_fc")))
        torch.testing.assert_close(_logits(model), y, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- unload, resize


def test_unload_then_save_pretrained_from_pretrained_reproduces_the_merged_outputs(tmp_path):
    model = inject(llama(), "lora", None, r=2)
    assert "lm_head" in [n for n, _ in adapter_layers(model)]  # untied: adapted
    perturb(_adapter_parameters(model).values(), scale=0.3)
    y = _logits(model)
    unload(model)
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())
    model.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(loaded), y, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(llama()), y, atol=1e-3)


def test_resize_token_embeddings_refuses_an_adapted_output_layer_before_changing_anything():
    model = inject(llama(), "lora", None, r=2)
    sizes = (model.model.embed_tokens.weight.shape, model.lm_head.weight.shape)
    with pytest.raises(RuntimeError, match="resize_token_embeddings: 'lm_head' carries a lora adapter"):
        model.resize_token_embeddings(60)
    assert (model.model.embed_tokens.weight.shape, model.lm_head.weight.shape) == sizes
    assert model.config.vocab_size == 50

    other = inject(llama(), "lora", ["q_proj", "v_proj"], r=2)  # output layer not adapted: resizing works
    other.resize_token_embeddings(60)
    assert other.lm_head.weight.shape[0] == 60 and other.model.embed_tokens.weight.shape[0] == 60
    other(input_ids=IDS)
    unload(model, merge=False)
    model.resize_token_embeddings(60)  # a plain model again
    assert model.lm_head.weight.shape[0] == 60


# ------------------------------------------------------------------------------------------ tuples, task head


def test_the_adapter_form_on_bert_attention_blocks_that_return_tuples():
    torch.manual_seed(0)
    reference = transformers.BertModel(bert_config()).eval()
    model = copy.deepcopy(reference)
    inject(model, "adapter", r"encoder\.layer\.\d+\.attention", features=32)
    assert len(adapter_layers(model)) == 2
    with torch.no_grad():
        y = model(input_ids=IDS).last_hidden_state
        assert torch.equal(y, reference(input_ids=IDS).last_hidden_state)  # identity at init
    model(input_ids=IDS).last_hidden_state.square().mean().backward()
    assert all(p.grad is not None for p in _adapter_parameters(model).values())


def test_a_classifier_head_is_trained_and_saved_with_modules_to_save(tmp_path):
    def build():
        torch.manual_seed(0)
        return transformers.BertForSequenceClassification(bert_config(num_labels=3)).eval()

    model = inject(build(), "circulant", ["query", "value"], modules_to_save=["classifier"])
    assert model.classifier.weight.requires_grad and not model.bert.pooler.dense.weight.requires_grad
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 2])
    for _ in range(3):
        model(input_ids=IDS, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    save_adapters(model, tmp_path)
    fresh = load_adapters(inject(build(), "circulant", ["query", "value"], modules_to_save=["classifier"]),
                          tmp_path)
    torch.testing.assert_close(_logits(fresh), _logits(model), rtol=0, atol=0)
    assert not torch.equal(_logits(build()), _logits(model))


def test_vit_from_config_injects_merges_and_unloads():
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=16, patch_size=8, num_labels=3)
    model = transformers.ViTForImageClassification(config).eval()
    inject(model, "toeplitz", ["query", "value", "q_proj", "v_proj"], modules_to_save=["classifier"])  # 4.x, 5.x names
    perturb(_adapter_parameters(model).values())
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(pixel_values=pixels).logits
        merge(model)
        torch.testing.assert_close(model(pixel_values=pixels).logits, y, rtol=1e-5, atol=1e-5)
        unmerge(model)
        unload(model)
        torch.testing.assert_close(model(pixel_values=pixels).logits, y, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- RM-LoRA, Trainer


class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randint(1, 50, (6,), generator=g), "labels": torch.tensor(i % 2)}


def test_rmlora_callback_runs_the_method_inside_the_trainer(tmp_path):
    pytest.importorskip("accelerate")
    from surm_ops import RMLoRACallback

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(bert_config(num_labels=2))
    inject(model, "rmlora", ["query", "value"], modules_to_save=["classifier"], r=4, random_rank=1, mask="update")
    layer = model.bert.encoder.layer[0].attention.self.query
    snapshots = []

    class Spy(transformers.TrainerCallback):  # the A matrix before each step (after the callback's own hooks ran)
        def on_step_begin(self, args, state, control, **kwargs):
            snapshots.append(layer.lora_A.detach().clone())

    callback = RMLoRACallback(generator=torch.Generator().manual_seed(0))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                                          logging_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Pairs(), callbacks=[callback, Spy()])
    trainer.train()
    snapshots.append(layer.lora_A.detach().clone())
    assert callback.training is None and layer.trainer is None  # detached at the end
    # steps 2 and 3 were masked: exactly random_rank = 1 of the r = 4 rows of A moved, the others kept their bits
    for before, after in zip(snapshots[1:-1], snapshots[2:]):
        moved = [i for i in range(4) if not torch.equal(before[i], after[i])]
        assert len(moved) == 1, moved
    assert len([i for i in range(4) if not torch.equal(snapshots[0][i], snapshots[1][i])]) == 4  # step 1: none
