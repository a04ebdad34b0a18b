"""Render the benchmark CSVs into Markdown tables and PNG plots, from the CSV alone.

    python bench/render.py                      # bench/results/{cpu,gpu}.csv -> *-latest.md, *-ops.png, *-layers.png
    python bench/render.py bench/results/gpu.csv --device H100
    python bench/render.py --readme             # print the concise tables the README quotes

Each CSV renders only its latest run (the newest ``date``; with ``--device``, the newest run on a device whose name
contains that text), so every ratio is taken within one run on one device. Ratios in the tables are robust
estimates divided by robust estimates of the same run, dtype, shape and mode (medians for rows from before the
robust estimate). Plots need matplotlib (the ``bench`` extra); without
it the tables are still written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import csvio  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("fwd", "bwd", "full")
README_MODES = ("fwd", "full")
OP_BACKENDS = ("cuda", "triton", "fft", "dense", "auto")


def latest(rows: list[dict], device: str | None = None) -> list[dict]:
    """The rows of the newest run (on a device whose name contains ``device``, when given)."""
    pool = [r for r in rows if not device or device.lower() in r["device"].lower()]
    if not pool:
        return []
    newest = max(pool, key=lambda r: r["date"])  # ISO-8601 UTC dates sort as strings
    return [r for r in pool if r["date"] == newest["date"] and r["device"] == newest["device"]]


def est(r: dict | None) -> float | None:
    """The number a row is compared by: its robust estimate, or its median for rows from before there was one."""
    if not r:
        return None
    return r.get("robust_us") or r.get("median_us")


def _wide(*rows) -> bool:
    return any(r and "wide" in (r.get("flags") or "") for r in rows)


def _est(r: dict | None) -> str:
    """The estimate in µs, with ``~`` when the row's spread stayed wide."""
    return _us(est(r)) + ("~" if _wide(r) else "")


def _vs(r: dict | None, base: dict | None) -> str:
    """``r`` ÷ ``base``, marked ``~`` when either was wide."""
    return _ratio(est(r), est(base)) + ("~" if r and base and _wide(r, base) else "")


def _xfloor(r: dict | None) -> str:
    if not r or not r.get("x_floor"):
        return "-"
    return f"{r['x_floor']:.2f} (error: below floor)" if r["x_floor"] < 1 else f"{r['x_floor']:.1f}"


def _us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def _ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}" if num and den else "-"


def _groups(rows: Iterable[dict], key) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def _provider_label(r: dict) -> str:
    if r["provider"] == "auto" and r.get("backend"):
        return f"auto → {r['backend']}"
    return r["provider"]


def _lora_eq(rows: list[dict]) -> dict | None:
    """The LoRA row whose parameter count is closest to the op's (the op's own providers carry it), if it is within
    a factor of two of it."""
    op = next((r for r in rows if r["provider"] in OP_BACKENDS and r["params"]), None)
    loras = [r for r in rows if r["provider"].startswith("lora-r") and r["params"]]
    if op is None or not loras:
        return None
    eq = min(loras, key=lambda r: (abs(r["params"] - op["params"]), r["params"]))
    return eq if op["params"] / 2 <= eq["params"] <= 2 * op["params"] else None  # runs without that rank: none


def load_line(rows: list[dict], before: float | None = None) -> str:
    """How busy other processes kept the machine while the rows were measured (bench/meta.py)."""
    busy = [r["others_cores"] for r in rows if r.get("others_cores") is not None]
    if not busy:
        return "Load by other processes: not sampled."
    mean = sum(busy) / len(busy)
    pre = f"; {before:.1f} just before the run" if before is not None else ""
    return (f"Load by other processes: {mean:.1f} cores busy on average while cases ran ({min(busy):.1f}–"
            f"{max(busy):.1f} per case{pre}).")


def header(rows: list[dict]) -> str:
    r = rows[0]
    rates = ", ".join(f"{g[0]['dtype']} {g[0]['matmul_tflops']:.3g} TFLOP/s"
                      for g in _groups(rows, lambda x: x["dtype"]).values() if g[0]["matmul_tflops"])
    versions = ", ".join(f"{k} {r[k]}" for k in ("torch", "triton", "cuda") if r.get(k))
    threads = f", {r['threads']:.0f} torch thread{'s' if r['threads'] != 1 else ''}" if r.get("threads") else ""
    drift = f" (start and end of the run differ by ≤ {r['ceiling_drift']:.0%})" \
        if r.get("ceiling_drift") is not None else ""
    ceilings = f"Ceilings: copy {r['copy_gbps']:.1f} GB/s; matmul {rates}{drift}." \
        if r.get("copy_gbps") else "No ceilings recorded (a row from before they were measured)."
    return (f"{r['device']} — run {r['date']}, commit {r['commit']}, {versions}{threads}; timer "
            f"{r.get('timer') or '?'}.\n{ceilings}\n{load_line(rows)}")


STRUCTURED_LAYER_SKIP = ("frozen", "lora-r8", "lora-r16", "lora-r32", "peft-lora-r16", "peft-c3a-b64")
"""Layers that are baselines, not structured methods: left out of the headline (kept in the detailed table)."""


def headline(rows: list[dict], before: float | None = None) -> str:
    """The report's first lines: per structured op and adapter layer, its cost against its baselines.

    Ops: the surm_ops call (``auto``) ÷ the raw torch calls of its reference path (``torch``), ÷ dense LoRA r16,
    ÷ PEFT's C3A update; layers: ÷ the frozen layer, ÷ the LoRA r16 layer, ÷ PEFT's C3A layer; forward and
    forward+backward (a training step). Every ratio is within one interleaved measurement."""
    r0 = rows[0]
    lines = [f"# Headline — {r0['device']}" + (f", {r0['threads']:.0f} thread(s)" if r0.get("threads") else "")
             + f", commit {r0['commit']}", load_line(rows, before)]
    ops = [r for r in rows if r["suite"] == "op"]
    if ops:
        shapes = sorted({f"{r['shape'].split(' ')[0]} {r['dtype']}" for r in ops})
        lines += ["", f"Ops ({', '.join(shapes)}): µs, and time ÷ baseline (< 1: faster than it)", "",
                  "| op | fwd µs | ÷ torch | ÷ LoRA r16 | ÷ C3A | fwd+bwd µs | ÷ torch | ÷ LoRA r16 | ÷ C3A |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        cases = _groups(ops, lambda r: (r["op"], r["shape"], r["dtype"]))
        per_op = len(cases) > len({op for op, _, _ in cases})  # --full: several shapes of one op
        for (op, shape, dtype), group in cases.items():
            cells = []
            for mode in ("fwd", "full"):
                by = {r["provider"]: r for r in group if r["mode"] == mode}
                me = by.get("auto") or by.get("fft")
                cells += [_est(me), _vs(me, by.get("torch")), _vs(me, by.get("lora-r16")), _vs(me, by.get("peft-c3a"))]
            label = f"{op} {shape} {dtype}" if per_op else f"{op} {shape.split(' ', 1)[1]}" if " " in shape else op
            auto = next((r for r in group if r["provider"] == "auto"), None)
            label += f" (→ {auto['backend']})" if auto else ""
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lay = [r for r in rows if r["suite"] == "layer"]
    if lay:
        by = {(r["provider"], r["mode"]): r for r in lay}
        lines += ["", f"Adapter layers (frozen nn.Linear {lay[0]['shape']} {lay[0]['dtype']} + adapter): time ÷ "
                  "baseline layer", "",
                  "| layer | fwd ÷ frozen | ÷ LoRA r16 | ÷ C3A | step ÷ frozen | ÷ LoRA r16 | ÷ C3A |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for provider in dict.fromkeys(r["provider"] for r in lay):
            if provider in STRUCTURED_LAYER_SKIP:
                continue
            cells = [_vs(by.get((provider, m)), by.get((base, m))) for m in ("fwd", "full")
                     for base in ("frozen", "lora-r16", "peft-c3a-b64")]
            lines.append(f"| {provider} | " + " | ".join(cells) + " |")
    wide = sum(_wide(r) for r in rows)
    below = sum(1 for r in rows if r.get("x_floor") is not None and r["x_floor"] < 1)
    notes = []
    if wide:
        notes.append(f"{wide} row(s) kept a wide spread after being measured again (marked ~): rerun on a quieter "
                     "machine before trusting them")
    if below:
        notes.append(f"{below} row(s) measured below their floor: a measurement error (see the detailed table)")
    lines += ["", ("Warnings: " + "; ".join(notes) + ".") if notes else
              "Every row's spread stayed within bounds and above its floor."]
    return "\n".join(lines)


def op_summary(rows: list[dict], modes: tuple[str, ...] = MODES) -> str:
    """One line per op, shape, dtype and mode: each op backend's estimate, the raw torch path's, LoRA r16's and
    LoRA's at equal parameters, PEFT C3A's when present; the fastest op backend's × floor, it ÷ the raw torch
    path, and LoRA r16 (and C3A) ÷ it."""
    ops = [r for r in rows if r["suite"] in ("op", "")]
    backends = [b for b in OP_BACKENDS if any(r["provider"] == b for r in ops)]
    peft = any(r["provider"] == "peft-c3a" for r in ops)
    cols = [*(f"{b} µs" for b in backends), "torch µs", "LoRA r16 µs", "LoRA =params µs",
            *(["PEFT C3A µs"] if peft else []), "best × floor", "best ÷ torch", "LoRA r16 ÷ best",
            *(["C3A ÷ best"] if peft else [])]
    lines = ["| op | shape | dtype | mode | " + " | ".join(cols) + " |",
             "|---|---|---|---|" + "---:|" * len(cols)]
    for (op, shape, dtype), group in _groups(ops, lambda r: (r["op"], r["shape"], r["dtype"])).items():
        for mode in modes:
            by = {r["provider"]: r for r in group if r["mode"] == mode}
            if not by:
                continue
            mine = [by[b] for b in backends if b in by]
            best = min(mine, key=est) if mine else None
            eq = _lora_eq(list(by.values()))
            cells = []
            for b in backends:
                r = by.get(b)
                cells.append("-" if r is None else _est(r) if b != "auto" else f"{r['backend']} {_est(r)}")
            r16 = by.get("lora-r16")
            cells += [_est(by.get("torch")), _est(r16),
                      f"r{eq['provider'].removeprefix('lora-r')}: {_est(eq)}" if eq else "-"]
            c3a = by.get("peft-c3a")
            if peft:
                cells.append(_est(c3a))
            cells += [_xfloor(best), _vs(best, by.get("torch")), _vs(r16, best)]
            if peft:
                cells.append(_vs(c3a, best))
            lines.append(f"| {op} | {shape} | {dtype} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def op_detail(rows: list[dict]) -> str:
    lines = ["| suite | op | shape | dtype | mode | provider | robust µs | median µs | p20–p80 µs | spread | rounds | "
             "others' cores | GB/s | GFLOP/s | floor µs | × floor |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p2080 = f"{_us(r['p20_us'])}–{_us(r['p80_us'])}" if r["p20_us"] is not None else "-"
        spread = "-" if r.get("spread") is None else f"{r['spread']:.0%}" + (" wide" if _wide(r) else "")
        rounds = f"{r['rounds']:.0f}" if r.get("rounds") else "-"
        others = f"{r['others_cores']:.1f}" if r.get("others_cores") is not None else "-"
        gflops = f"{r['gflops']:.1f}" if r["gflops"] else "-"
        gbps = f"{r['gbps']:.2f}" if r["gbps"] is not None else "-"
        floor = f"{r['floor_us']:.1f}" if r["floor_us"] else "-"
        lines.append(f"| {r['suite'] or 'op'} | {r['op']} | {r['shape']} | {r['dtype']} | {r['mode']} | "
                     f"{_provider_label(r)} | {_us(r.get('robust_us'))} | {_us(r['median_us'])} | {p2080} | {spread} | "
                     f"{rounds} | {others} | {gbps} | {gflops} | {floor} | {_xfloor(r)} |")
    return "\n".join(lines)


def layer_table(rows: list[dict]) -> str:
    """Per adapter layer: forward and training-step estimates, over the frozen layer and over dense LoRA r16."""
    layer_rows = [r for r in rows if r["suite"] == "layer"]
    out = []
    for (shape, dtype), group in _groups(layer_rows, lambda r: (r["shape"], r["dtype"])).items():
        by = {(r["provider"], r["mode"]): r for r in group}
        out += [f"| layer {shape} {dtype} | params | fwd µs | fwd ÷ frozen | fwd ÷ LoRA r16 | step µs | "
                "step ÷ frozen | step ÷ LoRA r16 | step × floor |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for provider in dict.fromkeys(r["provider"] for r in group):
            cells = []
            for mode in ("fwd", "full"):
                r = by.get((provider, mode))
                cells += [_est(r), _vs(r, by.get(("frozen", mode))), _vs(r, by.get(("lora-r16", mode)))]
            params = next((by[(provider, m)]["params"] for m in ("fwd", "full") if (provider, m) in by), None)
            cells.append(_xfloor(by.get((provider, "full"))))
            out.append(f"| {provider} | {params or 0:,.0f} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).strip()


def plot_ops(rows: list[dict], path: Path) -> bool:
    """Time per provider, one panel per op, shape and dtype; bars per mode; log scale."""
    plt = _pyplot()
    ops = [r for r in rows if r["suite"] in ("op", "")]
    groups = _groups(ops, lambda r: (r["op"], r["shape"], r["dtype"]))
    if plt is None or not groups:
        return False
    ncols = 4 if len(groups) > 12 else 3
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, ((op, shape, dtype), group) in zip(axes.flat, groups.items()):
        providers = list(dict.fromkeys(r["provider"] for r in group))
        modes = [m for m in MODES if any(r["mode"] == m for r in group)]
        width = 0.8 / max(len(modes), 1)
        for i, mode in enumerate(modes):
            by = {r["provider"]: est(r) for r in group if r["mode"] == mode}
            xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(providers))]
            ax.bar(xs, [by.get(p) or 0 for p in providers], width, label=mode)
        ax.set_yscale("log")
        labels = {r["provider"]: _provider_label(r).replace(" → ", "→") for r in group}
        ax.set_xticks(range(len(providers)), [labels[p] for p in providers], rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{op} {shape} {dtype}", fontsize=9)
        ax.set_ylabel("µs (robust estimate)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"surm_ops op benchmarks — {rows[0]['device']}, {rows[0]['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_layers(rows: list[dict], path: Path) -> bool:
    """Each layer's time over the frozen layer's, forward and training step."""
    plt = _pyplot()
    group = [r for r in rows if r["suite"] == "layer"]
    if plt is None or not group:
        return False
    by = {(r["provider"], r["mode"]): est(r) for r in group}
    providers = list(dict.fromkeys(r["provider"] for r in group))
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(providers) + 1.5))
    for i, (mode, label) in enumerate((("fwd", "forward"), ("full", "training step"))):
        base = by.get(("frozen", mode))
        ys = [j + (i - 0.5) * 0.4 for j in range(len(providers))]
        ax.barh(ys, [(by.get((p, mode)) or 0) / base if base else 0 for p in providers], 0.4, label=label)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(1.10, color="grey", ls="--", lw=0.8, label="1.10 × frozen (target)")
    ax.set_yticks(range(len(providers)), providers, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time ÷ frozen nn.Linear (same run, same mode)")
    r = group[0]
    ax.set_title(f"Adapter layer cost, {r['shape']} {r['dtype']} — {r['device']}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LEGEND = (
    "Times are robust estimates in µs (bench/timing.py: the providers of a case measured interleaved; the median "
    "over rounds of each round's fastest call); `~` marks a row whose spread stayed above "
    "15% after it was measured again. Ratios are taken within one case of one run. Ops: `auto` is what "
    "`surm_ops` runs (the backend it picked after the arrow), `torch` the raw torch calls of its reference path, "
    "`best` the fastest op backend; `LoRA r16 ÷ best` and `C3A ÷ best` above 1 mean that backend is faster than "
    "dense LoRA r16 / PEFT's C3A update. `× floor` is the estimate ÷ max(bytes ÷ copy bandwidth, FLOPs ÷ matmul "
    "rate) with this run's ceilings (bench/roofline.py says what is counted); below 1 is a measurement error and "
    "says so. Layers: `step` is forward + backward (∂x and the adapter parameters); ratios over the frozen layer "
    "and over the dense LoRA r16 layer of this run.")


def readme_section(rows: list[dict], stem: str) -> str:
    """What the README shows of a published run: the headline, the concise tables (forward and full modes), the
    plots."""
    return (f"{headline(rows)}\n\n{header(rows)}\n\n{op_summary(rows, README_MODES)}\n\n{layer_table(rows)}\n\n"
            f"Plots: [{stem}-ops.png](bench/results/{stem}-ops.png), "
            f"[{stem}-layers.png](bench/results/{stem}-layers.png).").replace("# Headline", "Headline")


def _markers(stem: str) -> tuple[str, str]:
    return f"<!-- bench:{stem}:begin -->", f"<!-- bench:{stem}:end -->"


def update_readme(readme: Path, rows: list[dict], stem: str) -> bool:
    """Replace the text between the README's ``<!-- bench:<stem>:begin/end -->`` markers with
    :func:`readme_section`; False (and the README untouched) when it has no such markers."""
    begin, end = _markers(stem)
    text = readme.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{readme_section(rows, stem)}\n{end}{tail}")
    return True


def render(csv_path: Path, out_dir: Path, device: str | None = None) -> tuple[str, list[Path]]:
    """Write ``<stem>-latest.md`` and the plots for the latest run of ``csv_path``; return the detailed tables
    (what the runner prints) and the files written."""
    all_rows = csvio.load(csv_path)
    rows = latest(all_rows, device)
    if not rows:
        raise SystemExit(f"render.py: {csv_path} has no rows" + (f" on a device matching {device!r}" if device else ""))
    stem = csv_path.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    others = sorted({r["device"] for r in all_rows} - {rows[0]["device"]})
    summary = f"{header(rows)}\n\n{op_summary(rows)}\n\n{layer_table(rows)}".strip()
    md = (f"# {stem.upper()} benchmarks, latest run\n\n{headline(rows).replace('# Headline', '## Headline')}\n\n"
          f"## Tables\n\n{summary}\n\n{LEGEND}\n\n"
          + (f"Other devices in {csv_path.name} (render with --device): {', '.join(others)}.\n\n" if others else "")
          + f"## Every row\n\n{op_detail(rows)}\n")
    written = [out_dir / f"{stem}-latest.md"]
    written[0].write_text(md)
    for name, plot in (("ops", plot_ops), ("layers", plot_layers)):
        path = out_dir / f"{stem}-{name}.png"
        if plot(rows, path):
            written.append(path)
    return summary, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="*", type=Path, help="results CSVs (default: bench/results/{cpu,gpu}.csv)")
    parser.add_argument("--out", type=Path, help="output folder (default: the CSV's folder)")
    parser.add_argument("--device", help="render the newest run on a device whose name contains this text")
    parser.add_argument("--readme", action="store_true", help="print the README's section; write nothing")
    args = parser.parse_args(argv)
    paths = args.csv or [p for p in (RESULTS / "cpu.csv", RESULTS / "gpu.csv") if p.exists()]
    if not paths:
        print("render.py: no results CSV found", file=sys.stderr)
        return 1
    for path in paths:
        if args.readme:
            rows = latest(csvio.load(path), args.device)
            print(readme_section(rows, path.stem) if rows else f"{path}: no rows")
            continue
        summary, written = render(path, args.out or path.parent, args.device)
        print(summary)
        print("\nrender.py: wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
