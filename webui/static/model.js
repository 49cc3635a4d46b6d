// Reading the API's Job and Worker objects in one place, so the pages do not each know the field names.

import { ROUTES, get } from './api.js';
import { h, parseTime, runSeconds } from './ui.js';

// Worker ids -> names, from the public GET /workers. Fetched again only when an id we have not seen appears.
const workerNames = new Map();
let workersFetch = null;

/** Make sure every id in `ids` has a name if the API knows one. */
export async function loadWorkerNames(ids) {
  const unknown = ids.filter((id) => id && !workerNames.has(id));
  if (!unknown.length) return;
  workersFetch ??= get(ROUTES.WORKERS)
    .then((data) => {
      for (const w of (Array.isArray(data) ? data : data.items) || []) workerNames.set(w.id, w.name);
      // Ids the API no longer lists keep showing as ids instead of asking again on every refresh.
      for (const id of unknown) if (!workerNames.has(id)) workerNames.set(id, null);
    })
    .catch(() => {})
    .finally(() => {
      workersFetch = null;
    });
  await workersFetch;
}

export const workerName = (id) => (id ? workerNames.get(id) || id : null);

const TERMINAL_STATES = new Set(['succeeded', 'failed', 'cancelled']);

export const jobName = (job) => job.name || job.entrypoint || job.id;
export const submittedAt = (job) => job.created_at ?? job.submitted_at ?? null;
export const endedAt = (job) => job.ended_at ?? job.finished_at ?? null;

/** The worker a job runs (or last ran) on: the job's own field, else its latest attempt's. */
export function jobWorkerId(job) {
  if (job.worker_id) return job.worker_id;
  const attempts = job.attempts || [];
  const last = attempts[attempts.length - 1];
  return last ? last.worker_id ?? null : null;
}

/** The worker's name as the API gives it (the same name the workers page and the log use), else looked up. */
export function jobWorker(job) {
  if (job.worker_name) return job.worker_name;
  const attempts = job.attempts || [];
  const last = attempts[attempts.length - 1];
  if (!job.worker_id && last && last.worker_name) return last.worker_name;
  return workerName(jobWorkerId(job));
}

export const attemptWorker = (a) => a.worker_name || workerName(a.worker_id);

/** What to show as the job's state: the API's phase (held, starting, stopping…) when it sends one. */
export const jobPhase = (job) => job.phase || job.state;

const CLOCK = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', timeZoneName: 'short' });
const DAY_CLOCK = new Intl.DateTimeFormat(undefined, { weekday: 'short', hour: '2-digit', minute: '2-digit', timeZoneName: 'short' });

/** "~14:05 CET" (today) or "~Tue 14:05 CET" for an estimate; null when there is none. */
export function expectedStartText(job) {
  const at = parseTime(job.expected_start_at);
  if (!at) return null;
  if (at - Date.now() < 60_000) return 'any moment now';
  const sameDay = at.toDateString() === new Date().toDateString();
  return `~${(sameDay ? CLOCK : DAY_CLOCK).format(at)}`;
}

/** Seconds the job has run: from its first start to its end (or now). */
export function jobDuration(job) {
  if (job.duration_s !== null && job.duration_s !== undefined && TERMINAL_STATES.has(String(job.state))) return job.duration_s;
  const attempts = job.attempts || [];
  const started = job.started_at ?? (attempts[0] && attempts[0].started_at);
  return runSeconds(started, endedAt(job));
}

/**
 * "#3 in queue · expected to start ~14:05 (estimate) · <why it waits>" as a node, or null when the job is not
 * waiting. A held job (no worker can run it now) has no place in the queue: it says "Held" and why.
 */
export function queueInfo(job) {
  const held = job.phase === 'held';
  const pos = held ? null : job.queue_position;
  const reason = job.pending_reason;
  const expected = held ? null : expectedStartText(job);
  if ((pos === null || pos === undefined) && !reason && !held && !expected) return null;
  return h(
    'span',
    { class: 'queue', dataset: { held: held ? 'true' : 'false' } },
    held ? h('span', { class: 'queue-pos queue-held' }, 'Held: no worker can run it now') : null,
    pos !== null && pos !== undefined ? h('span', { class: 'queue-pos' }, `#${pos} in queue`) : null,
    expected ? h('span', { class: 'queue-eta', title: 'An estimate from recent job durations and the jobs ahead (like squeue --start)' }, `expected to start ${expected} (estimate)`) : null,
    reason ? h('span', { class: 'queue-reason' }, reason) : null,
  );
}

/** "default: 8 × cuda (H100, 80 GB)" for a device group from a job request or a worker registration. */
export function deviceGroupText(group) {
  const parts = [`${group.ranks ?? '?'} × ${group.device_type || 'device'}`];
  const details = [];
  if (group.device_model) details.push(group.device_model);
  if (group.memory_gb) details.push(`${group.memory_gb} GB`);
  else if (group.min_memory_gb) details.push(`≥ ${group.min_memory_gb} GB`);
  if (details.length) parts.push(`(${details.join(', ')})`);
  if (group.pooled) parts.push('shared by count');
  return `${group.name || 'default'}: ${parts.join(' ')}`;
}

export function requestGroups(job) {
  const request = job.request || {};
  return request.device_groups || job.device_groups || [];
}
