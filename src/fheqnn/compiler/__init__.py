"""Our compiler: QCDQ ONNX -> integer IR -> passes -> Concrete circuit, with the bit-width check."""
