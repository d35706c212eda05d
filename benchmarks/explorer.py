"""How fast the explorer answers a slider: 16 samples of a 128x128 image re-rendered.

Two figures on the shipped LIDC model (``pretrained:lidc-2d``) and one LIDC test slice:

- ``render``: the work behind a slider's move, in this process: the 16 kept draws turned into
  logits at new class scales and temperature, their labels, the sample grid, P(foreground) and
  the entropy maps (median of 50 moves);
- ``page``: the same move seen in a headless Chromium (Playwright): from typing a new
  temperature into the page to the new sample grid shown (median of 10 moves), which adds
  Gradio's round trip and the PNG encoding of the pictures.

    python -m benchmarks.explorer          # writes benchmarks/results/explorer.json
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks._common import benchmark_parser, lidc_dir, lidc_files, write


def main() -> None:
    benchmark_parser("explorer", __doc__).parse_args()
    from ssn.apps.explore import views_of
    from ssn.apps.explorer_core import Exploration
    from ssn.engine.checkpoints import load_run

    data_path, _ = lidc_files(lidc_dir())
    model, _ = load_run("pretrained:lidc-2d")
    image = np.load(data_path)["images"][190].astype(np.float32)[None] / 255.0
    exploration = Exploration(model, image)
    times = []
    for k in range(50):
        start = time.perf_counter()
        exploration.temperature = 0.5 + (k % 10) / 10
        exploration.class_scales = np.array([1.0, 1.0 + (k % 5) / 5])
        views_of(exploration, with_marking=False)  # what the page's slider handler computes
        times.append(time.perf_counter() - start)
    render = statistics.median(times)
    print(f"render: {render * 1000:.1f} ms median of 50 moves (16 samples of 128x128)")
    page = measure_page(data_path)
    if page is not None:
        print(f"page: {page * 1000:.0f} ms median of 10 moves, typed to shown, in headless Chromium")
    write(
        "explorer",
        {
            "render_seconds": render,
            "page_seconds": page,
            "image": "LIDC slice 190 (test split)",
            "model": "pretrained:lidc-2d",
            "samples": 16,
        },
    )


def measure_page(data_path: Path) -> float | None:
    chromium = os.environ.get("SSN_CHROMIUM") or shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if chromium is None:
        return None
    from ssn.apps.explore import explore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = explore("pretrained:lidc-2d", str(data_path), port=port, prevent_thread_lock=True)
    times = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}")
            page.wait_for_selector("#samples img", timeout=60_000)
            page.fill("#index input", "190")
            page.press("#index input", "Enter")
            page.wait_for_function("document.querySelector('#status').innerText.includes('16 samples')")
            time.sleep(1)
            box = page.locator("#temperature input[type=number]")
            for k in range(10):
                value = f"{0.5 + 0.1 * k:.1f}"
                before = page.get_attribute("#samples img", "src")
                start = time.perf_counter()
                box.fill(value)
                box.press("Enter")
                page.wait_for_function(f"document.querySelector('#samples img').src !== {before!r}")
                times.append(time.perf_counter() - start)
            browser.close()
    finally:
        app.close()
    return statistics.median(times)


if __name__ == "__main__":
    main()
