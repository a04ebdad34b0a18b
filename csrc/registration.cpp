// Operator schemas of the compiled extension, in the namespace surm_ops_C (the Python-level ops are surm_ops::,
// which call these through surm_ops/ops/_cuda.py). Device implementations live beside their kernels
// (conv/conv_kernels.cu: TORCH_LIBRARY_IMPL(surm_ops_C, CUDA, m)).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(surm_ops_C, m) {
  // y (rows, p*out_len) = the (p x q) block grid of length-L cyclic convolutions of x (rows, q*in_len), with
  // spec (p, q, L, 2) the full float32 DFT of each real kernel; zero-padded inputs, truncated outputs.
  m.def("conv_forward(Tensor x, Tensor spec, int in_len, int out_len) -> Tensor");
  // Partial sums over row chunks of conj(rfft(x_Q, L)) * rfft(grad_P, L): (chunks, p, q, L//2 + 1, 2) float32.
  m.def("conv_grad_spectrum(Tensor x, Tensor grad, int length, int in_len, int out_len) -> Tensor");
}

// The module object Python imports (surm_ops._C, or the JIT build's name); importing it runs the registrations
// above. TORCH_EXTENSION_NAME is set by torch.utils.cpp_extension for both the setup.py and the JIT build.
#ifndef TORCH_EXTENSION_NAME
#error "TORCH_EXTENSION_NAME must be defined (torch.utils.cpp_extension does)"
#endif
#define SURM_CONCAT_(a, b) a##b
#define SURM_CONCAT(a, b) SURM_CONCAT_(a, b)
#define SURM_STR_(a) #a
#define SURM_STR(a) SURM_STR_(a)

extern "C" PyMODINIT_FUNC SURM_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, SURM_STR(TORCH_EXTENSION_NAME), nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
