"""Charts, the metrics panel, compare and the log view, in real Chromium under the UI's CSP.

Each chart test draws a figure into a blank page of the UI's origin and drives it the way a person does (mouse
hover, drag, the toolbar's controls); the assertions read what is on screen (tooltip text, SVG paths, ticks).
"""

from __future__ import annotations

import csv
import io
import itertools
import json

import pytest
from playwright.sync_api import expect
from webui_testkit import shot

pytestmark = pytest.mark.browser

# A loss curve that falls from 3 to ~1 with noise, 40 steps, one record a second.
LOSS = [{"attempt": 1, "step": s, "ts": 1_700_000_000 + s, "metrics": {"loss": f"{3 / (1 + s / 8) + 0.15 * ((s * 7) % 5 - 2) / 2:.4f}"}} for s in range(1, 41)]

DRAW = """
  document.body.replaceChildren();
  const fig = m.lineChart({id: 'c', title: 'Loss', yLabel: 'loss', ...arg});
  fig.style.width = '700px';
  document.body.append(fig);
  fig.redraw({});
"""


def _points(records, key="loss"):
    return [{"step": r["step"], "ts": r["ts"], "y": float(r["metrics"][key])} for r in records if key in r["metrics"]]


def test_metric_values_parse_as_numbers_where_they_can(modules):
    values = [0.5, "1e-4", "75.0%", "1,234 tok/s", " 3.5 ", "nan", "inf", "abc", None, True, "-2.5e-3"]
    assert modules("chart.js", "return arg.map(m.parseMetric);", values) == [
        0.5, 1e-4, 75.0, 1234, 3.5, None, None, None, None, 1, -2.5e-3,
    ]


def test_every_recorded_metric_is_offered_and_the_usual_ones_are_picked(modules):
    records = [
        {"step": 1, "ts": 1, "metrics": {"loss": "1", "lr": "1e-4", "grad_norm": "2", "accuracy": "75.0%",
                                          "tokens_per_second": "1,200", "custom/thing": "3", "note": "warmup"}},
        {"step": 1, "ts": 2, "metrics": {"sys/cpu_percent": "93", "sys/rss_bytes": "123456789"}},
    ]
    out = modules("chart.js", "return [m.metricKeys(arg), m.defaultKeys(m.metricKeys(arg))];", records)
    keys, defaults = out
    assert keys == ["loss", "lr", "grad_norm", "accuracy", "tokens_per_second", "custom/thing", "sys/cpu_percent", "sys/rss_bytes"]
    assert "note" not in keys  # never numeric
    assert defaults == ["loss", "lr", "grad_norm", "accuracy", "tokens_per_second", "sys/cpu_percent", "sys/rss_bytes"]


def test_system_samples_keep_every_sample_in_time_order(modules):
    records = [
        {"attempt": 1, "step": 0, "ts": 3, "metrics": {"sys/cpu_percent": "30"}},
        {"attempt": 1, "step": 0, "ts": 1, "metrics": {"sys/cpu_percent": "10"}},
        {"attempt": 1, "step": 0, "ts": 2, "metrics": {"sys/cpu_percent": "20"}},
    ]
    pts = modules("chart.js", "return m.seriesOf(arg, 'sys/cpu_percent');", records)
    assert [(p["ts"], p["y"]) for p in pts] == [(1, 10), (2, 20), (3, 30)]


def test_ema_is_debiased_and_zero_weight_changes_nothing(modules):
    values = [1, 3, 1, 3, 1, 3]
    raw, smooth = modules("chart.js", "return [m.ema(arg, 0), m.ema(arg, 0.6)];", values)
    assert raw == values
    assert smooth[0] == pytest.approx(1)  # debiased: the first point is not pulled toward 0
    assert max(smooth[2:]) - min(smooth[2:]) < 1  # the zigzag of 2 is damped
    assert all(1 <= v <= 3 for v in smooth)


def test_one_spike_does_not_flatten_the_range(modules):
    values = [1 + 0.01 * i for i in range(50)] + [1000]
    clipped, full = modules("chart.js", "return [m.robustRange(arg), m.robustRange(arg, {clip: false})];", values)
    assert clipped["clipped"] is True and clipped["hi"] < 3
    assert full["clipped"] is False and full["hi"] >= 1000


def test_hovering_shows_a_tooltip_with_the_value_under_the_cursor(modules, page):
    modules("chart.js", DRAW + "return true;", {"points": _points(LOSS)})
    hit = page.locator("#c rect.chart-hit")
    box = hit.bounding_box()
    # Step 10 of 1..40 sits at 9/39 of the plot's width.
    page.mouse.move(box["x"] + box["width"] * 9 / 39, box["y"] + box["height"] / 2)
    tooltip = page.locator("#c .chart-tooltip")
    assert tooltip.is_visible()
    expected = float(LOSS[9]["metrics"]["loss"])
    assert "Optimizer step: 10" in tooltip.inner_text()
    assert float(tooltip.locator(".chart-tooltip-value").inner_text()) == pytest.approx(expected)
    assert page.locator("#c circle.chart-hover").first.get_attribute("visibility") == "visible"
    shot(page, "chart-tooltip")
    page.mouse.move(box["x"] - 40, box["y"] - 40)
    assert tooltip.is_hidden()


def test_smoothing_draws_a_smooth_line_over_the_faded_raw_one(modules, page):
    body = DRAW + """
      const before = fig.querySelector('path.chart-line').getAttribute('d');
      fig.redraw({smoothing: 0.9});
      return {before, raw: fig.querySelector('path.chart-line-raw').getAttribute('d'),
              smooth: fig.querySelector('path.chart-smooth').getAttribute('d')};
    """
    out = modules("chart.js", body, {"points": _points(LOSS)})
    assert out["raw"] == out["before"]  # the raw line is kept, faded, behind
    assert out["smooth"] != out["before"]

    def ys(d):
        return [float(p.split(",")[1]) for p in d.replace("M", "L").split("L")[1:]]

    def wiggle(y):
        return sum(abs(a - b) for a, b in itertools.pairwise(y))

    assert wiggle(ys(out["smooth"])) < wiggle(ys(out["raw"])) * 0.6
    shot(page, "chart-smoothed")


def test_a_spike_is_clipped_with_a_marker_and_can_be_shown(modules, page):
    pts = _points(LOSS)
    pts[20] = {**pts[20], "y": 500.0}
    body = DRAW + """
      const ticks = () => [...fig.querySelectorAll('text.chart-tick')].filter((t) => t.getAttribute('text-anchor') === 'end').map((t) => Number(t.textContent));
      const clipped = {ticks: ticks(), outliers: fig.querySelectorAll('.chart-outlier').length, note: fig.querySelector('.chart-note').textContent};
      fig.redraw({clip: false});
      return {clipped, full: {ticks: ticks(), outliers: fig.querySelectorAll('.chart-outlier').length}};
    """
    out = modules("chart.js", body, {"points": pts})
    assert max(out["clipped"]["ticks"]) < 10, out
    assert out["clipped"]["outliers"] == 1 and "outlier" in out["clipped"]["note"]
    assert max(out["full"]["ticks"]) >= 400 and out["full"]["outliers"] == 0
    page.evaluate("document.querySelector('#c').redraw({clip: true})")
    shot(page, "chart-outlier-clipped")


def test_log_scale_puts_ticks_on_decades(modules):
    pts = [{"step": s, "ts": s, "y": 10 ** (-s / 10)} for s in range(0, 41)]
    body = DRAW + """
      fig.redraw({logY: true});
      return [...fig.querySelectorAll('text.chart-tick')].filter((t) => t.getAttribute('text-anchor') === 'end').map((t) => t.textContent);
    """
    assert modules("chart.js", body, {"points": pts}) == ["1.00e-4", "0.001", "0.01", "0.1", "1"]


def test_dragging_zooms_the_x_axis_and_reset_brings_everything_back(modules, page):
    modules("chart.js", DRAW + "return true;", {"points": _points(LOSS)})
    fig = page.locator("#c")
    box = fig.locator("rect.chart-hit").bounding_box()
    y = box["y"] + box["height"] / 2
    assert fig.locator("circle.chart-dot").count() == 40
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    shown = fig.locator("circle.chart-dot").count()
    assert 8 <= shown <= 12, shown  # about a quarter of the 40 steps
    reset = fig.get_by_role("button", name="Reset zoom")
    assert reset.is_visible()
    shot(page, "chart-zoomed")
    reset.click()
    assert fig.locator("circle.chart-dot").count() == 40
    assert reset.is_hidden()


def test_time_axes_read_as_durations_and_clock_times(modules):
    body = DRAW + """
      const xt = () => [...fig.querySelectorAll('text.chart-tick')].filter((t) => t.getAttribute('text-anchor') === 'middle').map((t) => t.textContent);
      const label = () => [...fig.querySelectorAll('text.chart-label')].map((t) => t.textContent);
      fig.redraw({xMode: 'relative'});
      const relative = {ticks: xt(), label: label()};
      fig.redraw({xMode: 'wall'});
      return {relative, wall: {ticks: xt(), label: label()}};
    """
    out = modules("chart.js", body, {"points": _points(LOSS)})
    assert "Time since start" in out["relative"]["label"]
    assert all(t.endswith("s") for t in out["relative"]["ticks"]), out
    assert "Wall-clock time" in out["wall"]["label"]
    assert all(t.count(":") == 2 for t in out["wall"]["ticks"]), out


def test_the_chart_fills_the_width_it_is_given(modules, page):
    modules("chart.js", DRAW + "fig.style.width = '1200px'; fig.redraw({}); return true;", {"points": _points(LOSS)})
    width = page.locator("#c svg").bounding_box()["width"]
    assert width > 1100, width


def test_compare_overlays_one_series_per_run_with_a_legend(modules, page):
    runs = [
        {"id": f"job{i}", "label": f"run {i}", "records": [
            {**r, "metrics": {"loss": str(float(r["metrics"]["loss"]) * (1 + i / 4)), "lr": "1e-4"}} for r in LOSS
        ]}
        for i in range(3)
    ]
    body = """
      document.body.replaceChildren();
      localStorage.clear();
      const panel = m.metricsPanel({runs: arg});
      panel.el.style.width = '1200px';
      document.body.append(panel.el);
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
      const fig = document.querySelector('#chart-loss');
      return {lines: fig.querySelectorAll('path.chart-line').length, series: fig.dataset.series,
              legend: [...fig.querySelectorAll('.chart-legend li')].map((li) => li.textContent),
              charts: [...document.querySelectorAll('.chart-figure')].map((f) => f.id)};
    """
    out = modules("metrics-panel.js", body, runs)
    assert out["lines"] == 3 and out["series"] == "3"
    assert out["legend"] == ["run 0", "run 1", "run 2"]
    assert out["charts"] == ["chart-loss", "chart-lr"]
    # The tooltip names every run at the hovered step.
    box = page.locator("#chart-loss rect.chart-hit").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    rows = page.locator("#chart-loss .chart-tooltip-row")
    assert rows.count() == 3
    assert [r.split(":")[0] for r in rows.all_inner_texts()] == ["run 0", "run 1", "run 2"]
    shot(page, "chart-compare")


def test_the_picker_adds_and_removes_charts_and_remembers(modules, page):
    records = [{"attempt": 1, "step": s, "ts": s, "metrics": {"loss": str(1 / s), "custom": str(s)}} for s in range(1, 9)]
    body = """
      document.body.replaceChildren();
      localStorage.clear();
      const panel = m.metricsPanel({runs: [{id: 'j', label: 'j', records: arg}]});
      document.body.append(panel.el);
      return true;
    """
    modules("metrics-panel.js", body, records)
    assert page.locator(".chart-figure").evaluate_all("els => els.map(e => e.id)") == ["chart-loss"]
    page.locator(".metric-picker summary").click()
    page.get_by_role("checkbox", name="custom").check()
    assert page.locator(".chart-figure").evaluate_all("els => els.map(e => e.id)") == ["chart-loss", "chart-custom"]
    page.get_by_role("checkbox", name="loss", exact=True).uncheck()
    assert page.locator(".chart-figure").evaluate_all("els => els.map(e => e.id)") == ["chart-custom"]
    assert json.loads(page.evaluate("localStorage.getItem('twinkle.charts.v1')"))["picked"] == ["custom"]


def test_export_writes_every_record_as_csv_and_json(modules):
    runs = [{"id": "j1", "label": "first, run", "records": [
        {"attempt": 1, "step": 1, "ts": 10.5, "metrics": {"loss": "2.0", "acc": "75.0%"}},
        {"attempt": 1, "step": 2, "ts": 11.5, "metrics": {"loss": "1.5"}},
    ]}]
    single, many, as_json = modules(
        "metrics-panel.js", "return [m.toCsv(arg), m.toCsv([...arg, {...arg[0], id: 'j2'}]), m.toJson(arg)];", runs
    )
    rows = list(csv.reader(io.StringIO(single)))
    assert rows == [["attempt", "step", "ts", "loss", "acc"], ["1", "1", "10.5", "2.0", "75.0%"], ["1", "2", "11.5", "1.5", ""]]
    rows = list(csv.reader(io.StringIO(many)))
    assert rows[0][:2] == ["job_id", "job_name"] and rows[1][:2] == ["j1", "first, run"] and rows[3][0] == "j2"
    assert json.loads(as_json) == {"job_id": "j1", "records": runs[0]["records"]}


def test_log_search_highlights_every_match_and_stderr_is_marked(modules, page):
    body = """
      document.body.replaceChildren();
      const log = m.logView({});
      document.body.append(log.el);
      log.add('step 1 loss=2.0', {ts: 1700000000.25, stream: 'stdout'});
      log.add('Traceback: LOSS exploded', {ts: 1700000001, stream: 'stderr'});
      log.add('<b>step 2</b> loss=1.5', {ts: 1700000002, stream: 'stdout'});
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
      return m.splitMatches('a Loss and a loss', 'LOSS');
    """
    assert modules("log-view.js", body) == ["a ", "Loss", " and a ", "loss", ""]
    page.get_by_label("Search the log").fill("loss")
    marks = page.locator("#log mark")
    marks.first.wait_for()
    assert marks.count() == 3
    assert page.locator("#log-search-count").inner_text() == "3 matches on 3 lines"
    assert page.locator("#log mark.current").count() == 1
    assert page.locator("#log b").count() == 0  # text, never markup
    stderr = page.locator("#log .log-stderr")
    assert stderr.count() == 1 and "exploded" in stderr.inner_text()
    assert page.locator("#log .log-ts").first.is_hidden()
    page.get_by_label("Timestamps").check()
    assert page.locator("#log .log-ts").first.is_visible()
    shot(page, "log-search")
    page.get_by_label("Search the log").fill("")
    expect(page.locator("#log mark")).to_have_count(0)


def test_system_use_reads_in_its_own_units(modules):
    body = """
      const f = m.bytesTickFormatter([383e6, 383.5e6, 384e6]);
      return [[383e6, 383.5e6, 384e6].map(f), m.metricTitle('sys/cpu_percent'), m.metricTitle('sys/rss_bytes'),
              m.metricTitle('sys/gpu1/util_percent'), m.metricTitle('sys/gpu0/memory_bytes'), m.metricTitle('grad_norm'),
              m.metricTitle('eval/reward_accuracy')];
    """
    ticks, *titles = modules("chart.js", body)
    assert len(set(ticks)) == 3 and all(t.endswith(" MB") for t in ticks), ticks
    assert titles == ["CPU use (%)", "Memory (RSS)", "GPU 1 utilisation (%)", "GPU 0 memory", "Grad norm", "Reward accuracy (eval)"]


def test_a_warmup_is_a_regime_not_an_outlier(modules):
    warmup = [1e-4 * min(1, s / 5) for s in range(1, 31)]  # 4 of 30 values below a flat bulk
    early = [3 / (1 + s / 6) for s in range(1, 31)]
    out = modules("chart.js", "return arg.map((v) => m.robustRange(v));", [warmup, early])
    assert [r["clipped"] for r in out] == [False, False]
    assert out[0]["lo"] < 2e-5


def test_a_long_run_draws_with_a_few_points_per_pixel_and_keeps_its_extremes(modules):
    body = """
      const pixels = Array.from({length: 10000}, (_, i) => [i / 20, i === 5003 ? 0 : 100 + (i % 7)]);
      const d = m.pathData(pixels, 500);
      const ys = d.replace('M', 'L').split('L').slice(1).map((p) => Number(p.split(',')[1]));
      return {n: ys.length, min: Math.min(...ys), max: Math.max(...ys)};
    """
    out = modules("chart.js", body)
    assert out["n"] <= 4 * 500  # at most four points per pixel column
    assert out["min"] == 0 and out["max"] == 106  # the one-point dip and the top survive
