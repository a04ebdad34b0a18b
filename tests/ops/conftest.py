import pytest


@pytest.fixture
def no_backend_env(monkeypatch):
    monkeypatch.delenv("SURM_BACKEND", raising=False)
