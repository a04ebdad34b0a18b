"""Registers each op with ``torch.library``: a custom op whose implementation dispatches to a backend, a fake
(meta) kernel, and autograd through a second custom op for the backward — so ``torch.compile(fullgraph=True)``
traces both directions and ``torch.library.opcheck`` passes.

Every op has the schema ``name(Tensor x, Tensor p1, ..., str backend) -> Tensor`` and its backward
``name_backward(Tensor grad, Tensor x, Tensor p1, ..., str backend, bool[] needs) -> Tensor[]`` (a gradient that is
not needed comes back as an empty placeholder). Backend resolution happens inside the op, at run time, so
``SURM_BACKEND`` is honoured under ``torch.compile`` too.

In plain eager mode the same forward and backward functions run through a ``torch.autograd.Function`` instead:
the custom-op machinery costs ~15 µs a call on CPU, more than the op itself at LoRA sizes. The registered op is
used whenever something may need it: under ``torch.compile``/export, with tensor subclasses (fake, DTensor), and
inside functorch transforms (vmap, grad).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from surm_ops import dispatch


def define(name: str, params: Sequence[str], out_features: Callable[..., int],
           check: Callable[..., None] | None = None) -> Callable[..., torch.Tensor]:
    """Register ``surm_ops::name`` and return ``call(x, *params, backend)``, which validates and runs it.

    ``out_features(x, *params)`` gives n_out for the fake kernel; ``check(x, *params)`` raises on bad arguments
    (before any work starts). In eager mode the check and the backend choice are made once per call signature
    (:func:`surm_ops.dispatch.decide`), and the backward runs the backend the forward resolved.
    """
    args = ", ".join(["Tensor x", *(f"Tensor {p}" for p in params)])

    def run_forward(impl, x, ps):
        if x.numel() == 0:  # an empty batch needs no kernel (and MKL's FFT rejects it)
            return x.new_zeros(*x.shape[:-1], out_features(x, *ps))
        return impl.forward(x, *ps)

    def run_backward(impl, grad, x, ps, needs):
        if x.numel() == 0 or grad.numel() == 0:
            return [torch.zeros_like(t) if need else None for t, need in zip((x, *ps), needs)]
        return impl.backward(grad, x, *ps, needs)

    def forward(x, *rest):
        *ps, backend = rest
        return run_forward(dispatch.select(name, backend, x, ps), x, ps)

    def backward_impl(grad, x, *rest):
        *ps, backend, needs = rest
        grads = run_backward(dispatch.select(name, backend, x, ps), grad, x, ps, needs)
        return [g if g is not None else t.new_empty(0) for g, t in zip(grads, (x, *ps))]

    op = torch.library.custom_op(f"surm_ops::{name}", forward, mutates_args=(),
                                 schema=f"({args}, str backend) -> Tensor")
    op_backward = torch.library.custom_op(f"surm_ops::{name}_backward", backward_impl, mutates_args=(),
                                          schema=f"(Tensor grad, {args}, str backend, bool[] needs) -> Tensor[]")

    @op.register_fake
    def _(x, *rest):
        return x.new_empty(*x.shape[:-1], out_features(x, *rest[:-1]))

    @op_backward.register_fake
    def _(grad, x, *rest):
        *ps, _backend, needs = rest
        return [torch.empty_like(t) if need else t.new_empty(0) for t, need in zip((x, *ps), needs)]

    def setup_context(ctx, inputs, output):
        *tensors, backend = inputs
        ctx.backend = backend
        ctx.save_for_backward(*tensors)

    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:len(tensors)])
        grads = op_backward(grad, *tensors, ctx.backend, needs)
        return (*(g if need else None for g, need in zip(grads, needs)), None)

    op.register_autograd(backward, setup_context=setup_context)

    class Eager(torch.autograd.Function):
        # Runs the backend already resolved (its name is the last input), forward and backward alike.
        # The ctx-in-forward style on purpose: a separate setup_context costs ~10 µs more per call (torch 2.13).
        @staticmethod
        def forward(ctx, x, *rest):
            *ps, backend = rest
            setup_context(ctx, (x, *rest), None)
            return run_forward(dispatch.implementation(name, backend), x, ps)

        @staticmethod
        @torch.autograd.function.once_differentiable  # double backward raises instead of silently returning 0
        def backward(ctx, grad):
            x, *ps = ctx.saved_tensors
            needs = list(ctx.needs_input_grad[:1 + len(ps)])
            grads = run_backward(dispatch.implementation(name, ctx.backend), grad, x, ps, needs)
            return (*(g if need else None for g, need in zip(grads, needs)), None)

    def call(*args):
        tensors, backend = args[:-1], args[-1]
        if not _plain(tensors):
            if check is not None:
                check(*tensors)
            return op(*tensors, dispatch.check_name(backend))
        chosen = dispatch.decide(name, backend, tensors, check)
        if torch.is_grad_enabled():
            for t in tensors:
                if t.requires_grad:
                    return Eager.apply(*tensors, chosen)
        # Nothing to differentiate: the autograd.Function would only record that (~5 µs a call on CPU).
        x = tensors[0]
        if x.numel() == 0:
            return x.new_zeros(*x.shape[:-1], out_features(*tensors))
        return dispatch.implementation(name, chosen).forward(*tensors)

    return call


def _plain(tensors) -> bool:
    """Whether this call can skip the registered op: eager, plain tensors (or parameters), no functorch transform
    active."""
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    for t in tensors:  # a loop, not all(<generator>): ~0.5 µs less on every call
        if type(t) not in _PLAIN_TYPES:
            return False
    return True


# nn.Parameter disables __torch_function__: to every op it is the tensor it holds (an adapter's parameters are these).
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def register_reference(name: str, fft_forward, fft_backward, materialise, adjoint, dense_why_not=None) -> None:
    """The two reference backends of an op: ``fft`` (structured) and ``dense`` (materialise M; ``adjoint(gM,
    *params)`` maps the gradient of M to the parameters' gradients)."""
    from surm_ops.reference import dense

    dispatch.register(name, "fft", dispatch.Impl(fft_forward, fft_backward))
    dispatch.register(name, "dense", dispatch.Impl(
        lambda x, *ps: dense.forward(materialise, x, ps),
        lambda grad, x, *rest: dense.backward(materialise, adjoint, grad, x, rest[:-1], rest[-1]),
        dense_why_not))
