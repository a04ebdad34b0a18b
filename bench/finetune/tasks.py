"""The two cases: which data, which network, which methods with which options and where, and the training
hyperparameters shared by every method of a case.

A :class:`Task` builds a fresh model for a :class:`Spec` (pretrained encoder copy, head, adapters injected into the
encoder only, so the head stays trainable), streams training batches, computes the loss and measures accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from bench.finetune import data as D
from bench.finetune import models as M

TEXT_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
DIGITS_GRID = (3e-3, 1e-2, 3e-2, 1e-1)
"""The learning rates a grid search tries for every method of a case (``Task.lr_grid``), picked by validation
accuracy. Four per case, placed where that case's methods peak (the small MLP wants larger rates)."""


@dataclass
class Spec:
    """One row of the table. ``method=None`` is the head-only baseline (no adapter). ``lr`` is the learning rate
    used without a grid search: the one the case's grid picked on its validation split (``TEXT_LRS``,
    ``DIGITS_LRS``)."""

    label: str
    method: str | None
    options: dict = field(default_factory=dict)
    targets: list[str] | None = None
    lr: float = 1e-3


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_count(encoder: nn.Module, targets: list[str], r: int) -> int:
    """LoRA rank r's parameter count r (d_in + d_out) summed over the ``nn.Linear`` layers ``targets`` match (the
    suffix rule of :func:`surm_ops.inject`): the budget SARA is matched to."""
    return sum(r * (m.in_features + m.out_features) for n, m in encoder.named_modules()
               if isinstance(m, nn.Linear) and _matches(n, targets))


def _specs(qv: list[str], adapter_targets: list[str], budget: int, lrs: dict[str, float]) -> list[Spec]:
    rows = [
        Spec("head only", None),
        Spec("lora r=1", "lora", {"r": 1, "alpha": 2.0}, qv),
        Spec("lora r=8", "lora", {"r": 8, "alpha": 16.0}, qv),
        Spec("circulant", "circulant", {}, qv),
        Spec("circulant factored", "circulant", {"factored": True}, qv),
        Spec("toeplitz", "toeplitz", {}, qv),
        Spec("ldr r=1", "ldr", {"rank": 1}, qv),
        Spec("kronecker r=8", "kronecker", {"r": 8, "alpha": 8.0}, qv),
        Spec("rmlora r=8", "rmlora", {"r": 8, "alpha": 32.0, "random_rank": 4}, qv),
        Spec("condlora r=8", "condlora", {"r": 8, "alpha": 16.0}, qv),
        Spec("sara (budget = lora r=8)", "sara", {"budget": budget}, qv),
        Spec("mosara", "mosara", {"threshold": 0.5, "experts": 4}, qv),
        Spec("adapter circulant", "adapter", {"structure": "circulant"}, adapter_targets),
    ]
    for spec in rows:
        spec.lr = lrs.get(spec.label, spec.lr)
    return rows


def spec_names(specs: list[Spec]) -> list[str]:
    return [s.label for s in specs]


def select(specs: list[Spec], names: list[str] | None) -> list[Spec]:
    """The specs whose label or method is in ``names`` (all when None); unknown names raise ``ValueError``."""
    if not names:
        return specs
    known = {s.label for s in specs} | {s.method or "head" for s in specs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected labels {spec_names(specs)} or method names")
    return [s for s in specs if s.label in names or (s.method or "head") in names]


class Task:
    """A case: ``steps`` training steps of ``batch_size`` (``quick_steps`` under --quick), over ``seeds``;
    ``default_grid``: whether a plain run picks each method's learning rate from ``lr_grid``."""

    name: str
    classes: int
    batch_size: int
    steps: int
    quick_steps: int
    seeds: list[int]
    default_grid: bool
    lr_grid: tuple[float, ...]
    grid_source: str  # where the stored learning rates come from
    threads: int | None = None  # torch threads while training (None: leave torch's setting)
    eval_limit: int | None = None

    def specs(self) -> list[Spec]:
        raise NotImplementedError

    def encoder(self) -> nn.Module:
        raise NotImplementedError

    def classifier(self, encoder: nn.Module) -> nn.Module:
        raise NotImplementedError

    def build(self, spec: Spec, seed: int = 0) -> nn.Module:
        """A fresh model for ``spec``: the head initialised from ``seed`` (the same head for every method), then the
        adapters injected into the encoder with the generator reseeded."""
        import surm_ops

        torch.manual_seed(seed)
        model = self.classifier(self.encoder())
        if spec.method is not None:
            torch.manual_seed(seed + 1)
            surm_ops.inject(model.encoder, spec.method, target_modules=spec.targets, **spec.options)
        return model

    def batches(self, steps: int, seed: int) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def splits(self) -> dict[str, torch.Tensor]:
        """Indices of the train / val / test entries."""
        raise NotImplementedError

    def limit_eval(self, n: int | None) -> None:
        """Evaluate on a fixed random subset of at most ``n`` entries of each split (for smoke runs)."""
        self.eval_limit = n

    def split(self, name: str) -> torch.Tensor:
        idx = self.splits()[name]
        if name != "train" and self.eval_limit is not None and len(idx) > self.eval_limit:
            gen = torch.Generator().manual_seed(0)
            idx = idx[torch.randperm(len(idx), generator=gen)[:self.eval_limit]].sort().values
        return idx

    @torch.no_grad()
    def accuracy(self, model: nn.Module, split: str) -> float:
        raise NotImplementedError

    def majority(self, split: str = "test") -> float:
        """Accuracy of always predicting the most frequent class of ``split``."""
        labels = self.labels(self.split(split))
        return torch.bincount(labels).max().item() / len(labels)

    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------------------- text

TEXT_LRS = {
    # Picked from TEXT_GRID by validation accuracy, 200 steps, seed 0:
    # python bench/finetune/run.py --case text --lr-grid --out bench/results/finetune-text-lr-grid-cpu.md
    "head only": 1e-2, "lora r=1": 1e-2, "lora r=8": 3e-3, "circulant": 1e-2, "circulant factored": 3e-3,
    "toeplitz": 3e-3, "ldr r=1": 3e-3, "kronecker r=8": 1e-2, "rmlora r=8": 3e-3, "condlora r=8": 3e-3,
    "sara (budget = lora r=8)": 1e-2, "mosara": 1e-2, "adapter circulant": 1e-2,
}


class TextTask(Task):
    """AFINN-en-165 positive vs negative with all-MiniLM-L6-v2 (frozen) + mean pooling + a linear head; adapters on
    the 12 attention query/value linears (384 x 384), the adapter form after every ``output.dense`` (the attention
    output and the FFN output of each of the 6 layers: 12 modules)."""

    name = "text"
    classes = 2
    batch_size = 32
    steps = 200
    quick_steps = 15
    seeds = [0]
    default_grid = False
    lr_grid = TEXT_GRID
    grid_source = ("seed 0; `python bench/finetune/run.py --case text --lr-grid` takes ~9 min: "
                   "bench/results/finetune-text-lr-grid-cpu.md")
    eval_batch = 512

    def __init__(self, seed: int = 0) -> None:
        self.data = D.text_data(str(M.minilm_dir()), seed)

    def encoder(self) -> nn.Module:
        return M.load_minilm()

    def classifier(self, encoder: nn.Module) -> nn.Module:
        return M.SentenceClassifier(encoder, self.classes)

    def specs(self) -> list[Spec]:
        qv = ["query", "value"]
        return _specs(qv, ["output.dense"], lora_count(M._minilm(), qv, 8), TEXT_LRS)

    def batches(self, steps: int, seed: int) -> Iterator[torch.Tensor]:
        return D.batch_stream(self.split("train"), self.batch_size, steps, seed, self.data.lengths)

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(*self.data.batch(idx)), self.data.labels[idx])

    def splits(self) -> dict[str, torch.Tensor]:
        return self.data.splits

    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        return self.data.labels[idx]

    @torch.no_grad()
    def accuracy(self, model: nn.Module, split: str) -> float:
        idx = self.split(split)
        correct = 0
        for b in D.eval_batches(idx, self.eval_batch, self.data.lengths):
            correct += (model(*self.data.batch(b)).argmax(-1) == self.data.labels[b]).sum().item()
        return correct / len(idx)

    def describe(self) -> str:
        d, s = self.data, self.data.splits
        pos = int(d.labels.sum())
        return (f"AFINN-en-165: {len(d.texts):,} words/phrases with a nonzero human rating ({pos:,} positive, "
                f"{len(d.texts) - pos:,} negative); stratified split {len(s['train'])}/{len(s['val'])}/"
                f"{len(s['test'])} train/val/test (seed 0); tokenised once, at most {d.max_length} tokens with "
                f"[CLS]/[SEP], batches bucketed by length. Encoder: all-MiniLM-L6-v2 (BertModel, 6 x 384, 22.7M "
                f"parameters, frozen, eval mode) + mean pooling + Linear(384, 2).")


# ----------------------------------------------------------------------------------------------------------- digits

DIGITS_LRS = {
    # What the default run's grid picks (DIGITS_GRID, mean validation accuracy over seeds 0-2, 200 steps); used only
    # without the grid (--quick, --no-lr-grid).
    "head only": 1e-1, "lora r=1": 3e-2, "lora r=8": 1e-2, "circulant": 1e-2, "circulant factored": 1e-2,
    "toeplitz": 1e-2, "ldr r=1": 1e-2, "kronecker r=8": 1e-1, "rmlora r=8": 3e-2, "condlora r=8": 1e-2,
    "sara (budget = lora r=8)": 3e-2, "mosara": 1e-1, "adapter circulant": 3e-2,
}


class DigitsTask(Task):
    """Transfer from digits 0-4 to digits 5-9: the pretrained MLP body (frozen) + a new Linear(128, 5) head; the
    adapters on both hidden linears (fc1 64 -> 128, fc2 128 -> 128), the adapter form after each."""

    name = "digits"
    classes = 5
    batch_size = 32
    steps = 200
    quick_steps = 60
    seeds = [0, 1, 2]
    default_grid = True
    lr_grid = DIGITS_GRID
    grid_source = "mean over seeds 0-2: what the default run's grid picks"
    # One thread: the tensors are too small to gain from a second, and with two, whenever anything else runs on
    # the machine the steps stall (20-80x slower, measured) waiting for the descheduled thread.
    threads = 1

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.data = D.digits_data(seed)
        self.pretrain_acc = M.pretrained_digits_body(seed)[1]

    def encoder(self) -> nn.Module:
        return M.load_digits_body(self.seed)

    def classifier(self, encoder: nn.Module) -> nn.Module:
        return M.MLPClassifier(encoder, self.classes)

    def specs(self) -> list[Spec]:
        hidden = ["fc1", "fc2"]
        return _specs(hidden, hidden, lora_count(M.MLPBody(), hidden, 8), DIGITS_LRS)

    def batches(self, steps: int, seed: int) -> Iterator[torch.Tensor]:
        return D.batch_stream(self.split("train"), self.batch_size, steps, seed)

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(self.data.x[idx]), self.data.labels(idx))

    def splits(self) -> dict[str, torch.Tensor]:
        return self.data.transfer

    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        return self.data.labels(idx)

    @torch.no_grad()
    def accuracy(self, model: nn.Module, split: str) -> float:
        idx = self.split(split)
        return (model(self.data.x[idx]).argmax(-1) == self.data.labels(idx)).float().mean().item()

    def describe(self) -> str:
        p, t = self.data.pretrain, self.data.transfer
        return (f"scikit-learn digits (8 x 8, pixels / 16). Pretraining: MLP 64-128-128-5 trained end to end on digits "
                f"0-4 ({len(p['train'])} train; test accuracy {100 * self.pretrain_acc:.1f}%). Transfer: digits 5-9, "
                f"stratified {len(t['train'])}/{len(t['val'])}/{len(t['test'])} train/val/test (seed 0); the body "
                f"frozen, a new Linear(128, 5) head. Trained with {self.threads} torch thread (the tensors are tiny).")


TASKS = {"text": TextTask, "digits": DigitsTask}
