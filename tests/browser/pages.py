"""The password-reset and email-confirmation pages in a real browser (headless Chromium).

Drives gatehouse's recovery pages the way a person on a phone would (375x667, touch, device
pixel ratio 2), once with JavaScript and once without, and checks what they see: the form
and its accessibility hooks (the hint tied to the fields, problems announced as alerts, the
hidden username field password managers need), a mismatch, a weak password, success, a link
used up before or while the page was open, and the confirmation page. Screenshots of every
step go to the output directory. Prints one line per check and a closing
"N passed, N failed" line; exits 1 on any failure.

    python pages.py BASE_URL SERVER_LOG OUT_DIR

BASE_URL is a running gatehouse with auth.expose_debug_tokens and email.mode = "log" (the
reset link comes from forgot-password's debug_token, the confirmation link from the log).
"""

import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BASE, SERVER_LOG, OUT = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
STRONG = "correct horse battery staple 42"
WEAK = "password1"  # long enough for the form, refused by the server as too common
PATIENCE = 20  # seconds: a safety net against hangs, never a synchronisation point

results = []


def check(name, condition, detail=""):
    results.append((name, bool(condition)))
    print(("PASS " if condition else "FAIL ") + name + ("" if condition else f": {detail}"), flush=True)


def api(method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


counter = [0]


def new_user():
    counter[0] += 1
    email = f"browser{counter[0]}-{os.getpid()}@example.com"
    status, _ = api("POST", "/auth/register", {"email": email, "password": STRONG})
    assert status == 201, f"register {email}: {status}"
    return email


def reset_link(email):
    status, body = api("POST", "/auth/forgot-password", {"email": email})
    assert status == 202 and body.get("debug_token"), f"forgot-password: {status} {body}"
    return f"{BASE}/auth/reset-password?token={body['debug_token']}"


def verify_link(email):
    """The confirmation link of the sign-up mail, from the log (email.mode = "log")."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        with open(SERVER_LOG, encoding="utf-8", errors="replace") as log:
            for line in log:
                if email in line and "verify-email" in line:
                    match = re.search(r'"link":"([^"]+)"', line)
                    if match:
                        link = match.group(1)
                        return link if link.startswith("http") else BASE + link
        time.sleep(0.05)
    raise AssertionError(f"no confirmation link for {email} in {SERVER_LOG}")


def browser(javascript):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tempfile.mkdtemp(prefix='gatehouse-chromium-')}",
    ):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    # A phone: 375x667 CSS pixels, twice as many device pixels, touch.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 375, "height": 667, "deviceScaleFactor": 2, "mobile": True})
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    return driver


def wait(driver, condition, what):
    """Polls until `condition` holds (a page being replaced mid-poll is just polled again)."""
    try:
        WebDriverWait(driver, PATIENCE, poll_frequency=0.05,
                      ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                      ).until(lambda d: condition(d))
        check(what, True)
        return True
    except TimeoutException:
        check(what, False, f"not seen within {PATIENCE}s; page: {driver.title!r} {driver.current_url}")
        return False


def heading(driver):
    return driver.find_element(By.TAG_NAME, "h1").text


def shot(driver, name):
    driver.save_screenshot(os.path.join(OUT, name + ".png"))


def fits_the_phone(driver, name):
    # Through CDP, so it works with JavaScript disabled on the page too.
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    content = metrics["cssContentSize"]["width"]
    viewport = metrics["cssLayoutViewport"]["clientWidth"]
    check(f"{name}: nothing wider than the phone ({content} <= {viewport} CSS px)", content <= viewport + 0.5)


def alert_says(driver, name, text):
    alerts = [e for e in driver.find_elements(By.CSS_SELECTOR, "[role=alert]") if e.text.strip()]
    check(f"{name}: an alert says {text!r}", any(text in e.text for e in alerts),
          f"alerts: {[e.text for e in alerts]}")


def only_the_outcome(driver, name):
    """After the end of the flow nothing asks for a password any more."""
    shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "main p") if e.is_displayed()]
    check(f"{name}: no leftover invitation to choose a password",
          not any("Choose a new password" in t for t in shown), shown)


def fill(driver, new, confirm):
    driver.find_element(By.ID, "new_password").send_keys(new)
    driver.find_element(By.ID, "confirm_password").send_keys(confirm)
    driver.find_element(By.CSS_SELECTOR, "#reset button[type=submit]").click()


def reset_flows(driver, mode):
    js = mode == "js"
    # The form.
    email = new_user()
    link = reset_link(email)
    driver.get(link)
    check(f"{mode} form: heading", heading(driver) == "Choose a new password", heading(driver))
    for field in ("new_password", "confirm_password"):
        element = driver.find_element(By.ID, field)
        check(f"{mode} form: {field} is described by the hint",
              element.get_attribute("aria-describedby") == "password-hint"
              and driver.find_element(By.ID, "password-hint").text.startswith("At least"),
              element.get_attribute("aria-describedby"))
    usernames = driver.find_elements(By.CSS_SELECTOR, "#reset input[autocomplete=username]")
    check(f"{mode} form: a hidden username field holds the account's address",
          len(usernames) == 1 and usernames[0].get_attribute("value") == email and not usernames[0].is_displayed(),
          [(u.get_attribute("value"), u.is_displayed()) for u in usernames])
    button = driver.find_element(By.CSS_SELECTOR, "#reset button")
    check(f"{mode} form: the button is on screen without scrolling",
          button.rect["y"] + button.rect["height"] <= 667, button.rect)
    fits_the_phone(driver, f"{mode} form")
    shot(driver, f"reset-1-form-{mode}")

    # Two different passwords.
    fill(driver, STRONG, STRONG + "!")
    if js:
        wait(driver, lambda d: "do not match" in d.find_element(By.ID, "outcome").text, f"{mode} mismatch shown")
        check(f"{mode} mismatch: shown in place, the link kept", "token=" in driver.current_url, driver.current_url)
    else:
        wait(driver, lambda d: "token=" not in d.current_url, f"{mode} mismatch: the form posted itself")
    alert_says(driver, f"{mode} mismatch", "do not match")
    check(f"{mode} mismatch: the form is still there", driver.find_element(By.ID, "reset").is_displayed())
    button = driver.find_element(By.CSS_SELECTOR, "#reset button")
    check(f"{mode} mismatch: the button is still on screen without scrolling",
          button.rect["y"] + button.rect["height"] <= 667, button.rect)
    fits_the_phone(driver, f"{mode} mismatch")
    shot(driver, f"reset-2-mismatch-{mode}")

    # A password the policy refuses.
    for field in ("new_password", "confirm_password"):
        driver.find_element(By.ID, field).clear()
    fill(driver, WEAK, WEAK)
    wait(driver, lambda d: "cannot be used" in d.find_element(By.ID, "outcome").text, f"{mode} weak password shown")
    alert_says(driver, f"{mode} weak password", "most common passwords")
    check(f"{mode} weak password: heading unchanged", heading(driver) == "Choose a new password", heading(driver))
    shot(driver, f"reset-3-weak-{mode}")

    # Success.
    for field in ("new_password", "confirm_password"):
        driver.find_element(By.ID, field).clear()
    fill(driver, STRONG + " new", STRONG + " new")
    wait(driver, lambda d: heading(d) == "Password changed", f"{mode} success: heading says so")
    check(f"{mode} success: the form is gone",
          not [f for f in driver.find_elements(By.ID, "reset") if f.is_displayed()])
    check(f"{mode} success: the title says so", driver.title == "Password changed", driver.title)
    only_the_outcome(driver, f"{mode} success")
    good = [e for e in driver.find_elements(By.CSS_SELECTOR, ".good") if e.text.strip()]
    check(f"{mode} success: the message", any("has been changed" in e.text for e in good), [e.text for e in good])
    status, _ = api("POST", "/auth/login", {"email": email, "password": STRONG + " new"})
    check(f"{mode} success: the new password signs in", status == 200, status)
    fits_the_phone(driver, f"{mode} success")
    shot(driver, f"reset-4-success-{mode}")

    # The same link again.
    driver.get(link)
    check(f"{mode} used link: heading", heading(driver) == "Link expired or already used", heading(driver))
    alert_says(driver, f"{mode} used link", "already been used")
    check(f"{mode} used link: no form", not driver.find_elements(By.ID, "reset"))
    shot(driver, f"reset-5-used-{mode}")

    # A link used up elsewhere while this page was open, and two different passwords typed:
    # the dead link is what the person must hear about.
    email = new_user()
    link = reset_link(email)
    driver.get(link)
    token = link.split("token=", 1)[1]
    status, _ = api("POST", "/auth/reset-password", {"token": token, "new_password": STRONG + " elsewhere"})
    assert status == 200, status
    fill(driver, STRONG, STRONG + "?")
    wait(driver, lambda d: heading(d) == "Link expired or already used", f"{mode} dead link before mismatch: heading")
    alert_says(driver, f"{mode} dead link before mismatch", "already been used")
    only_the_outcome(driver, f"{mode} dead link before mismatch")
    shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "main p") if e.is_displayed()]
    check(f"{mode} dead link before mismatch: no mismatch message",
          not any("do not match" in t for t in shown), shown)
    shot(driver, f"reset-6-dead-before-mismatch-{mode}")

    # The same with matching passwords.
    email = new_user()
    link = reset_link(email)
    driver.get(link)
    api("POST", "/auth/reset-password", {"token": link.split("token=", 1)[1], "new_password": STRONG + " elsewhere"})
    fill(driver, STRONG, STRONG)
    wait(driver, lambda d: heading(d) == "Link expired or already used", f"{mode} link used while open: heading")
    alert_says(driver, f"{mode} link used while open", "already been used")


def verify_flows(driver, mode):
    email = new_user()
    link = verify_link(email)
    driver.get(link)
    check(f"{mode} confirm: heading", heading(driver) == "Confirm your email address", heading(driver))
    fits_the_phone(driver, f"{mode} confirm")
    shot(driver, f"verify-1-button-{mode}")
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(driver, lambda d: heading(d) == "Email address confirmed", f"{mode} confirm: done")
    status, body = api("POST", "/auth/login", {"email": email, "password": STRONG})
    check(f"{mode} confirm: the account is verified", status == 200 and body["user"]["email_verified"] is True,
          (status, body.get("user")))
    shot(driver, f"verify-2-done-{mode}")
    driver.get(link)
    check(f"{mode} confirm used link: heading", heading(driver) == "Link expired or already used", heading(driver))
    alert_says(driver, f"{mode} confirm used link", "already been used")
    shot(driver, f"verify-3-used-{mode}")


for mode in ("js", "nojs"):
    driver = browser(javascript=mode == "js")
    try:
        # JavaScript really is on or off: the reset page's script sets nothing visible before a
        # submit, so ask the browser itself.
        driver.get(BASE + "/auth/reset-password?token=x")
        enabled = driver.execute_cdp_cmd("Runtime.evaluate", {"expression": "1+1"}).get("result", {}).get("value") == 2
        check(f"{mode}: the browser runs (CDP answers)", enabled)
        for flows in (reset_flows, verify_flows):
            try:
                flows(driver, mode)
            except Exception as e:  # noqa: BLE001 - a crashed flow is a failure, the others still run
                check(f"{mode} {flows.__name__}", False, f"{type(e).__name__}: {e}")
                shot(driver, f"crash-{flows.__name__}-{mode}")
    finally:
        driver.quit()

passed = sum(1 for _, ok in results if ok)
failed = len(results) - passed
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
