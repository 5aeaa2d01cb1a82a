#!/usr/bin/env python3
"""Watches the gateway's status page in a real headless Chromium (selenium + chromedriver).

Prints one JSON line whenever what the page shows changes:
  {"reloaded": false, "devices": [{"name": ..., "state": ..., "points": {name: text}}], "commands": n}
"reloaded" turns true if the page was ever loaded again (the test wants live updates, not reloads).
Ends after --seconds, or at a line on stdin (or its end). Optional --screenshot PATH once devices show.
"""
import argparse, json, select, signal, sys, time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ap = argparse.ArgumentParser()
ap.add_argument("url")
ap.add_argument("--seconds", type=float, default=60)
ap.add_argument("--screenshot")
ap.add_argument("--width", type=int, default=412)
ap.add_argument("--height", type=int, default=915)
ap.add_argument("--chromium", default="/usr/bin/chromium")
ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
a = ap.parse_args()

opts = webdriver.ChromeOptions()
opts.binary_location = a.chromium
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={a.width},{a.height}"):
    opts.add_argument(arg)
# SIGTERM ends it through `finally` below, so that chromedriver and Chromium go with it (killed
# outright, the script left chromedriver running after every test run).
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
driver = webdriver.Chrome(service=Service(a.chromedriver), options=opts)
try:
    driver.get(a.url)
    driver.execute_script("window.__loadedOnce = true;")
    print(json.dumps({"title": driver.title}), flush=True)
    SNAP = """
      return {
        reloaded: window.__loadedOnce !== true,
        devices: [...document.querySelectorAll('.device')].map(d => ({
          name: d.dataset.name,
          state: d.querySelector('.state').textContent,
          points: Object.fromEntries([...d.querySelectorAll('.point')].map(p => [p.dataset.name, p.querySelector('.value').textContent]))
        })),
        commands: document.querySelectorAll('.command').length,
        mqtt: document.getElementById('mqtt').textContent
      };"""
    last, shot = None, a.screenshot
    deadline = time.time() + a.seconds
    while time.time() < deadline:
        snap = driver.execute_script(SNAP)
        if snap != last:
            print(json.dumps(snap, ensure_ascii=False), flush=True)
            last = snap
        if shot and snap["devices"]:
            # Drawn, with its fonts, before the picture is taken.
            driver.execute_async_script("document.fonts.ready.then(() => requestAnimationFrame(() => arguments[0]()))")
            driver.save_screenshot(shot)
            print(json.dumps({"screenshot": shot}), flush=True)
            shot = None
        r, _, _ = select.select([sys.stdin], [], [], 0.2)
        if r:   # a line, or stdin closed: done
            break
finally:
    driver.quit()
