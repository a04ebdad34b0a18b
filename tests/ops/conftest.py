import pytest
import torch


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Fresh allocations come back full of NaN, so an output element a backend forgets to write fails the test."""
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def fill(t):
        if t.is_floating_point() or t.is_complex():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: fill(new_empty(self, *a, **k)))


@pytest.fixture
def no_backend_env(monkeypatch):
    monkeypatch.delenv("SURM_BACKEND", raising=False)
