"""The web page in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium):
load the page served by ``fresnet serve``, upload a real photo, see the boxes, landmarks and the
match. SFace (a real recogniser) makes the match honest: person A is enrolled from one photo and
recognised in another taken years later. Screenshots are kept under the test's tmp_path (and, with
FRESNET_UPDATE_SCREENSHOT=1, copied to docs/images/service.png)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import reference_path

pytest.importorskip("selenium", reason="the browser test drives Chromium with selenium")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from service_process import free_port, start

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DOCS_IMAGE = Path(__file__).resolve().parents[1] / "docs" / "images" / "service.png"


def real_service_command(gallery: Path, port: int) -> list[str]:
    """``fresnet serve`` with SFace (fresnet's ONNX recogniser) and MTCNN; skips naming what is missing."""
    try:
        from fresnet.faces.recognizer import ONNXRecognizer  # noqa: F401
        from fresnet.faces.weights import sface_model

        sface = str(sface_model())
    except Exception as exc:
        pytest.skip(f"the SFace recogniser is not available here ({type(exc).__name__}: {exc})")
    try:
        import fresnet.faces.mtcnn  # noqa: F401
        from fresnet.faces.weights import mtcnn_weights

        mtcnn_weights()
        detector = "mtcnn"
    except Exception as exc:
        oracle = Path(sys.prefix) / "oracles" / "scrfd.onnx"
        if not oracle.is_file():
            pytest.skip(f"no face detector available ({type(exc).__name__}: {exc})")
        detector = str(oracle)
    return [sys.executable, "-m", "fresnet", "serve", "--gallery", str(gallery), "--model", sface, "--detector",
            detector, "--port", str(port)]


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Chromium is absent: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.reference
@pytest.mark.slow
def test_the_page_finds_a_person_enrolled_from_another_photo(tmp_path, browser):
    photos = reference_path("faces", "photos")
    port = free_port()
    server = start(real_service_command(tmp_path / "people.db", port), port, timeout=240)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=120) as http:
            for name, photo in (("Person A", "person_a_1.jpg"), ("Person B", "person_b_1.jpg"),
                                ("Impostor", "impostor_1.jpg")):
                answer = http.post("/v1/galleries/people/identities", data={"name": name},
                                   files=[("photos", (photo, (photos / photo).read_bytes(), "image/jpeg"))])
                assert answer.status_code == 201, answer.text
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        browser.get(base + "/")
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery option"))
        browser.save_screenshot(str(tmp_path / "page-loaded.png"))
        browser.find_element(By.ID, "file").send_keys(str(photos / "person_a_2.jpg"))
        WebDriverWait(browser, 120).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "searched", \
            browser.find_element(By.ID, "status").text
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .face")
        assert len(cards) == 1
        names = [e.text for e in cards[0].find_elements(By.CSS_SELECTOR, ".match-name")]
        assert names[0] == "Person A", names
        scores = [float(e.text) for e in cards[0].find_elements(By.CSS_SELECTOR, ".score")]
        assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
        # the canvas holds the photo with the box drawn: not blank
        drawn = browser.execute_script(
            "const c = document.getElementById('canvas'); const d = c.getContext('2d').getImageData(0, 0, c.width, "
            "c.height).data; let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return [c.width, s];")
        assert drawn[0] > 100 and drawn[1] > 0
        shot = tmp_path / "page-match.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("FRESNET_UPDATE_SCREENSHOT") == "1":
            DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, DOCS_IMAGE)
        # enrol the face from the page under a new name, and the page finds it again
        card = browser.find_elements(By.CSS_SELECTOR, "#results .face")[0]
        card.find_element(By.CSS_SELECTOR, "input").send_keys("Person A (2025)")
        browser.execute_script("document.body.dataset.state = ''")
        card.find_element(By.CSS_SELECTOR, "button").click()
        WebDriverWait(browser, 120).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "searched")
        first = browser.find_elements(By.CSS_SELECTOR, "#results .face .match-name")[0].text
        assert first == "Person A (2025)"
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/v1/galleries/people/identities/Person A (2025)").json()["samples"]
    finally:
        server.kill()
        server.wait()
