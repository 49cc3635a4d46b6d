// Job detail: for a failed job the reason first; then the summary, every recorded metric charted (and system
// use), the live log tail (SSE, with search, timestamps and stderr marked), attempts and what ended each, cancel,
// resubmit (as is, or edited), and checkpoints with per-file and whole-folder (zip) downloads.

import { API, ApiError, ROUTES, get, post, query, route } from '../api.js';
import { resubmitControls } from '../resubmit.js';
import { metricsPanel } from '../metrics-panel.js';
import { logView } from '../log-view.js';
import { attemptWorker, deviceGroupText, endedAt, jobDuration, jobName, jobPhase, jobWorker, loadWorkerNames, queueInfo, requestGroups, submittedAt } from '../model.js';
import { TERMINAL, alertBox, formatBytes, formatDuration, h, pageTitle, poll, replace, runSeconds, stateBadge, timeEl } from '../ui.js';

const REFRESH_MS = 3000;
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

/** The failure block a failed job's page opens with: what ended it, the limit hit, the last stderr lines. */
export function failureBlock(job) {
  const f = job.failure;
  const attempts = job.attempts || [];
  const last = attempts[attempts.length - 1] || {};
  const summary = f ? f.summary : last.error ? last.error.split('\n').filter(Boolean).pop() : last.exit_code !== null && last.exit_code !== undefined ? endedBy(last) : job.error || 'The job failed.';
  const facts = [];
  if (f && f.exit_code !== null && f.exit_code !== undefined) facts.push(['Exit code', h('code', {}, f.exit_code)]);
  if (f && f.signal) facts.push(['Signal', h('code', {}, f.signal)]);
  if (f && f.limit) facts.push(['Limit hit', f.limit]);
  if (f && f.attempt) facts.push(['Attempt', String(f.attempt)]);
  const tail = (f && f.stderr_tail) || [];
  return h(
    'section',
    { class: 'failure', id: 'failure', 'aria-labelledby': 'failure-h' },
    h('h2', { id: 'failure-h' }, 'Why it failed'),
    h('p', { class: 'failure-summary', id: 'failure-summary' }, summary),
    facts.length ? h('dl', { class: 'failure-facts' }, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])) : null,
    tail.length
      ? [
          h('h3', { class: 'failure-tail-h' }, `Last ${tail.length} line${tail.length === 1 ? '' : 's'} of stderr`),
          h('div', { class: 'log failure-tail', id: 'failure-stderr' }, tail.map((line) => h('div', { class: 'log-line log-stderr', dataset: { stream: 'stderr' } }, h('span', { class: 'log-mark', 'aria-label': 'stderr' }, '!'), h('span', { class: 'log-text' }, line)))),
        ]
      : null,
    h('p', { class: 'small' }, h('a', { href: '#logs-h' }, 'The whole log'), ' · ', h('a', { href: '#attempts-h' }, 'Every attempt')),
  );
}

/** A log event's data: a LogEntry JSON object, or (older API) the bare line. */
export function logEntry(data) {
  if (data && data[0] === '{') {
    try {
      const entry = JSON.parse(data);
      if (entry && typeof entry.text === 'string' && typeof entry.stream === 'string') return entry;
    } catch {
      // a line the script printed that merely starts with "{"
    }
  }
  return { text: data, stream: 'stdout', ts: null };
}

/** Folders holding checkpoint files, per attempt: [{attempt, folder, files, size}], the deepest common folders. */
export function artifactFolders(items) {
  const byKey = new Map();
  for (const item of items) {
    const cut = item.path.lastIndexOf('/');
    const folder = cut > 0 ? item.path.slice(0, cut) : '';
    const key = `${item.attempt}\u0000${folder}`;
    const entry = byKey.get(key) || { attempt: item.attempt, folder, files: 0, size: 0 };
    entry.files += 1;
    entry.size += item.size || 0;
    byKey.set(key, entry);
  }
  return [...byKey.values()].sort((a, b) => b.attempt - a.attempt || a.folder.localeCompare(b.folder));
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
  const failureSlot = h('div', { id: 'failure-slot' });
  const errorSlot = h('div');
  const resubmit = resubmitControls(job);
  const summary = h('dl', { class: 'summary', id: 'job-summary' });
  const panel = metricsPanel({ runs: [], exportName: `${jobId}-metrics`, emptyText: 'No metrics recorded yet. Values the script logs (loss, learning rate, accuracy…) and the worker\'s system-use samples appear here.' });
  const log = logView({ downloadHref: API + route(ROUTES.JOB_LOGS, { job_id: jobId }), downloadName: `${jobId}.log` });
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
    failureSlot,
    errorSlot,
    resubmit.el,
    summary,
    section('metrics', 'Training metrics', panel.el),
    section('logs', 'Log', log.el),
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
    resubmit.dialog,
  );

  // ---- drawing

  let drawnTitle = '';
  function drawJob() {
    const terminal = TERMINAL.has(String(job.state).toLowerCase());
    const phase = jobPhase(job);
    // Redraw the title row only when it changes, so a focused Cancel button keeps its focus.
    const titleKey = JSON.stringify([jobName(job), phase]);
    if (titleKey !== drawnTitle) {
      drawnTitle = titleKey;
      replace(titleSlot, pageTitle(jobName(job)), stateBadge(phase), terminal || phase === 'stopping' ? null : cancelButton);
      // Failure first: the reason sits right under the title, above everything else.
      replace(failureSlot, String(job.state).toLowerCase() === 'failed' ? failureBlock(job) : null);
    }
    const groups = requestGroups(job);
    const queue = queueInfo(job);
    const row = (term, value) => [h('dt', {}, term), h('dd', {}, value ?? h('span', { class: 'muted' }, '—'))];
    replace(
      summary,
      row('Job id', h('code', {}, job.id)),
      row('State', stateBadge(phase)),
      queue ? row('Queue', queue) : null,
      row('Worker', jobWorker(job) ? h('span', { class: 'mono' }, jobWorker(job)) : null),
      row('Duration', formatDuration(jobDuration(job))),
      row('Submitted', timeEl(submittedAt(job))),
      endedAt(job) ? row('Ended', timeEl(endedAt(job))) : null,
      job.entrypoint ? row('Entrypoint', h('code', {}, job.entrypoint)) : null,
      job.args && job.args.length ? row('Arguments', h('code', { class: 'break' }, job.args.join(' '))) : null,
      job.env && Object.keys(job.env).length ? row('Environment', h('ul', { class: 'plain-list mono' }, Object.entries(job.env).map(([k, v]) => h('li', {}, `${k}=${v}`)))) : null,
      job.resubmitted_from ? row('Resubmitted from', h('a', { href: `/jobs/${encodeURIComponent(job.resubmitted_from)}` }, job.resubmitted_from)) : null,
      row('Devices', groups.length ? h('ul', { class: 'plain-list' }, groups.map((g) => h('li', {}, deviceGroupText(g)))) : null),
      row('Isolation', job.request && job.request.allow_unsandboxed ? 'a sandboxed worker, or one without a sandbox (opted out)' : 'sandboxed workers only'),
      row('Launcher', (job.request && job.request.launcher) || 'python'),
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
              h('td', { class: 'mono' }, attemptWorker(a) ?? '—'),
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

  function drawMetrics(records) {
    panel.update([{ id: jobId, label: jobName(job), records }]);
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
      // The link comes first, so on a phone it is on screen without scrolling sideways.
      return h('tr', {}, h('td', {}, link), h('td', { class: 'mono break' }, item.path), h('td', { class: 'num' }, formatBytes(item.size)), h('td', { class: 'num' }, item.attempt));
    });
    const zipHref = (params) => API + route(ROUTES.JOB_ARTIFACTS_ZIP, { job_id: jobId }) + query(params);
    const folders = artifactFolders(items);
    replace(
      artifactsSlot,
      h(
        'ul',
        { class: 'artifact-folders plain-list', id: 'artifact-folders' },
        folders.map((f) =>
          h(
            'li',
            { class: 'artifact-folder' },
            h('a', { class: 'button secondary', href: zipHref({ attempt: f.attempt, folder: f.folder || undefined }), download: `${jobId}-${(f.folder || 'files').replace(/\//g, '-')}.zip`, dataset: { folder: f.folder, attempt: String(f.attempt) } }, `Download ${f.folder || 'all files'} (zip)`),
            h('span', { class: 'muted small' }, `attempt ${f.attempt} · ${f.files} file${f.files === 1 ? '' : 's'} · ${formatBytes(f.size)}`),
          ),
        ),
      ),
      h(
        'div',
        { class: 'table-scroll' },
        h(
          'table',
          { class: 'table compact', id: 'artifacts-table' },
          h('thead', {}, h('tr', {}, ['', 'File', 'Size', 'Attempt'].map((t, i) => h('th', { scope: 'col' }, i === 0 ? h('span', { class: 'visually-hidden' }, 'Link') : t)))),
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
      replace(errorSlot, alertBox('Stopping… the worker is ending the job; this page updates when it has.', { kind: 'info' }));
      drawJob();
      poller.now();
    } catch (err) {
      cancelButton.disabled = false;
      replace(errorSlot, alertBox(`Could not cancel: ${err.message}`));
    }
  });

  // ---- live log tail (not for a held job: no worker can run it, so there is no log to follow yet)

  let stream = null;
  function openStream() {
    if (stream) return;
    log.clear();
    stream = new EventSource(API + route(ROUTES.JOB_LOGS_STREAM, { job_id: jobId }) + query({ format: 'json' }));
    stream.addEventListener('open', () => log.status(h('span', { class: 'live' }, 'Live')));
    // Each event's data is one LogEntry as JSON ({ts, stream, text}); an API without `format` sends the bare
    // line, which stays text.
    stream.addEventListener('message', (event) => {
      const entry = logEntry(event.data);
      log.add(entry.text, entry);
    });
    stream.addEventListener('end', () => {
      stream.close();
      log.status('The job has ended; this is the whole log.');
      poller.now();
    });
    stream.addEventListener('error', () => {
      if (stream.readyState === EventSource.CLOSED) log.status('The log stream closed. Reload the page to reconnect.');
      else log.status('Reconnecting…');
    });
  }
  function followPhase() {
    if (jobPhase(job) === 'held') log.status('Held: no worker can run this job now, so there is no log yet. It starts when one can.');
    else openStream();
  }
  window.addEventListener('pagehide', () => stream && stream.close());

  // ---- refresh job, metrics and checkpoints until the job ends (then once more)

  drawJob();
  followPhase();
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
      if (!job.worker_name) await loadWorkerNames([job.worker_id, ...(job.attempts || []).map((a) => a.worker_id)]);
      drawJob();
      followPhase();
    }
    if (metricsResult.status === 'fulfilled') drawMetrics(metricsResult.value.records || []);
    if (artifactsResult.status === 'fulfilled') drawArtifacts(artifactsResult.value.items || []);
    return !TERMINAL.has(String(job.state).toLowerCase());
  }, REFRESH_MS);
}
