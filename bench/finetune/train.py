"""Train one method of one case and measure it: accuracy, time per step, peak memory, trainable parameters and the
size of the saved adapter file.

The loop is the same for every method: AdamW (weight decay 0) over the adapter parameters and the head, a learning
rate decaying linearly to 0 over the run, gradients clipped to norm 1, the same seeded batches. RM-LoRA adds its
orthogonality regulariser to the loss and its random rank masking between backward and the step (the method's own
training loop, :mod:`surm_ops.adapters.rmlora`).

Peak memory is the peak resident set size (RSS, Linux ``VmHWM``, the same quantity as ``getrusage().ru_maxrss``)
during the training steps minus the RSS just before them, with the model already built and injected: the memory the
training itself adds (activations kept for backward, gradients, optimizer state). Before each run the peak is reset
(``/proc/self/clear_refs``) and freed heap memory is handed back (``malloc_trim``), so runs do not see each other's
peaks. Where the reset is not available the delta of ``ru_maxrss`` is used, which only shows growth above every
earlier peak of the process (``Result.memory_method`` says which).
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.finetune.tasks import Spec, Task


@dataclass
class Result:
    case: str
    label: str
    method: str | None
    options: dict
    targets: int  # how many modules were adapted
    where: str  # the target_modules suffixes
    lr: float
    steps: int
    val_accs: list[float]
    test_accs: list[float]
    adapter_params: int
    head_params: int
    ms_per_step: float
    mean_ms_per_step: float
    peak_mib: float
    memory_method: str
    adapter_bytes: int | None
    first_loss: float
    last_loss: float
    seconds: float
    grid: dict[float, float] = field(default_factory=dict)  # lr -> validation accuracy, with --lr-grid
    model: nn.Module | None = field(default=None, repr=False)  # the trained model, with keep_model=True


# ------------------------------------------------------------------------------------------------------ memory


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory() as m: ...`` then ``m.mib`` (peak RSS during the block minus RSS at its start, MiB)."""

    def __enter__(self) -> PeakMemory:
        _trim()
        self.resettable = _reset_peak() and _status_kib("VmHWM") is not None
        self.method = "peak RSS (VmHWM reset per run)" if self.resettable else "ru_maxrss delta"
        self.start = _status_kib("VmRSS") if self.resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        end = _status_kib("VmHWM") if self.resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mib = max(end - self.start, 0) / 1024


# ----------------------------------------------------------------------------------------------------- training


def _adapter_file_bytes(encoder: nn.Module, directory: str | os.PathLike | None) -> int:
    """Save the adapters with ``surm_ops.save_adapters`` (into ``directory``, or a temporary one) and return the
    size of the weights file."""
    import surm_ops
    from surm_ops.adapters.model import WEIGHTS_NAME

    if directory is not None:
        surm_ops.save_adapters(encoder, directory)
        return os.path.getsize(os.path.join(directory, WEIGHTS_NAME))
    with tempfile.TemporaryDirectory() as tmp:
        surm_ops.save_adapters(encoder, tmp)
        return os.path.getsize(os.path.join(tmp, WEIGHTS_NAME))


def train(task: Task, spec: Spec, lr: float, steps: int, seed: int = 0,
          adapter_dir: str | os.PathLike | None = None, keep_model: bool = False) -> Result:
    """Build a fresh model for ``spec``, train it ``steps`` steps at ``lr`` and measure it. The adapters are saved
    to ``adapter_dir`` (default: a temporary directory, removed after measuring the file); ``keep_model`` keeps the
    trained model in ``Result.model``. Runs with ``task.threads`` torch threads when the task sets them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(task.threads or threads)
    try:
        return _train(task, spec, lr, steps, seed, adapter_dir, keep_model)
    finally:
        torch.set_num_threads(threads)


def _train(task: Task, spec: Spec, lr: float, steps: int, seed: int, adapter_dir, keep_model: bool) -> Result:
    import surm_ops
    from surm_ops.adapters import rmlora

    t_start = time.perf_counter()
    model = task.build(spec, seed)
    encoder = model.encoder
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    is_rm = spec.method == "rmlora"
    masker = rmlora.RandomMasker(encoder, torch.Generator().manual_seed(seed)) if is_rm else None

    times: list[float] = []
    losses: list[float] = []
    model.train(False)  # frozen encoder without dropout; nothing here depends on train mode
    with PeakMemory() as mem:
        for idx in task.batches(steps, seed):
            t0 = time.perf_counter()
            loss = task.loss(model, idx)
            total = rmlora.regularized_loss(loss, encoder) if is_rm else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            if masker is not None:
                masker.apply()
            opt.step()
            if masker is not None:
                masker.after_step()
            sched.step()
            times.append(time.perf_counter() - t0)
            losses.append(loss.item())

    val_acc, test_acc = task.accuracy(model, "val"), task.accuracy(model, "test")
    head_params = sum(p.numel() for p in model.head.parameters())
    if spec.method is None:
        adapter_params, adapter_bytes = 0, None
    else:
        adapter_params = surm_ops.adapters.trainable_parameters(encoder)[1]
        adapter_bytes = _adapter_file_bytes(encoder, adapter_dir)
    n_targets = len(getattr(encoder, "surm_adapter_config", {}).get("targets", []))
    window = max(1, len(losses) // 10)
    return Result(
        case=task.name, label=spec.label, method=spec.method, options=dict(spec.options), targets=n_targets,
        where=", ".join(spec.targets or []), lr=lr,
        steps=steps, val_accs=[val_acc], test_accs=[test_acc], adapter_params=adapter_params, head_params=head_params,
        ms_per_step=1000 * statistics.median(times[1:] or times),
        mean_ms_per_step=1000 * statistics.mean(times[1:] or times), peak_mib=mem.mib, memory_method=mem.method,
        adapter_bytes=adapter_bytes, first_loss=statistics.mean(losses[:window]),
        last_loss=statistics.mean(losses[-window:]), seconds=time.perf_counter() - t_start,
        model=model if keep_model else None)


def run_spec(task: Task, spec: Spec, steps: int, seeds: list[int] = (0,),
             grid: tuple[float, ...] | None = None) -> Result:
    """Train ``spec`` for every seed and merge the runs into one :class:`Result` (accuracies per seed; time, memory
    and sizes from the first seed's run).

    The learning rate is the spec's own, or, with ``grid``, the one of the grid with the best validation accuracy
    averaged over the seeds (ties: the smaller rate); every (rate, seed) pair is trained once. Averaging matters:
    at the edge of stability one seed can diverge where another does not.
    """
    seeds = list(seeds)
    by_lr: dict[float, list[Result]] = {}
    for lr in sorted(grid) if grid else [spec.lr]:
        by_lr[lr] = [train(task, spec, lr, steps, seed) for seed in seeds]
    scores = {lr: statistics.mean(r.val_accs[0] for r in runs) for lr, runs in by_lr.items()}
    best = max(scores, key=lambda lr: (scores[lr], -lr))
    first, *more = by_lr[best]
    for r in more:
        first.val_accs += r.val_accs
        first.test_accs += r.test_accs
    first.seconds = sum(r.seconds for runs in by_lr.values() for r in runs)
    if grid:
        first.grid = scores
    return first
