import os
import zlib

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors through the interpreter; it must be set before any @triton.jit
# runs. With one, Triton compiles for it and the gpu-marked tests check the compiled kernels (the CPU-tensor
# triton tests then skip: tests/triton_mode.py). TRITON_INTERPRET set by the caller wins either way.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seeded(request):
    """Each test draws from its own seed (from its id), so no value depends on which tests ran before it."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def poisoned_allocations():
    """Fresh allocations come back full of NaN, so an output element a backend forgets to write fails the test:
    torch's own switch, which fills at::empty's memory (C++ and CUDA allocations included, whatever the caching
    allocator hands out), in deterministic mode with warnings only."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill
