// A small SVG line chart, drawn by hand so the page fetches nothing from elsewhere and stays a few KB.
// Colours come from CSS classes, so the chart follows the light/dark theme and the strict CSP.

import { formatNumber, h } from './ui.js';

const SVG = 'http://www.w3.org/2000/svg';
const W = 400;
const H = 230;
const M = { top: 12, right: 14, bottom: 36 };
const CHAR_W = 7.4; // width of one tick-label character at 13px, in viewBox units

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
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

function extent(values) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 1;
    lo -= pad;
    hi += pad;
  } else {
    const pad = (hi - lo) * 0.05;
    lo -= pad;
    hi += pad;
  }
  return [lo, hi];
}

/**
 * A figure holding the chart of `points` ([{x, y}], sorted by x), its caption, and the numbers as a table
 * inside <details> for screen readers and for copying.
 */
export function lineChart({ id, title, points, xLabel = 'Step' }) {
  const captionId = `${id}-caption`;
  const latest = points[points.length - 1];
  const summary = points.length
    ? `${title}: ${points.length} point${points.length === 1 ? '' : 's'}, latest ${formatNumber(latest.y)} at ${xLabel.toLowerCase()} ${latest.x}.`
    : `${title}: no values yet.`;

  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-labelledby': `${id}-title`, focusable: 'false' });
  svg.append(s('title', { id: `${id}-title` }, summary));
  const [y0, y1] = points.length ? extent(points.map((p) => p.y)) : [0, 1];
  const yTicks = niceTicks(y0, y1, 4).filter((t) => t >= y0 && t <= y1);
  const yFormat = tickFormatter(yTicks.length ? yTicks : [y0]);
  // The left margin grows with the longest tick label, so labels such as "0.00105" are never clipped.
  const left = Math.max(36, Math.max(0, ...yTicks.map((t) => yFormat(t).length)) * CHAR_W + 12);
  const plotW = W - left - M.right;
  const plotH = H - M.top - M.bottom;
  svg.append(s('rect', { x: left, y: M.top, width: plotW, height: plotH, class: 'chart-bg' }));

  if (points.length) {
    const [x0, x1] = points.length > 1 ? [points[0].x, points[points.length - 1].x] : [points[0].x - 1, points[0].x + 1];
    const sx = (x) => left + ((x - x0) / (x1 - x0 || 1)) * plotW;
    const sy = (y) => M.top + plotH - ((y - y0) / (y1 - y0 || 1)) * plotH;

    for (const t of yTicks) {
      svg.append(s('line', { x1: left, x2: left + plotW, y1: sy(t), y2: sy(t), class: 'chart-grid' }));
      svg.append(s('text', { x: left - 6, y: sy(t), class: 'chart-tick', 'text-anchor': 'end', 'dominant-baseline': 'middle' }, yFormat(t)));
    }
    for (const t of niceTicks(x0, x1, 5)) {
      if (t < x0 || t > x1 || !Number.isInteger(t)) continue;
      svg.append(s('line', { x1: sx(t), x2: sx(t), y1: M.top + plotH, y2: M.top + plotH + 4, class: 'chart-axis' }));
      svg.append(s('text', { x: sx(t), y: M.top + plotH + 16, class: 'chart-tick', 'text-anchor': 'middle' }, t));
    }
    svg.append(s('line', { x1: left, x2: left + plotW, y1: M.top + plotH, y2: M.top + plotH, class: 'chart-axis' }));
    svg.append(s('text', { x: left + plotW / 2, y: H - 4, class: 'chart-label', 'text-anchor': 'middle' }, xLabel));

    const d = points.map((p, i) => `${i ? 'L' : 'M'}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join('');
    svg.append(s('path', { d, class: 'chart-line', fill: 'none' }));
    if (points.length <= 60) {
      for (const p of points) svg.append(s('circle', { cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: 2.5, class: 'chart-dot' }));
    } else {
      svg.append(s('circle', { cx: sx(latest.x).toFixed(1), cy: sy(latest.y).toFixed(1), r: 3.5, class: 'chart-dot' }));
    }
  } else {
    svg.append(s('text', { x: W / 2, y: H / 2, class: 'chart-empty', 'text-anchor': 'middle' }, 'No values yet'));
  }

  const table = h(
    'table',
    { class: 'table compact' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, xLabel), h('th', { scope: 'col' }, title))),
    h('tbody', {}, points.map((p) => h('tr', {}, h('td', { class: 'num' }, p.x), h('td', { class: 'num' }, formatNumber(p.y, 6))))),
  );
  return h(
    'figure',
    { class: 'chart-figure', id, dataset: { points: String(points.length) } },
    h('figcaption', { id: captionId }, h('span', { class: 'chart-title' }, title), latest ? h('span', { class: 'chart-latest mono' }, formatNumber(latest.y)) : null),
    svg,
    points.length ? h('details', {}, h('summary', {}, `${title} values`), h('div', { class: 'table-scroll short' }, table)) : null,
  );
}

/** The first metric key present among `names` (compared without case, spaces or underscores). */
function pick(metrics, names) {
  const norm = (k) => k.toLowerCase().replace(/[\s_-]/g, '');
  const wanted = names.map(norm);
  for (const [key, value] of Object.entries(metrics || {})) {
    const k = norm(key.split('/').pop());
    if (wanted.includes(k)) return value;
  }
  return undefined;
}

/**
 * Series [{x: step, y}] for one metric from the API's records. Metric values arrive as strings ("0.53", "1e-4");
 * a step recorded by several attempts (a resumed job) keeps the latest attempt's value.
 */
export function series(records, names) {
  const byStep = new Map();
  for (const r of records || []) {
    const value = Number.parseFloat(pick(r.metrics, names));
    if (!Number.isFinite(value) || r.step === null || r.step === undefined) continue;
    const prev = byStep.get(r.step);
    if (!prev || (r.attempt ?? 0) >= prev.attempt) byStep.set(r.step, { x: Number(r.step), y: value, attempt: r.attempt ?? 0 });
  }
  return [...byStep.values()].sort((a, b) => a.x - b.x);
}

export const METRICS = [
  { id: 'chart-loss', title: 'Loss', names: ['loss', 'train_loss'] },
  { id: 'chart-lr', title: 'Learning rate', names: ['lr', 'learning_rate', 'learningrate'] },
  { id: 'chart-grad-norm', title: 'Grad norm', names: ['grad_norm', 'gradnorm'] },
];
