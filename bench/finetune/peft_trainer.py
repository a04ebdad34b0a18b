"""The fine-tuning run through PEFT and transformers' Trainer, beside the direct path of train.py.

    python -m bench.finetune.peft_trainer --case digits --methods circulant toeplitz

For each method: the model built as train.py builds it (same seeds) but with the adapters added by
``peft.inject_adapter_in_model`` and a ``surm_ops.peft`` config instead of ``surm_ops.inject``, then trained by a
``transformers.Trainer`` set up to do what train.py's loop does: the same batches in the same order, AdamW (weight
decay 0), the learning rate decaying linearly to 0, gradients clipped to norm 1, the encoder in eval mode. Prints
both paths' first and last losses and accuracies side by side: they agree to float32 rounding.

RM-LoRA is left out here: its masking and regulariser are extra steps of train.py's loop (a Trainer callback would
carry them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench.finetune.tasks import TASKS, Spec, Task, select  # noqa: E402


def build(task: Task, spec: Spec, seed: int = 0) -> nn.Module:
    """:meth:`Task.build` with the adapters added through PEFT (the same seeds, so the same initial values)."""
    from peft import inject_adapter_in_model

    import surm_ops.peft

    torch.manual_seed(seed)
    model = task.classifier(task.encoder())
    torch.manual_seed(seed + 1)
    # only the adapters of the encoder are left trainable (and the head, outside it)
    inject_adapter_in_model(surm_ops.peft.config(spec.method, target_modules=spec.targets, **spec.options),
                            model.encoder)
    return model


def train(task: Task, spec: Spec, lr: float, steps: int, seed: int = 0) -> dict:
    """Train ``spec`` with a Trainer; returns ``losses`` (per step) and ``val_acc`` / ``test_acc``."""
    import transformers

    if spec.method in (None, "rmlora"):
        raise ValueError(f"peft_trainer: {spec.label!r} is not run through the Trainer here (see the module doc)")
    threads = torch.get_num_threads()
    torch.set_num_threads(task.threads or threads)
    try:
        model = build(task, spec, seed)
        batches = [{"idx": idx} for idx in task.batches(steps, seed)]

        class _Trainer(transformers.Trainer):
            def get_train_dataloader(self):
                return batches  # train.py's batch sequence, as is

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                model.train(False)  # as train.py: the frozen encoder without dropout
                return task.loss(model, inputs["idx"])

        with tempfile.TemporaryDirectory() as out:
            args = transformers.TrainingArguments(
                output_dir=out, max_steps=steps, learning_rate=lr, weight_decay=0.0, lr_scheduler_type="linear",
                warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch", logging_steps=1, save_strategy="no",
                report_to=[], use_cpu=True, disable_tqdm=True, seed=seed, remove_unused_columns=False)
            trainer = _Trainer(model=model, args=args)
            trainer.remove_callback(transformers.PrinterCallback)  # no per-step log lines
            trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return {"losses": losses, "val_acc": task.accuracy(model, "val"), "test_acc": task.accuracy(model, "test")}
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    from bench.finetune import train as direct

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(TASKS), default="digits")
    ap.add_argument("--methods", nargs="+", default=["circulant"])
    ap.add_argument("--steps", type=int, default=None, help="default: the case's steps")
    args = ap.parse_args()
    task = TASKS[args.case]()
    steps = args.steps or task.steps
    print(f"case={args.case} steps={steps}; direct = bench/finetune/train.py, peft = PEFT + Trainer")
    print("| method | path | first loss | last loss | val acc % | test acc % |")
    print("|---|---|---:|---:|---:|---:|")
    for spec in select(task.specs(), args.methods):
        ours = direct.train(task, spec, spec.lr, steps)
        hf = train(task, spec, spec.lr, steps)
        window = max(1, steps // 10)
        first, last = sum(hf["losses"][:window]) / window, sum(hf["losses"][-window:]) / window
        print(f"| {spec.label} | direct | {ours.first_loss:.4f} | {ours.last_loss:.4f} | "
              f"{100 * ours.val_accs[0]:.2f} | {100 * ours.test_accs[0]:.2f} |")
        print(f"| {spec.label} | peft | {first:.4f} | {last:.4f} | {100 * hf['val_acc']:.2f} | "
              f"{100 * hf['test_acc']:.2f} |")


if __name__ == "__main__":
    main()
