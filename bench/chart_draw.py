"""How long the web UI's hand-drawn SVG charts take to draw and to redraw, in headless Chromium.

Serves the UI alone (no API) in a uvicorn thread, opens it in Debian's Chromium through Playwright, and times
``lineChart`` from ``webui/static/chart.js`` drawing one chart at the page's width, then redrawing it (what a
smoothing-slider move does), for 3 series of ``--points`` points each (a compare page of three long runs)
against a baseline in the same page: 3 series of 50 points. Prints the medians and their ratio. Lines with
more than two points per pixel column are decimated (``pathData``) and the value tables are built only when
opened, so the ratio stays far below the 100x more points. Target: a redraw of 3 x 5,000 points under 50 ms on
an idle machine, so the smoothing slider feels live.

    python bench/chart_draw.py [--points 5000] [--samples 15]
"""

from __future__ import annotations

import argparse
import os
import statistics

from fastapi import FastAPI

import webui
from scheduler.testing.net import serving

CHROMIUM = os.environ.get("TWINKLE_TEST_CHROMIUM", "/usr/bin/chromium")

TIMING = """
async ([n, samples]) => {
  const m = await import(PREFIX + '/chart.js');
  const series = [0, 1, 2].map((k) => ({label: `run ${k}`, points: Array.from({length: n}, (_, i) =>
      ({step: i + 1, ts: 1.7e9 + i, y: 3 / (1 + i / 50) + 0.1 * Math.sin(i * (k + 1))}))}));
  const draw = [], redraw = [];
  for (let s = 0; s < samples; s += 1) {
    document.body.replaceChildren();
    let t = performance.now();
    const fig = m.lineChart({id: 'b' + s, title: 'Loss', series});
    fig.style.width = '1200px';
    document.body.append(fig);
    fig.redraw({});
    fig.getBoundingClientRect();  // layout included
    draw.push(performance.now() - t);
    t = performance.now();
    fig.redraw({smoothing: 0.5 + s / 100});
    fig.getBoundingClientRect();
    redraw.push(performance.now() - t);
  }
  return {draw, redraw};
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=15)
    args = parser.parse_args()

    app = FastAPI()
    webui.mount(app)

    from playwright.sync_api import sync_playwright

    with serving(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"{url}/login")
        script = TIMING.replace("PREFIX", repr(f"/ui/{webui.asset_version()}"))
        results = {}
        for n in (50, args.points):
            page.evaluate(script, [n, 3])  # warm-up: JIT and fonts
            results[n] = page.evaluate(script, [n, args.samples])
        browser.close()

    print(f"load average: {os.getloadavg()[0]:.2f} (1 min)")
    for kind in ("draw", "redraw"):
        base = statistics.median(results[50][kind])
        big = statistics.median(results[args.points][kind])
        print(
            f"{kind:6s}: 3 x {args.points} points {big:7.1f} ms median | baseline 3 x 50 points {base:6.1f} ms | "
            f"ratio {big / base:5.1f}x"
        )


if __name__ == "__main__":
    main()
