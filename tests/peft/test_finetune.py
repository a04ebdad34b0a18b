"""bench/finetune's run through PEFT + Trainer equals its direct path (train.py), on a tiny synthetic task (~5 s)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

pytest.importorskip("transformers")

from bench.finetune import peft_trainer  # noqa: E402
from bench.finetune import train as direct  # noqa: E402
from bench.finetune.data import batch_stream  # noqa: E402
from bench.finetune.tasks import Spec, Task  # noqa: E402


class _Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 16)

    def forward(self, x):
        return torch.relu(self.fc2(torch.relu(self.fc1(x))))


class _Classifier(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(x))


class TinyTask(Task):
    name, classes, threads = "tiny", 3, None

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(96, 8, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()
        torch.manual_seed(123)
        self.body = _Body().requires_grad_(False)

    def encoder(self):
        body = _Body()
        body.load_state_dict(self.body.state_dict())
        return body

    def classifier(self, encoder):
        return _Classifier(encoder)

    def splits(self):
        return {"train": torch.arange(64), "val": torch.arange(64, 80), "test": torch.arange(80, 96)}

    def batches(self, steps, seed):
        return batch_stream(self.split("train"), 16, steps, seed)

    def loss(self, model, idx):
        return F.cross_entropy(model(self.x[idx]), self.y[idx])

    @torch.no_grad()
    def accuracy(self, model, split):
        idx = self.split(split)
        return (model(self.x[idx]).argmax(-1) == self.y[idx]).float().mean().item()


@pytest.mark.parametrize("spec", [Spec("circulant factored", "circulant", {"factored": True}, ["fc1", "fc2"]),
                                  Spec("condlora", "condlora", {"r": 2}, ["fc1", "fc2"])], ids=lambda s: s.label)
def test_peft_trainer_run_equals_direct_run(spec):
    task, steps, lr = TinyTask(), 20, 3e-2
    ours = direct.train(task, spec, lr, steps, keep_model=True)
    hf = peft_trainer.train(task, spec, lr, steps)
    assert len(hf["losses"]) == steps
    window = max(1, steps // 10)
    assert sum(hf["losses"][:window]) / window == pytest.approx(ours.first_loss, rel=1e-4)
    assert sum(hf["losses"][-window:]) / window == pytest.approx(ours.last_loss, rel=1e-4)
    assert ours.last_loss < ours.first_loss  # it learned something, so equal numbers mean the same training
    assert (hf["val_acc"], hf["test_acc"]) == (ours.val_accs[0], ours.test_accs[0])
