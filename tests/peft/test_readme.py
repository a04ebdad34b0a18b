"""The README's "With PEFT and the Trainer" example runs as written (~5 s)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_peft_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## With PEFT and the Trainer"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "get_peft_model" in code and "merge_and_unload" in code
    monkeypatch.chdir(tmp_path)  # the example writes out/ and adapter/
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    assert "trainable params: 512 ||" in capsys.readouterr().out  # the count the README quotes
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sum(t.numel() for t in saved.values()) == 512
