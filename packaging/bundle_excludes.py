"""What the lab-PC bundle leaves out, kept apart from the spec so a test can read it cheaply.

The bundle runs inference on ONNX Runtime, so PyTorch and everything that comes only with it
stays out: a CUDA torch build alone drags 3.2 GB of NVIDIA libraries onto PCs without a GPU.
``onnx`` (the Python package) is only needed to export a graph; the bundle ships its graph
ready-made, and the graph loader only reads the file's bytes and hands them to ONNX Runtime.
"""

from __future__ import annotations

# Top-level packages never collected. Anything under them (``torch.nn``...) goes too.
TORCH_FAMILY = (
    "torch", "torchvision", "torchaudio", "triton", "nvidia", "timm", "functorch", "torchgen",
    "efficientnet_pytorch",
)
EXPORT_ONLY = ("onnx", "onnxscript", "onnx_ir", "onnxconverter_common")
# Heavy optional parts the window and the lab-PC commands do not use.
OPTIONAL = (
    "ray",  # `nmid embed --engine ray` only (the cluster extra)
    "matplotlib", "tkinter", "IPython", "jupyter", "notebook", "pytest", "hypothesis",
    "faiss", "datasets", "pyarrow", "fsspec", "polars", "tensorboard", "sympy", "networkx", "jinja2",
)
# Qt modules the window does not use (it imports QtCore, QtGui, QtWidgets; QtSvg draws its icon).
QT_UNUSED = (
    "PySide6.QtWebEngineCore", "PySide6.QtWebEngineWidgets", "PySide6.QtWebEngineQuick",
    "PySide6.QtWebChannel", "PySide6.QtWebSockets", "PySide6.QtWebView",
    "PySide6.Qt3DCore", "PySide6.Qt3DRender", "PySide6.Qt3DInput", "PySide6.Qt3DLogic",
    "PySide6.Qt3DAnimation", "PySide6.Qt3DExtras",
    "PySide6.QtMultimedia", "PySide6.QtMultimediaWidgets", "PySide6.QtSpatialAudio",
    "PySide6.QtQml", "PySide6.QtQuick", "PySide6.QtQuickWidgets", "PySide6.QtQuickControls2",
    "PySide6.QtQuick3D", "PySide6.QtCharts", "PySide6.QtDataVisualization", "PySide6.QtGraphs",
    "PySide6.QtPdf", "PySide6.QtPdfWidgets", "PySide6.QtDesigner", "PySide6.QtHelp",
    "PySide6.QtBluetooth", "PySide6.QtNfc", "PySide6.QtPositioning", "PySide6.QtLocation",
    "PySide6.QtSensors", "PySide6.QtSerialPort", "PySide6.QtSerialBus", "PySide6.QtRemoteObjects",
    "PySide6.QtScxml", "PySide6.QtStateMachine", "PySide6.QtTextToSpeech", "PySide6.QtSql",
    "PySide6.QtTest", "PySide6.QtOpenGL", "PySide6.QtOpenGLWidgets", "PySide6.QtNetworkAuth",
    "PySide6.QtHttpServer", "PySide6.QtUiTools", "PySide6.QtXml", "PySide6.QtConcurrent",
    "PySide6.QtDBus", "PySide6.QtAxContainer", "PySide6.QtCanvasPainter",
)
EXCLUDES = TORCH_FAMILY + EXPORT_ONLY + OPTIONAL + QT_UNUSED

# Shared-library file names that must never end up in the folder (checked after collection
# too: a hook may add binaries by path, outside the module graph).
FORBIDDEN_BINARY_PREFIXES = ("libtorch", "libc10", "libcudnn", "libcublas", "libnccl", "libcusparse",
                             "libcufft", "libcurand", "libnvrtc", "libnvJitLink", "libtriton",
                             "libQt6WebEngine", "libQt6Quick", "libQt6Qml", "libQt63D", "libQt6Multimedia",
                             "libQt6Pdf")


def is_excluded(module: str) -> bool:
    """True when ``module`` (dotted name) lies in one of :data:`EXCLUDES`."""
    return any(module == name or module.startswith(name + ".") for name in EXCLUDES)


def forbidden_binary(dest_name: str) -> bool:
    """True when a collected binary's destination file name is one the bundle must not hold."""
    base = dest_name.replace("\\", "/").rsplit("/", 1)[-1]
    return any(base.startswith(prefix) for prefix in FORBIDDEN_BINARY_PREFIXES)
