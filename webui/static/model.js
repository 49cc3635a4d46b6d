// Reading the API's Job and Worker objects in one place, so the pages do not each know the field names.

import { ROUTES, get } from './api.js';
import { h, runSeconds } from './ui.js';

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

export const jobWorker = (job) => workerName(jobWorkerId(job));

/** Seconds the job has run: from its first start to its end (or now). */
export function jobDuration(job) {
  const attempts = job.attempts || [];
  const started = job.started_at ?? (attempts[0] && attempts[0].started_at);
  return runSeconds(started, endedAt(job));
}

/** "3rd in queue · no worker offers 8× cuda" as a node, or null when the job is not waiting. */
export function queueInfo(job) {
  const pos = job.queue_position;
  const reason = job.pending_reason;
  if ((pos === null || pos === undefined) && !reason) return null;
  return h(
    'span',
    { class: 'queue' },
    pos !== null && pos !== undefined ? h('span', { class: 'queue-pos' }, `#${pos} in queue`) : null,
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
