"""surm_ops methods as Hugging Face PEFT methods, and PEFT's own C3A run on surm_ops' block-circulant op.

Importing this package registers every surm_ops method with PEFT (needs ``pip install surm_ops[peft]``); after
that the PEFT verbs work as for PEFT's built-in methods::

    import surm_ops.peft as sp
    from peft import get_peft_model, PeftModel
    model = get_peft_model(base, sp.config("circulant", layout="block", block_size=64, target_modules=["q_proj"]))
    ... train (e.g. with transformers' Trainer) ...
    model.save_pretrained("out/")
    again = PeftModel.from_pretrained(fresh_base, "out/")      # surm_ops.peft must be imported here too

Config classes: :data:`CONFIGS` (one per method, e.g. :class:`CirculantConfig`), or :func:`config`. PEFT type
names are ``SURM_<METHOD>``; adapter parameters live under ``surm_<method>_layers.<adapter name>`` (CondLoRA's
shared maps under the first layer of each module type, as ``cond_maps``).
"""

try:
    import peft as _peft
except ImportError as err:  # name the extra, not only the missing module
    raise ImportError("surm_ops.peft needs Hugging Face PEFT: pip install 'surm_ops[peft]'") from err

from surm_ops.peft._compat import check_peft_version

check_peft_version(_peft.__version__)

from surm_ops.peft.c3a import accelerate, restore  # noqa: E402
from surm_ops.peft.configs import CONFIGS, config, peft_type_name  # noqa: E402
from surm_ops.peft.tuner import LAYERS, TUNERS, register_all  # noqa: E402

register_all()

globals().update({cls.__name__: cls for cls in CONFIGS.values()})  # CirculantConfig, SARAConfig, ...

__all__ = ["CONFIGS", "LAYERS", "TUNERS", "accelerate", "config", "peft_type_name", "restore",
           *(cls.__name__ for cls in CONFIGS.values())]
