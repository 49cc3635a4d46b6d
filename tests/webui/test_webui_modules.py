"""The pages' pure logic, run in real Chromium: chart scaling and series, error mapping, file checks, formats."""

from __future__ import annotations

import pytest
from webui_testkit import shot

pytestmark = pytest.mark.browser


def test_nice_ticks_are_round_and_cover_the_range(modules):
    assert modules("chart.js", "return m.niceTicks(0, 1, 5);") == [0, 0.2, 0.4, 0.6, 0.8, 1]
    assert modules("chart.js", "return m.niceTicks(3, 47, 4);") == [10, 20, 30, 40]
    assert modules("chart.js", "return m.niceTicks(0.0000123, 0.0000876, 3);") == [2e-5, 4e-5, 6e-5, 8e-5]
    assert modules("chart.js", "return m.niceTicks(5, 5);") == [5]


def test_series_parses_string_values_and_keeps_the_latest_attempt_per_step(modules):
    records = [
        {"attempt": 1, "step": 20, "metrics": {"loss": "2.5", "lr": "1e-4", "grad_norm": "0.9"}},
        {"attempt": 1, "step": 10, "metrics": {"loss": "3.0", "learning rate": "5e-5"}},
        {"attempt": 2, "step": 20, "metrics": {"loss": "2.4"}},  # the resumed attempt redid step 20
        {"attempt": 2, "step": 30, "metrics": {"train/loss": "not a number"}},
        {"attempt": 2, "step": 40, "metrics": {"accuracy": "0.5"}},
    ]
    loss = modules("chart.js", "return m.series(arg, ['loss']);", records)
    assert [(p["x"], p["y"]) for p in loss] == [(10, 3.0), (20, 2.4)]
    lr = modules("chart.js", "return m.series(arg, ['lr', 'learning_rate']);", records)
    assert [(p["x"], p["y"]) for p in lr] == [(10, 5e-5), (20, 1e-4)]


def test_line_chart_draws_one_path_through_every_point(modules):
    body = """
      const fig = m.lineChart({id: 't', title: 'Loss', points: arg});
      document.body.append(fig);
      const d = fig.querySelector('path.chart-line').getAttribute('d');
      return {moves: (d.match(/[ML]/g) || []).length, dots: fig.querySelectorAll('circle.chart-dot').length,
              label: fig.querySelector('svg title').textContent, points: fig.dataset.points};
    """
    out = modules("chart.js", body, [{"x": i, "y": 1 / (i + 1)} for i in range(5)])
    assert out == {"moves": 5, "dots": 5, "label": "Loss: 5 points, latest 0.2 at optimizer step 4.", "points": "5"}
    empty = modules("chart.js", "return m.lineChart({id: 'e', title: 'Loss', points: []}).textContent;")
    assert "No values yet" in empty


def test_api_errors_become_field_messages(modules):
    body = """
      const cases = [
        new Response(JSON.stringify({error: {code: 'invalid_request', message: 'bad', fields: {
            'request.device_groups[0].ranks': 'too many', file: ['not python', 'too big']}}}), {status: 422,
            headers: {'Content-Type': 'application/json'}}),
        new Response(JSON.stringify({detail: [{loc: ['body', 'file'], msg: 'Field required'}]}), {status: 422}),
        new Response(JSON.stringify({error: {code: 'payload_too_large', message: 'over 1 MB', fields: {}}}), {status: 413}),
        new Response('<html>Request Entity Too Large</html>', {status: 413}),
        new Response('oops', {status: 502, statusText: 'Bad Gateway'}),
      ];
      const out = [];
      for (const r of cases) { const e = await m.toError(r); out.push([e.status, e.code, e.message, e.fields]); }
      return out;
    """
    out = modules("api.js", body)
    assert out[0] == [
        422,
        "invalid_request",
        "bad",
        {"request.device_groups[0].ranks": "too many", "file": "not python; too big"},
    ]
    assert out[1][3] == {"file": "Field required"}
    assert out[2][:2] == [413, "payload_too_large"] and out[2][3] == {"file": "over 1 MB"}
    assert out[3][0] == 413 and "larger than the server accepts" in out[3][3]["file"]
    assert out[4][:2] == [502, "http_502"] and "502" in out[4][2]


def test_field_names_from_the_api_map_to_form_fields(modules):
    body = "return arg.map((k) => m.normaliseField(k));"
    keys = ["request.device_groups[1].ranks", "device_groups.0.device_type", "body.file", "entrypoint"]
    assert modules("pages/submit.js", body, keys) == [
        "device_groups.1.ranks",
        "device_groups.0.device_type",
        "file",
        "entrypoint",
    ]


def test_file_problem_accepts_py_and_zip_only(modules):
    body = """
      const f = (name, text = 'x') => m.fileProblem(new File([text], name));
      return [f('train.py'), f('folder.ZIP'), f('notes.txt'), f('README'), f('empty.py', ''), m.fileProblem(null)];
    """
    ok_py, ok_zip, txt, bare, empty, none = modules("pages/submit.js", body)
    assert ok_py is None and ok_zip is None
    assert "is a .txt file" in txt and ".py" in txt
    assert "without an extension" in bare
    assert "empty" in empty
    assert "Choose" in none


def test_formats(modules):
    body = """
      return [m.formatDuration(5), m.formatDuration(65), m.formatDuration(3725), m.formatDuration(90000),
              m.formatDuration(null), m.formatBytes(512), m.formatBytes(1536), m.formatBytes(5 * 1024 ** 3),
              m.formatNumber(0.000123), m.formatNumber(2.345678), m.parseTime('2025-01-01T00:00:00').toISOString()];
    """
    assert modules("ui.js", body) == [
        "5s",
        "1m 05s",
        "1h 02m",
        "1d 1h",
        "—",
        "512 B",
        "1.5 KB",
        "5.0 GB",
        "1.23e-4",
        "2.346",
        "2025-01-01T00:00:00.000Z",
    ]


def test_axis_labels_share_one_format_with_enough_decimals(modules):
    body = "return arg.map((ticks) => { const f = m.tickFormatter(ticks); return ticks.map(f); });"
    cases = [[0.0009, 0.00095, 0.001, 0.00105, 0.0011], [0, 0.2, 0.4, 1], [10, 20, 30], [2e-5, 4e-5], [5.6, 5.8, 6]]
    assert modules("chart.js", body, cases) == [
        ["0.00090", "0.00095", "0.00100", "0.00105", "0.00110"],
        ["0.0", "0.2", "0.4", "1.0"],
        ["10", "20", "30"],
        ["2.0e-5", "4.0e-5"],
        ["5.6", "5.8", "6.0"],
    ]


def test_long_tick_labels_widen_the_margin_instead_of_being_clipped(modules, page):
    body = """
      const fig = m.lineChart({id: 'lr', title: 'Learning rate', points: arg});
      fig.style.width = '360px';
      document.body.append(fig);
      const svg = fig.querySelector('svg').getBoundingClientRect();
      return [...fig.querySelectorAll('text.chart-tick')].map((t) => t.getBoundingClientRect().left - svg.left);
    """
    lefts = modules("chart.js", body, [{"x": i, "y": 0.0009 + i * 0.00005} for i in range(5)])
    assert lefts and min(lefts) >= 0, lefts
    shot(page, "chart-learning-rate")


def test_queue_text_names_the_place_and_the_expected_start(modules):
    body = """
      const soon = new Date(Date.now() + 3 * 3600 * 1000).toISOString();
      const mk = (j) => { const n = m.queueInfo(j); return n ? n.textContent : null; };
      return [
        mk({phase: 'queued', queue_position: 2, expected_start_at: soon, pending_reason: 'waiting for a free worker'}),
        mk({phase: 'held', queue_position: null, expected_start_at: null, pending_reason: 'held: no worker offers 8 × cuda'}),
        mk({phase: 'running', queue_position: null, pending_reason: null}),
      ];
    """
    queued, held, running = modules("model.js", body)
    assert queued.startswith("#2 in queue") and "expected to start ~" in queued and "(estimate)" in queued
    assert held.startswith("Held") and "#" not in held
    assert running is None
