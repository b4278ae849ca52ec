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
import json
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


# ---- review: marks, layers, zoom, keyboard, the view in the URL (issue 20) -------------------
def _with_cams(out: Path, specs: dict[str, dict]) -> None:
    """Give every image a cams file with both CAM arrays (a bump per label), as --save-cams writes."""
    from clipseg_cli.io.atomic import write_npz

    names = ["cat", "dog", "person"]
    for rel, spec in specs.items():
        h, w = spec["mask"].shape
        yy, xx = np.mgrid[0:h, 0:w]
        labels = np.array([names.index(n) for n in spec["labels"]], dtype=np.int64)
        cams = np.stack([np.exp(-((yy - h / 2) ** 2 + (xx - w * (0.3 + 0.4 * j)) ** 2) / (0.1 * h * w)) for j in range(len(labels))])
        write_npz(out / "cams" / f"{rel.rsplit('.', 1)[0]}.npz", labels=labels, cam=cams.astype(np.float32),
                  refined=(cams**2).astype(np.float32), confidence=np.asarray(spec["confidence"], np.float16))  # fmt: skip


def _ready(driver, url: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    return driver.find_element(By.TAG_NAME, "body")


def _marks(driver) -> dict[str, str]:
    """image -> mark, as the rows show them."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#rows tr')).map(function (tr) {"
        " return [tr.querySelector('td.name a').textContent, tr.getAttribute('data-mark') || '']; });"
    )
    return {name: mark for name, mark in rows if mark}


def _counts(driver) -> dict[str, int]:
    return {m: int(driver.find_element("id", f"n-{m}").text) for m in ("accepted", "rejected", "fix", "none")}


def test_review_marks_layers_and_keys_in_headless_chromium(tmp_path: Path, driver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    out, specs = _gallery(tmp_path)
    _with_cams(out, specs)
    gt = tmp_path / "gt"
    save_mask(gt / "pets" / "c1.png", np.where(specs["pets/c1.jpg"]["mask"] == 255, 0, specs["pets/c1.jpg"]["mask"]))
    index = build(out, gt=gt, workers=1).index
    url = index.resolve().as_uri()
    wait = WebDriverWait(driver, 10)
    body = _ready(driver, url)
    by_conf = sorted(specs, key=lambda r: specs[r]["confidence"][0, 0])  # the page's order, worst first
    assert _counts(driver) == {"accepted": 0, "rejected": 0, "fix": 0, "none": 6}

    # Mark three images: j j r (the second row rejected), a button on the fourth row, f in the viewer with a note.
    body.send_keys("j")
    body.send_keys("j")
    assert driver.find_element(By.CSS_SELECTOR, "#rows tr.cur td.name a").text == by_conf[1]
    body.send_keys("r")
    driver.find_element(By.CSS_SELECTOR, '#rows tr[data-k="3"] .mb.rejected').click()
    body.send_keys("j")  # the cursor is on row 4 (the clicked one): j goes to row 5
    body.send_keys(Keys.ENTER)
    viewer = driver.find_element(By.ID, "viewer")
    wait.until(lambda d: viewer.is_displayed())
    assert driver.find_element(By.ID, "v-name").text == by_conf[4]
    body.send_keys("f")
    note = driver.find_element(By.ID, "v-note")
    assert note.is_enabled()
    body.send_keys("n")
    note.send_keys("border too wide", Keys.ENTER)
    body.send_keys(Keys.ESCAPE)
    want = {by_conf[1]: "rejected", by_conf[3]: "rejected", by_conf[4]: "fix"}
    assert _marks(driver) == want
    assert _counts(driver) == {"accepted": 0, "rejected": 2, "fix": 1, "none": 3}
    # The same key again clears a mark; then set it back.
    body.send_keys("k")
    body.send_keys("a")
    assert _marks(driver)[by_conf[3]] == "accepted"
    body.send_keys("a")
    assert by_conf[3] not in _marks(driver)
    body.send_keys("r")
    assert _marks(driver) == want

    # Filter by mark, from the summary's count and from the menu.
    driver.find_element(By.CSS_SELECTOR, '#review-box .mc[data-mark="rejected"]').click()
    assert driver.find_element(By.ID, "count").text == "2 of 6 images"
    assert "mark=rejected" in driver.execute_script("return location.hash")
    Select(driver.find_element(By.ID, "mark-filter")).select_by_value("none")
    assert sorted(_texts(driver, "#rows td.name a")) == sorted(set(specs) - set(want))
    Select(driver.find_element(By.ID, "mark-filter")).select_by_value("")

    # Marks survive a reload (localStorage), the note too.
    body = _ready(driver, url)
    assert _marks(driver) == want
    assert driver.find_element(By.CSS_SELECTOR, '#rows tr[data-mark="fix"] .note').text == "border too wide"

    # Export: the downloaded review.json holds exactly the three marks.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.find_element(By.ID, "export").click()
    wait.until(lambda d: (downloads / "review.json").is_file())
    from clipseg_cli.review import load_review

    exported = load_review(downloads / "review.json", known=specs)
    assert {k: m.mark for k, m in exported.marks.items()} == want
    assert exported.marks[by_conf[4]].note == "border too wide"

    # Import replaces the marks with the file's.
    other = tmp_path / "other-review.json"
    other.write_text(json.dumps({"kind": "review", "version": 1, "marks": {by_conf[0]: {"mark": "accepted"}}}))
    driver.find_element(By.ID, "import-file").send_keys(str(other))
    wait.until(lambda d: _marks(d) == {by_conf[0]: "accepted"})
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "nope"}')
    driver.find_element(By.ID, "import-file").send_keys(str(bad))
    wait.until(lambda d: "not imported" in d.find_element(By.ID, "review-status").text)
    assert _marks(driver) == {by_conf[0]: "accepted"}
    driver.find_element(By.ID, "import-file").send_keys(str(downloads / "review.json"))
    wait.until(lambda d: _marks(d) == want)

    # The view in the URL: sort by ignored, class dog; a fresh load of that URL shows the same.
    driver.find_element(By.CSS_SELECTOR, 'th[data-sort="ignored"]').click()
    Select(driver.find_element(By.ID, "class-filter")).select_by_visible_text("dog (3)")
    shared = driver.current_url
    assert "sort=ignored" in shared and "class=dog" in shared
    shown = _texts(driver, "#rows td.name a")
    driver.get("about:blank")
    _ready(driver, shared)
    assert _texts(driver, "#rows td.name a") == shown
    assert Select(driver.find_element(By.ID, "sort-key")).first_selected_option.get_attribute("value") == "ignored"
    dogs = [r for r in specs if "dog" in specs[r]["labels"]]
    assert sorted(shown) == sorted(dogs)
    ignored = {r: float((s["mask"] == 255).mean()) for r, s in specs.items()}
    assert shown == sorted(dogs, key=lambda r: (-ignored[r], r))

    # The ignored histogram filters by a bin: the images whose 255 share falls in it, counted here.
    body = _ready(driver, url)
    k = min(19, int(ignored[by_conf[0]] * 20))
    driver.find_element(By.CSS_SELECTOR, f'#ignored-hist g.bin[data-bin="{k}"]').click()
    in_bin = sorted(r for r in specs if min(19, int(ignored[r] * 20)) == k)
    assert sorted(_texts(driver, "#rows td.name a")) == in_bin
    assert f"ignored={k}" in driver.current_url
    driver.find_element(By.CSS_SELECTOR, "#active [data-clear]").click()
    assert driver.find_element(By.ID, "count").text == "6 images"
    stored = {r: float(np.float16(s["confidence"][0, 0])) for r, s in specs.items()}  # cams keep float16
    conf_bin = int(stored[by_conf[0]] * 20)
    driver.find_element(By.CSS_SELECTOR, f'#confidence-hist g.bin[data-bin="{conf_bin}"]').click()
    assert sorted(_texts(driver, "#rows td.name a")) == sorted(r for r in specs if int(stored[r] * 20) == conf_bin)
    driver.find_element(By.CSS_SELECTOR, "#active [data-clear]").click()

    # Viewer layers: G on an image without GT asks for nothing; on the GT image G, E; C the CAMs.
    viewer, overlay = driver.find_element(By.ID, "viewer"), driver.find_element(By.ID, "v-ov")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    names = _texts(driver, "#rows td.name a")
    no_gt = names.index(by_conf[0])
    driver.find_elements(By.CSS_SELECTOR, "#rows img.open:not(.gt)")[no_gt].click()
    wait.until(lambda d: viewer.is_displayed())
    body.send_keys("g")
    assert driver.find_element(By.ID, "v-which").text == "no GT for this image"
    body.send_keys(Keys.ARROW_RIGHT)  # and stepping on in the GT layer asks for no GT of images without one
    body.send_keys(Keys.ESCAPE)
    with_gt = names.index("pets/c1.jpg")
    driver.find_elements(By.CSS_SELECTOR, "#rows img.open:not(.gt)")[with_gt].click()
    wait.until(lambda d: viewer.is_displayed())
    h, w = specs["pets/c1.jpg"]["mask"].shape
    body.send_keys("g")
    assert overlay.get_attribute("src").endswith("/overlays-gt/pets/c1.png")
    body.send_keys("e")
    assert overlay.get_attribute("src").endswith("/overlays-err/pets/c1.png")
    wait.until(lambda d: d.execute_script(loaded, overlay))
    assert driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay) == [w, h]
    assert driver.find_element(By.ID, "v-which").text == "errors vs GT"
    # Stepping on from the GT layers to images without GT must not ask for their GT pictures.
    for _ in range(len(names)):
        body.send_keys(Keys.ARROW_RIGHT)
    body.send_keys("c")
    assert "/heat/" in overlay.get_attribute("src") and overlay.get_attribute("src").endswith(".png")
    wait.until(lambda d: d.execute_script(loaded, overlay))
    assert driver.find_element(By.ID, "v-which").text.startswith("CAM ")
    # Zoom and pan: + zooms by 1.5 around the centre, a drag moves the picture, Z fits again.
    stack = driver.find_element(By.CSS_SELECTOR, "#viewer .stack")
    body.send_keys("+")
    assert "scale(1.5)" in stack.get_attribute("style")
    assert driver.find_element(By.ID, "v-zoom").text == "150%"
    from selenium.webdriver.common.action_chains import ActionChains

    before = driver.execute_script("return arguments[0].getBoundingClientRect().left", stack)
    ActionChains(driver).move_to_element(stack).click_and_hold().move_by_offset(40, 0).release().perform()
    after = driver.execute_script("return arguments[0].getBoundingClientRect().left", stack)
    assert abs(after - before - 40) < 2
    body.send_keys("z")
    assert "scale" not in (stack.get_attribute("style") or "")
    body.send_keys(Keys.ESCAPE)
    # No picture was missing on the way (a GT overlay asked for an image without GT would be).
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe

    # The key hints: letters in a sans font, so O does not read as a zero.
    fonts = driver.execute_script("return getComputedStyle(document.querySelector('kbd')).fontFamily")
    assert "monospace" not in fonts and "mono" not in fonts.lower()

    # 800 px wide: no sideways scrolling, in the list and in the viewer.
    driver.set_window_size(800, 900)
    try:
        wide = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        scroll, client = driver.execute_script(wide)
        assert scroll <= client
        driver.save_screenshot(str(ARTIFACTS / "review-800px.png"))
        driver.find_elements(By.CSS_SELECTOR, "#rows td.pic img")[0].click()
        wait.until(lambda d: viewer.is_displayed())
        scroll, client = driver.execute_script(wide)
        assert scroll <= client
        bar = driver.execute_script("return [document.querySelector('.vbar').scrollWidth, document.querySelector('.vbar').clientWidth]")
        assert bar[0] <= bar[1]
        body.send_keys(Keys.ESCAPE)
    finally:
        driver.set_window_size(1280, 900)
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe


def test_served_gallery_saves_marks_as_you_go(tmp_path: Path, driver) -> None:
    """--serve: marks are posted to the server and written to OUT/review.json; a reload (with the
    browser's copy wiped) shows them from that file."""
    import threading

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from clipseg_cli.report.serve import ReviewServer
    from clipseg_cli.review import load_review

    out, specs = _gallery(tmp_path)
    result = build(out, workers=1)
    server = ReviewServer(out, result.images_root, result.image_names)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        body = _ready(driver, server.url)
        wait = WebDriverWait(driver, 10)
        by_conf = sorted(specs, key=lambda r: specs[r]["confidence"][0, 0])
        # Photos come through the server's image route.
        driver.find_element(By.CSS_SELECTOR, "#rows td.pic img").click()
        photo = driver.find_element(By.ID, "v-photo")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", photo))
        assert "/@images/" in photo.get_attribute("src")
        body.send_keys("r")
        body.send_keys("\ue014")  # arrow right
        body.send_keys("a")
        wait.until(lambda d: server.review_path.is_file() and len(load_review(server.review_path).marks) == 2)
        wait.until(lambda d: "saved to review.json" in d.find_element(By.ID, "review-status").text)
        saved = load_review(server.review_path, known=specs)
        assert {k: m.mark for k, m in saved.marks.items()} == {by_conf[0]: "rejected", by_conf[1]: "accepted"}
        driver.execute_script("localStorage.clear()")
        _ready(driver, server.url)
        assert _marks(driver) == {by_conf[0]: "rejected", by_conf[1]: "accepted"}
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not severe, severe
    finally:
        server.shutdown()
        server.server_close()


def test_marks_from_the_browser_leave_images_out_of_retrain(tmp_path: Path, driver, cli) -> None:
    """The issue's round trip: mark three images rejected in the page, reload, export review.json,
    and a retrain (a few iterations of the smallest network) with that review trains without them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from clipseg_cli.review import load_review

    out, specs = _gallery(tmp_path)
    index = build(out, workers=1).index
    body = _ready(driver, index.resolve().as_uri())
    for _ in range(3):  # rows 1, 2, 3 in the page's order (worst confidence first)
        body.send_keys("j")
        body.send_keys("r")
    by_conf = sorted(specs, key=lambda r: specs[r]["confidence"][0, 0])
    want = {name: "rejected" for name in by_conf[:3]}
    assert _marks(driver) == want
    _ready(driver, index.resolve().as_uri())  # reload: the marks are still there
    assert _marks(driver) == want
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.find_element(By.ID, "export").click()
    WebDriverWait(driver, 10).until(lambda d: (downloads / "review.json").is_file())
    exported = downloads / "review.json"
    assert load_review(exported, known=specs).images("rejected") == sorted(want)

    result = cli("retrain", tmp_path / "images", out / "masks", "--classes", "cat,dog,person", "--arch", "deeplabv2-resnet18",
                 "--crop", "32", "--scales", "1", "--iters", "2", "--batch-size", "2", "--device", "cpu",
                 "--review", exported, "--out", tmp_path / "retrain")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "retrain" / "run.json").read_text())
    assert summary["pairs"] == len(specs) - 3
    assert summary["review"]["file"] == str(exported.resolve()) and summary["review"]["left_out"] == 3
    assert summary["review"]["left_out_images"] == sorted(name.rsplit(".", 1)[0] for name in want)
