// Line charts drawn by hand as SVG, so the page fetches nothing from elsewhere and stays small (see README: why
// not a vendored library). Colours come from CSS classes, so charts follow the light/dark theme and the strict CSP
// (positions set from script go through the CSSOM, which `style-src 'self'` allows; no inline style attributes).
//
// The pure parts (parsing, series, smoothing, ranges, ticks) are exported on their own and tested in Chromium;
// `lineChart` draws one interactive figure: hover tooltip, EMA smoothing, log y, drag-to-zoom, outlier clipping,
// several series (one per run when comparing).

import { formatBytes, formatDuration, formatNumber, h } from './ui.js';

const SVG = 'http://www.w3.org/2000/svg';
const DEFAULT_W = 560;
const H = 240;
const M = { top: 12, right: 16, bottom: 40 };
const CHAR_W = 7.4; // width of one tick-label character at 13px
export const SERIES_COLOURS = 8; // .series-0 … .series-7 in app.css

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

// ---------------------------------------------------------------- values

/**
 * A metric value as a number, or null. Values arrive as strings ("0.53", "1e-4") and sometimes with a unit or
 * a percent sign (DPOMetric's "75.0%", "1,234 tok/s"): the leading number counts. NaN and infinities are null.
 */
export function parseMetric(value) {
  if (typeof value === 'number') return Number.isFinite(value) ? value : null;
  if (typeof value === 'boolean') return value ? 1 : 0;
  if (typeof value !== 'string') return null;
  const match = /^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?/.exec(value.replace(/(\d),(?=\d{3}\b)/g, '$1'));
  if (!match) return null;
  const n = Number(match[0]);
  return Number.isFinite(n) ? n : null;
}

const norm = (k) => k.toLowerCase().replace(/[\s_-]/g, '');

/** Every metric key that has at least one numeric value, in first-seen order. */
export function metricKeys(records) {
  const keys = new Set();
  for (const r of records || []) for (const [k, v] of Object.entries(r.metrics || {})) if (parseMetric(v) !== null) keys.add(k);
  return [...keys];
}

// What a training run's page shows before anyone picks: the usual training curves and system use.
const DEFAULT_NAMES = ['loss', 'trainloss', 'lr', 'learningrate', 'gradnorm', 'accuracy', 'acc', 'rewardaccuracy', 'reward', 'tokenspersecond', 'tokenspersec', 'tokenss', 'throughput', 'speed', 'samplespersecond', 'iterationspersecond', 'tokens', 'numtokens'];

/** The keys charted by default: known training metrics (loss, lr, grad norm, accuracy, speed, tokens) and sys/*. */
export function defaultKeys(keys) {
  const picked = keys.filter((k) => k.startsWith('sys/') || DEFAULT_NAMES.includes(norm(k.split('/').pop())));
  return picked.length ? picked : keys.slice(0, 4);
}

/** A readable title for a metric key: "grad_norm" → "Grad norm", "sys/cpu_percent" → "System: cpu percent". */
export function metricTitle(key) {
  const known = {
    loss: 'Loss', lr: 'Learning rate', learning_rate: 'Learning rate', grad_norm: 'Grad norm',
    'sys/cpu_percent': 'CPU use (%)', 'sys/rss_bytes': 'Memory (RSS)',
  };
  if (known[key]) return known[key];
  const gpu = /^sys\/gpu(\d+)\/(util_percent|memory_bytes)$/.exec(key);
  if (gpu) return gpu[2] === 'util_percent' ? `GPU ${gpu[1]} utilisation (%)` : `GPU ${gpu[1]} memory`;
  const [ns, name] = key.includes('/') ? [key.slice(0, key.lastIndexOf('/')), key.slice(key.lastIndexOf('/') + 1)] : ['', key];
  const words = name.replace(/[_-]+/g, ' ').trim();
  const text = words ? words[0].toUpperCase() + words.slice(1) : key;
  if (ns === 'sys') return `System: ${text.toLowerCase()}`;
  return ns ? `${text} (${ns})` : text;
}

/**
 * Points [{step, ts, y}] of one metric from the API's records, sorted by step. `key` is an exact key, or a list
 * of names compared without case, spaces or underscores (last path part). A step recorded by several attempts (a
 * resumed job) keeps the latest attempt's value.
 */
export function seriesOf(records, key) {
  // System samples (sys/*) are taken every few seconds whatever the step: every one counts, in time order.
  if (typeof key === 'string' && key.startsWith('sys/')) {
    return (records || [])
      .map((r) => ({ step: Number(r.step ?? 0), ts: Number(r.ts ?? NaN), y: parseMetric((r.metrics || {})[key]), attempt: r.attempt ?? 0 }))
      .filter((p) => p.y !== null && Number.isFinite(p.ts))
      .sort((a, b) => a.ts - b.ts);
  }
  const byStep = new Map();
  const wanted = Array.isArray(key) ? key.map(norm) : null;
  for (const r of records || []) {
    if (r.step === null || r.step === undefined) continue;
    let raw;
    if (wanted) {
      for (const [k, v] of Object.entries(r.metrics || {})) if (wanted.includes(norm(k.split('/').pop()))) raw = v;
    } else {
      raw = (r.metrics || {})[key];
    }
    const y = parseMetric(raw);
    if (y === null) continue;
    const prev = byStep.get(r.step);
    if (!prev || (r.attempt ?? 0) >= prev.attempt) byStep.set(r.step, { step: Number(r.step), ts: Number(r.ts ?? NaN), y, attempt: r.attempt ?? 0 });
  }
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

/** Back-compatible: points [{x: step, y}] for the first of `names` present. */
export function series(records, names) {
  return seriesOf(records, names).map((p) => ({ x: p.step, y: p.y, attempt: p.attempt }));
}

/** x for each point: the step, seconds since the run's first record, or the wall-clock time (epoch seconds). */
export function withX(points, xMode) {
  const t0 = points.length ? points[0].ts : 0;
  return points.map((p) => ({ ...p, x: xMode === 'relative' ? p.ts - t0 : xMode === 'wall' ? p.ts : p.step }));
}

/**
 * Exponential moving average with TensorBoard's debiasing (so the first points are not pulled toward 0).
 * `weight` 0 returns the values unchanged; 0.99 is very smooth.
 */
export function ema(values, weight) {
  if (!(weight > 0)) return values.slice();
  const out = [];
  let last = 0;
  let n = 0;
  for (const v of values) {
    n += 1;
    last = last * weight + (1 - weight) * v;
    out.push(last / (1 - weight ** n));
  }
  return out;
}

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/**
 * The y range to draw: the full range, or, when a few values sit far outside the bulk (one grad-norm spike),
 * only up to Tukey's far-out fences (3 interquartile ranges past the quartiles), so the spike does not flatten
 * the rest; a side is clipped only when at most 3% of the values lie beyond it. Returns
 * {lo, hi, clipped} where `clipped` says some values are outside [lo, hi].
 */
export function robustRange(values, { clip = true } = {}) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return { lo: 0, hi: 1, clipped: false };
  const sorted = Float64Array.from(finite).sort(); // numeric sort, much faster than a comparator
  let lo = sorted[0];
  let hi = sorted[sorted.length - 1];
  if (clip && sorted.length >= 8) {
    // Tukey's far-out fences: 3 interquartile ranges beyond the quartiles. A side is clipped only when few
    // values (at most 3%) lie beyond its fence: those are spikes; more are a regime of the run (a learning-rate
    // warmup, the first steps of a loss curve) and stay on the chart.
    const q1 = quantile(sorted, 0.25);
    const q3 = quantile(sorted, 0.75);
    const pad = 3 * (q3 - q1) || Math.abs(q3) * 0.1 || 1;
    const few = Math.max(1, Math.ceil(sorted.length * 0.03));
    const below = sorted.filter((v) => v < q1 - pad).length;
    const above = sorted.filter((v) => v > q3 + pad).length;
    if (below && below <= few) lo = q1 - pad;
    if (above && above <= few) hi = q3 + pad;
  }
  const clipped = sorted[0] < lo || sorted[sorted.length - 1] > hi;
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 1;
    return { lo: lo - pad, hi: hi + pad, clipped };
  }
  const pad = (hi - lo) * 0.05;
  return { lo: lo - pad, hi: hi + pad, clipped };
}

/** About `count` round tick values inside [lo, hi], 1, 2 or 5 times a power of ten apart (d3's rule). */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const error = raw / power;
  const step = power * (error >= Math.sqrt(50) ? 10 : error >= Math.sqrt(10) ? 5 : error >= Math.SQRT2 ? 2 : 1);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** One format for every tick on an axis, with just enough decimals for its step ("0.00095", "1.5e-5"). */
export function tickFormatter(ticks) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : Math.abs(ticks[0]) || 1;
  const top = Math.max(...ticks.map(Math.abs));
  if (top !== 0 && (top < 1e-3 || top >= 1e6)) {
    const digits = Math.min(6, Math.max(0, Math.ceil(Math.log10(top / step))));
    return (v) => (v === 0 ? '0' : v.toExponential(digits));
  }
  const decimals = Math.min(10, Math.max(0, Math.ceil(-Math.log10(step) - 1e-9)));
  return (v) => v.toFixed(decimals);
}

/** Byte ticks in one unit (the largest tick's) with enough decimals to tell neighbours apart: "383.5 MB". */
export function bytesTickFormatter(ticks) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  const top = Math.max(1, ...ticks.map(Math.abs));
  const i = Math.min(units.length - 1, Math.floor(Math.log(top) / Math.log(1024)));
  const scale = 1024 ** i;
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) / scale : 1;
  const decimals = Math.min(3, Math.max(0, Math.ceil(-Math.log10(step) - 1e-9)));
  return (v) => `${(v / scale).toFixed(decimals)} ${units[i]}`;
}

/** Ticks on a log axis, as values (not logs): whole decades when the range spans two or more, else round values. */
function logTicks(lo, hi) {
  const a = Math.log10(lo);
  const b = Math.log10(hi);
  if (b - a >= 2) {
    const out = [];
    const every = Math.ceil((Math.floor(b) - Math.ceil(a) + 1) / 6);
    for (let e = Math.ceil(a); e <= Math.floor(b); e += every) out.push(10 ** e);
    return out;
  }
  return niceTicks(lo, hi, 4).filter((t) => t > 0);
}

const TIME_FMT = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/** How an x value reads on the axis and in the tooltip, for each x mode. */
export function xFormatter(xMode) {
  if (xMode === 'relative') return (v) => formatDuration(v);
  if (xMode === 'wall') return (v) => TIME_FMT.format(new Date(v * 1000));
  return (v) => String(Math.round(v * 1000) / 1000);
}

export const X_LABELS = { step: 'Optimizer step', relative: 'Time since start', wall: 'Wall-clock time' };

/**
 * SVG path data through pixel points [[x, y]] sorted by x. With more than two points per pixel column, each
 * column keeps its first, lowest, highest and last point (M4 decimation): the drawn line looks the same, and
 * a long run draws as fast as a short one.
 */
export function pathData(pixels, width) {
  let pts = pixels;
  if (pixels.length > width * 2) {
    pts = [];
    let col = null;
    let bucket = [];
    const flush = () => {
      if (!bucket.length) return;
      let lo = bucket[0];
      let hi = bucket[0];
      for (const p of bucket) {
        if (p[1] < lo[1]) lo = p;
        if (p[1] > hi[1]) hi = p;
      }
      const keep = [bucket[0], lo, hi, bucket[bucket.length - 1]];
      const seen = new Set();
      for (const p of keep.sort((a, b) => bucket.indexOf(a) - bucket.indexOf(b))) {
        if (!seen.has(p)) pts.push(p);
        seen.add(p);
      }
      bucket = [];
    };
    for (const p of pixels) {
      const c = Math.floor(p[0]);
      if (c !== col) {
        flush();
        col = c;
      }
      bucket.push(p);
    }
    flush();
  }
  let d = '';
  for (let i = 0; i < pts.length; i += 1) d += `${i ? 'L' : 'M'}${pts[i][0].toFixed(1)},${pts[i][1].toFixed(1)}`;
  return d;
}

function nearest(points, x) {
  let lo = 0;
  let hi = points.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (points[mid].x < x) lo = mid;
    else hi = mid;
  }
  return Math.abs(points[lo].x - x) <= Math.abs(points[hi].x - x) ? points[lo] : points[hi];
}

// ---------------------------------------------------------------- drawing

/**
 * One chart figure. `series` is [{label, points: [{x, y, ...}] sorted by x, colour?}] (one per run); or pass
 * `points` for a single unnamed series. Options: `smoothing` (EMA weight 0–0.99), `logY`, `clip` (outliers),
 * `xMode` ('step' | 'relative' | 'wall'), `yLabel`, `width` (px; defaults to the figure's own width).
 *
 * The figure carries `data-points` (points of its longest series) and `data-series`; its `redraw(options)`
 * method draws again with new options, keeping the zoom.
 */
export function lineChart({ id, title, points, series: many, xLabel, yLabel, ...options }) {
  let runs = many || [{ label: title, points: points || [] }];
  const fig = h('figure', { class: 'chart-figure', id });
  const caption = h('figcaption', {});
  const svgSlot = h('div', { class: 'chart-plot' });
  const tooltip = h('div', { class: 'chart-tooltip', role: 'status', 'aria-live': 'off', hidden: true });
  const resetZoom = h('button', { type: 'button', class: 'button-link chart-reset', hidden: true }, 'Reset zoom');
  const note = h('p', { class: 'chart-note small muted', hidden: true });
  const tableSlot = h('div');
  fig.append(caption, svgSlot, tooltip, h('div', { class: 'chart-foot' }, note, resetZoom), tableSlot);

  let opts = { smoothing: 0, logY: false, clip: true, xMode: 'step', ...options };
  let zoom = null; // [x0, x1] in data units, or null for everything
  let view = null; // what the last draw needs for hover

  resetZoom.addEventListener('click', () => {
    zoom = null;
    draw();
  });

  function draw() {
    const xMode = opts.xMode || 'step';
    const fmtX = xFormatter(xMode);
    const label = xLabel || X_LABELS[xMode] || 'Step';
    // Per series: x for the mode, log filtering, smoothing (the raw line stays, faded, behind the smooth one).
    const drawn = runs.map((run, i) => {
      let pts = run.points[0] && 'step' in run.points[0] ? withX(run.points, xMode) : run.points.slice();
      pts = pts.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
      const dropped = opts.logY ? pts.filter((p) => p.y <= 0).length : 0;
      if (opts.logY) pts = pts.filter((p) => p.y > 0);
      const smooth = ema(pts.map((p) => p.y), opts.smoothing);
      return { ...run, colour: run.colour ?? i, pts: pts.map((p, j) => ({ ...p, raw: p.y, sy: smooth[j] })), dropped };
    });
    const longest = Math.max(0, ...drawn.map((d) => d.pts.length));
    fig.dataset.points = String(longest);
    fig.dataset.series = String(drawn.filter((d) => d.pts.length).length);

    const latestRun = drawn.find((d) => d.pts.length);
    const latest = latestRun ? latestRun.pts[latestRun.pts.length - 1] : null;
    const summary = latest
      ? `${title}: ${longest} point${longest === 1 ? '' : 's'}, latest ${formatNumber(latest.raw)} at ${label.toLowerCase()} ${fmtX(latest.x)}.`
      : `${title}: no values yet.`;
    caption.replaceChildren(h('span', { class: 'chart-title' }, title));
    if (latest && drawn.length === 1) caption.append(h('span', { class: 'chart-latest mono' }, opts.yUnit === 'bytes' ? formatBytes(latest.raw) : formatNumber(latest.raw)));
    if (drawn.length > 1) {
      caption.append(h('ul', { class: 'chart-legend' }, drawn.map((d) => h('li', {}, h('span', { class: `swatch series-${d.colour % SERIES_COLOURS}` }), d.label))));
    }

    const W = Math.max(280, Math.round(opts.width || svgSlot.clientWidth || fig.clientWidth || DEFAULT_W));
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'chart', role: 'img', 'aria-labelledby': `${id}-title`, focusable: 'false' });
    svg.append(s('title', { id: `${id}-title` }, summary));

    // x range: zoom, else every point of every series.
    const allX = drawn.flatMap((d) => d.pts.map((p) => p.x));
    let [x0, x1] = allX.length ? [Math.min(...allX), Math.max(...allX)] : [0, 1];
    if (zoom) [x0, x1] = zoom;
    if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
    const inView = (p) => p.x >= x0 && p.x <= x1;
    // y range from what is in view (smoothed values too: the smooth line must fit).
    const ys = drawn.flatMap((d) => d.pts.filter(inView).flatMap((p) => (opts.smoothing > 0 ? [p.raw, p.sy] : [p.raw])));
    const tf = opts.logY ? Math.log10 : (v) => v;
    let { lo: y0, hi: y1, clipped } = robustRange(ys.map(tf), { clip: opts.clip !== false });
    const yTicks = opts.logY ? logTicks(10 ** y0, 10 ** y1).filter((t) => tf(t) >= y0 && tf(t) <= y1) : niceTicks(y0, y1, 4).filter((t) => t >= y0 && t <= y1);
    const yFormat = opts.yUnit === 'bytes' ? bytesTickFormatter(yTicks) : opts.logY ? (v) => formatNumber(v, 3) : tickFormatter(yTicks.length ? yTicks : [y0]);
    const yLabelW = yLabel ? 18 : 0;
    // The left margin grows with the longest tick label, so labels such as "0.00105" are never clipped.
    const left = yLabelW + Math.max(36, Math.max(0, ...yTicks.map((t) => yFormat(t).length)) * CHAR_W + 12);
    const plotW = W - left - M.right;
    const plotH = H - M.top - M.bottom;
    const sx = (x) => left + ((x - x0) / (x1 - x0 || 1)) * plotW;
    const sy = (y) => M.top + plotH - ((tf(y) - y0) / (y1 - y0 || 1)) * plotH;
    const clampY = (py) => Math.min(M.top + plotH, Math.max(M.top, py));
    svg.append(s('rect', { x: left, y: M.top, width: plotW, height: plotH, class: 'chart-bg' }));
    if (yLabel) {
      svg.append(s('text', { x: 0, y: 0, class: 'chart-label chart-ylabel', 'text-anchor': 'middle', transform: `translate(13 ${M.top + plotH / 2}) rotate(-90)` }, yLabel));
    }

    if (!longest) {
      svg.append(s('text', { x: W / 2, y: H / 2, class: 'chart-empty', 'text-anchor': 'middle' }, 'No values yet'));
    } else {
      for (const t of yTicks) {
        svg.append(s('line', { x1: left, x2: left + plotW, y1: sy(t), y2: sy(t), class: 'chart-grid' }));
        svg.append(s('text', { x: left - 6, y: sy(t), class: 'chart-tick', 'text-anchor': 'end', 'dominant-baseline': 'middle' }, yFormat(t)));
      }
      const xCount = Math.max(2, Math.floor(plotW / (xMode === 'step' ? 70 : 95)));
      for (const t of niceTicks(x0, x1, xCount)) {
        if (t < x0 || t > x1 || (xMode === 'step' && !Number.isInteger(t))) continue;
        svg.append(s('line', { x1: sx(t), x2: sx(t), y1: M.top + plotH, y2: M.top + plotH + 4, class: 'chart-axis' }));
        svg.append(s('text', { x: sx(t), y: M.top + plotH + 17, class: 'chart-tick', 'text-anchor': 'middle' }, fmtX(t)));
      }
      svg.append(s('line', { x1: left, x2: left + plotW, y1: M.top + plotH, y2: M.top + plotH, class: 'chart-axis' }));
      svg.append(s('text', { x: left + plotW / 2, y: H - 4, class: 'chart-label', 'text-anchor': 'middle' }, label));

      const clipId = `${id}-clip`;
      svg.append(s('defs', {}, s('clipPath', { id: clipId }, s('rect', { x: left, y: M.top - 2, width: plotW, height: plotH + 4 }))));
      const plot = s('g', { 'clip-path': `url(#${clipId})` });
      svg.append(plot);
      let outliers = 0;
      for (const d of drawn) {
        // One point beyond each edge of the view keeps the line running to the border when zoomed.
        const first = d.pts.findIndex(inView);
        if (first < 0) continue;
        let last = first;
        while (last + 1 < d.pts.length && d.pts[last + 1].x <= x1) last += 1;
        const vis = d.pts.slice(Math.max(0, first - 1), last + 2);
        const cls = `series-${d.colour % SERIES_COLOURS}`;
        const path = (key) => pathData(vis.map((p) => [sx(p.x), clampY(sy(p[key]))]), plotW);
        if (opts.smoothing > 0) {
          plot.append(s('path', { d: path('raw'), class: `chart-line-raw ${cls}`, fill: 'none' }));
          plot.append(s('path', { d: path('sy'), class: `chart-line chart-smooth ${cls}`, fill: 'none', 'data-series': d.label }));
        } else {
          plot.append(s('path', { d: path('raw'), class: `chart-line ${cls}`, fill: 'none', 'data-series': d.label }));
        }
        const shown = d.pts.slice(first, last + 1);
        if (drawn.length === 1 && shown.length <= 60) {
          for (const p of shown) plot.append(s('circle', { cx: sx(p.x).toFixed(1), cy: clampY(sy(p.raw)).toFixed(1), r: 2.5, class: `chart-dot ${cls}` }));
        }
        // Values outside the clipped range: a marker on the edge, so a spike is flagged, not hidden.
        for (const p of shown) {
          const py = sy(p.raw);
          if (py >= M.top && py <= M.top + plotH) continue;
          outliers += 1;
          const top = py < M.top;
          const ey = top ? M.top + 1 : M.top + plotH - 1;
          const dy = top ? 7 : -7;
          const cx = sx(p.x);
          plot.append(s('path', { d: `M${(cx - 5).toFixed(1)},${(ey + dy).toFixed(1)}L${cx.toFixed(1)},${ey}L${(cx + 5).toFixed(1)},${(ey + dy).toFixed(1)}Z`, class: `chart-outlier ${cls}` }, s('title', {}, `${formatNumber(p.raw)} at ${fmtX(p.x)} (off the chart)`)));
        }
      }
      const dropped = drawn.reduce((n, d) => n + d.dropped, 0);
      const notes = [];
      if (clipped && outliers) notes.push(`${outliers} outlier${outliers === 1 ? '' : 's'} off the scale (▲ marks); untick "Clip outliers" to see all.`);
      if (dropped) notes.push(`${dropped} value${dropped === 1 ? '' : 's'} ≤ 0 not shown on the log scale.`);
      note.hidden = !notes.length;
      note.textContent = notes.join(' ');
      fig.dataset.outliers = String(outliers);

      // Hover: a guide line and one marker per series, filled by pointermove.
      const guide = s('line', { x1: 0, x2: 0, y1: M.top, y2: M.top + plotH, class: 'chart-guide', visibility: 'hidden' });
      const markers = drawn.map((d) => s('circle', { r: 4, class: `chart-hover series-${d.colour % SERIES_COLOURS}`, visibility: 'hidden' }));
      const band = s('rect', { x: 0, y: M.top, width: 0, height: plotH, class: 'chart-zoom-band', visibility: 'hidden' });
      svg.append(guide, ...markers, band);
      const hit = s('rect', { x: left, y: M.top, width: plotW, height: plotH, class: 'chart-hit' });
      svg.append(hit);
      view = { svg, W, left, plotW, x0, x1, sx, sy, clampY, drawn, fmtX, label, guide, markers, band, hit };
      attachPointer(view);
    }
    resetZoom.hidden = !zoom;
    svgSlot.replaceChildren(svg);
    drawTable(drawn, fmtX, label);
  }

  function toData(view, clientX) {
    const rect = view.svg.getBoundingClientRect();
    const px = ((clientX - rect.left) / rect.width) * view.W;
    const clamped = Math.min(view.left + view.plotW, Math.max(view.left, px));
    return { px: clamped, x: view.x0 + ((clamped - view.left) / view.plotW) * (view.x1 - view.x0) };
  }

  const fmtY = (v, digits) => (opts.yUnit === 'bytes' ? formatBytes(v) : formatNumber(v, digits));

  function hover(view, clientX) {
    const { x, px } = toData(view, clientX);
    const rows = [];
    let gx = px;
    view.drawn.forEach((d, i) => {
      const marker = view.markers[i];
      if (!d.pts.length) {
        marker.setAttribute('visibility', 'hidden');
        return;
      }
      const p = nearest(d.pts, x);
      gx = view.sx(p.x);
      const yShown = opts.smoothing > 0 ? p.sy : p.raw;
      marker.setAttribute('cx', gx.toFixed(1));
      marker.setAttribute('cy', view.clampY(view.sy(yShown)).toFixed(1));
      marker.setAttribute('visibility', 'visible');
      rows.push({ d, p });
    });
    view.guide.setAttribute('x1', gx.toFixed(1));
    view.guide.setAttribute('x2', gx.toFixed(1));
    view.guide.setAttribute('visibility', 'visible');
    const head = rows.length ? `${view.label}: ${view.fmtX(rows[0].p.x)}` : '';
    tooltip.replaceChildren(
      h('div', { class: 'chart-tooltip-x' }, head),
      ...rows.map(({ d, p }) =>
        h(
          'div',
          { class: 'chart-tooltip-row' },
          h('span', { class: `swatch series-${d.colour % SERIES_COLOURS}` }),
          view.drawn.length > 1 ? `${d.label}: ` : '',
          h('strong', { class: 'chart-tooltip-value' }, fmtY(p.raw, 6)),
          opts.smoothing > 0 ? h('span', { class: 'muted' }, ` (smoothed ${fmtY(p.sy, 4)})`) : null,
          view.drawn.length > 1 && opts.xMode !== 'step' ? h('span', { class: 'muted' }, ` · step ${p.step}`) : null,
        ),
      ),
    );
    tooltip.hidden = false;
    // Keep the tooltip inside the figure: right of the cursor, or left of it near the right edge.
    const figRect = fig.getBoundingClientRect();
    const svgRect = view.svg.getBoundingClientRect();
    const cursor = svgRect.left - figRect.left + (gx / view.W) * svgRect.width;
    const width = tooltip.offsetWidth;
    tooltip.style.left = `${Math.max(4, cursor + 12 + width > figRect.width ? cursor - 12 - width : cursor + 12)}px`;
    tooltip.style.top = `${svgRect.top - figRect.top + 8}px`;
  }

  function leave(view) {
    view.guide.setAttribute('visibility', 'hidden');
    for (const m of view.markers) m.setAttribute('visibility', 'hidden');
    tooltip.hidden = true;
  }

  function attachPointer(view) {
    let dragFrom = null;
    view.hit.addEventListener('pointermove', (event) => {
      hover(view, event.clientX);
      if (dragFrom !== null) {
        const { px } = toData(view, event.clientX);
        view.band.setAttribute('x', Math.min(px, dragFrom.px).toFixed(1));
        view.band.setAttribute('width', Math.abs(px - dragFrom.px).toFixed(1));
        view.band.setAttribute('visibility', 'visible');
      }
    });
    view.hit.addEventListener('pointerleave', () => {
      if (dragFrom === null) leave(view);
    });
    view.hit.addEventListener('pointerdown', (event) => {
      if (event.button !== 0) return;
      dragFrom = toData(view, event.clientX);
      view.hit.setPointerCapture?.(event.pointerId);
    });
    view.hit.addEventListener('pointerup', (event) => {
      if (dragFrom === null) return;
      const to = toData(view, event.clientX);
      const from = dragFrom;
      dragFrom = null;
      view.band.setAttribute('visibility', 'hidden');
      // A drag wider than a few pixels zooms the x axis to it; a click just shows the tooltip.
      if (Math.abs(to.px - from.px) >= 6) {
        zoom = [Math.min(from.x, to.x), Math.max(from.x, to.x)];
        draw();
      }
    });
    view.hit.addEventListener('dblclick', () => {
      if (!zoom) return;
      zoom = null;
      draw();
    });
  }

  // The numbers as a table, for screen readers and copying. Built only while its <details> is open: thousands
  // of rows would otherwise cost more than the chart on every redraw.
  function drawTable(drawn, fmtX, label) {
    const old = tableSlot.querySelector('details');
    if (!drawn.some((d) => d.pts.length)) {
      tableSlot.replaceChildren();
      return;
    }
    const build = () => {
      const xs = [...new Set(drawn.flatMap((d) => d.pts.map((p) => p.x)))].sort((a, b) => a - b);
      const byRun = drawn.map((d) => new Map(d.pts.map((p) => [p.x, p.raw])));
      return h(
        'table',
        { class: 'table compact' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, label), drawn.map((d) => h('th', { scope: 'col' }, drawn.length > 1 ? d.label : title)))),
        h('tbody', {}, xs.map((x) => h('tr', {}, h('td', { class: 'num' }, fmtX(x)), byRun.map((m) => h('td', { class: 'num' }, m.has(x) ? formatNumber(m.get(x), 6) : '—'))))),
      );
    };
    const box = h('div', { class: 'table-scroll short' });
    const details = h('details', { open: old?.open }, h('summary', {}, `${title} values`), box);
    if (details.open) box.append(build());
    details.addEventListener('toggle', () => {
      if (details.open && !box.firstChild) box.append(build());
    });
    tableSlot.replaceChildren(details);
  }

  fig.redraw = ({ series: nextSeries, ...next } = {}) => {
    if (nextSeries) runs = nextSeries;
    if (next.xMode && next.xMode !== opts.xMode) zoom = null; // a zoom in steps means nothing in seconds
    opts = { ...opts, ...next };
    draw();
  };
  fig.zoomTo = (a, b) => {
    zoom = [a, b];
    draw();
  };
  draw();
  return fig;
}

export const METRICS = [
  { id: 'chart-loss', title: 'Loss', names: ['loss', 'train_loss'] },
  { id: 'chart-lr', title: 'Learning rate', names: ['lr', 'learning_rate', 'learningrate'] },
  { id: 'chart-grad-norm', title: 'Grad norm', names: ['grad_norm', 'gradnorm'] },
];
