"""SARA and Mo-SARA (Gu et al., arXiv 2408.03290): the rank of each layer's update is read off the spectrum of its
own frozen weight, once, at initialisation.

Rank rule (docs/methods.md §4): with ``W0 = U diag(sigma) V^T``, sigma descending,
``k = min{ i : sum_{j<=i} sigma_j >= threshold * sum_j sigma_j }`` (the smallest head of the spectrum holding a
``threshold`` fraction of the nuclear norm), capped at ``max_rank``. One global threshold for the whole model, or
(our choice) the threshold that fits a parameter budget: :func:`thresholds_for_budget` / :func:`ranks_for_budget`.

Spectra are computed in float32 (float64 for float64 weights). Exact by default, whatever the size: the total
``sum_j sigma_j`` needs every singular value. ``randomized=True`` (our choice, for weights whose smaller dimension
exceeds :data:`RANDOMIZED_MIN_DIM`) takes the top ``q = max_rank`` (or ``rank``) singular triplets from
``torch.svd_lowrank`` and *bounds* the unseen tail: with ``t = ||W0||_F^2 - sum_{j<=q'} sigma_j^2`` the energy of
the m - q' values not computed, their sum is at most ``sqrt((m - q') t)`` (Cauchy-Schwarz; equal when the tail is
flat). The estimated total is therefore an upper bound, so the randomized k is never below the exact one (up to the
error of the top values themselves), and always at most max_rank.

Budget mode: a layer cannot see the others, so the model-level code resolves a budget first and passes each layer its
rank through the config's ``rank`` field::

    weights = {name: linear.weight for name, linear in targets.items()}
    theta, ranks = ranks_for_budget(weights, config.budget, config.params_per_rank, max_rank=config.max_rank)
    layers = {name: SARALinear(lin, dataclasses.replace(config, rank=ranks[name]), name)
              for name, lin in targets.items()}

A layer whose config has ``budget`` set but no ``rank`` raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

import surm_ops
from surm_ops.adapters._util import adapter_dtype
from surm_ops.adapters.base import AdaptedLinear, linear_dims
from surm_ops.adapters.registry import register

RANDOMIZED_MIN_DIM = 2048
"""``randomized=True`` applies only to weights whose smaller dimension exceeds this; smaller ones are exact."""

_OVERSAMPLE = 10  # extra columns of the randomized range finder (Halko et al.)


def _check_common(method: str, threshold, budget, max_rank, randomized, rank) -> None:
    if not 0 < threshold <= 1:
        raise ValueError(f"{method}: threshold must be in (0, 1]; got {threshold!r}")
    for field, value in (("budget", budget), ("max_rank", max_rank), ("rank", rank)):
        if value is not None and not (isinstance(value, int) and value > 0):
            raise ValueError(f"{method}: {field} must be a positive integer or None; got {value!r}")
    if rank is not None and max_rank is not None and rank > max_rank:
        raise ValueError(f"{method}: rank={rank} exceeds max_rank={max_rank}")
    if randomized and max_rank is None and rank is None:
        raise ValueError(f"{method}: randomized=True needs max_rank (or rank): the truncated SVD only computes the "
                         "top singular values")


@dataclass
class SARAConfig:
    """threshold: the nuclear-norm fraction of the rank rule, in (0, 1]; budget: a total trainable-parameter budget
    resolved at model level (see the module docstring); max_rank: a cap on k; randomized: truncated randomized SVD
    for large weights (needs max_rank); rank: an explicit k, overriding threshold (set by the budget mode)."""

    threshold: float = 0.5
    budget: int | None = None
    max_rank: int | None = None
    randomized: bool = False
    rank: int | None = None

    def __post_init__(self):
        _check_common("sara", self.threshold, self.budget, self.max_rank, self.randomized, self.rank)

    def params_per_rank(self, d_in: int, d_out: int) -> int:
        """Trainable parameters per unit of rank: a column of P, a row of Q and one lambda."""
        return d_in + d_out + 1


@dataclass
class MoSARAConfig:
    """As :class:`SARAConfig`, plus experts: the number E of trainable singular-value vectors mixed per token."""

    threshold: float = 0.5
    experts: int = 4
    budget: int | None = None
    max_rank: int | None = None
    randomized: bool = False
    rank: int | None = None

    def __post_init__(self):
        _check_common("mosara", self.threshold, self.budget, self.max_rank, self.randomized, self.rank)
        if not (isinstance(self.experts, int) and self.experts > 0):
            raise ValueError(f"mosara: experts must be a positive integer; got {self.experts!r}")

    def params_per_rank(self, d_in: int, d_out: int) -> int:
        """Trainable parameters per unit of rank: one column of the E lambdas and one of the router."""
        return 2 * self.experts


def _use_randomized(weight: torch.Tensor, randomized: bool) -> bool:
    return randomized and min(weight.shape) > RANDOMIZED_MIN_DIM


def _spectrum(weight: torch.Tensor, q: int | None, randomized: bool, vectors: bool):
    """``(U, sigma, V, total)``: singular values descending (all, or the top q when randomized), the left and right
    vectors as columns (None unless ``vectors``), and the total sum of singular values (float64; an upper-bound
    estimate when randomized)."""
    w = weight.detach().to(adapter_dtype(weight.dtype))
    if _use_randomized(weight, randomized):
        m = min(w.shape)
        u, s, v = torch.svd_lowrank(w, q=min(q + _OVERSAMPLE, m), niter=4)
        known = s.double()
        tail = (w.double().square().sum() - known.square().sum()).clamp_min(0)
        total = known.sum() + torch.sqrt((m - known.numel()) * tail)
        return u[:, :q], s[:q], v[:, :q], total
    if vectors:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return u, s, vh.mT, s.double().sum()
    s = torch.linalg.svdvals(w)
    return None, s, None, s.double().sum()


def _fractions(sigma: torch.Tensor, total: torch.Tensor | float) -> torch.Tensor:
    cum = sigma.double().cumsum(0)
    total = torch.as_tensor(total, dtype=torch.float64, device=cum.device)
    return cum / total if total > 0 else torch.ones_like(cum)  # a zero weight: rank 1 holds "everything"


def _rank_at(fractions: torch.Tensor, threshold: float, cap: int) -> int:
    idx = torch.searchsorted(fractions, torch.tensor([threshold], dtype=torch.float64, device=fractions.device))
    return min(int(idx) + 1, cap)


def rank_from_spectrum(sigma: torch.Tensor, threshold: float, total: float | None = None,
                       max_rank: int | None = None) -> int:
    """The rank rule on a descending spectrum: the smallest k with ``sum(sigma[:k]) >= threshold * total``.

    ``total`` defaults to ``sigma.sum()`` (pass it when sigma is only the head of the spectrum). Computed in float64
    as fractions of the total, so a head holding exactly the threshold fraction counts. k is at least 1 and at most
    ``len(sigma)`` and ``max_rank``.

    >>> rank_from_spectrum(torch.tensor([4.0, 3.0, 2.0, 1.0]), 0.7)
    2
    """
    frac = _fractions(sigma, sigma.double().sum() if total is None else total)
    return _rank_at(frac, threshold, min(sigma.numel(), max_rank or sigma.numel()))


def sara_rank(weight: torch.Tensor, threshold: float, *, max_rank: int | None = None,
              randomized: bool = False) -> int:
    """SARA's rank for a weight of shape (d_out, d_in) at ``threshold`` (see the module docstring for the exact and
    randomized spectra)."""
    _check_common("sara", threshold, None, max_rank, randomized, None)
    _, sigma, _, total = _spectrum(weight, max_rank, randomized, vectors=False)
    return rank_from_spectrum(sigma, threshold, total, max_rank)


def ranks_for_budget(weights: dict[str, torch.Tensor], budget: int, params_per_rank: Callable[[int, int], int], *,
                     max_rank: int | None = None, randomized: bool = False) -> tuple[float, dict[str, int]]:
    """The largest global threshold whose ranks fit ``budget``, and those ranks.

    Args:
        weights: qualified name -> weight (d_out, d_in) of every layer to adapt.
        budget: the total trainable parameters allowed.
        params_per_rank: ``(d_in, d_out) -> parameters per unit of rank`` (e.g. ``SARAConfig().params_per_rank``).

    Each layer's rank is a step function of the threshold that steps at its spectrum's cumulative fractions, so the
    total is searched (bisection) over exactly those breakpoints: the result is the largest total ``<= budget`` that
    one global threshold can reach. Raises ``ValueError`` when even rank 1 everywhere exceeds the budget.
    """
    if not weights:
        raise ValueError("sara: ranks_for_budget needs at least one weight")
    if budget is None:
        raise ValueError("sara: ranks_for_budget needs a budget")
    _check_common("sara", 1.0, budget, max_rank, randomized, None)
    names, fracs, caps, costs = [], [], [], []
    for name, w in weights.items():
        _, sigma, _, total = _spectrum(w, max_rank, randomized, vectors=False)
        frac = _fractions(sigma, total).cpu()
        cap = min(sigma.numel(), max_rank or sigma.numel())
        names.append(name)
        fracs.append(frac)
        caps.append(cap)
        costs.append(params_per_rank(w.shape[1], w.shape[0]))

    def ranks_at(theta: float) -> list[int]:
        return [_rank_at(f, theta, c) for f, c in zip(fracs, caps)]

    def total_at(theta: float) -> int:
        return sum(k * c for k, c in zip(ranks_at(theta), costs))

    candidates = torch.cat([f[:c] for f, c in zip(fracs, caps)]).unique().tolist()  # sorted ascending
    if total_at(candidates[0]) > budget:
        raise ValueError(f"sara: budget={budget} is below the minimum of {total_at(candidates[0])} parameters "
                         f"(rank 1 in each of the {len(weights)} layers)")
    lo, hi = 0, len(candidates) - 1  # invariant: candidates[lo] fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if total_at(candidates[mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    theta = candidates[lo]
    return theta, dict(zip(names, ranks_at(theta)))


def thresholds_for_budget(weights: dict[str, torch.Tensor], budget: int, params_per_rank: Callable[[int, int], int],
                          *, max_rank: int | None = None, randomized: bool = False) -> float:
    """The global threshold of :func:`ranks_for_budget` (prefer that function: it also returns the ranks, which the
    layers take through ``config.rank`` without recomputing any spectrum)."""
    return ranks_for_budget(weights, budget, params_per_rank, max_rank=max_rank, randomized=randomized)[0]


def _singular_triplets(layer: AdaptedLinear, config: SARAConfig | MoSARAConfig):
    """``(U_k, V_k)`` of the layer's frozen weight, shapes (d_out, k) and (d_in, k), in the adapter dtype."""
    w, name = layer.base_weight(), layer.layer_name
    m = min(w.shape)
    if config.rank is not None:
        if config.rank > m:
            raise ValueError(f"{layer.method}: rank={config.rank} exceeds the smaller dimension of layer {name!r} "
                             f"({layer.in_features} -> {layer.out_features})")
        k = config.rank
        u, _, v, _ = _spectrum(w, k, config.randomized, vectors=True)
    elif config.budget is not None:
        raise ValueError(f"{layer.method}: layer {name!r} has budget={config.budget} but no rank; the budget is "
                         "shared by all layers, so resolve it with ranks_for_budget and pass each layer its rank")
    else:
        u, sigma, v, total = _spectrum(w, config.max_rank, config.randomized, vectors=True)
        k = rank_from_spectrum(sigma, config.threshold, total, config.max_rank)
    dt = layer.param_dtype()
    return u[:, :k].to(dt).contiguous(), v[:, :k].to(dt).contiguous()


def _build_with_budget(cls, matched, config):
    """``inject``'s layers for SARA/Mo-SARA: with ``budget=`` one global threshold for the whole model, resolved
    here from every matched weight's spectrum; each layer gets its rank through ``config.rank``."""
    if config.budget is None or config.rank is not None:
        return {id(m): cls(m, config, name) for name, m, _ in matched}, {}, {}
    weights = {}
    for name, m, _ in matched:
        d_in, d_out, flip = linear_dims(m, None, name, cls.method)  # a layer it cannot adapt fails here, by name
        weights[name] = m.weight.T if flip else m.weight
    theta, ranks = ranks_for_budget(weights, config.budget, config.params_per_rank, max_rank=config.max_rank,
                                    randomized=config.randomized)
    layers = {id(m): cls(m, dataclasses.replace(config, rank=ranks[name]), name) for name, m, _ in matched}
    return layers, {}, {"threshold": theta, "ranks": ranks}


@register
class SARALinear(AdaptedLinear):
    """SARA: ``dW = P diag(lambda) Q`` with P = U_k (d_out, k), lambda = 0 (k,), Q = V_k^T (k, d_in), all trainable.

    dW = 0 at init and lambda gets the first gradient; k (d_in + d_out + 1) parameters; mergeable.

    Example::

        >>> layer = SARALinear(nn.Linear(64, 32), SARAConfig(threshold=0.5))
        >>> layer(torch.randn(4, 64)).shape  # layer.rank is the k the rule picked
        torch.Size([4, 32])
    """

    method = "sara"
    config_class = SARAConfig
    build_layers = classmethod(_build_with_budget)

    def __init__(self, base: nn.Module, config: SARAConfig, name: str = "", *,
                 fan_in_fan_out: bool | None = None) -> None:
        super().__init__(base, config, name, fan_in_fan_out=fan_in_fan_out)
        u, v = _singular_triplets(self, config)
        self.rank = u.shape[1]
        self.sara_P = nn.Parameter(u)
        self.sara_lambda = nn.Parameter(torch.zeros(self.rank, dtype=u.dtype, device=u.device))
        self.sara_Q = nn.Parameter(v.T.contiguous())

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return surm_ops.svd_matmul(x.to(self.sara_P.dtype), self.sara_P, self.sara_lambda, self.sara_Q.T)

    def delta_weight(self) -> torch.Tensor:
        return (self.sara_P * self.sara_lambda) @ self.sara_Q

    def expected_parameters(self) -> int:
        return self.rank * (self.in_features + self.out_features + 1)


@register
class MoSARALinear(AdaptedLinear):
    """Mo-SARA: ``dW(x) = U_k diag(g(x) @ Lambda) V_k^T`` with U_k, V_k frozen buffers and, trainable,
    Lambda (E, k) = 0 and the router W_g (E, k), ``g(x) = softmax(W_g (V_k^T x))`` per token.

    The router is initialised like ``nn.Linear`` (uniform in +-1/sqrt(k)), not zero (our choice): with a constant
    router every expert receives the same gradient and the experts stay identical forever. 2 E k parameters; not
    mergeable (the update depends on the input): :meth:`merge` raises ``RuntimeError``.

    ``delta(x) = ((x V_k) * s(x)) U_k^T`` with per-token ``s(x) = g(x) @ Lambda`` (shape (..., k)), through
    :func:`surm_ops.svd_matmul`; the router's ``x V_k`` is a second skinny GEMM of the same size.
    """

    method = "mosara"
    config_class = MoSARAConfig
    build_layers = classmethod(_build_with_budget)
    mergeable = False

    def __init__(self, base: nn.Module, config: MoSARAConfig, name: str = "", *,
                 fan_in_fan_out: bool | None = None) -> None:
        super().__init__(base, config, name, fan_in_fan_out=fan_in_fan_out)
        u, v = _singular_triplets(self, config)
        self.rank = k = u.shape[1]
        self.register_buffer("mosara_U", u)
        self.register_buffer("mosara_V", v)
        kw = dict(dtype=u.dtype, device=u.device)
        self.mosara_lambda = nn.Parameter(torch.zeros(config.experts, k, **kw))
        self.mosara_router = nn.Parameter(torch.empty(config.experts, k, **kw))
        nn.init.kaiming_uniform_(self.mosara_router, a=math.sqrt(5))

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Router weights g(x), shape (..., E), summing to 1 per token."""
        return torch.softmax(F.linear(x.to(self.mosara_V.dtype) @ self.mosara_V, self.mosara_router), dim=-1)

    def singular_values(self, x: torch.Tensor) -> torch.Tensor:
        """The per-token mixture ``s(x) = g(x) @ Lambda``, shape (..., k)."""
        return self.gates(x) @ self.mosara_lambda

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        xc = x.to(self.mosara_V.dtype)
        return surm_ops.svd_matmul(xc, self.mosara_U, self.singular_values(xc), self.mosara_V)

    def delta_weight(self) -> torch.Tensor:
        raise RuntimeError(f"mosara layer {self.layer_name!r} has no single dW: its update depends on the input; "
                           "use token_delta_weights(x)")

    def token_delta_weights(self, x: torch.Tensor) -> torch.Tensor:
        """dW(x) per token, shape (..., d_out, d_in) (tests and inspection; memory grows with the token count)."""
        s = self.singular_values(x)
        return (self.mosara_U * s.unsqueeze(-2)) @ self.mosara_V.T

    def expected_parameters(self) -> int:
        return 2 * self.config.experts * self.rank
