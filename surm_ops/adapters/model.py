"""The model-level API in one import: inject adapters into a model, merge and unmerge them, save and load them,
report their size. The code lives by concern in discovery.py, inject.py, merge.py, files.py and report.py.

Typical use (``unload`` returns a plain model, merged or with the adapters removed)::

    import surm_ops
    model = BertModel(config)                                       # any nn.Module
    surm_ops.inject(model, "circulant", ["query", "value"])         # base frozen, adapters trainable
    ... train ...
    surm_ops.save_adapters(model, "out/")                          # adapter tensors only
    fresh = surm_ops.inject(BertModel(config), "circulant", ["query", "value"])
    surm_ops.load_adapters(fresh, "out/")
    surm_ops.merge(fresh)                                          # no inference overhead; unmerge() is exact
    print(surm_ops.parameter_report(fresh))
    plain = surm_ops.unload(fresh)                                 # plain modules, merged

Errors: a wrong argument or a file that does not fit the model (or cannot be read) raises ``ValueError``
(``TypeError`` where a layer class rejects a module's type); a model in the wrong state (already injected, merging a
non-mergeable method or a tied weight, loading into a merged model) raises ``RuntimeError``. Every function validates
first and changes nothing on error.
"""

from surm_ops.adapters.discovery import (  # noqa: F401  (re-exported)
    ADAPTED_TYPES,
    CONDLORA_ATTR,
    CONFIG_ATTR,
    WRAPPERS,
    _adapter_parameters,
    adapter_layers,
    available_methods,
)
from surm_ops.adapters.files import CONFIG_NAME, WEIGHTS_NAME, load_adapters, save_adapters  # noqa: F401
from surm_ops.adapters.inject import inject  # noqa: F401
from surm_ops.adapters.merge import merge, unload, unmerge  # noqa: F401
from surm_ops.adapters.report import parameter_report, trainable_parameters  # noqa: F401
