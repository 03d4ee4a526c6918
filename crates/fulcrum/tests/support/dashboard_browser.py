# Drives Debian's headless Chromium (through chromedriver and python3-selenium, nothing
# downloaded) against the dashboard for tests/dashboard.rs. It prints one line per step and
# takes its cues from standard input, so the Rust test can kill a server or check the API
# between steps. Every wait has a deadline.
#
#   dashboard_browser.py URL TOKEN SHOTS_DIR
#
# Lines out: LOGIN-SHOWN, LOADED <pools>, LIVE, CHART <first> <points> <opened>, READY,
# DOWN <seconds> | NOT-DOWN <seconds>, DRAINED <state>, PHONE <overflow px>, CONSOLE <json>, DONE.
# Lines in: "KILLED <address> <limit seconds>", "DRAIN <address>".
import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, token, shots = sys.argv[1], sys.argv[2], sys.argv[3]


def say(*parts):
    print(*parts, flush=True)


def wait_for(what, limit, cond, every=0.05):
    end = time.monotonic() + limit
    while True:
        try:
            v = cond()
            if v:
                return v
        except (StaleElementReferenceException, WebDriverException):
            pass  # the tables are rebuilt every second: look again
        if time.monotonic() > end:
            raise SystemExit(f"timed out after {limit}s waiting for {what}")
        time.sleep(every)


opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
          "--window-size=1280,1500", "--no-first-run", "--disable-extensions",
          "--disable-background-networking", "--disable-component-update"]:
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.set_page_load_timeout(20)
try:
    q = lambda css: driver.find_element(By.CSS_SELECTOR, css)

    driver.get(url)
    wait_for("the login form", 10, lambda: q("#login").is_displayed())
    assert not q("#app").is_displayed(), "the app shows before the token was given"
    say("LOGIN-SHOWN")

    opened = time.time()
    q("#token").send_keys(token)
    q("#login-form button").click()
    wait_for("the pools", 10, lambda: q("#app").is_displayed()
             and driver.find_elements(By.CSS_SELECTOR, "tr[data-server]"))
    pools = [e.get_attribute("data-pool-card")
             for e in driver.find_elements(By.CSS_SELECTOR, "[data-pool-card]")]
    say("LOADED", ",".join(pools))
    wait_for("the live stream", 10, lambda: q("#status").text == "live")
    say("LIVE")
    wait_for("a client row", 10,
             lambda: driver.find_elements(By.CSS_SELECTOR, "#top-clients tr[data-client]"))
    cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#top-clients tr[data-client] td")]
    say("CLIENTS", *cells[:5])

    chart = q("#chart-active")
    wait_for("the chart's points", 10, lambda: int(chart.get_attribute("data-points") or 0) > 0)
    say("CHART", chart.get_attribute("data-first"), chart.get_attribute("data-points"), int(opened))
    driver.save_screenshot(os.path.join(shots, "dashboard.png"))
    say("READY")

    cmd = sys.stdin.readline().split()
    assert cmd and cmd[0] == "KILLED", cmd
    address, limit = cmd[1], float(cmd[2])
    t0 = time.monotonic()
    row = f'tr[data-server="{address}"] .health'
    try:
        wait_for("the server to turn down", limit + 5, lambda: q(row).text == "down", 0.02)
        say("DOWN", f"{time.monotonic() - t0:.2f}")
    except SystemExit:
        say("NOT-DOWN", f"{time.monotonic() - t0:.2f}")
    driver.save_screenshot(os.path.join(shots, "dashboard-down.png"))

    cmd = sys.stdin.readline().split()
    assert cmd and cmd[0] == "DRAIN", cmd
    button = f'tr[data-server="{cmd[1]}"] button[data-action="drain"]'

    def click_drain():
        q(button).click()
        return q("#confirm").get_attribute("open") is not None
    wait_for("the confirmation", 10, click_drain, 0.2)
    q("#confirm-yes").click()
    state = f'tr[data-server="{cmd[1]}"] .state'
    wait_for("the drain on the page", 10, lambda: q(state).text == "drain")
    say("DRAINED", q(state).text)

    driver.set_window_size(390, 844)
    wait_for("the phone-sized window", 10,
             lambda: driver.execute_script("return window.innerWidth") <= 400)
    overflow = wait_for("a layout", 10, lambda: driver.execute_script(
        "return String(document.documentElement.scrollWidth - window.innerWidth)"))
    driver.save_screenshot(os.path.join(shots, "dashboard-phone.png"))
    say("PHONE", overflow)

    severe = [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
    say("CONSOLE", json.dumps(severe))
finally:
    driver.quit()
say("DONE")
