"""The Gradio Space: its API through gradio_client, a burst of concurrent requests, and a real browser."""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio = pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
from gradio_client import Client  # noqa: E402

from .servers import free_port, wait_until_serving  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "spaces_demo" / "app.py"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def app_module_from_path():
    """`spaces_demo/app.py` imported as the module `app`."""
    sys.path.insert(0, str(APP.parent))
    try:
        import app

        return app
    finally:
        sys.path.remove(str(APP.parent))


@pytest.fixture(scope="module")
def app_module():
    return app_module_from_path()


@pytest.fixture(scope="module")
def served(app_module, pipe):
    demo = app_module.build_demo(pipe)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


def test_api_generate_returns_the_final_image(served, pipe):
    client = Client(served, verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/generate_progressive"} <= set(endpoints)
    assert len(endpoints["/generate"]["parameters"]) == 4  # class, guidance, seed, tokens
    first = Image.open(client.predict("3", 1.5, 7, 32, api_name="/generate"))
    again = Image.open(client.predict("3", 1.5, 7, 32, api_name="/generate"))
    assert first.size == (256, 256) and first.tobytes() == again.tobytes()
    expected = pipe(
        class_labels=[3], guidance_scale=1.5, num_tokens=32, generator=__import__("torch").Generator().manual_seed(7)
    ).images[0]
    assert first.resize((64, 64), Image.NEAREST).tobytes() == expected.tobytes()


def test_progressive_stream_yields_every_step(served, pipe):
    job = Client(served, verbose=False).submit("5", 2.0, 1, 12, api_name="/generate_progressive")
    job.result(timeout=120)
    outputs = job.outputs()
    assert len(outputs) == len(pipe.prefix_lengths(12)) == 6
    assert len(outputs[-1][1]) == 6  # the gallery holds every step


def test_input_validation_reaches_the_user(served):
    client = Client(served, verbose=False)
    for args, message in (
        (("zebra", 1.5, 0, 32), "unknown class name 'zebra'"),
        (("3", 1.5, 0, 5), r"5 is not in the list of choices: \[1, 2, 3, 4, 8"),
        (("3", 0.5, 0, 32), r"Value 0\.5 is less than minimum value 1\.0"),  # gradio's slider bound
        (("3", 1.5, -1, 32), r"seed=-1 is out of range; expected a seed in \[0, 9223372036854775807\]"),  # ours
    ):
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/generate")


def test_twenty_concurrent_requests_all_complete(served):
    client = Client(served, verbose=False)
    jobs = [client.submit(str(i % 10), 1.5, i, 8, api_name="/generate") for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        paths = list(pool.map(lambda job: job.result(timeout=300), jobs))
    assert len(paths) == 20 and all(Image.open(p).size == (256, 256) for p in paths)
    assert Image.open(client.predict("1", 1.5, 0, 8, api_name="/generate")).size == (256, 256)  # still serving


def test_page_in_a_real_browser(converted_dir, tmp_path):
    """Served as a Space would be: no DETAILFLOW_MODEL, so on the embedded model (the converted
    fixture only where this installation has none)."""
    import detailflow_hf
    from detailflow_hf import DetailFlowPipeline

    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium")
        pytest.skip("Debian chromium is not installed")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DETAILFLOW_MODEL"}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    if detailflow_hf.DEFAULT_MODEL is None:
        env["DETAILFLOW_MODEL"] = str(converted_dir)
    model = DetailFlowPipeline.from_pretrained(env.get("DETAILFLOW_MODEL") or detailflow_hf.DEFAULT_MODEL)
    steps, first_class = len(model.prefix_lengths()), model.labels.names()[0] if model.labels.names() else "0"
    keep_choices = [0, *model.prefix_lengths()]
    server = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, server, lambda: server.stdout.read().decode())
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                ],
            )
            page = browser.new_page()
            page.goto(url, wait_until="networkidle")
            page.click("#generate")
            page.wait_for_selector("#result img", timeout=120_000)
            assert first_class in page.content()
            page.wait_for_function(f"document.querySelectorAll('#gallery img').length >= {steps}", timeout=120_000)
            src = page.get_attribute("#result img", "src")
            page.locator("#result img").screenshot(path=str(tmp_path / "result.png"))

            # second tab: start from an example image, keep its coarse tokens, regrow the detail
            page.get_by_role("tab", name="From an image").click()
            page.locator("button.gallery-item").last.click()
            page.wait_for_selector("#vary-input img", timeout=30_000)
            page.click("#vary")
            kept = max(k for k in keep_choices if k <= keep_choices[-1] // 2)  # the slider's default: half the tokens
            frames = (1 if kept else 0) + len([k for k in keep_choices[1:] if k > kept])
            page.wait_for_function(
                f"document.querySelectorAll('#vary-gallery img').length >= {frames}", timeout=120_000
            )
            page.locator("#vary-result img").screenshot(path=str(tmp_path / "vary.png"))
            assert f"keeps <strong>{kept} tokens</strong>" in page.content()
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            if os.environ.get("DETAILFLOW_SCREENSHOT"):
                shutil.copy(tmp_path / "demo.png", os.environ["DETAILFLOW_SCREENSHOT"])
            browser.close()
        assert src and ("/file=" in src or "gradio_api" in src or src.startswith("data:"))
        for shot in ("result.png", "vary.png"):  # a generated picture, not the empty page background
            pixels = np.asarray(Image.open(tmp_path / shot).convert("RGB"), dtype=np.float32)
            assert (
                pixels.shape[0] >= 200
                and pixels.std() > 10
                and (np.abs(pixels - pixels[0, 0]).max(-1) > 30).mean() > 0.05
            ), shot
    finally:
        server.terminate()
        server.wait(timeout=30)
