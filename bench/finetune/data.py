"""The data: AFINN words and phrases as binary sentiment, scikit-learn's digits split 0-4 / 5-9, seeded stratified
splits, the tokenisation (done once per process) and the batch streams.

Nothing here downloads anything: AFINN's lexicon ships inside the ``afinn`` package and the digits inside
scikit-learn. Each loader imports its optional package lazily, so ``import bench.finetune.data`` needs only torch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

AFINN_FILE = "AFINN-en-165.txt"
"""The newest English AFINN list: 3,382 entries, each rated -5..+5 (2 rated 0, dropped: they have no sign)."""

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
"""AFINN, per class: 20% test, 10% validation (learning-rate selection), the rest training."""

DIGITS_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
"""Digits, per class: a larger validation part, since the 5-9 half has only 896 images."""


def stratified_split(labels: torch.Tensor, fractions: dict[str, float] = SPLIT_FRACTIONS,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """Split ``range(len(labels))`` into named parts with the same class proportions, reproducibly.

    Within each class the indices are permuted by a generator seeded with ``seed``; every part but the first takes
    ``round(fraction * class size)`` of them and the first part takes the rest. Each part is returned sorted.
    """
    names = list(fractions)
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        start = 0
        for name in names[1:]:
            count = round(fractions[name] * len(idx))
            parts[name].append(idx[start:start + count])
            start += count
        parts[names[0]].append(idx[start:])
    return {name: torch.cat(chunks).sort().values for name, chunks in parts.items()}


# ---------------------------------------------------------------------------------------------------------- text


def afinn_path() -> Path:
    """The AFINN-en-165 word list inside the installed ``afinn`` package."""
    from afinn import Afinn

    return Path(Afinn().full_filename(AFINN_FILE))


def load_afinn() -> tuple[list[str], torch.Tensor]:
    """``(entries, scores)``: every AFINN-en-165 word or phrase with a nonzero rating, in file order."""
    from afinn import Afinn

    words = Afinn.read_word_file(str(afinn_path()))
    entries = [w for w, s in words.items() if s != 0]
    return entries, torch.tensor([words[w] for w in entries])


@dataclass
class TextData:
    """AFINN as a binary task (label 1: positive rating), tokenised once.

    ``input_ids`` / ``attention_mask`` are padded to the longest entry (``max_length`` tokens, [CLS] and [SEP]
    included: AFINN entries are 1-3 words, so nothing is truncated); ``lengths`` holds each entry's own length, by
    which batches are bucketed (:func:`batch_stream`) so that a batch is padded only to its own longest entry.
    """

    texts: list[str]
    scores: torch.Tensor
    labels: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    splits: dict[str, torch.Tensor]

    @property
    def max_length(self) -> int:
        return self.input_ids.shape[1]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of the entries ``idx``, cut to their longest length."""
        n = int(self.lengths[idx].max())
        return self.input_ids[idx, :n], self.attention_mask[idx, :n]


@functools.lru_cache(maxsize=4)
def text_data(tokenizer_dir: str, seed: int = 0) -> TextData:
    """AFINN tokenised with the tokenizer in ``tokenizer_dir`` (cached: the tokenisation runs once per process)."""
    from transformers import AutoTokenizer

    texts, scores = load_afinn()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    enc = tokenizer(texts, padding="longest", truncation=False, return_tensors="pt")
    labels = (scores > 0).long()
    mask = enc["attention_mask"]
    return TextData(texts, scores, labels, enc["input_ids"], mask, mask.sum(1), stratified_split(labels, seed=seed))


# -------------------------------------------------------------------------------------------------------- digits


@dataclass
class DigitsData:
    """scikit-learn's 8 x 8 digits, pixels scaled to [0, 1]. ``pretrain``: indices of digits 0-4 (split
    train/val/test); ``transfer``: indices of digits 5-9 (split train/val/test). Labels within each part are
    0-4 (``digit`` or ``digit - 5``)."""

    x: torch.Tensor
    digit: torch.Tensor
    pretrain: dict[str, torch.Tensor]
    transfer: dict[str, torch.Tensor]

    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        return self.digit[idx] % 5


@functools.lru_cache(maxsize=4)
def digits_data(seed: int = 0) -> DigitsData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    digit = torch.tensor(bunch.target, dtype=torch.long)
    parts = {}
    for name, low in (("pretrain", 0), ("transfer", 5)):
        idx = torch.nonzero((digit >= low) & (digit < low + 5)).flatten()
        local = stratified_split(digit[idx], DIGITS_FRACTIONS, seed=seed)
        parts[name] = {split: idx[i] for split, i in local.items()}
    return DigitsData(x, digit, parts["pretrain"], parts["transfer"])


# ------------------------------------------------------------------------------------------------------- batches


def batch_stream(indices: torch.Tensor, batch_size: int, steps: int, seed: int,
                 lengths: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Exactly ``steps`` batches of ``indices``, reshuffled every epoch by a generator seeded with ``seed`` (so every
    method sees the same sequence of batches).

    With ``lengths``, batches are bucketed: each epoch shuffles the entries of each length, cuts each length into
    batches (the last one of a length may be smaller) and shuffles the order of all batches.
    """
    gen = torch.Generator().manual_seed(seed)
    done = 0
    while True:
        for batch in _epoch(indices, batch_size, gen, lengths):
            if done == steps:
                return
            yield batch
            done += 1


def _epoch(indices: torch.Tensor, batch_size: int, gen: torch.Generator,
           lengths: torch.Tensor | None) -> list[torch.Tensor]:
    if lengths is None:
        return list(indices[torch.randperm(len(indices), generator=gen)].split(batch_size))
    batches: list[torch.Tensor] = []
    for n in torch.unique(lengths[indices]).tolist():
        group = indices[lengths[indices] == n]
        batches += group[torch.randperm(len(group), generator=gen)].split(batch_size)
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def eval_batches(indices: torch.Tensor, batch_size: int, lengths: torch.Tensor | None = None) -> Sequence[torch.Tensor]:
    """``indices`` in fixed batches for evaluation (bucketed by length when ``lengths`` is given)."""
    if lengths is None:
        return indices.split(batch_size)
    order = indices[torch.argsort(lengths[indices], stable=True)]
    out: list[torch.Tensor] = []
    for n in torch.unique(lengths[order]).tolist():
        out += order[lengths[order] == n].split(batch_size)
    return out
