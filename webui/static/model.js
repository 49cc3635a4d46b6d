// Reading the API's Job and Worker objects in one place, so the pages do not each know the field names.

import { h, runSeconds } from './ui.js';

export const jobName = (job) => job.name || job.entrypoint || job.id;
export const submittedAt = (job) => job.created_at ?? job.submitted_at ?? null;
export const endedAt = (job) => job.ended_at ?? job.finished_at ?? null;

/** The worker a job runs (or last ran) on: the job's own field, else its latest attempt's. */
export function jobWorker(job) {
  const direct = job.worker_name ?? job.worker_id ?? job.worker ?? null;
  if (direct) return typeof direct === 'object' ? direct.name || direct.id : direct;
  const attempts = job.attempts || [];
  const last = attempts[attempts.length - 1];
  return last ? last.worker_name ?? last.worker_id ?? null : null;
}

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
  return `${group.name || 'default'}: ${parts.join(' ')}`;
}

export function requestGroups(job) {
  const request = job.request || {};
  return request.device_groups || job.device_groups || [];
}
