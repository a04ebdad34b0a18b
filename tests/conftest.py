import os

# Triton kernels run on CPU tensors through the interpreter; it must be set before any @triton.jit runs.
os.environ.setdefault("TRITON_INTERPRET", "1")
