// Job detail: live log tail (SSE), loss / learning-rate / grad-norm charts, attempts and what ended each,
// cancel, and checkpoints with download links.

import { API, ApiError, ROUTES, get, post, route } from '../api.js';
import { METRICS, lineChart, series } from '../chart.js';
import { deviceGroupText, endedAt, jobDuration, jobName, jobWorker, loadWorkerNames, queueInfo, requestGroups, submittedAt, workerName } from '../model.js';
import { TERMINAL, alertBox, formatBytes, formatDuration, h, pageTitle, poll, replace, runSeconds, stateBadge, timeEl } from '../ui.js';

const REFRESH_MS = 3000;
const MAX_LOG_LINES = 2000;
const URL_MAX_AGE_MS = 60_000; // presigned links are short-lived: fetch fresh ones before following an old one

function endedBy(attempt) {
  if (attempt.error) {
    // Errors can carry a whole traceback: show its first and last lines, the rest on demand.
    const lines = attempt.error.split('\n').map((l) => l.trim()).filter(Boolean);
    if (lines.length <= 1 && attempt.error.length <= 160) return attempt.error;
    const short = lines.length > 1 ? `${lines[0]} … ${lines[lines.length - 1]}` : `${attempt.error.slice(0, 157)}…`;
    return h('details', { class: 'error-details' }, h('summary', {}, short), h('pre', { class: 'mono' }, attempt.error));
  }
  const state = String(attempt.state || '').toLowerCase();
  if (state === 'succeeded') return 'Finished normally';
  if (state === 'cancelled') return 'Cancelled';
  if (attempt.exit_code !== null && attempt.exit_code !== undefined) {
    return attempt.exit_code < 0 ? `Killed by signal ${-attempt.exit_code}` : `Exited with code ${attempt.exit_code}`;
  }
  return TERMINAL.has(state) ? state : '—';
}

// The spot check of a succeeded attempt (a replay of its first steps on a trusted worker).
const VALIDATION_TEXT = {
  pending: 'Being replayed on a trusted worker; the job succeeds once the replay agrees.',
  validated: 'A replay on a trusted worker agreed with this attempt\'s loss and grad norm.',
  unverified: 'A replay disagreed with what this worker reported; the job was run again elsewhere.',
  inconclusive: 'The replay had nothing to compare (no loss or grad norm recorded).',
};

function section(id, title, ...children) {
  return h('section', { class: 'section', 'aria-labelledby': `${id}-h` }, h('h2', { id: `${id}-h` }, title), ...children);
}

export async function render(root, { params }) {
  const jobId = params[0];
  let job;
  try {
    job = await get(route(ROUTES.JOB, { job_id: jobId }));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      root.append(pageTitle('Job not found'), h('p', {}, 'No job of yours has the id ', h('code', {}, jobId), '. ', h('a', { href: '/' }, 'Back to your jobs')));
      return;
    }
    throw err;
  }

  // ---- skeleton
  const titleSlot = h('div', { class: 'title-row' });
  const errorSlot = h('div');
  const summary = h('dl', { class: 'summary', id: 'job-summary' });
  const charts = h('div', { class: 'charts', id: 'charts' });
  const logBox = h('pre', { class: 'log', id: 'log', role: 'log', 'aria-label': 'Job log', tabindex: '0' });
  const logStatus = h('span', { class: 'muted', id: 'log-status' }, 'Connecting…');
  const follow = h('input', { type: 'checkbox', id: 'follow', checked: true });
  const attemptsBody = h('tbody');
  const artifactsSlot = h('div', { id: 'artifacts' });
  const cancelButton = h('button', { type: 'button', class: 'button danger', id: 'cancel-job' }, 'Cancel job');

  const dialog = h(
    'dialog',
    { id: 'cancel-dialog', 'aria-labelledby': 'cancel-dialog-h' },
    h('h2', { id: 'cancel-dialog-h' }, 'Cancel this job?'),
    h('p', {}, 'Training stops now. Checkpoints already uploaded stay available.'),
    h(
      'form',
      { method: 'dialog', class: 'actions' },
      h('button', { value: 'keep', class: 'button secondary', autofocus: true }, 'Keep running'),
      h('button', { value: 'cancel', class: 'button danger', id: 'confirm-cancel' }, 'Cancel job'),
    ),
  );

  root.append(
    h('p', { class: 'breadcrumb' }, h('a', { href: '/' }, '← My jobs')),
    titleSlot,
    errorSlot,
    summary,
    section('metrics', 'Training metrics', charts),
    section(
      'logs',
      'Log',
      h(
        'div',
        { class: 'log-bar' },
        logStatus,
        h('span', { class: 'checkbox' }, follow, h('label', { for: 'follow' }, 'Follow new lines')),
        h('a', { href: API + route(ROUTES.JOB_LOGS, { job_id: jobId }), download: `${jobId}.log` }, 'Download full log'),
      ),
      logBox,
    ),
    section(
      'attempts',
      'Attempts',
      h(
        'div',
        { class: 'table-scroll' },
        h(
          'table',
          { class: 'table', id: 'attempts-table' },
          h('thead', {}, h('tr', {}, ['#', 'Worker', 'State', 'Started', 'Ran for', 'Exit code', 'What ended it'].map((t) => h('th', { scope: 'col' }, t)))),
          attemptsBody,
        ),
      ),
    ),
    section('checkpoints', 'Checkpoints', artifactsSlot),
    dialog,
  );

  // ---- drawing

  let drawnTitle = '';
  function drawJob() {
    const terminal = TERMINAL.has(String(job.state).toLowerCase());
    // Redraw the title row only when it changes, so a focused Cancel button keeps its focus.
    const titleKey = JSON.stringify([jobName(job), job.state]);
    if (titleKey !== drawnTitle) {
      drawnTitle = titleKey;
      replace(titleSlot, pageTitle(jobName(job)), stateBadge(job.state), terminal ? null : cancelButton);
    }
    const groups = requestGroups(job);
    const queue = queueInfo(job);
    const row = (term, value) => [h('dt', {}, term), h('dd', {}, value ?? h('span', { class: 'muted' }, '—'))];
    replace(
      summary,
      row('Job id', h('code', {}, job.id)),
      row('State', stateBadge(job.state)),
      queue ? row('Queue', queue) : null,
      row('Worker', jobWorker(job) ? h('span', { class: 'mono' }, jobWorker(job)) : null),
      row('Duration', formatDuration(jobDuration(job))),
      row('Submitted', timeEl(submittedAt(job))),
      endedAt(job) ? row('Ended', timeEl(endedAt(job))) : null,
      job.entrypoint ? row('Entrypoint', h('code', {}, job.entrypoint)) : null,
      row('Devices', groups.length ? h('ul', { class: 'plain-list' }, groups.map((g) => h('li', {}, deviceGroupText(g)))) : null),
      row('Isolation', job.request && job.request.allow_unsandboxed ? 'a sandboxed worker, or one without a sandbox (opted out)' : 'sandboxed workers only'),
    );
    const attempts = job.attempts || [];
    replace(
      attemptsBody,
      attempts.length
        ? attempts.map((a) =>
            h(
              'tr',
              {},
              h('td', { class: 'num' }, a.n ?? a.attempt),
              h('td', { class: 'mono' }, workerName(a.worker_id) ?? '—'),
              h('td', {}, stateBadge(a.state), a.validation ? h('div', { class: 'muted small', dataset: { validation: a.validation }, title: VALIDATION_TEXT[a.validation] || '' }, `spot check: ${a.validation}`) : null),
              h('td', {}, timeEl(a.started_at)),
              h('td', { class: 'num' }, formatDuration(runSeconds(a.started_at, a.ended_at))),
              h('td', { class: 'num' }, a.exit_code ?? '—'),
              h('td', {}, endedBy(a)),
            ),
          )
        : h('tr', {}, h('td', { colspan: '7', class: 'muted' }, 'Not started yet.')),
    );
  }

  let metricsKey = '';
  function drawMetrics(records) {
    const key = JSON.stringify([records.length, records[records.length - 1]]);
    if (key === metricsKey) return; // unchanged: keep any open <details>
    metricsKey = key;
    replace(charts, METRICS.map((m) => lineChart({ id: m.id, title: m.title, points: series(records, m.names) })));
  }

  let artifactsAt = 0;
  function drawArtifacts(items) {
    artifactsAt = Date.now();
    if (!items.length) {
      replace(artifactsSlot, h('p', { class: 'muted' }, 'No checkpoints yet. Files the script saves under its output folder appear here.'));
      return;
    }
    const rows = items.map((item) => {
      const link = h('a', { href: item.url, download: item.path.split('/').pop(), rel: 'noreferrer' }, 'Download', h('span', { class: 'visually-hidden' }, ` ${item.path}`));
      link.addEventListener('click', async (event) => {
        if (Date.now() - artifactsAt < URL_MAX_AGE_MS) return;
        event.preventDefault();
        const fresh = await get(route(ROUTES.JOB_ARTIFACTS, { job_id: jobId }));
        drawArtifacts(fresh.items || []);
        const again = (fresh.items || []).find((x) => x.attempt === item.attempt && x.path === item.path);
        if (again) location.assign(again.url);
      });
      return h('tr', {}, h('td', { class: 'num' }, item.attempt), h('td', { class: 'mono break' }, item.path), h('td', { class: 'num' }, formatBytes(item.size)), h('td', {}, link));
    });
    replace(
      artifactsSlot,
      h(
        'div',
        { class: 'table-scroll' },
        h(
          'table',
          { class: 'table', id: 'artifacts-table' },
          h('thead', {}, h('tr', {}, ['Attempt', 'File', 'Size', ''].map((t, i) => h('th', { scope: 'col' }, i === 3 ? h('span', { class: 'visually-hidden' }, 'Link') : t)))),
          h('tbody', {}, rows),
        ),
      ),
    );
  }

  // ---- cancel

  cancelButton.addEventListener('click', () => dialog.showModal());
  dialog.addEventListener('close', async () => {
    if (dialog.returnValue !== 'cancel') {
      cancelButton.focus();
      return;
    }
    cancelButton.disabled = true;
    try {
      job = await post(route(ROUTES.JOB_CANCEL, { job_id: jobId }));
      replace(errorSlot, alertBox('Cancel requested.', { kind: 'info' }));
      drawJob();
      poller.now();
    } catch (err) {
      cancelButton.disabled = false;
      replace(errorSlot, alertBox(`Could not cancel: ${err.message}`));
    }
  });

  // ---- live log tail

  let pending = [];
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    // One text node per line keeps trimming cheap and never interprets the text as markup.
    logBox.append(...pending);
    pending = [];
    while (logBox.childNodes.length > MAX_LOG_LINES) logBox.firstChild.remove();
    if (follow.checked) logBox.scrollTop = logBox.scrollHeight;
  };
  const addLine = (text) => {
    pending.push(`${text}\n`);
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(flush);
    }
  };

  const stream = new EventSource(API + route(ROUTES.JOB_LOGS_STREAM, { job_id: jobId }));
  stream.addEventListener('open', () => replace(logStatus, h('span', { class: 'live' }, 'Live')));
  // Each event's data is one log line, as the script printed it (never parsed: a printed JSON line stays text).
  stream.addEventListener('message', (event) => addLine(event.data));
  stream.addEventListener('end', () => {
    stream.close();
    replace(logStatus, 'The job has ended; this is the whole log.');
    poller.now();
  });
  stream.addEventListener('error', () => {
    if (stream.readyState === EventSource.CLOSED) replace(logStatus, 'The log stream closed. Reload the page to reconnect.');
    else replace(logStatus, 'Reconnecting…');
  });
  window.addEventListener('pagehide', () => stream.close());

  // ---- refresh job, metrics and checkpoints until the job ends (then once more)

  drawJob();
  const poller = poll(async () => {
    const [jobResult, metricsResult, artifactsResult] = await Promise.allSettled([
      get(route(ROUTES.JOB, { job_id: jobId })),
      get(route(ROUTES.JOB_METRICS, { job_id: jobId })),
      get(route(ROUTES.JOB_ARTIFACTS, { job_id: jobId })),
    ]);
    const failed = [jobResult, metricsResult, artifactsResult].find((r) => r.status === 'rejected');
    if (failed) replace(errorSlot, alertBox(`Could not refresh: ${failed.reason.message}`));
    else if (!errorSlot.querySelector('.alert-info')) replace(errorSlot);
    if (jobResult.status === 'fulfilled') {
      job = jobResult.value;
      await loadWorkerNames([job.worker_id, ...(job.attempts || []).map((a) => a.worker_id)]);
      drawJob();
    }
    if (metricsResult.status === 'fulfilled') drawMetrics(metricsResult.value.records || []);
    if (artifactsResult.status === 'fulfilled') drawArtifacts(artifactsResult.value.items || []);
    return !TERMINAL.has(String(job.state).toLowerCase());
  }, REFRESH_MS);
}
