"""RM-LoRA (Mao et al., arXiv 2407.12074): LoRA with an orthogonality regulariser and random masking of the rank.

``dW = (alpha / r) B A`` with A (r, d_in) ~ N(0, 0.02^2) and B (d_out, r) = 0, as LoRA. Two training-loop pieces
sit on top of the layer, both model-level:

* :func:`orthogonality_loss` (``R``) and :func:`regularized_loss` (``L_task + gamma * R``);
* :class:`RandomMasker`, called between backward and the optimizer step, which keeps ``random_rank`` of the r
  rank-one components of each layer's update per step.

Without them the layer trains as plain LoRA (``gamma``, ``random_rank``, ``version`` and ``mask`` do nothing), so an
RM-LoRA layer that runs a training forward with neither attached warns once. The simple way is
:class:`RMLoRATraining`, which attaches both to the optimizer (``surm_ops.adapters.hf.RMLoRACallback`` does it for
the transformers ``Trainer``)::

    rm = RMLoRATraining(model, optimizer)    # hooks on optimizer.step(); the loop stays a plain one
    for batch in loader:
        task_loss(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()                     # adds gamma * dR/dtheta, masks, steps, restores (mask="update")
        optimizer.zero_grad()

The hand-wired loop (the authors' order: the regulariser is inside the clipped loss)::

    masker = RandomMasker(model)
    for batch in loader:
        loss = regularized_loss(task_loss(model, batch), model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        masker.apply()           # after backward and clipping, before the step
        optimizer.step()
        masker.after_step()      # restores masked components (mask="update"); a no-op for mask="gradient"
        optimizer.zero_grad()
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from surm_ops.adapters._util import check_choice, check_positive
from surm_ops.adapters.lora import LoRALinear
from surm_ops.adapters.registry import register


@dataclass
class RMLoRAConfig:
    """r: rank; alpha: scale numerator (scale = alpha / r); dropout: on the adapter's input.

    random_rank: rows of A (and columns of B) kept by :class:`RandomMasker` per step, 1 <= random_rank <= r.
    version: "v1" (B keeps A's indices) or "v2" (B samples its own). gamma: the regulariser's weight, used by
    :func:`regularized_loss`. mask: "gradient" (the authors': zero the masked gradient rows) or "update" (our
    choice: the masked rows also keep their values through the optimizer step; see :class:`RandomMasker`).
    """

    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.0
    random_rank: int = 4
    version: str = "v1"
    gamma: float = 0.1
    mask: str = "gradient"

    def __post_init__(self):
        check_positive("rmlora", r=self.r, alpha=self.alpha)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"rmlora: dropout must be in [0, 1); got {self.dropout!r}")
        if not 1 <= self.random_rank <= self.r:
            raise ValueError(f"rmlora: random_rank must be in [1, r] = [1, {self.r}]; got {self.random_rank!r}")
        check_choice("rmlora", "version", self.version, ("v1", "v2"))
        check_choice("rmlora", "mask", self.mask, ("gradient", "update"))
        if not self.gamma >= 0:
            raise ValueError(f"rmlora: gamma must be non-negative; got {self.gamma!r}")


@register
class RMLoRALinear(LoRALinear):
    """LoRA with A ~ N(0, 0.02^2) (the authors' init; B = 0, so dW = 0 and B gets the first gradient).

    Example::

        >>> layer = RMLoRALinear(nn.Linear(768, 768), RMLoRAConfig(r=8, random_rank=4))
        >>> layer(torch.randn(2, 768)).shape
        torch.Size([2, 768])
    """

    method = "rmlora"
    config_class = RMLoRAConfig
    _trainer_ref = None  # a weak reference: the optimizer's hooks keep an RMLoRATraining alive, the model does not
    _warned = False

    @property
    def trainer(self) -> RMLoRATraining | RandomMasker | None:
        """The :class:`RMLoRATraining` or :class:`RandomMasker` driving this layer (None: plain LoRA training)."""
        return None if self._trainer_ref is None else self._trainer_ref()

    @trainer.setter
    def trainer(self, value: RMLoRATraining | RandomMasker | None) -> None:
        self._trainer_ref = None if value is None else weakref.ref(value)

    def __getstate__(self):
        state = dict(super().__getstate__())  # a weak reference does not pickle; a loaded copy is not attached
        state.pop("_trainer_ref", None)
        return state

    def init_a(self) -> None:
        nn.init.normal_(self.lora_A, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainer is None and not self._warned and self.training and torch.is_grad_enabled():
            self._warned = True
            warnings.warn(f"rmlora layer {self.layer_name!r} is training without RMLoRATraining(model, optimizer) "
                          "(or RandomMasker and regularized_loss): gamma, random_rank, version and mask have no "
                          "effect, this is plain LoRA", stacklevel=2)
        return super().forward(x)


def _layers(model: nn.Module) -> list[tuple[str, RMLoRALinear]]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, RMLoRALinear)]
    if not found:
        raise ValueError(f"rmlora: the model ({type(model).__name__}) has no RM-LoRA layers")
    return found


def orthogonality_loss(model: nn.Module) -> torch.Tensor:
    """``R = (1/N) sum_l ( ||A_l A_l^T - I_r||_F + ||B_l^T B_l - I_r||_F )`` over the model's RM-LoRA layers.

    Our reading of docs/methods.md §2 ("averaged over the N matrices"): N counts *matrices*, two per layer (A and B), so
    N = 2 x the number of layers; this is also what the AdaLoRA ``compute_orth_regu`` that RM-LoRA builds on does
    (one count per ``lora_A`` / ``lora_B`` parameter). The norm is the plain, non-squared Frobenius norm. Returns a
    scalar in the adapters' dtype, differentiable in every A and B (``gamma`` is not applied: see
    :func:`regularized_loss`). A model with no RM-LoRA layer raises ``ValueError``.
    """
    terms = []
    for _, layer in _layers(model):
        a, b = layer.lora_A, layer.lora_B
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        terms.append(torch.linalg.matrix_norm(a @ a.T - eye))
        terms.append(torch.linalg.matrix_norm(b.T @ b - eye))
    return torch.stack(terms).mean()


def regularized_loss(task_loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``task_loss + gamma * R`` with gamma from the layers' configs (which must agree) and R from
    :func:`orthogonality_loss`."""
    layers = _layers(model)
    if any(isinstance(layer.trainer, RMLoRATraining) for _, layer in layers):
        raise RuntimeError("rmlora: RMLoRATraining already adds the regulariser's gradient at optimizer.step(); "
                           "use the plain task loss (regularized_loss would count it twice)")
    gammas = {layer.config.gamma for _, layer in layers}
    if len(gammas) != 1:
        raise ValueError(f"rmlora: the RM-LoRA layers disagree on gamma ({sorted(gammas)}); add "
                         "gamma * orthogonality_loss(model) yourself")
    gamma = gammas.pop()
    return task_loss + gamma * orthogonality_loss(model).to(task_loss.dtype) if gamma else task_loss


class RandomMasker:
    """Random rank masking for every RM-LoRA layer of ``model``, resampled per layer per step.

    On every :meth:`apply` but the first, each layer keeps ``random_rank`` of the r rank indices, drawn uniformly
    without replacement: the other rows of ``A.grad`` are zeroed, and so are the other columns of ``B.grad`` — the
    same indices for ``version="v1"``, an independent draw for ``"v2"``. ``random_rank``, ``version`` and ``mask``
    come from each layer's config.

    ``mask="gradient"`` (the authors') only zeroes gradients. Under Adam/AdamW that does *not* freeze the masked
    components: the moments from earlier steps and weight decay still move them. ``mask="update"`` (our choice)
    zeroes the same gradients (so the moments see what they see under the authors' mask) and in addition snapshots
    the masked rows of A and columns of B in :meth:`apply`; :meth:`after_step`, called right after
    ``optimizer.step()``, writes them back, so a masked component keeps its value exactly whatever the optimizer.

    Args:
        model: any module; its RM-LoRA layers are found by type.
        generator: a CPU ``torch.Generator`` for the draws (default: torch's global generator).

    ``kept`` maps each layer's qualified name to the ``(rows of A, columns of B)`` kept at the last masked step.
    """

    def __init__(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        self.layers = _layers(model)
        for _, layer in self.layers:
            if layer.trainer is None:
                layer.trainer = self
        self.generator = generator
        self.calls = 0
        self.kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._saved: list[tuple[torch.Tensor, ...]] = []  # (A, rows, their values, B, columns, their values)

    def _draw(self, r: int, k: int) -> torch.Tensor:
        return torch.randperm(r, generator=self.generator)[:k].sort().values

    @torch.no_grad()
    def apply(self) -> None:
        """Mask the gradients (after backward and clipping, before ``optimizer.step()``)."""
        if self._saved:
            raise RuntimeError("rmlora: RandomMasker.apply() called again before after_step(); with mask='update' "
                               "call after_step() right after optimizer.step()")
        self.calls += 1
        if self.calls == 1:
            return
        self.kept = {}
        for name, layer in self.layers:
            cfg, a, b = layer.config, layer.lora_A, layer.lora_B
            keep_a = self._draw(cfg.r, cfg.random_rank)
            keep_b = keep_a if cfg.version == "v1" else self._draw(cfg.r, cfg.random_rank)
            self.kept[name] = (keep_a, keep_b)
            drop_a = _complement(keep_a, cfg.r).to(a.device)
            drop_b = _complement(keep_b, cfg.r).to(b.device)
            if a.grad is not None:
                a.grad[drop_a] = 0
            if b.grad is not None:
                b.grad[:, drop_b] = 0
            if cfg.mask == "update":
                self._saved.append((a, drop_a, a[drop_a].clone(), b, drop_b, b[:, drop_b].clone()))

    @torch.no_grad()
    def after_step(self) -> None:
        """Restore the masked rows of A / columns of B (``mask="update"``; a no-op otherwise)."""
        for a, drop_a, value_a, b, drop_b, value_b in self._saved:
            a[drop_a] = value_a
            b[:, drop_b] = value_b
        self._saved = []


def _complement(keep: torch.Tensor, r: int) -> torch.Tensor:
    mask = torch.ones(r, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().flatten()



def _innermost(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that really steps (accelerate's AcceleratedOptimizer wraps one and steps it only on sync)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class RMLoRATraining:
    """RM-LoRA's regulariser and random masking, attached to ``optimizer`` so that a plain training loop runs the
    method as specified: nothing to call but ``optimizer.step()``.

    Every ``optimizer.step()`` first adds the regulariser's gradient ``gamma_l * dR/dtheta`` to each RM-LoRA layer's
    A and B (R of :func:`orthogonality_loss`, each layer's own ``gamma``; once per step, so gradient accumulation
    does not repeat it), then masks the gradients as :meth:`RandomMasker.apply`; after the step it runs
    :meth:`RandomMasker.after_step`. One difference from the authors' loop: the regulariser's gradient is added
    after any gradient clipping, not clipped with the task gradient (use :func:`regularized_loss` and
    :class:`RandomMasker` by hand for the exact order).

    Args:
        model: the injected model (its RM-LoRA layers are found by type).
        optimizer: the optimizer over (at least) every RM-LoRA parameter; wrappers with an ``optimizer``
            attribute (accelerate) are unwrapped.
        generator: a CPU ``torch.Generator`` for the masks.

    Raises ``ValueError`` when the model has no RM-LoRA layer or an RM-LoRA parameter is not in the optimizer, and
    ``RuntimeError`` when the layers are already attached to another :class:`RMLoRATraining`. :meth:`remove`
    detaches it.

    Example::

        >>> rm = RMLoRATraining(model, torch.optim.AdamW(trainable, lr=3e-3))
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 generator: torch.Generator | None = None) -> None:
        layers = _layers(model)
        owned = [name for name, layer in layers if isinstance(layer.trainer, RMLoRATraining)]
        if owned:
            raise RuntimeError(f"rmlora: layer {owned[0]!r} is already attached to an RMLoRATraining; remove() it "
                               "first")
        opt = _innermost(optimizer)
        in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
        absent = [f"{name}.{attr}" for name, layer in layers for attr in ("lora_A", "lora_B")
                  if id(getattr(layer, attr)) not in in_opt]
        if absent:
            raise ValueError(f"rmlora: {len(absent)} RM-LoRA parameters are not in the optimizer, e.g. {absent[0]!r}")
        self.layers = layers
        self.optimizer = opt
        self.masker = RandomMasker(model, generator)
        for _, layer in layers:
            layer.trainer = self
        self._handles = [opt.register_step_pre_hook(self._before_step),
                         opt.register_step_post_hook(self._after_step)]

    @torch.no_grad()
    def add_regularizer_gradient(self) -> None:
        """Add ``gamma_l * dR/dtheta`` to the gradients of every RM-LoRA A and B (called by ``optimizer.step()``)."""
        n = 2 * len(self.layers)
        for _, layer in self.layers:
            gamma = layer.config.gamma
            if not gamma:
                continue
            with torch.enable_grad():
                a, b = layer.lora_A, layer.lora_B
                eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
                r = torch.linalg.matrix_norm(a @ a.T - eye) + torch.linalg.matrix_norm(b.T @ b - eye)
                ga, gb = torch.autograd.grad(r * (gamma / n), (a, b))
            for p, g in ((a, ga), (b, gb)):
                p.grad = g if p.grad is None else p.grad.add_(g)

    def _before_step(self, optimizer, args, kwargs) -> None:
        self.add_regularizer_gradient()
        self.masker.apply()

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.masker.after_step()

    def remove(self) -> None:
        """Detach the hooks; the layers go back to plain LoRA training."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for _, layer in self.layers:
            if layer.trainer is self or layer.trainer is self.masker:
                layer.trainer = None
