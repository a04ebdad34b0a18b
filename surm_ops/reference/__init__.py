"""The reference paths: ``fft`` (structured FFT / factored products, the CPU path and GPU fallback) and ``dense``
(materialised matrices: the semantics of every op and the test oracle)."""
