// A job's log: one element per line (stderr lines marked, an optional timestamp per line), search with
// highlighted matches, follow mode, and a link to the whole stored log. Text goes in as text nodes only, and a
// highlight splits a line's text into text nodes and <mark>s: a log line can never become markup.

import { h, replace } from './ui.js';

export const MAX_LOG_LINES = 2000;
const TIME_FMT = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3, hour12: false });

/** Split `text` into [text, match, text, …] pieces for a case-insensitive search of `needle` ("" → one piece). */
export function splitMatches(text, needle) {
  if (!needle) return [text];
  const out = [];
  const hay = text.toLowerCase();
  const n = needle.toLowerCase();
  let at = 0;
  for (let i = hay.indexOf(n); i !== -1; i = hay.indexOf(n, i + n.length)) {
    out.push(text.slice(at, i), text.slice(i, i + n.length));
    at = i + n.length;
  }
  out.push(text.slice(at));
  return out;
}

/**
 * The log box. `add(text, {ts, stream})` appends a line (`ts` in epoch seconds or ISO; `stream` 'stdout' or
 * 'stderr'); `status(node)` sets the live/ended note. Returns {el, add, status, clear}.
 */
export function logView({ downloadHref, downloadName }) {
  const box = h('div', { class: 'log', id: 'log', role: 'log', 'aria-label': 'Job log', tabindex: '0' });
  const statusEl = h('span', { class: 'muted', id: 'log-status' }, 'Connecting…');
  const follow = h('input', { type: 'checkbox', id: 'follow', checked: true });
  const stamps = h('input', { type: 'checkbox', id: 'log-timestamps' });
  const allRanks = h('input', { type: 'checkbox', id: 'all-ranks' });
  const search = h('input', { type: 'search', id: 'log-search', placeholder: 'Search the log', autocomplete: 'off' });
  const count = h('span', { class: 'muted small', id: 'log-search-count', role: 'status' });
  const prev = h('button', { type: 'button', class: 'button-link', id: 'log-search-prev', 'aria-label': 'Previous match' }, '↑');
  const next = h('button', { type: 'button', class: 'button-link', id: 'log-search-next', 'aria-label': 'Next match' }, '↓');

  const el = h(
    'div',
    { class: 'log-view' },
    h(
      'div',
      { class: 'log-bar' },
      statusEl,
      h('span', { class: 'checkbox' }, follow, h('label', { for: 'follow' }, 'Follow new lines')),
      h('span', { class: 'checkbox' }, stamps, h('label', { for: 'log-timestamps' }, 'Timestamps')),
      h('span', { class: 'checkbox' }, allRanks, h('label', { for: 'all-ranks' }, 'All ranks')),
      h('span', { class: 'log-search' }, h('label', { for: 'log-search', class: 'visually-hidden' }, 'Search the log'), search, prev, next, count),
      downloadHref ? h('a', { href: downloadHref, download: downloadName }, 'Download full log') : null,
    ),
    box,
  );

  let needle = '';
  let current = -1;

  function fill(textEl, text) {
    textEl.replaceChildren(...splitMatches(text, needle).map((piece, i) => (i % 2 ? h('mark', {}, piece) : piece)));
  }

  function lineEl(text, { ts, stream } = {}) {
    const textEl = h('span', { class: 'log-text' });
    fill(textEl, text);
    let stamp = null;
    if (ts !== undefined && ts !== null && ts !== '') {
      const date = typeof ts === 'number' ? new Date(ts < 1e12 ? ts * 1000 : ts) : new Date(ts);
      if (!Number.isNaN(date.getTime())) stamp = h('time', { class: 'log-ts', datetime: date.toISOString() }, TIME_FMT.format(date), ' ');
    }
    const err = stream === 'stderr';
    // A multi-rank job's lines start "[rank N] " (the worker puts it there): rank 0's and unprefixed lines show
    // by default, the other ranks' on demand ("All ranks"), hidden by CSS so the toggle needs no re-render.
    const rank = /^\[rank (\d+)\] /.exec(text);
    const other = rank && rank[1] !== '0';
    const line = h('div', { class: `log-line${err ? ' log-stderr' : ''}${other ? ' rank-other' : ''}`, dataset: { stream: stream || 'stdout' } }, stamp, err ? h('span', { class: 'log-mark', 'aria-label': 'stderr' }, '!') : null, textEl);
    line.dataset.text = text;
    return line;
  }

  let pending = [];
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    box.append(...pending);
    pending = [];
    while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
    if (needle) updateCount();
    if (follow.checked) box.scrollTop = box.scrollHeight;
  };

  function add(text, meta) {
    pending.push(lineEl(text, meta));
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(flush);
    }
  }

  /** The matches the reader can see: other ranks' lines count only while "All ranks" shows them. */
  function marks() {
    return [...box.querySelectorAll(allRanks.checked ? 'mark' : '.log-line:not(.rank-other) mark')];
  }

  function updateCount() {
    const all = marks();
    const lines = new Set(all.map((m) => m.closest('.log-line'))).size;
    count.textContent = needle ? (all.length ? `${all.length} match${all.length === 1 ? '' : 'es'} on ${lines} line${lines === 1 ? '' : 's'}` : 'No matches') : '';
  }

  function go(delta) {
    const all = marks();
    if (!all.length) return;
    all[current]?.classList.remove('current');
    current = (current + delta + all.length) % all.length;
    all[current].classList.add('current');
    follow.checked = false; // reading a match: stop jumping to the end
    all[current].scrollIntoView({ block: 'center' });
  }

  let searchTimer = 0;
  search.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      needle = search.value;
      current = -1;
      for (const line of box.children) fill(line.querySelector('.log-text'), line.dataset.text);
      box.classList.toggle('searching', Boolean(needle));
      updateCount();
      if (needle) go(1);
    }, 120);
  });
  search.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') {
      event.preventDefault();
      go(event.shiftKey ? -1 : 1);
    }
  });
  prev.addEventListener('click', () => go(-1));
  next.addEventListener('click', () => go(1));
  stamps.addEventListener('change', () => box.classList.toggle('show-ts', stamps.checked));
  allRanks.addEventListener('change', () => {
    box.classList.toggle('all-ranks', allRanks.checked);
    if (!needle) return;
    for (const m of box.querySelectorAll('mark.current')) m.classList.remove('current');
    current = -1;
    updateCount();
  });

  return {
    el,
    add,
    status: (...nodes) => replace(statusEl, ...nodes),
    clear: () => box.replaceChildren(),
    box,
  };
}
