"""transformers integration: :class:`RMLoRACallback`, RM-LoRA for the ``Trainer`` (imports transformers)."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from surm_ops.adapters.rmlora import RMLoRATraining


class RMLoRACallback(TrainerCallback):
    """Runs RM-LoRA's regulariser and random masking inside ``transformers.Trainer``: at ``on_train_begin`` it
    attaches an :class:`~surm_ops.adapters.rmlora.RMLoRATraining` to the Trainer's optimizer, and detaches it at
    ``on_train_end``.

    Example::

        >>> surm_ops.inject(model, "rmlora", ["query", "value"], modules_to_save=["classifier"])
        >>> Trainer(model=model, args=args, train_dataset=ds, callbacks=[RMLoRACallback()]).train()
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator
        self.training: RMLoRATraining | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise RuntimeError("RMLoRACallback: the Trainer passed no model or optimizer to on_train_begin")
        self.training = RMLoRATraining(model, optimizer, self.generator)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.training is not None:
            self.training.remove()
            self.training = None
        return control
