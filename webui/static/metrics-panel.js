// The metrics panel shared by a job's page and the compare page: a metric picker, the chart options (smoothing,
// log scale, outlier clipping, x axis), CSV/JSON export, and one chart per picked metric with a series per run.
// Training metrics and system use (the worker's sys/* samples) are charted in two groups.

import { defaultKeys, lineChart, metricKeys, metricTitle, seriesOf } from './chart.js';
import { h, replace } from './ui.js';

const STORE = 'twinkle.charts.v1';

function loadPrefs() {
  try {
    return JSON.parse(localStorage.getItem(STORE) || '{}') || {};
  } catch {
    return {};
  }
}

function savePrefs(prefs) {
  try {
    localStorage.setItem(STORE, JSON.stringify(prefs));
  } catch {
    // Private windows may refuse storage; the choices then last for this page only.
  }
}

/** `chart-grad-norm` for "grad_norm", `chart-sys-cpu-percent` for "sys/cpu_percent". */
export function chartId(key) {
  return `chart-${key.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '') || 'metric'}`;
}

function csvCell(value) {
  const text = value === null || value === undefined ? '' : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/**
 * The runs' records as CSV, one row per (run, attempt, step), one column per metric key; with several runs the
 * first columns name the job. Values are written as recorded (strings such as "75.0%" stay as they are).
 */
export function toCsv(runs) {
  const keys = [...new Set(runs.flatMap((r) => (r.records || []).flatMap((rec) => Object.keys(rec.metrics || {}))))];
  const multi = runs.length > 1;
  const head = [...(multi ? ['job_id', 'job_name'] : []), 'attempt', 'step', 'ts', ...keys];
  const lines = [head.map(csvCell).join(',')];
  for (const run of runs) {
    for (const rec of run.records || []) {
      const m = rec.metrics || {};
      const row = [...(multi ? [run.id, run.label] : []), rec.attempt, rec.step, rec.ts, ...keys.map((k) => m[k])];
      lines.push(row.map(csvCell).join(','));
    }
  }
  return `${lines.join('\n')}\n`;
}

export function toJson(runs) {
  const body = runs.length === 1 ? { job_id: runs[0].id, records: runs[0].records } : runs.map((r) => ({ job_id: r.id, name: r.label, records: r.records }));
  return `${JSON.stringify(body, null, 2)}\n`;
}

// A download link whose file is built when clicked (so it always holds the latest records).
function exportLink(text, filename, type, build) {
  const link = h('a', { href: '#', download: filename, class: 'export-link', dataset: { export: type } }, text);
  link.addEventListener('click', () => {
    if (link.dataset.url) URL.revokeObjectURL(link.dataset.url);
    const url = URL.createObjectURL(new Blob([build()], { type }));
    link.dataset.url = url;
    link.href = url;
  });
  return link;
}

/**
 * A panel for `runs` ([{id, label, records}]). Returns {el, update(runs)}; `update` redraws only what changed,
 * keeping each chart's zoom and the open value tables.
 */
export function metricsPanel({ runs: initialRuns, exportName = 'metrics', emptyText = 'No metrics recorded yet.' }) {
  let runs = initialRuns;
  const prefs = { smoothing: 0, logY: false, clip: true, xMode: 'step', picked: null, ...loadPrefs() };
  // System samples are charted against time: their step is only the last step the job had reached.
  const chartOpts = (key = '') => ({
    smoothing: prefs.smoothing,
    logY: prefs.logY,
    clip: prefs.clip,
    xMode: key.startsWith('sys/') && prefs.xMode === 'step' ? 'relative' : prefs.xMode,
    yUnit: /bytes$/.test(key) ? 'bytes' : undefined,
  });

  // ---- controls
  const pickerList = h('div', { class: 'metric-picker-list', id: 'metric-picker' });
  const pickerSummary = h('summary', {}, 'Metrics');
  const picker = h('details', { class: 'metric-picker' }, pickerSummary, pickerList);

  const smoothing = h('input', { type: 'range', id: 'smoothing', min: '0', max: '0.99', step: '0.01', value: String(prefs.smoothing) });
  const smoothingOut = h('output', { for: 'smoothing', id: 'smoothing-value', class: 'mono' }, String(prefs.smoothing));
  const logY = h('input', { type: 'checkbox', id: 'log-y', checked: prefs.logY });
  const clip = h('input', { type: 'checkbox', id: 'clip-outliers', checked: prefs.clip });
  const xMode = h(
    'select',
    { id: 'x-axis' },
    [['step', 'Step'], ['relative', 'Relative time'], ['wall', 'Wall time']].map(([v, t]) => h('option', { value: v, selected: v === prefs.xMode }, t)),
  );
  const exportCsv = exportLink('CSV', `${exportName}.csv`, 'text/csv', () => toCsv(runs));
  const exportJson = exportLink('JSON', `${exportName}.json`, 'application/json', () => toJson(runs));

  const toolbar = h(
    'div',
    { class: 'chart-toolbar', role: 'group', 'aria-label': 'Chart options' },
    picker,
    h('span', { class: 'inline-field' }, h('label', { for: 'smoothing' }, 'Smoothing'), smoothing, smoothingOut),
    h('span', { class: 'checkbox' }, logY, h('label', { for: 'log-y' }, 'Log scale')),
    h('span', { class: 'checkbox' }, clip, h('label', { for: 'clip-outliers' }, 'Clip outliers')),
    h('span', { class: 'inline-field' }, h('label', { for: 'x-axis' }, 'X axis'), xMode),
    h('span', { class: 'export' }, 'Export: ', exportCsv, ' · ', exportJson),
  );

  const trainGrid = h('div', { class: 'charts', id: 'charts' });
  const sysHeading = h('h3', { class: 'charts-heading', id: 'sys-charts-h' }, 'System use');
  const sysGrid = h('div', { class: 'charts', id: 'sys-charts', 'aria-labelledby': 'sys-charts-h' });
  const empty = h('p', { class: 'muted', id: 'charts-empty' }, emptyText);
  const el = h('div', { class: 'metrics-panel' }, toolbar, empty, trainGrid, sysHeading, sysGrid);

  const figures = new Map(); // key -> figure
  let keys = [];

  function picked() {
    const chosen = prefs.picked ? prefs.picked.filter((k) => keys.includes(k)) : [];
    return chosen.length ? chosen : defaultKeys(keys);
  }

  function drawPicker() {
    const on = new Set(picked());
    pickerSummary.textContent = `Metrics (${on.size} of ${keys.length})`;
    replace(
      pickerList,
      keys.map((k) => {
        const id = `pick-${chartId(k).slice(6)}`;
        const box = h('input', { type: 'checkbox', id, value: k, checked: on.has(k) });
        box.addEventListener('change', () => {
          prefs.picked = [...pickerList.querySelectorAll('input:checked')].map((b) => b.value);
          savePrefs(prefs);
          drawPicker();
          drawCharts();
        });
        return h('span', { class: 'checkbox' }, box, h('label', { for: id }, k));
      }),
    );
  }

  function seriesFor(key) {
    return runs.map((r, i) => ({ label: r.label, colour: i, points: seriesOf(r.records, key) }));
  }

  function drawCharts() {
    const want = picked();
    for (const [key, fig] of figures) {
      if (!want.includes(key)) {
        fig.remove();
        figures.delete(key);
      }
    }
    for (const key of want) {
      let fig = figures.get(key);
      const series = seriesFor(key);
      if (fig) {
        fig.redraw({ series, ...chartOpts(key) });
      } else {
        fig = lineChart({ id: chartId(key), title: metricTitle(key), yLabel: key, series, ...chartOpts(key) });
        fig.dataset.metric = key;
        figures.set(key, fig);
      }
      // Keep the picker's order on screen.
      (key.startsWith('sys/') ? sysGrid : trainGrid).append(fig);
    }
    const hasSys = want.some((k) => k.startsWith('sys/'));
    sysHeading.hidden = !hasSys;
    sysGrid.hidden = !hasSys;
    trainGrid.hidden = !want.some((k) => !k.startsWith('sys/'));
    empty.hidden = keys.length > 0;
    toolbar.hidden = keys.length === 0;
    // Drawn while detached the charts guessed their width: draw again at the real one.
    requestAnimationFrame(() => resized());
  }

  function redrawAll() {
    for (const [key, fig] of figures) fig.redraw(chartOpts(key));
  }

  let lastWidth = 0;
  function resized() {
    const width = trainGrid.clientWidth || sysGrid.clientWidth;
    if (!width || width === lastWidth) return;
    lastWidth = width;
    for (const fig of figures.values()) fig.redraw({});
  }
  if (typeof ResizeObserver !== 'undefined') {
    let frame = 0;
    const observer = new ResizeObserver(() => {
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(resized);
    });
    observer.observe(el);
  }

  smoothing.addEventListener('input', () => {
    prefs.smoothing = Number(smoothing.value);
    smoothingOut.textContent = smoothing.value;
    savePrefs(prefs);
    redrawAll();
  });
  logY.addEventListener('change', () => {
    prefs.logY = logY.checked;
    savePrefs(prefs);
    redrawAll();
  });
  clip.addEventListener('change', () => {
    prefs.clip = clip.checked;
    savePrefs(prefs);
    redrawAll();
  });
  xMode.addEventListener('change', () => {
    prefs.xMode = xMode.value;
    savePrefs(prefs);
    redrawAll();
  });

  let dataKey = '';
  function update(next) {
    runs = next;
    const key = JSON.stringify(runs.map((r) => [r.id, (r.records || []).length, (r.records || [])[(r.records || []).length - 1]]));
    if (key === dataKey) return;
    dataKey = key;
    const newKeys = [...new Set(runs.flatMap((r) => metricKeys(r.records)))];
    if (JSON.stringify(newKeys) !== JSON.stringify(keys)) {
      keys = newKeys;
      drawPicker();
    }
    drawCharts();
  }

  update(runs);
  return { el, update };
}
