"""Save PNG screenshots of the window's main states to ``docs/screenshots/``.

    python scripts/screenshots.py [--out docs/screenshots] [--endpoint URL]

States: ``empty`` (no image yet), ``classify`` (an image with its demonstrations
and prediction), ``description`` (the structured-description tab), ``library``
(the thumbnail browser in review order) and ``training`` (SimCLR training with
its live loss curve). Everything runs offscreen on a fresh demo library in a
temporary folder; the user's settings and libraries are not touched.

The description needs a model endpoint. With ``--endpoint`` it comes from that
OpenAI-compatible server (key from ``OPENAI_API_KEY``); without, from the test
suite's local fake server answering with a scripted description, so the picture
shows the tab's layout, not a real model's words.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _scripted_description() -> str:
    """A description in the question set's shape, worded for a demo 'particles' image (illustration only)."""
    from nmid_desktop.lmm.questions import load_question_set

    qs = load_question_set()
    canned = [
        "Scanning electron micrograph of roughly spherical nanoparticles on a flat substrate; scale bar 200 nm.",
        "Round particles, single phase, fairly uniform shape.",
        "Diameters about 20-60 nm; particles touch in small clusters, some isolated.",
        "Smooth particle surfaces, no visible pores; substrate slightly textured.",
        "Uniform bright contrast on particles (edge effect); no element labels.",
        "Particle-particle contacts without necks; sharp boundaries to the substrate.",
        "Dry sample on a substrate; no solvent or debris visible.",
        "Secondary-electron imaging, mild noise, no obvious post-processing.",
        "Static structure; high surface area suggests catalytic or sensing use.",
        "Looks like a real sample (noise, drift), not a rendering.",
    ]
    groups = []
    for g, (_, questions) in enumerate(qs.groups, start=1):
        answers = [{"question": q, "answer": canned[(g - 1) % len(canned)] if q == 1 else "See above; nothing further visible."}
                   for q in range(1, len(questions) + 1)]
        groups.append({"group": g, "reasoning": "Looking at the image region by region.", "answers": answers})
    return json.dumps({"groups": groups})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--endpoint", default="", help="OpenAI-compatible base URL for the description")
    parser.add_argument("--per-class", type=int, default=24)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="nmid-shots-"))
    for name in ("NMID_CONFIG_DIR", "NMID_DATA_DIR", "NMID_CACHE_DIR"):
        os.environ[name] = str(work / name.lower())
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(REPO / "tests" / "lmm"))

    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from nmid_desktop.core.config import Settings
    from nmid_desktop.core.demo import generate_demo
    from nmid_desktop.core.importer import import_folder
    from nmid_desktop.core.jobs import run_job
    from nmid_desktop.core.store import open_library
    from nmid_desktop.qt.app import make_application
    from nmid_desktop.qt.event_loop import spin, wait_until
    from nmid_desktop.qt.main_window import MainWindow

    images = work / "demo"
    run_job(generate_demo(images, per_class=args.per_class, seed=0, size=256))
    queries = run_job(generate_demo(work / "queries", per_class=3, seed=123, size=256))
    library = work / "library"
    with open_library(library) as store:
        run_job(import_folder(store, images, layout="imagefolder"))

    server = None
    settings = Settings()
    settings.predictor = "local"
    if args.endpoint:
        settings.lmm.base_url = args.endpoint
    else:
        from fake_openai_server import FakeOpenAIServer, chat_reply

        server = FakeOpenAIServer().start()
        text = _scripted_description()
        server.chat_default = lambda req: chat_reply(text, model="vision-1")
        settings.lmm.base_url = server.base_url
        settings.lmm.vision_model = "vision-1"
        settings.lmm.image_model = "image-1"
        prices = Path(os.environ["NMID_CONFIG_DIR"]) / "prices.toml"
        prices.parent.mkdir(parents=True, exist_ok=True)
        prices.write_text('[chat."vision-1"]\ninput_per_1m = 0.4\noutput_per_1m = 1.6\n', encoding="utf-8")

    app = make_application()  # noqa: F841 - the reference keeps the QApplication alive
    window = MainWindow(library, settings)
    window.resize(1500, 940)
    window.show()
    args.out.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        spin(0.4)
        path = args.out / f"{name}.png"
        window.grab().save(str(path), "PNG", 0)  # 0: smallest file (strongest compression)
        print(f"saved {path}")

    try:
        wait_until(lambda: window.ctx.status is not None and window.ctx.status.encoder, 600, "the classifier")
        shot("empty")

        # A particles image with a data bar, so the crop overlay shows.
        from nmid_desktop.core.databar import find_micrograph_box
        from nmid_desktop.core.images import read_image

        candidates = [p for p, label in queries if label == "particles"]
        with_bar = [p for p in candidates if find_micrograph_box(read_image(p).view8)[3] < 256]
        particles = (with_bar or candidates)[0]
        window.open_paths([particles])
        wait_until(lambda: window.current is not None, 300, "the demonstrations")
        shot("classify")

        window.page.side_tabs.setCurrentWidget(window.description)
        wait_until(lambda: window.description.describe_button.isEnabled(), 60, "the endpoint check")
        window.description.describe()
        wait_until(lambda: window.description.table.rowCount() > 0, 300, "the description")
        shot("description")
        window.page.side_tabs.setCurrentIndex(0)

        # A few corrections first, so the library shows accepted, pending and unlabelled images.
        others = [p for p, label in queries if p != particles]
        window.batch.label_check.setChecked(True)
        folder = work / "batch"
        folder.mkdir()
        for path in others:
            (folder / path.name).write_bytes(path.read_bytes())
        handle = window.batch.start(folder)
        wait_until(lambda: not handle.running, 600, "the batch")
        window.tabs.setCurrentWidget(window.browser)
        window.browser.refresh()
        wait_until(lambda: window.browser.model.rowCount() > 0, 120, "the library rows")
        wait_until(lambda: window.browser.model.cached_thumbnails >= min(40, window.browser.model.rowCount()), 120,
              "the thumbnails")
        shot("library")

        window.tabs.setCurrentWidget(window.training)
        window.training.preset.setCurrentIndex(window.training.preset.findData("vit-scratch"))
        window.training.epochs.setValue(8)
        window.training.batch.setValue(32)
        window.training.use_check.setChecked(False)
        training = window.training.start()
        wait_until(lambda: len(window.training.curve.series["train"]) >= 5 or not training.running, 1800, "training epochs")
        shot("training")
        window.training.cancel()
        wait_until(lambda: not training.running, 600, "training to stop")
    finally:
        window.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
