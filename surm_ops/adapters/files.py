"""Adapter files: ``save_adapters`` / ``load_adapters`` (safetensors + a JSON config), atomic on both sides."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surm_ops.adapters.discovery import (
    _SHOWN,
    CONFIG_ATTR,
    _adapter_parameters,
    _injected_root,
    _listing,
    _metadata,
    _unwrap,
    adapter_layers,
)

WEIGHTS_NAME = "adapter.safetensors"

CONFIG_NAME = "adapter_config.json"

_SAFETENSORS_KEY = "surm_adapter_config"  # the metadata, also in the safetensors header: a mixed pair is detected


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))

def _to_cpu(p: torch.Tensor) -> torch.Tensor:
    t = p.detach()
    if hasattr(t, "full_tensor"):  # an FSDP2 DTensor shard: gathering is collective, every rank calls save
        t = t.full_tensor()
    return t.to("cpu").contiguous()

def _saved_tensors(root: nn.Module) -> dict[str, torch.Tensor]:
    """Qualified name -> tensor of everything the adapter file holds: the adapter parameters, then the full state
    (parameters and buffers) of each module in ``modules_to_save``."""
    tensors: dict[str, torch.Tensor] = dict(_adapter_parameters(root))
    for name in getattr(root, CONFIG_ATTR).get("modules_to_save", []):
        for key, t in root.get_submodule(name).state_dict(keep_vars=True).items():
            tensors.setdefault(f"{name}.{key}", t)
    return tensors

def save_adapters(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the adapters of ``model`` to the directory ``path`` (created if needed).

    ``adapter.safetensors`` holds only the adapter tensors (the layers' trainable parameters and CondLoRA's shared
    maps, under their qualified names, contiguous, in their own float dtype) and the whole state of the
    ``modules_to_save`` given to :func:`inject`; ``adapter_config.json`` holds
    ``model.surm_adapter_config`` plus each tensor's shape and dtype. Both files are written to temporary files in
    ``path`` and renamed into place, so a failed save never leaves a half-written file.

    Mo-SARA's frozen singular vectors are buffers recomputed from the base weights by :func:`inject`, so they are
    not saved. Saving a merged model is fine: merging never changes the adapter parameters. Under FSDP2 call it on
    every rank (the shards are gathered collectively; every rank writes the same files, atomically).

    ``model`` may be an outer module whose injected part is a submodule (names are then relative to that submodule,
    so the file loads into either).
    """
    model = _injected_root(model)
    meta = _metadata(model)
    tensors = {name: _to_cpu(p) for name, p in _saved_tensors(model).items()}
    config = {**meta, "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                                  for name, t in tensors.items()}}
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_adapters: {path} exists and is not a directory")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    temps: list[str] = []
    try:
        for final in (WEIGHTS_NAME, CONFIG_NAME):  # unique names (concurrent FSDP ranks), default permissions
            tmp = str(path / f".{final}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
            open(tmp, "x").close()
            temps.append(tmp)
        save_file(tensors, temps[0], metadata={_SAFETENSORS_KEY: json.dumps(meta, sort_keys=True)})
        shutil.copymode(temps[1], temps[0])  # safetensors writes 0600; give it the umask's permissions
        with open(temps[1], "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        for tmp, final in zip(temps, (WEIGHTS_NAME, CONFIG_NAME)):
            os.replace(tmp, path / final)
    except BaseException:
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)
        if created and not any(path.iterdir()):
            path.rmdir()
        raise

def _option_differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: saved {saved.get(k, '<absent>')!r}, model {current.get(k, '<absent>')!r}"
            for k in keys if saved.get(k) != current.get(k)]

def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters saved by :func:`save_adapters` into ``model``, injected with the same method and options.

    Everything is validated first: the method, the options, the adapted layers, and every tensor (each saved name
    must be an adapter tensor of the model with the same shape, and no adapter tensor of the model may be missing
    from the file). A mismatch raises ``ValueError`` listing the first ones and leaves the model untouched; loading
    into a merged model raises ``RuntimeError`` (unmerge first). Values are then copied in under ``torch.no_grad``,
    cast to each parameter's dtype and device. A file that is not a readable adapter file (truncated, empty, not
    JSON, a config of the wrong shape) raises ``ValueError`` naming the file.

    ``model`` may be an outer module whose injected part is a submodule. Returns ``model`` (unwrapped from
    ``torch.compile`` / DDP).
    """
    given = _unwrap(model)
    model = _injected_root(model)
    meta = _metadata(model)
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise ValueError(f"load_adapters: {f} does not exist (expected a directory written by save_adapters)")
    merged = [n for n, layer in adapter_layers(model) if layer.merged]
    if merged:
        raise RuntimeError(f"load_adapters: layer {merged[0]!r} is merged; unmerge(model) before loading")
    saved = _read_config(config_file)
    header, tensors = _read_weights(weights_file)

    problems: list[str] = []
    saved_meta = {k: v for k, v in saved.items() if k != "tensors"}
    if header is not None and header != saved_meta:
        problems.append(f"{CONFIG_NAME} and {WEIGHTS_NAME} come from different saves")
    if saved.get("method") != meta["method"]:
        problems.append(f"method: saved {saved.get('method')!r}, model {meta['method']!r}")
    else:
        problems += [f"option {d}" for d in _option_differences(saved.get("options") or {}, meta["options"])]
    params = _saved_tensors(model)
    unexpected = [n for n in tensors if n not in params]
    missing = [n for n in params if n not in tensors]
    if unexpected:
        problems.append(f"{len(unexpected)} saved tensors are not adapter tensors of the model: {_listing(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} adapter tensors of the model are missing from the file: {_listing(missing)}")
    shapes = [f"{n}: saved {tuple(t.shape)}, model {tuple(params[n].shape)}"
              for n, t in tensors.items() if n in params and t.shape != params[n].shape]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes[:_SHOWN])}")
    not_float = [n for n, t in tensors.items()
                 if n in params and t.is_floating_point() != params[n].is_floating_point()]
    if not_float:
        problems.append(f"tensors of the wrong kind (integer vs float) in the file: {_listing(not_float)}")
    sharded = [n for n, p in params.items() if hasattr(p, "full_tensor")]
    if sharded:
        problems.append(f"the model's adapter tensors are sharded (FSDP2), e.g. {sharded[0]!r}: load before "
                        "fully_shard")
    if problems:
        raise ValueError(f"load_adapters: {path} does not fit {type(model).__name__}: " + " | ".join(problems))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.dtype))
    return given

def _read_config(config_file: Path) -> dict[str, Any]:
    """adapter_config.json as a dict with the keys load needs, or ``ValueError`` naming the file and the fault."""
    try:
        with open(config_file) as f:
            saved = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"load_adapters: {config_file} is not valid JSON ({err}); it was not written by "
                         "save_adapters or is corrupt") from None
    faults = []
    if not isinstance(saved, dict):
        faults.append(f"the top level is a {type(saved).__name__}, not an object")
    else:
        for key, kind in (("method", str), ("options", dict), ("targets", list), ("tensors", dict)):
            if not isinstance(saved.get(key), kind):
                faults.append(f"{key!r} is {'missing' if key not in saved else type(saved[key]).__name__}, "
                              f"expected {kind.__name__}")
    if faults:
        raise ValueError(f"load_adapters: {config_file} is not an adapter config: {'; '.join(faults)}")
    return saved

def _read_weights(weights_file: Path) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """``(metadata header or None, tensors)`` of adapter.safetensors, or ``ValueError`` naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(weights_file, framework="pt") as f:
            header = (f.metadata() or {}).get(_SAFETENSORS_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
        header = None if header is None else json.loads(header)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        size = weights_file.stat().st_size
        raise ValueError(f"load_adapters: {weights_file} ({size} bytes) is not a readable safetensors file "
                         f"({type(err).__name__}: {err}); it is truncated, empty or corrupt") from None
    return header, tensors
