"""GUI tests: offscreen Qt, private settings, and no thread left behind.

``QT_QPA_PLATFORM`` must be set before PySide6 is first imported, hence at the
top of this file (the root conftest sets it too; this one stands alone).
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QCoreApplication, QSettings, QThread  # noqa: E402


@pytest.fixture(autouse=True)
def _private_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings, data, cache, QSettings and the API key store all point into tmp_path."""
    for name in ("NMID_CONFIG_DIR", "NMID_DATA_DIR", "NMID_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    qsettings_dir = tmp_path / "qsettings"
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
        QSettings.setPath(QSettings.Format.IniFormat, scope, str(qsettings_dir))
    # Never touch the developer's OS keyring: the key goes to the private file in tmp_path.
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        yield
    finally:
        keyring.set_keyring(previous)


# Threads a failed test left running are kept referenced: destroying a running
# QThread aborts the whole process, which would hide the failure's message.
_LEAKED: list[QThread] = []


@pytest.fixture(autouse=True)
def _no_dangling_qthreads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[QThread]]:
    """Fail a test that leaves a QThread running (after napari's ``_dangling_qthreads``)."""
    started: list[QThread] = []
    original_start = QThread.start

    def tracking_start(self: QThread, *args: object) -> None:
        started.append(self)
        original_start(self, *args)

    monkeypatch.setattr(QThread, "start", tracking_start)
    yield started
    if QCoreApplication.instance() is not None:
        QCoreApplication.processEvents()
    dangling = []
    for thread in started:
        try:
            if thread.isRunning():
                dangling.append(thread.objectName() or repr(thread))
                _LEAKED.append(thread)
        except RuntimeError:  # the C++ object is gone: it certainly is not running
            continue
    if dangling:
        pytest.fail(f"test left {len(dangling)} QThread(s) running: {', '.join(dangling)}")


# ----------------------------------------------------------------------------- shared test data
# A small labelled library (5 classes x 6 demo images) with its embeddings and index made once
# per session; each test gets its own copy. The encoder is loaded once and shared.

PER_CLASS = 6
IMAGE_SIZE = 128


@pytest.fixture(scope="session")
def torch_single_thread() -> None:
    """One torch thread: on a loaded 2-core machine more threads only spin against each other."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_encoder(torch_single_thread: None):
    """The default encoder's base network (one view, 8x cheaper than +d4), loaded once for every GUI test."""
    from nmid_desktop.ml.encoders import load_encoder

    return load_encoder("efficientnet-lite0-imagenet", device="cpu")


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo images in ImageFolder layout (class folders)."""
    from nmid_desktop.core.demo import generate_demo
    from nmid_desktop.core.jobs import run_job

    folder = tmp_path_factory.mktemp("demo-images")
    run_job(generate_demo(folder, per_class=PER_CLASS, seed=0, size=IMAGE_SIZE))
    return folder


@pytest.fixture(scope="session")
def query_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Unlabelled images to drop, two per class, not in the library (another seed)."""
    from nmid_desktop.core.demo import generate_demo
    from nmid_desktop.core.jobs import run_job

    folder = tmp_path_factory.mktemp("query-images")
    out: dict[str, list[Path]] = {}
    for path, label in run_job(generate_demo(folder, per_class=2, seed=99, size=IMAGE_SIZE)):
        out.setdefault(label, []).append(path)
    return out


@pytest.fixture(scope="session")
def prepared_library(tmp_path_factory: pytest.TempPathFactory, demo_images: Path, shared_encoder) -> Path:
    """A labelled library with embeddings cached and the index built."""
    from nmid_desktop.core.config import Settings
    from nmid_desktop.core.importer import import_folder
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.core.store import open_library
    from nmid_desktop.predict.service import Classifier

    folder = tmp_path_factory.mktemp("prepared") / "library"
    with open_library(folder) as store:
        run_job(import_folder(store, demo_images, layout="imagefolder"))
        run_job(Classifier(store, Settings(), encoder=shared_encoder).prepare())
    return folder


@pytest.fixture
def library(prepared_library: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared library."""
    import shutil

    target = tmp_path / "library"
    shutil.copytree(prepared_library, target)
    return target


@pytest.fixture
def make_window(qtbot, shared_encoder):  # noqa: ANN001, ANN201
    """Open main windows on a library; every window is closed (and its threads joined) at teardown."""
    from nmid_desktop.core.config import Settings
    from nmid_desktop.qt.app import make_application
    from nmid_desktop.qt.main_window import MainWindow

    make_application()
    windows = []

    def make(library: Path, settings: Settings | None = None, **kwargs):  # noqa: ANN003, ANN202
        window = MainWindow(library, settings or Settings(), encoder=shared_encoder, **kwargs)
        window.shutdown_wait_s = 120.0  # the teardown below asserts every thread ended: let slow ones end
        windows.append(window)
        window.resize(1400, 900)
        window.show()
        qtbot.waitExposed(window)
        window.activateWindow()
        window.raise_()
        # Window shortcuts (Enter, 1-9, Ctrl+Z) only reach the active window.
        qtbot.waitUntil(window.isActiveWindow, timeout=10_000)

        def ready() -> bool:
            if window.last_error:
                raise AssertionError(window.last_error)
            return window.ctx.status is not None and window.ctx.status.encoder != ""

        try:
            qtbot.waitUntil(ready, timeout=60_000)
        except Exception:
            import faulthandler
            import sys

            faulthandler.dump_traceback(file=sys.stderr)
            raise AssertionError(f"window not ready; running jobs {window.jobs.running_kinds()}, status {window.ctx.status}")
        return window

    yield make
    for window in windows:
        window.close()
        assert window.jobs.thread_count() == 0


@pytest.fixture
def fake_endpoint():  # noqa: ANN201
    """The multimodal tests' OpenAI-compatible server on 127.0.0.1, with prices for its models."""
    import importlib.util
    import sys

    lmm_tests = Path(__file__).resolve().parents[1] / "lmm"
    if str(lmm_tests) not in sys.path:
        sys.path.insert(0, str(lmm_tests))
    spec = importlib.util.find_spec("fake_openai_server")
    if spec is None:
        raise FileNotFoundError(f"fake_openai_server.py missing from {lmm_tests}")
    from fake_openai_server import FakeOpenAIServer

    from nmid_desktop.core.paths import config_dir

    prices = config_dir() / "prices.toml"
    prices.parent.mkdir(parents=True, exist_ok=True)
    prices.write_text(
        '[chat."vision-1"]\ninput_per_1m = 1.0\noutput_per_1m = 4.0\nimage_tokens = "tiles"\n\n'
        '[image."image-1"]\nper_image = { default = 0.05 }\n',
        encoding="utf-8",
    )
    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture
def model_settings(fake_endpoint):  # noqa: ANN001, ANN201
    """Settings that use the fake endpoint as the model, preferred over the local predictor."""
    from nmid_desktop.core.config import Settings

    settings = Settings()
    settings.predictor = "both"
    settings.lmm.base_url = fake_endpoint.base_url
    settings.lmm.vision_model = "vision-1"
    settings.lmm.text_model = "vision-1"
    settings.lmm.image_model = "image-1"
    settings.lmm.timeout_s = 5.0
    settings.lmm.max_retries = 1
    settings.lmm.image_max_side = 128
    return settings
