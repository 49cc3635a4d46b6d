// Compare runs: the metrics of several jobs overlaid on one set of charts, one colour per job (W&B's run
// comparison). Opened from the job list ("Compare selected") as /compare?jobs=ID,ID,… .

import { ApiError, ROUTES, get, route } from '../api.js';
import { metricsPanel } from '../metrics-panel.js';
import { jobName } from '../model.js';
import { SERIES_COLOURS } from '../chart.js';
import { TERMINAL, alertBox, h, pageTitle, poll, replace, stateBadge } from '../ui.js';

const REFRESH_MS = 5000;
export const MAX_COMPARE = 8;

/** The job ids in ?jobs=a,b,c (also ?jobs=a&jobs=b), de-duplicated, at most MAX_COMPARE. */
export function compareIds(search) {
  const params = new URLSearchParams(search);
  const ids = params.getAll('jobs').flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean);
  return [...new Set(ids)].slice(0, MAX_COMPARE);
}

export async function render(root) {
  const ids = compareIds(location.search);
  root.append(h('p', { class: 'breadcrumb' }, h('a', { href: '/' }, '← My jobs')), pageTitle('Compare runs'));
  if (ids.length < 1) {
    root.append(h('p', {}, 'Pick two or more jobs on ', h('a', { href: '/' }, 'your job list'), ' (the Compare column), then choose "Compare selected".'));
    return;
  }
  const errorSlot = h('div');
  const legend = h('ul', { class: 'compare-runs', id: 'compare-runs' });
  const panel = metricsPanel({ runs: [], exportName: 'compare-metrics', emptyText: 'None of these jobs has recorded metrics yet.' });
  root.append(errorSlot, legend, h('section', { class: 'section', 'aria-label': 'Metrics' }, panel.el));

  const jobs = new Map();
  const records = new Map();
  poll(async () => {
    const results = await Promise.allSettled(
      ids.map(async (id) => {
        const [job, metrics] = await Promise.all([get(route(ROUTES.JOB, { job_id: id })), get(route(ROUTES.JOB_METRICS, { job_id: id }))]);
        jobs.set(id, job);
        records.set(id, metrics.records || []);
      }),
    );
    const problems = results
      .map((r, i) => [r, ids[i]])
      .filter(([r]) => r.status === 'rejected')
      .map(([r, id]) => (r.reason instanceof ApiError && r.reason.status === 404 ? `No job of yours has the id ${id}.` : `Could not load ${id}: ${r.reason.message}`));
    replace(errorSlot, problems.length ? alertBox(problems.join(' ')) : null);
    const shown = ids.filter((id) => jobs.has(id));
    replace(
      legend,
      shown.map((id, i) =>
        h(
          'li',
          { dataset: { jobId: id } },
          h('span', { class: `swatch series-${i % SERIES_COLOURS}` }),
          h('a', { href: `/jobs/${encodeURIComponent(id)}` }, jobName(jobs.get(id))),
          ' ',
          stateBadge(jobs.get(id).state),
          h('span', { class: 'muted small mono' }, ` ${id}`),
        ),
      ),
    );
    panel.update(shown.map((id) => ({ id, label: jobName(jobs.get(id)), records: records.get(id) })));
    // Keep refreshing while any of them still runs.
    return shown.some((id) => !TERMINAL.has(String(jobs.get(id).state).toLowerCase())) || shown.length < ids.length;
  }, REFRESH_MS);
}
