"""Torch-free inference: pre-processing in numpy/Pillow and encoders on ONNX Runtime.

Nothing here imports torch at import time, so a lab PC without PyTorch (or a bundle that
leaves it out) can embed and classify. :func:`nmid_desktop.inference.loader.load_encoder`
picks the engine (``auto``: ONNX Runtime on the CPU, PyTorch where a CUDA GPU is usable).
"""
