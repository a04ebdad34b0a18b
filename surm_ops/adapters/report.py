"""How many parameters each adapted layer trains, against its method's formula (docs/methods.md)."""

from __future__ import annotations

from torch import nn

from surm_ops.adapters.discovery import CONDLORA_ATTR, CONFIG_ATTR, _own_adapter_parameters, _unwrap, adapter_layers


def _report_rows(model: nn.Module) -> list[tuple[str, str, int, int | None]]:
    """``(name, method, trainable, expected)`` per adapted layer, per CondLoRA shared map, and for any other
    trainable parameters (expected None)."""
    model = _unwrap(model)
    rows = []
    counted: set[int] = set()
    groups: dict[int, list[nn.Module]] = {}  # id(shared maps) -> their layers
    for name, layer in adapter_layers(model):
        own = _own_adapter_parameters(layer)
        counted.update(id(p) for _, p in own)
        shared = getattr(layer, "cond_maps", None)
        if shared is not None and not any(m is shared for m in layer.children()):
            groups.setdefault(id(shared), []).append(layer)
            continue
        rows.append((name, layer.method, sum(p.numel() for _, p in own if p.requires_grad),
                     layer.expected_parameters()))
    maps = getattr(model, CONDLORA_ATTR, None)
    if isinstance(maps, nn.ModuleDict):
        for key, m in maps.items():
            members = groups.get(id(m), [])
            counted.update(id(p) for p in m.parameters())
            method = f"{members[0].method} ({len(members)} layers)" if members else "condlora"
            rows.append((f"{CONDLORA_ATTR}.{key}", method, sum(p.numel() for p in m.parameters() if p.requires_grad),
                         members[0].expected_parameters() if members else None))
    for prefix, root in model.named_modules():  # modules_to_save: one row each, trained and saved whole
        meta = getattr(root, CONFIG_ATTR, None)
        for name in meta.get("modules_to_save", []) if isinstance(meta, dict) else []:
            params = [p for p in root.get_submodule(name).parameters() if id(p) not in counted]
            counted.update(id(p) for p in params)
            rows.append((f"{prefix}.{name}" if prefix else name, "saved whole",
                         sum(p.numel() for p in params if p.requires_grad), None))
    other = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in counted)
    if other:
        rows.append(("(other trainable parameters)", "-", other, None))
    return rows

def trainable_parameters(model: nn.Module) -> tuple[list[tuple[str, int]], int]:
    """``([(name, trainable count), ...], total)``: one row per adapted layer, one per CondLoRA shared map (named
    ``surm_condlora.<type>``; its layers own no parameters), one per module in ``modules_to_save`` and, if
    anything else is trainable, a row
    ``"(other trainable parameters)"``. The total is every trainable parameter of the model, counted once."""
    rows = [(name, count) for name, _, count, _ in _report_rows(model)]
    return rows, sum(count for _, count in rows)

def parameter_report(model: nn.Module) -> str:
    """A table of trainable parameters per adapted layer against the docs/methods.md formula, with the total::

        layer                                 method     trainable  expected
        encoder.layer.0.attention.self.query  circulant         64        64
        ...
        total                                                  256       256
        trainable: 256 of 120,000 parameters (0.213%)
    """
    model = _unwrap(model)
    rows = _report_rows(model)
    header = ("layer", "method", "trainable", "expected")
    body = [(n, m, f"{t:,}", "-" if e is None else f"{e:,}", "" if e is None or e == t else "  <- differs")
            for n, m, t, e in rows]
    total = sum(t for _, _, t, _ in rows)
    expected = sum(e for _, _, _, e in rows if e is not None)
    body.append(("total", "", f"{total:,}", f"{expected:,}", ""))
    w = [max(len(str(r[i])) for r in [header, *body]) for i in range(4)]
    lines = [f"{header[0]:<{w[0]}}  {header[1]:<{w[1]}}  {header[2]:>{w[2]}}  {header[3]:>{w[3]}}"]
    lines += [f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}{r[4]}" for r in body]
    n_all = sum(p.numel() for p in model.parameters())
    lines.append(f"trainable: {total:,} of {n_all:,} parameters ({100 * total / max(n_all, 1):.3f}%)")
    return "\n".join(lines)
