"""`ipl ui --source toy` in a real browser (headless Chromium driven by Selenium), as a person would use it: type a
target, run a 2 + 2 iteration adaptation, wait for its grid, open the run in the gallery, sample two seeds and
check the page shows exactly the PNGs `ipl sample` writes for them; path traversal is refused by the page and by
Gradio's file route.

Needs Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver) and the `ui` + `test`
extras (gradio, selenium). Nothing downloads a browser: Selenium is given the system driver. Without them the test
skips, saying so; with IPL_REQUIRE_BROWSER=1 (set by .ci/run) it fails instead. IPL_UPDATE_SCREENSHOT=1 rewrites
docs/images/ui.png with the screenshot it takes.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_world import run_main

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "images" / "ui.png"
INSTALL = ("apt-get install chromium chromium-driver (Debian/Ubuntu; sudo if not root) and "
           "pip install -e '.[test,ui]'")
TARGET = "on a dark background"
RUN = "toy-on-a-dark-background"


def _missing(why: str):
    if os.environ.get("IPL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"IPL_REQUIRE_BROWSER=1 but {why}; install it: {INSTALL}", pytrace=False)
    pytest.skip(f"browser test skipped: {why}; to run it: {INSTALL}")


def _find(*names: str) -> str | None:
    for name in names:
        hit = shutil.which(name) if "/" not in name else (name if Path(name).is_file() else None)
        if hit:
            return hit
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def browser_tools():
    try:
        import gradio  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as e:
        _missing(f"a Python package is missing ({e.name})")
    chromium = _find("chromium", "chromium-browser", "/usr/lib/chromium/chromium")
    driver = _find("chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
    if chromium is None or driver is None:
        _missing("Chromium or its driver is not installed (chromium, chromedriver)")
    return chromium, driver


@pytest.fixture(scope="module")
def server(browser_tools, tmp_path_factory):
    """`ipl ui --source toy` on a free port, with its runs folder and model cache in a temporary folder."""
    root = tmp_path_factory.mktemp("ui")
    port = _free_port()
    env = dict(os.environ, IPL_HOME=str(root / "home"), IPL_OFFLINE="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ipl.commands.cli", "ui", "--source", "toy", "--runs",
                             str(root / "runs"), "--port", str(port), "--device", "cpu"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"ipl ui exited {proc.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
        try:
            if _get(url, timeout=2)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"ipl ui did not answer on {url}:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.3)
    yield {"url": url, "root": root, "runs": root / "runs", "env": env, "proc": proc}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def driver(browser_tools):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_tools
    os.environ.setdefault("SE_OFFLINE", "true")   # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _wait(drv, condition, timeout: float, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out after {timeout} s waiting for {what}", pytrace=False)


def _css(drv, selector: str):
    from selenium.webdriver.common.by import By

    return drv.find_elements(By.CSS_SELECTOR, selector)


def _type(drv, selector: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = _wait(drv, lambda d: (_css(d, selector) or [None])[0], 30, selector)
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)
    box.send_keys(Keys.TAB)   # Gradio takes a textbox's value when it loses focus


def _text(drv, selector: str) -> str:
    found = _css(drv, selector)
    return found[0].text if found else ""


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.browser
def test_adapt_sample_and_refuse_traversal_in_a_browser(server, driver, tmp_path, monkeypatch, capsys):
    from selenium.webdriver.common.by import By

    drv, url = driver, server["url"]
    drv.get(url)
    _wait(drv, lambda d: _css(d, "#targets textarea"), 60, "the Adapt tab")

    # Adapt: a target, 2 + 2 iterations, Start; wait for the run to complete and its grid to show.
    _type(drv, "#targets textarea", TARGET)
    _type(drv, "#iters_prompt textarea", "2")
    _type(drv, "#iters textarea", "2")
    _css(drv, "#start")[0].click()
    _wait(drv, lambda d: "Done" in _text(d, "#adapt_status"), 90, "the run to complete (#adapt_status)")
    assert "complete" in _text(drv, "#adapt_status")
    _wait(drv, lambda d: _css(d, "#adapt_grid img"), 30, "the run's grid on the Adapt tab")
    grid_src = _css(drv, "#adapt_grid img")[0].get_attribute("src")
    status, body = _get(grid_src)
    run = server["runs"] / RUN
    assert status == 200 and np.array_equal(_png(body), _png((run / "samples" / "final.png").read_bytes()))
    shot = tmp_path / "ui.png"
    drv.save_screenshot(str(shot))

    # Path traversal through the page: a run name leaving the runs folder is refused, nothing is written.
    _css(drv, "#more button.label-wrap")[0].click()
    _type(drv, "#run_name textarea", "../outside")
    for _ in range(3):   # a click while the previous Start's follow-up refresh is pending is ignored by Gradio
        _css(drv, "#start")[0].click()
        try:
            _wait(drv, lambda d: "Refused" in _text(d, "#adapt_status"), 10, "the refusal of run name ../outside")
            break
        except pytest.fail.Exception:
            continue
    assert "Refused" in _text(drv, "#adapt_status")
    assert "'..'" in _text(drv, "#adapt_status") or "../outside" in _text(drv, "#adapt_status")
    assert not (server["runs"].parent / "outside").exists()

    # Runs: open the run from the gallery, sample seeds 0 and 1.
    drv.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Runs')]").click()
    _css(drv, "#refresh")[0].click()
    thumb = _wait(drv, lambda d: (_css(d, "#runs_gallery button img, #runs_gallery img") or [None])[0], 30,
                  "the run in the gallery")
    thumb.click()
    _wait(drv, lambda d: RUN in _text(d, "#run_details"), 30, "the run's details after picking it")
    _type(drv, "#seeds textarea", "0,1")
    _css(drv, "#sample")[0].click()
    _wait(drv, lambda d: len(_css(d, "#samples img")) >= 2, 60, "two sampled images")
    srcs = [img.get_attribute("src") for img in _css(drv, "#samples img")][:2]

    # The same seeds through `ipl sample`: the page shows exactly these PNGs.
    out = tmp_path / "cli"
    code, err = run_main(monkeypatch, capsys, ["sample", run, "--seeds", "0,1", "--outdir", out])
    assert code == 0, err
    for src, seed in zip(srcs, (0, 1)):
        status, body = _get(src)
        assert status == 200, src
        expected = _png((out / f"seed{seed:04d}.png").read_bytes())
        got = _png(body)
        assert got.shape == expected.shape and np.array_equal(got, expected), f"seed {seed} differs from ipl sample"

    # Path traversal through Gradio's file route: outside files, and the runs folder itself, are not served.
    base = url.rstrip("/")
    config = run / "config.json"
    for path in ("/etc/passwd", f"{server['runs']}/../../../../etc/passwd", str(config),
                 urllib.parse.quote(f"{server['runs']}/.ipl-ui/../{RUN}/config.json")):
        for route in ("/gradio_api/file=", "/file="):
            status, body = _get(base + route + path)
            assert status in (403, 404), (route, path, status)
            assert b"root:" not in body and b"settings" not in body

    if os.environ.get("IPL_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    assert shot.stat().st_size > 10_000
