"""The operator console (navigator/live/console/) in real headless Chromium against a real `navigator serve`.

A synthetic neck patient is written as DICOM with a hand-made plan of 6 needles (template holes A1..B5); the
intraop scan holds them with a known patient motion and two of them (N02, N05) displaced 4 mm sideways, so the
needle check has exactly two needles out of the 2 mm tolerance. The scan is sent by dcmtk's `storescu` to the
service's DICOM port while a physicist's console is open; the needle table must fill in from the event stream,
without a reload. The users are conftest.py's (phil: physicist, otto: operator, vera: viewer). A second
browser (an operator) is refused control (409) and refused accepting a deviation (403), each with the API's own
message; the physicist accepts with a reason. After a rescan of all needles (N02 and N05 corrected) the seeds
are delivered through the simulated applicator (`sgpsim://`), the post-implant scan is sent, and the console
shows the delivery, the post-implant metrics, the 3D view and the navigator's pictures. Screenshots of each
screen go to console_*.png (CONSOLE_SHOTS=docs/img refreshes the documentation's pictures).

Tests run in the file's order and each copes with an earlier one of the module not having run (pytest-xdist may
give them to different workers, each with its own room).
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import demo_plan
from tests.live.conftest import Service

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AE = "CONSOLETEST"
PHYSICIST, OPERATOR, VIEWER = "phil", "otto", "vera"  # tests/live/conftest.py's users_file
DISPLACED = ("N02", "N05")   # needles put 4 mm off their planned track in the intraop scan
WAIT_S = 60.0


def password(name: str) -> str:
    return f"{name}-secret-pw"  # as conftest.py's users_file set them


# --- the patient, the plan and the scans ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def console_case(tmp_path_factory):
    from simulators.phantoms.cases import demo_implant, intraop_scan, make_patient, postimplant_scan
    from simulators.phantoms.motion import random_rigid
    from simulators.phantoms.writer import write_patient, write_scan

    root = tmp_path_factory.mktemp("console_case")
    patient = make_patient("neck", 11, matrix=(170, 170), n_slices=40)
    written = write_patient(patient, root / "case")
    needles, seeds, axes = demo_implant(patient, n_needles=6, seeds_per_needle=2, spacing_mm=10.0)
    plan = demo_plan(patient, needles, seeds, seeds_per_needle=2, cols=3)
    (root / "plan").mkdir()
    plan.save(root / "plan" / "plan.json")

    rng = np.random.default_rng(5)
    motion = random_rigid(rng, 8.0, 4.0, center_mm=patient.node_center_mm)
    placed = []
    for k, (entry, tip) in enumerate(needles):
        entry, tip = np.asarray(entry, float), np.asarray(tip, float)
        if f"N{k + 1:02d}" in DISPLACED:  # 4 mm sideways, perpendicular to the needle and to the patient's axis
            u = (tip - entry) / np.linalg.norm(tip - entry)
            side = np.cross(u, [0.0, 0.0, 1.0])
            side /= np.linalg.norm(side)
            entry, tip = entry + 4.0 * side, tip + 4.0 * side
        placed.append((entry, tip))
    intraop = write_scan(intraop_scan(patient, placed, motion, rng=rng, slice_mm=1.25, length_mm=60.0),
                         root / "intraop")
    # after correcting N02 and N05: every needle on its track, a second scan (new series) of all needles
    intraop_all = write_scan(intraop_scan(patient, [(np.asarray(e, float), np.asarray(t, float)) for e, t in needles],
                                          motion, rng=rng, slice_mm=1.25, length_mm=60.0), root / "intraop_all")
    post = write_scan(postimplant_scan(patient, np.asarray(seeds), axes, motion, rng=rng), root / "post")
    return {"root": root, "plan": root / "plan" / "plan.json", "preplan_ct": written.ct_dir, "intraop": intraop,
            "intraop_all": intraop_all, "post": post, "n_needles": len(plan.needles), "n_seeds": len(plan.seeds),
            "holes": {n.id: n.hole for n in plan.needles}}


@pytest.fixture(scope="module")
def server(console_case, users_file):
    """`navigator serve` (tests/live/conftest.py's Service) on the case, with the simulated applicator."""
    svc = Service(console_case["root"] / "session", "--plan", str(console_case["plan"]), "--preplan-ct",
                  str(console_case["preplan_ct"]), "--allow-ae", AE, "--users", str(users_file),
                  "--device", "sgpsim://?seeds=40")
    yield svc
    assert svc.stop() == 0


def storescu(server: Service, folder: Path) -> None:
    r = server.storescu(folder, calling_ae=AE)
    assert r.returncode == 0, r.stdout + r.stderr


def api(server: Service, method: str, path: str, token: str, body=None):
    return server.call(method, path, body, token=token)


def api_token(server: Service, name: str) -> str:
    code, body = server.call("POST", "/api/login", {"username": name, "password": password(name)})
    assert code == 200, body
    return body["token"]


# --- the browsers ---------------------------------------------------------------------------------------------
def chromium(tmp_path_factory, width=1920, height=1080):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--window-size={width},{height}", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    viewport(driver, width, height)
    return driver


def viewport(driver, width: int, height: int) -> None:
    """Make the page itself (not the window around it) width x height CSS pixels, for the screenshots."""
    driver.set_window_size(width, height)
    w, h = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    driver.set_window_size(2 * width - w, 2 * height - h)


def wait(driver, predicate, what: str, timeout_s: float = WAIT_S):
    def safe(d):
        try:
            return predicate(d)
        except StaleElementReferenceException:
            return False
    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(safe)
    except Exception as exc:
        raise AssertionError(f"waited {timeout_s} s for {what}; page says: "
                             f"{driver.find_element(By.TAG_NAME, 'body').text[:1500]}") from exc


def text(driver, element_id: str) -> str:
    """The element's text, shown or not (a screen of the console may be behind another tab)."""
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent.trim();")


def log_in(driver, server, name: str, secret: str | None = None) -> None:
    driver.get(server.http + "/")
    wait(driver, lambda d: d.find_element(By.ID, "login").is_displayed(), "the login form")
    driver.find_element(By.NAME, "username").send_keys(name)
    driver.find_element(By.NAME, "password").send_keys(secret or password(name))
    driver.find_element(By.ID, "login-button").click()


def tab(driver, screen: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f".tab[data-screen='{screen}']").click()


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    """``shot(driver, name)`` saves console_<name>.png: in the test's temporary folder, or where CONSOLE_SHOTS
    says (``CONSOLE_SHOTS=docs/img`` refreshes the pictures of the docs; not by default, so that a test run
    leaves the work tree as it was)."""
    folder = Path(os.environ["CONSOLE_SHOTS"]) if os.environ.get("CONSOLE_SHOTS") else tmp_path_factory.mktemp("shots")
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)

    def save(driver, name: str) -> Path:
        path = folder / f"console_{name}.png"
        assert driver.save_screenshot(str(path)), path
        return path
    return save


def js_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and "/api/" not in e["message"]]  # refused API calls (401/403/404/409) are answers, not errors


def table_rows(driver, tbody_id: str) -> list[str]:
    return driver.execute_script(
        f"return [...document.querySelectorAll('#{tbody_id} tr')].map(tr => [...tr.cells].map(td => "
        "td.textContent.trim()).join(' | '));")


def depth_words(depth_mm: float) -> str:
    """The depth as the console writes it: signed, one decimal, + deep / − shallow."""
    if abs(depth_mm) < 0.05:
        return "0.0"
    return f"+{depth_mm:.1f} deep" if depth_mm > 0 else f"−{-depth_mm:.1f} shallow"


def needle_rows(driver) -> dict[str, list[str]]:
    """The needle table as one snapshot (read in one script: live updates re-draw the table)."""
    return dict(driver.execute_script(
        "return [...document.querySelectorAll('#needle-body tr')].map("
        "tr => [tr.dataset.needle, [...tr.cells].map(td => td.textContent.trim())]);"))


@pytest.fixture(scope="module")
def room(server, console_case, tmp_path_factory):
    """The physicist's console, in control, watching while the intraop scan arrives by DICOM."""
    phys = chromium(tmp_path_factory)
    oper = None
    try:
        log_in(phys, server, PHYSICIST)
        wait(phys, lambda d: d.find_element(By.ID, "app").is_displayed(), "the console after login")
        phys.find_element(By.ID, "take-control").click()
        wait(phys, lambda d: "this console" in text(d, "control-message").lower() or
             "has control" in text(d, "control-message"), "control taken")
        wait(phys, lambda d: text(d, "live-status") == "live", "the event stream")
        phys.execute_script("window.__loadedOnce = 'before the scan';")
        before = needle_rows(phys)
        empty_shown = phys.find_element(By.ID, "check-empty").is_displayed()
        storescu(server, console_case["intraop"])
        wait(phys, lambda d: len(needle_rows(d)) == console_case["n_needles"] or text(d, "last-error"),
             "the needle table to fill in", 120.0)
        assert len(needle_rows(phys)) == console_case["n_needles"], text(phys, "last-error")
        oper = chromium(tmp_path_factory)
        log_in(oper, server, OPERATOR)
        wait(oper, lambda d: len(needle_rows(d)) == console_case["n_needles"], "the operator's needle table")
        yield {"phys": phys, "oper": oper, "before": before, "empty_shown": empty_shown,
               "marker": phys.execute_script("return window.__loadedOnce;")}
    finally:
        phys.quit()
        if oper is not None:
            oper.quit()


# --- the tests ------------------------------------------------------------------------------------------------
def test_login_form_refuses_a_wrong_password_and_every_route_needs_login(server, tmp_path_factory, shot):
    for path in ("/api/session", "/api/series", "/api/checks/latest", "/api/delivery", "/api/report"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.http + path, timeout=30)
        assert err.value.code == 401, path
    driver = chromium(tmp_path_factory, 1280, 800)
    try:
        log_in(driver, server, PHYSICIST, "not-the-password")
        wait(driver, lambda d: "401: wrong user name or password" in text(d, "login-error"), "the refusal")
        assert not driver.find_element(By.ID, "app").is_displayed()
        shot(driver, "login")
        driver.find_element(By.NAME, "password").send_keys(password(VIEWER))
        driver.find_element(By.NAME, "username").clear()
        driver.find_element(By.NAME, "username").send_keys(VIEWER)
        driver.find_element(By.ID, "login-button").click()
        wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed(), "the console after login")
        assert text(driver, "user-role") == "viewer" and text(driver, "user-name") == VIEWER
        wait(driver, lambda d: text(d, "state") not in ("", "—"), "the state")
        assert text(driver, "next-step") not in ("", "—")
        # a viewer reads only: taking control is refused with the API's reason
        driver.find_element(By.ID, "take-control").click()
        wait(driver, lambda d: "403" in text(d, "control-message"), "the viewer's refusal")
        assert "may not take control" in text(driver, "control-message")
        # log out: back to the login form; the navigator has ended the login (its cookie no longer opens the API)
        driver.find_element(By.ID, "logout").click()
        wait(driver, lambda d: d.find_element(By.ID, "login").is_displayed(), "the login form after logging out")
        assert "Signed out." in text(driver, "login-error")
        assert driver.execute_async_script("fetch('/api/session').then(r => arguments[0](r.status));") == 401
        driver.refresh()
        wait(driver, lambda d: d.find_element(By.ID, "login").is_displayed(), "the login form after a reload")
        assert not driver.find_element(By.ID, "app").is_displayed()
        assert js_errors(driver) == []
    finally:
        driver.quit()


def test_needle_table_fills_in_after_storescu_sends_the_scan(room, server, console_case, shot):
    phys = room["phys"]
    assert room["before"] == {} and room["empty_shown"], "before the scan there is no needle check"
    assert room["marker"] == "before the scan", "the table filled in without a page reload"
    token = api_token(server, VIEWER)
    status, check = api(server, "GET", "/api/checks/latest", token)
    assert status == 200
    status, plan = api(server, "GET", "/api/plan", token)
    holes = {x["id"]: x["hole"] for x in plan["needles"]} if status == 200 else {}
    rows = needle_rows(phys)
    assert list(rows) == [n["id"] for n in check["needles"]]
    for n in check["needles"]:
        cells = rows[n["id"]]
        needle, hole, tip, lateral, depth, angle, verdict, d90, advice = cells[:9]
        assert needle == n["id"]
        # the template hole is in plan.json, not in needles.json: shown where the API gives it
        expected_hole = n["hole"] if "hole" in n else holes.get(n["id"], "—")
        assert hole == (expected_hole or "—")
        assert tip == f"{n['tip_error_mm']:.1f}" and lateral == f"{n['lateral_mm']:.1f}"
        assert angle == f"{n['angle_deg']:.1f}"
        assert depth == depth_words(n["depth_mm"])
        assert advice == n["advice"]
        assert float(d90.replace("−", "-")) == pytest.approx(n["d90_change_gy"], abs=0.051)
        if n["id"] in DISPLACED:
            assert not n["within_tolerance"] and n["tip_error_mm"] > 3.0
            assert verdict.startswith("OUT")  # text, not only colour
        else:
            assert n["within_tolerance"] and verdict == "within"
    # ... and colour: green within, red out (the verdict cell's background)
    colours = dict(phys.execute_script(
        "return [...document.querySelectorAll('#needle-body tr')].map(tr => [tr.dataset.needle, "
        "getComputedStyle(tr.querySelector('td.verdict')).backgroundColor]);"))
    for n in check["needles"]:
        r, g = (int(v) for v in re.findall(r"\d+", colours[n["id"]])[:2])
        assert (g > r) if n["within_tolerance"] else (r > g), (n["id"], colours[n["id"]])
    reg = check["registration"]["estimated_error_mm"]
    assert text(phys, "check-reg-error") == f"{reg:.2f} mm"
    assert text(phys, "check-out") == "2"
    assert "out of tolerance" in text(phys, "next-step")
    assert any("intraop: reference needles" in row for row in table_rows(phys, "series-body"))
    assert js_errors(phys) == []
    shot(phys, "needles")


def test_second_browser_cannot_take_control(room, shot):
    oper, phys = room["oper"], room["phys"]
    assert text(oper, "controller") == PHYSICIST
    oper.find_element(By.ID, "take-control").click()
    wait(oper, lambda d: "409" in text(d, "control-message"), "the refusal of control")
    assert "holds control" in text(oper, "control-message")
    assert text(oper, "controller") == PHYSICIST
    assert not oper.find_element(By.ID, "control-mine").is_displayed()
    assert phys.find_element(By.ID, "control-mine").is_displayed()
    shot(oper, "control_refused")


def test_operator_is_refused_accepting_a_deviation(room, server, shot):
    oper = room["oper"]
    oper.find_element(By.CSS_SELECTOR, "input.accept-box[value='N05']").click()
    oper.find_element(By.ID, "accept-reason").send_keys("tip at the edge of the node")
    oper.find_element(By.ID, "accept-button").click()
    wait(oper, lambda d: "403" in text(d, "check-message"), "the refusal")
    message = text(oper, "check-message")
    assert "may not approve (physicist only)" in message  # the API's own words
    status, check = api(server, "GET", "/api/checks/latest", api_token(server, VIEWER))
    assert status == 200 and "N05" not in check["accepted"]
    assert needle_rows(oper)["N05"][6] == "OUT"
    shot(oper, "accept_refused")


def test_physicist_accepts_a_deviation_with_a_reason(room, server, shot):
    phys = room["phys"]
    phys.find_element(By.CSS_SELECTOR, "input.accept-box[value='N02']").click()
    phys.find_element(By.ID, "accept-button").click()
    wait(phys, lambda d: "reason" in text(d, "check-message"), "the request for a reason")
    phys.find_element(By.ID, "accept-reason").send_keys("4 mm lateral at the node's edge; D90 impact small")
    phys.find_element(By.ID, "accept-button").click()
    wait(phys, lambda d: needle_rows(d)["N02"][6] == "OUT — accepted", "N02 shown as accepted")
    assert "Accepted N02" in text(phys, "check-message")
    status, check = api(server, "GET", "/api/checks/latest", api_token(server, VIEWER))
    assert status == 200 and "N02" in check["accepted"]
    wait(phys, lambda d: f"{PHYSICIST} (physicist): accept deviations N02" in text(d, "journal"),
         "the decision, with the user, in the journal")
    wait(room["oper"], lambda d: needle_rows(d)["N02"][6] == "OUT — accepted", "the operator's console follows")
    shot(phys, "accepted")


def test_delivery_postimplant_3d_and_pictures(room, server, console_case, shot):
    phys = room["phys"]
    # whatever is still pending (N05, and N02 when the test above ran elsewhere) is accepted by the physicist
    for box in phys.find_elements(By.CSS_SELECTOR, "input.accept-box"):
        box.click()
    if phys.find_elements(By.CSS_SELECTOR, "input.accept-box:checked"):
        phys.find_element(By.ID, "accept-reason").send_keys("accepted after review of the dose impact")
        phys.find_element(By.ID, "accept-button").click()
    wait(phys, lambda d: d.find_element(By.ID, "state").get_attribute("data-state") == "reference_needles_checked",
         "the reference needles checked")

    # the next scan is labelled "all needles" from the console (the state would say so too)
    view = api_token(server, VIEWER)
    phys.find_element(By.CSS_SELECTOR, "#next-scan option[value='all']").click()
    phys.find_element(By.ID, "next-scan-button").click()
    wait(phys, lambda d: "all needles" in text(d, "relabel-message"), "the relabel")
    storescu(server, console_case["intraop_all"])  # N02 and N05 re-inserted on their tracks
    wait(phys, lambda d: text(d, "check-scan").startswith("all needles"), "the all-needles check", 120.0)
    wait(phys, lambda d: d.find_element(By.ID, "state").get_attribute("data-state") == "all_needles_checked",
         "all needles checked")
    assert text(phys, "check-out") == "0"

    tab(phys, "delivery")
    phys.find_element(By.ID, "delivery-start").click()
    wait(phys, lambda d: d.find_element(By.ID, "state").get_attribute("data-state") == "seeds_delivered",
         "the seeds delivered", 120.0)
    tab(phys, "delivery")
    n_seeds = console_case["n_seeds"]
    wait(phys, lambda d: text(d, "delivery-count") == f"{n_seeds} of {n_seeds} seeds released", "the delivery's count")
    status, delivery = api(server, "GET", "/api/delivery", view)
    assert delivery["released"] == console_case["n_seeds"] and delivery["running"] is False
    assert len(table_rows(phys, "released-body")) == delivery["released"]
    shot(phys, "delivery")

    storescu(server, console_case["post"])
    wait(phys, lambda d: d.find_element(By.ID, "state").get_attribute("data-state") == "postimplant_evaluated",
         "the post-implant evaluation", 120.0)
    tab(phys, "postimplant")
    wait(phys, lambda d: d.find_element(By.ID, "post").is_displayed(), "the post-implant screen")
    status, post = api(server, "GET", "/api/postimplant/latest", view)
    assert status == 200
    metrics = table_rows(phys, "metrics-body")
    d90 = next(r for r in metrics if r.startswith("D90"))
    assert f"{post['metrics']['D90_gy']:.1f}" in d90 and f"{post['preplan_metrics']['D90_gy']:.1f}" in d90
    assert text(phys, "post-cold-count") == str(len(post["cold_spots"]))
    assert text(phys, "post-supp-count") == str(len(post["supplementary"]["seeds"]))
    shot(phys, "postimplant")

    tab(phys, "view3d")
    phys.find_element(By.CSS_SELECTOR, "input[name=scene][value='seeds']").click()
    drawn = phys.execute_script("""
        const c = document.getElementById('view3d'), g = c.getContext('2d');
        const px = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < px.length; i += 4) if (px[i] > 150 && px[i + 1] > 100 && px[i + 2] < 80) n++;
        return n;""")
    assert drawn > 50, "the seeds are drawn in the 3D view"
    canvas = phys.find_element(By.ID, "view3d")
    before = phys.execute_script("return document.getElementById('view3d').toDataURL();")
    ActionChains(phys).drag_and_drop_by_offset(canvas, 150, 60).perform()  # rotate by dragging
    assert phys.execute_script("return document.getElementById('view3d').toDataURL();") != before
    shot(phys, "3d_seeds")
    phys.find_element(By.CSS_SELECTOR, "input[name=scene][value='needles']").click()
    shot(phys, "3d_needles")
    phys.find_element(By.CSS_SELECTOR, "input[name=scene][value='plan']").click()
    shot(phys, "3d_plan")

    tab(phys, "report")
    # the page's pictures are drawn after the evaluation is journaled: until then the API says "try again"
    server.wait_for(lambda: server.call("GET", "/api/postimplant/latest/html", token=view, raw=True)[0] == 200,
                    60.0, "the post-implant page")
    phys.find_element(By.CSS_SELECTOR, ".page-button[data-page='/api/postimplant/latest/html']").click()
    wait(phys, lambda d: d.execute_script(
        "const f = document.getElementById('report-frame'); return f.contentDocument && "
        "f.contentDocument.images.length > 0 && [...f.contentDocument.images].every(i => i.complete);"),
        "the post-implant pictures")
    phys.execute_script("const w = document.getElementById('report-frame').contentWindow; "
                        "const img = [...w.document.images].find(i => /isodose/i.test(i.alt)) || w.document.images[0]; "
                        "w.scrollTo(0, img.getBoundingClientRect().top + w.scrollY - 40);")
    shot(phys, "pictures")

    viewport(phys, 1280, 800)  # a tablet in landscape
    tab(phys, "needles")
    shot(phys, "tablet")
    viewport(phys, 1920, 1080)
    assert js_errors(phys) == []

