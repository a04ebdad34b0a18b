import os

import torch

# Without a GPU, Triton kernels run on CPU tensors through the interpreter; it must be set before any @triton.jit
# runs. With one, Triton compiles for it and the gpu-marked tests check the compiled kernels (the CPU-tensor
# triton tests then skip: tests/triton_mode.py). TRITON_INTERPRET set by the caller wins either way.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
