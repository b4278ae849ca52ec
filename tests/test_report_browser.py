"""`wsss-label report` in a real browser: Debian's headless Chromium, driven by Selenium
through Debian's chromedriver, opens index.html from disk (file://), counts the images,
sorts, filters by a class, steps through the full-size view with the arrow keys and keeps
screenshots in tests/artifacts/report-browser/.

Selenium rather than Playwright: Debian builds chromium-driver from the same source as
chromium, so driver and browser always match, and nothing is downloaded (Playwright's
client pins its own Chromium revision and is tested against that one only).

Skipped, with the reason, where /usr/bin/chromium, /usr/bin/chromedriver or the selenium
package is missing (`apt-get install chromium chromium-driver`; .ci/run does it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from clipseg_cli.io.masks import save_mask
from clipseg_cli.report import build
from tests.test_report_data import fake_run

CHROMIUM = os.environ.get("WSSS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("WSSS_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "report-browser"
CHROME_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,900",
)


def _browser_missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"headless Chromium test needs {path} (apt-get install chromium chromium-driver; missing {package})"
    if importlib.util.find_spec("selenium") is None:
        return "headless Chromium test needs the selenium package (pip install -e '.[test]')"
    return None


pytestmark = pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    except WebDriverException as exc:  # e.g. a chromium that cannot start in this container
        pytest.skip(f"headless Chromium did not start: {str(exc).splitlines()[0]}")
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()


def _gallery(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    """Six images: cats, dogs, people; distinct confidences; ignored bands; one with GT."""
    rng = np.random.default_rng(5)
    specs: dict[str, dict] = {}
    plan = [
        ("street/p1.jpg", ["person"], 0.97),
        ("street/p2.jpg", ["person", "dog"], 0.62),
        ("pets/c1.jpg", ["cat"], 0.81),
        ("pets/c 2#x.jpg", ["cat", "dog"], 0.74),  # a name that needs URL escaping
        ("pets/d1.jpg", ["dog"], 0.90),
        ("c3.png", ["cat"], 0.55),
    ]
    names = ["cat", "dog", "person"]
    for k, (rel, labels, conf) in enumerate(plan):
        h, w = (90, 120) if k % 2 == 0 else (120, 90)
        yy, xx = np.mgrid[0:h, 0:w]
        mask = np.zeros((h, w), np.uint8)
        for j, label in enumerate(labels):
            cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25 + 0.3 * j, 0.45 + 0.3 * j) * w
            d = ((yy - cy) / (0.25 * h)) ** 2 + ((xx - cx) / (0.2 * w)) ** 2
            mask[d < 1] = 1 + names.index(label)
            mask[np.abs(d - 1) < 0.15 + 0.1 * k] = 255
        specs[rel] = {
            "mask": mask,
            "labels": labels,
            "confidence": np.full((h, w), conf),
            "seconds": {"cam": 0.5 + k, "crf": 0.25, "total": 0.75 + k},
        }
    return fake_run(tmp_path, specs, names), specs


def _texts(driver, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def test_gallery_in_headless_chromium(tmp_path: Path, driver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    out, specs = _gallery(tmp_path)
    gt = tmp_path / "gt"
    save_mask(gt / "pets" / "c1.png", np.where(specs["pets/c1.jpg"]["mask"] == 255, 0, specs["pets/c1.jpg"]["mask"]))
    index = build(out, gt=gt, workers=1).index
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nreport browser artefacts: {ARTIFACTS}")

    driver.get(index.resolve().as_uri())
    wait = WebDriverWait(driver, 10)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")

    def names() -> list[str]:
        return _texts(driver, "#rows td.name a")

    # All six images, worst (lowest confidence) first.
    count = driver.find_element(By.ID, "count")
    assert count.get_attribute("data-count") == "6" and count.text == "6 images"
    by_conf = sorted(specs, key=lambda r: specs[r]["confidence"][0, 0])
    assert names() == by_conf
    # Thumbnails and the summary charts are there (loaded from disk, not broken).
    thumbs = driver.find_elements(By.CSS_SELECTOR, "#rows td.pic img")
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", t) for t in thumbs))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#class-hist svg g.bar")) == 3
    driver.save_screenshot(str(ARTIFACTS / "gallery.png"))

    # Sort: click the confidence header (reverses), then the image header (by name).
    driver.find_element(By.CSS_SELECTOR, 'th[data-sort="confidence"]').click()
    assert names() == by_conf[::-1]
    driver.find_element(By.CSS_SELECTOR, 'th[data-sort="name"]').click()
    assert names() == sorted(specs)
    Select(driver.find_element(By.ID, "sort-key")).select_by_value("ignored")  # worst first: most ignored
    ignored = [float(t.rstrip("%")) for t in _texts(driver, "#rows td.c-ignored")]
    assert ignored == sorted(ignored, reverse=True)

    # Filter by a class: only images labelled cat, each row showing a cat chip.
    Select(driver.find_element(By.ID, "class-filter")).select_by_visible_text("cat (3)")
    cats = sorted(r for r in specs if "cat" in specs[r]["labels"])
    assert count.get_attribute("data-count") == "3" and count.text == "3 of 6 images"
    assert sorted(names()) == cats
    for row in driver.find_elements(By.CSS_SELECTOR, "#rows tr"):
        assert "cat" in [c.text.split()[0] for c in row.find_elements(By.CSS_SELECTOR, ".chip")]
    driver.find_element(By.CSS_SELECTOR, 'th[data-sort="confidence"]').click()
    cats_by_conf = sorted(cats, key=lambda r: specs[r]["confidence"][0, 0])
    assert names() == cats_by_conf
    driver.save_screenshot(str(ARTIFACTS / "filtered-cat.png"))

    # Full-size view: open the first, step right with the arrow key, then left, then close.
    driver.find_element(By.CSS_SELECTOR, "#rows tr td.pic img").click()
    viewer = driver.find_element(By.ID, "viewer")
    wait.until(lambda d: viewer.is_displayed())
    pos, name = driver.find_element(By.ID, "v-pos"), driver.find_element(By.ID, "v-name")
    assert pos.text == "1 / 3" and name.text == cats_by_conf[0]
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    assert pos.text == "2 / 3" and name.text == cats_by_conf[1]
    overlay, photo = driver.find_element(By.ID, "v-ov"), driver.find_element(By.ID, "v-photo")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", overlay))
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", photo))
    # The overlay is the mask PNG itself, keyed by the page's SVG filter, at the mask's size.
    stem = cats_by_conf[1].rsplit(".", 1)[0]
    assert overlay.get_attribute("src").endswith("/masks/" + urllib.parse.quote(stem) + ".png")
    h, w = specs[cats_by_conf[1]]["mask"].shape
    assert driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay) == [w, h]
    time.sleep(0.2)  # let the decoded pictures paint before the screenshot
    driver.save_screenshot(str(ARTIFACTS / "viewer-after-right-arrow.png"))
    body.send_keys(Keys.ARROW_LEFT)
    assert pos.text == "1 / 3"
    body.send_keys(Keys.ESCAPE)
    assert not viewer.is_displayed()

    # No script errors on the way (file:// pictures all found).
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    for shot in ("gallery.png", "filtered-cat.png", "viewer-after-right-arrow.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000
    shutil.copy(index, ARTIFACTS / "index.html.txt")  # the page source, for a look after a failure
