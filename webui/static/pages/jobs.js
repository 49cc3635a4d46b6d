// My jobs: state, place in the queue and why it waits, worker, duration. Refreshes live; paginated.

import { ROUTES, get, query } from '../api.js';
import { jobDuration, jobName, jobPhase, jobWorker, jobWorkerId, loadWorkerNames, queueInfo, submittedAt } from '../model.js';
import { alertBox, formatDuration, h, pageTitle, poll, replace, stateBadge, timeEl } from '../ui.js';

export const PAGE_SIZE = 25;
const REFRESH_MS = 3000;
const STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];

function pageHref(page, state) {
  const params = new URLSearchParams();
  if (state) params.set('state', state);
  if (page > 1) params.set('page', String(page));
  const s = params.toString();
  return s ? `/?${s}` : '/';
}

// Jobs ticked for comparison; kept for the tab's session so paging and filtering do not lose them.
const SELECTED = 'twinkle.compare.v1';
function loadSelected() {
  try {
    return new Set(JSON.parse(sessionStorage.getItem(SELECTED) || '[]'));
  } catch {
    return new Set();
  }
}

function jobRow(job, selected, onToggle) {
  const queue = queueInfo(job);
  const box = h('input', { type: 'checkbox', id: `cmp-${job.id}`, class: 'compare-box', checked: selected.has(job.id), value: job.id });
  box.addEventListener('change', () => onToggle(job.id, box.checked));
  return h(
    'tr',
    { dataset: { jobId: job.id } },
    h('td', { class: 'select-cell' }, box, h('label', { for: `cmp-${job.id}`, class: 'visually-hidden' }, `Compare ${jobName(job)}`)),
    h('th', { scope: 'row' }, h('a', { href: `/jobs/${encodeURIComponent(job.id)}` }, jobName(job)), h('div', { class: 'muted small mono' }, job.id)),
    h('td', {}, stateBadge(jobPhase(job))),
    h('td', {}, queue || h('span', { class: 'muted' }, '—')),
    h('td', { class: 'mono' }, jobWorker(job) || h('span', { class: 'muted' }, '—')),
    h('td', { class: 'num' }, formatDuration(jobDuration(job))),
    h('td', {}, timeEl(submittedAt(job))),
  );
}

export async function render(root) {
  const params = new URLSearchParams(location.search);
  const state = STATES.includes(params.get('state')) ? params.get('state') : '';
  const page = Math.max(1, Number.parseInt(params.get('page') || '1', 10) || 1);

  const select = h(
    'select',
    { id: 'state-filter', name: 'state' },
    h('option', { value: '' }, 'All states'),
    STATES.map((s) => h('option', { value: s, selected: s === state }, s[0].toUpperCase() + s.slice(1))),
  );
  select.addEventListener('change', () => location.assign(pageHref(1, select.value)));

  const tbody = h('tbody');
  const status = h('p', { class: 'muted', id: 'jobs-status', role: 'status' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  const errorSlot = h('div');
  const table = h(
    'table',
    { class: 'table', id: 'jobs-table' },
    h('caption', { class: 'visually-hidden' }, 'Your jobs, newest first'),
    h(
      'thead',
      {},
      h('tr', {}, h('th', { scope: 'col', class: 'select-cell' }, h('span', { class: 'visually-hidden' }, 'Compare')), ['Job', 'State', 'Queue', 'Worker', 'Duration', 'Submitted'].map((t) => h('th', { scope: 'col' }, t))),
    ),
    tbody,
  );
  const empty = h(
    'div',
    { class: 'empty', hidden: true },
    h('p', {}, state ? `No ${state} jobs.` : 'You have not submitted a job yet.'),
    h('p', {}, h('a', { class: 'button', href: '/submit' }, 'Submit a job')),
  );

  const selected = loadSelected();
  const compare = h('a', { class: 'button secondary', id: 'compare-selected', href: '/compare' }, 'Compare selected');
  const clearSel = h('button', { type: 'button', class: 'button-link', id: 'compare-clear' }, 'Clear');
  const compareBar = h('div', { class: 'compare-bar', role: 'status' }, compare, clearSel);
  const drawCompare = () => {
    const ids = [...selected];
    compare.textContent = `Compare selected (${ids.length})`;
    compare.href = `/compare?jobs=${ids.map(encodeURIComponent).join(',')}`;
    compareBar.hidden = ids.length === 0;
    if (ids.length < 2) compare.setAttribute('aria-disabled', 'true');
    else compare.removeAttribute('aria-disabled');
    try {
      sessionStorage.setItem(SELECTED, JSON.stringify(ids));
    } catch {
      // storage refused: the selection lasts for this page
    }
  };
  compare.addEventListener('click', (event) => {
    if (selected.size < 2) {
      event.preventDefault();
      compare.textContent = 'Tick at least two jobs to compare';
    }
  });
  clearSel.addEventListener('click', () => {
    selected.clear();
    for (const box of tbody.querySelectorAll('.compare-box')) box.checked = false;
    drawCompare();
  });
  const onToggle = (id, on) => {
    if (on) selected.add(id);
    else selected.delete(id);
    drawCompare();
  };
  drawCompare();

  root.append(
    h(
      'div',
      { class: 'title-row' },
      pageTitle('My jobs'),
      h('div', { class: 'inline-field' }, h('label', { for: 'state-filter' }, 'Show'), select),
    ),
    errorSlot,
    compareBar,
    h('div', { class: 'table-scroll', tabindex: '0', role: 'region', 'aria-label': 'Your jobs (scrolls sideways)' }, table),
    empty,
    h('div', { class: 'table-foot' }, status, pager),
  );

  const refresh = async () => {
    const offset = (page - 1) * PAGE_SIZE;
    let data;
    try {
      data = await get(`${ROUTES.JOBS}${query({ state, limit: PAGE_SIZE, offset })}`);
    } catch (err) {
      replace(errorSlot, alertBox(`Could not load your jobs: ${err.message}`));
      return true;
    }
    replace(errorSlot);
    const items = data.items || [];
    await loadWorkerNames(items.filter((j) => !j.worker_name).map(jobWorkerId));
    const total = data.total ?? items.length;

    // Keep keyboard focus on the same job link across a refresh.
    const focused = document.activeElement;
    const focusHref = focused && tbody.contains(focused) ? focused.getAttribute('href') : null;
    replace(tbody, items.map((job) => jobRow(job, selected, onToggle)));
    if (focusHref) {
      const again = [...tbody.querySelectorAll('a')].find((a) => a.getAttribute('href') === focusHref);
      if (again) again.focus();
    }

    table.hidden = items.length === 0;
    empty.hidden = items.length !== 0 || page > 1;
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    const from = items.length ? offset + 1 : 0;
    const to = offset + items.length;
    replace(status, total ? `Showing ${from}–${to} of ${total} jobs` : '');
    replace(
      pager,
      page > 1 ? h('a', { href: pageHref(page - 1, state), rel: 'prev' }, '← Newer') : null,
      total > PAGE_SIZE ? h('span', { class: 'muted' }, `Page ${page} of ${pages}`) : null,
      page < pages ? h('a', { href: pageHref(page + 1, state), rel: 'next' }, 'Older →') : null,
    );
    return true;
  };

  poll(refresh, REFRESH_MS);
}
