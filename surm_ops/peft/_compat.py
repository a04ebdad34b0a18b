"""The PEFT versions surm_ops.peft is tested with, checked on import.

It relies on PEFT internals that change between minor versions (0.15, 0.18, 0.21 each changed them): how tuner
state dicts are selected and renamed on save and load, ``BaseTuner`` hooks, ``BaseTunerLayer`` bookkeeping. With
peft 0.20 a CondLoRA checkpoint, for one, saves but does not load back, silently; so an older PEFT is refused.
"""

from __future__ import annotations

import warnings

from packaging.version import Version

TESTED = (Version("0.21.0"), Version("0.22.0"))  # [low, high): peft 0.21.0, 0.21.1 and 0.21.2 are tested


def check_peft_version(version: str) -> None:
    """Raise ``ImportError`` below the tested range; warn above it."""
    v = Version(version)
    if v < TESTED[0]:
        raise ImportError(f"surm_ops.peft needs peft>={TESTED[0]},<{TESTED[1]} (tested range); found peft {version}: "
                          f"pip install 'surm_ops[peft]' (or 'peft>={TESTED[0]},<{TESTED[1]}')")
    if v >= TESTED[1]:
        warnings.warn(f"surm_ops.peft is tested with peft>={TESTED[0]},<{TESTED[1]}; found peft {version}. Run "
                      "tests/peft before relying on it (save/load internals change between PEFT versions)",
                      stacklevel=3)
