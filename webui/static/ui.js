// Small DOM and formatting helpers shared by the pages. Text always goes in as text nodes, never as HTML,
// so log lines, job names and error messages cannot inject markup.

/** Build an element: h('a', {href: '/'}, 'text', child). `null`/`false` children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

const STATE_LABELS = {
  queued: 'Queued',
  held: 'Held',
  starting: 'Starting',
  stopping: 'Stopping…',
  assigned: 'Assigned',
  running: 'Running',
  cancelling: 'Stopping…',
  validating: 'Validating',
  succeeded: 'Succeeded',
  failed: 'Failed',
  cancelled: 'Cancelled',
  live: 'Live',
  expired: 'Expired',
  online: 'Online',
  busy: 'Busy',
  idle: 'Idle',
  offline: 'Offline',
  lost: 'Lost',
  draining: 'Draining',
};

/** A state badge: the word carries the meaning, the colour only repeats it. */
export function stateBadge(state) {
  const key = String(state || 'unknown').toLowerCase();
  return h('span', { class: `badge badge-${key.replace(/[^a-z_]/g, '')}` }, STATE_LABELS[key] || key);
}

export function parseTime(value) {
  if (value === null || value === undefined || value === '') return null;
  if (typeof value === 'number') return new Date(value < 1e12 ? value * 1000 : value);
  // Naive ISO strings from the API are UTC.
  const text = /[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`;
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? null : date;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${String(mm).padStart(2, '0')}m`;
  if (mm) return `${mm}m ${String(ss).padStart(2, '0')}s`;
  return `${ss}s`;
}

/** Seconds a job or attempt has run: start to end, or start to now while it runs. */
export function runSeconds(started, ended) {
  const start = parseTime(started);
  if (!start) return null;
  const end = parseTime(ended) || new Date();
  return (end - start) / 1000;
}

const RELATIVE = new Intl.RelativeTimeFormat('en', { numeric: 'auto' });

export function relativeTime(value) {
  const date = parseTime(value);
  if (!date) return '—';
  const diff = (date - new Date()) / 1000;
  const abs = Math.abs(diff);
  if (abs < 45) return RELATIVE.format(Math.round(diff), 'second');
  if (abs < 2700) return RELATIVE.format(Math.round(diff / 60), 'minute');
  if (abs < 86400) return RELATIVE.format(Math.round(diff / 3600), 'hour');
  return RELATIVE.format(Math.round(diff / 86400), 'day');
}

/** A <time> element showing a relative time, with the exact time as its title and datetime. */
export function timeEl(value) {
  const date = parseTime(value);
  if (!date) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: date.toISOString(), title: date.toLocaleString() }, relativeTime(value));
}

export function formatBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return '—';
  let value = Number(n);
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return `${i === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatNumber(value, digits = 4) {
  if (value === null || value === undefined || !Number.isFinite(value)) return '—';
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
  return String(Number(value.toPrecision(digits)));
}

/**
 * Run `fn` now and every `ms` while the page is visible; stop when `fn` returns false or `stop()` is called.
 * Hidden tabs do not poll, and a visible tab catches up at once.
 */
export function poll(fn, ms) {
  let timer = null;
  let stopped = false;
  let running = false;
  const tick = async () => {
    if (stopped || running) return;
    clearTimeout(timer);
    running = true;
    let again = true;
    try {
      again = (await fn()) !== false;
    } catch (err) {
      console.error(err);
    } finally {
      running = false;
    }
    if (!again) stopped = true;
    if (!stopped && !document.hidden) timer = setTimeout(tick, ms);
  };
  const onVisibility = () => {
    if (!document.hidden) tick();
  };
  document.addEventListener('visibilitychange', onVisibility);
  tick();
  return {
    now: tick,
    stop() {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener('visibilitychange', onVisibility);
    },
  };
}

/** A message region for errors that belong to no single field. */
export function alertBox(message, { kind = 'error' } = {}) {
  return h('div', { class: `alert alert-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
}

/** The page title in <main> and the document title. */
export function pageTitle(text) {
  document.title = `${text} · Twinkle Commons`;
  return h('h1', {}, text);
}

/**
 * Give every sideways-scrolling table under `root` a visible cue while it overflows: a shadow on the edge that
 * has more (CSS) and a "Scroll sideways" hint (`data-overflow` says which edges: "right", "left", "both", "none").
 * New tables are picked up as pages redraw.
 */
export function scrollCues(root) {
  const sizes = typeof ResizeObserver !== 'undefined' ? new ResizeObserver((entries) => entries.forEach((e) => mark(e.target))) : null;
  function mark(el) {
    const more = el.scrollWidth - el.clientWidth > 2;
    const left = more && el.scrollLeft > 2;
    const right = more && el.scrollLeft < el.scrollWidth - el.clientWidth - 2;
    el.dataset.overflow = left && right ? 'both' : left ? 'left' : right ? 'right' : 'none';
  }
  function enhance(el) {
    if (el.dataset.cue) return;
    el.dataset.cue = '1';
    el.addEventListener('scroll', () => mark(el), { passive: true });
    sizes?.observe(el);
    const table = el.querySelector('table');
    if (table) sizes?.observe(table);
    mark(el);
  }
  const scan = () => root.querySelectorAll('.table-scroll').forEach(enhance);
  new MutationObserver(scan).observe(root, { childList: true, subtree: true });
  scan();
}
