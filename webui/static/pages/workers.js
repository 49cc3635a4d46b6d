// Workers: donor and pooled machines, the DeviceGroups they offer, what their hardware probe found, how they isolate
// jobs, state and trust (reputation, validated attempts, known-answer canary), last heartbeat, jobs run, GPU-hours credited and pending.

import { ROUTES, get } from '../api.js';
import { deviceGroupText } from '../model.js';
import { alertBox, formatNumber, h, pageTitle, poll, replace, stateBadge, timeEl } from '../ui.js';

const REFRESH_MS = 10000;

function gpuHoursOf(w) {
  if (w.gpu_hours !== undefined && w.gpu_hours !== null) return Number(w.gpu_hours);
  return Number(w.gpu_seconds ?? 0) / 3600;
}

const ISOLATION_TEXT = {
  bwrap: ['sandbox (bwrap)', 'Each job runs in a bubblewrap sandbox: own namespaces, no network, only its folder writable.'],
  container: ['container runtime', 'Each job runs isolated by a container runtime (gVisor, Kata) the operator set up.'],
  none: ['no sandbox', 'Jobs run unisolated on this worker (a trusted pool); only jobs whose owner opted out are sent here.'],
};

function isolationCell(w) {
  const kind = w.isolation || 'none';
  const [text, title] = ISOLATION_TEXT[kind] || [kind, ''];
  // not a .badge: that class means the worker's state (tests and readers look for exactly one per row)
  return h('span', { class: `isolation isolation-${kind}`, title, dataset: { isolation: kind } }, text);
}

function probedText(d) {
  const parts = [d.count > 1 ? `${d.count} × ${d.device_type}` : d.device_type];
  if (d.device_model) parts.push(d.device_model);
  if (d.memory_gb !== null && d.memory_gb !== undefined) parts.push(`${formatNumber(d.memory_gb, 1)} GB`);
  if (d.matmul_tflops !== null && d.matmul_tflops !== undefined) parts.push(`${formatNumber(d.matmul_tflops, 2)} TFLOP/s`);
  return parts.join(' · ');
}

function probeCell(w) {
  const devices = (w.probe && w.probe.devices) || [];
  if (!devices.length) return h('span', { class: 'muted', dataset: { probe: 'none' } }, 'not probed');
  return h('ul', { class: 'plain-list', dataset: { probe: 'yes' } }, devices.map((d) => h('li', {}, probedText(d))));
}

function trustLine(w) {
  if (w.trusted) return h('div', { class: 'muted small', dataset: { trust: 'pool' } }, 'trusted pool');
  const rep = Number(w.reputation ?? 0.5);
  return h('div', { class: 'muted small', dataset: { trust: 'donor' }, title: 'Reputation rises with attempts a replay validated and falls on a mismatch; a low one gets no jobs.' },
    `reputation ${formatNumber(rep, 2)} · ${w.validated_attempts ?? 0} validated`);
}

const CANARY_TEXT = { pending: 'canary pending', passed: 'canary passed', failed: 'canary failed' };

/** A new donor's known-answer check: pending (no user's job yet), passed, or failed (no jobs), with the reason. */
function canaryLine(w) {
  if (!w.canary) return null;
  const state = w.canary.state;
  return h('div', { class: `muted small canary canary-${state}`, dataset: { canary: state }, title: w.canary.detail || '' },
    CANARY_TEXT[state] || `canary ${state}`,
    state === 'failed' && w.canary.detail ? h('div', { class: 'small' }, w.canary.detail) : null);
}

/** Which job holds which devices (a pool runs several jobs side by side, each on its own devices). */
function devicesInUse(w) {
  const held = w.devices_in_use || [];
  if (!held.length) return null;
  return h(
    'ul',
    { class: 'plain-list small devices-in-use', 'aria-label': 'Devices in use' },
    held.map((u) => h('li', { dataset: { jobId: u.job_id || '' } },
      u.job_id ? h('span', { class: 'mono' }, u.job_id) : h('span', { class: 'muted' }, "another user's job"),
      `: ${u.group} device${u.devices.length === 1 ? '' : 's'} ${u.devices.join(', ')}`)),
  );
}

function workerRow(w) {
  const groups = w.device_groups || [];
  const gpuHours = gpuHoursOf(w);
  return h(
    'tr',
    { dataset: { workerId: w.id ?? w.worker_id ?? '' } },
    h('th', { scope: 'row' }, h('span', { class: 'mono' }, w.name || w.id), w.hostname && w.hostname !== w.name ? h('div', { class: 'muted small' }, w.hostname) : null),
    h('td', {}, w.owner || h('span', { class: 'muted' }, '—')),
    h('td', {}, groups.length ? h('ul', { class: 'plain-list' }, groups.map((g) => h('li', {}, deviceGroupText(g)))) : h('span', { class: 'muted' }, '—')),
    h('td', {}, probeCell(w)),
    h('td', {}, isolationCell(w)),
    h('td', {}, stateBadge(w.state),
      // what the state means (awaiting approval, superseded by ..., token revoked)
      w.status && w.status !== w.state ? h('div', { class: 'muted small worker-status' }, w.status) : null,
      w.running_jobs ? h('div', { class: 'muted small' }, `running ${w.running_jobs} job${w.running_jobs === 1 ? '' : 's'}`) : null, trustLine(w), canaryLine(w), devicesInUse(w)),
    h('td', {}, timeEl(w.last_heartbeat_at ?? w.last_heartbeat)),
    h('td', { class: 'num' }, w.jobs_run ?? 0),
    h('td', { class: 'num' }, formatNumber(gpuHours, 3),
      Number(w.pending_gpu_hours ?? 0) > 0
        ? h('div', { class: 'muted small', dataset: { pending: 'yes' }, title: 'Granted when a spot-check replay validates this worker\'s work' }, `${formatNumber(Number(w.pending_gpu_hours), 3)} pending`)
        : null),
  );
}

export async function render(root) {
  const tbody = h('tbody');
  const errorSlot = h('div');
  const totals = h('p', { class: 'muted', id: 'workers-totals' });
  const table = h(
    'table',
    { class: 'table', id: 'workers-table' },
    h('caption', { class: 'visually-hidden' }, 'Donor and pooled workers'),
    h('thead', {}, h('tr', {}, ['Worker', 'Donated by', 'Device groups', 'Probed hardware', 'Isolation', 'State', 'Last heartbeat', 'Jobs run', 'GPU-hours credited'].map((t) => h('th', { scope: 'col' }, t)))),
    tbody,
  );
  const empty = h('p', { class: 'empty', hidden: true }, 'No workers have registered yet. Anyone with a GPU can donate it with ', h('code', {}, 'twinkle-worker --server URL --token T'), '.');
  root.append(
    pageTitle('Workers'),
    h('p', { class: 'lede' }, 'The machines that run jobs: GPUs donated by people, and pooled machines (a lab cluster, a Kubernetes GPU pool) that join the same way.'),
    errorSlot,
    totals,
    h('div', { class: 'table-scroll' }, table),
    empty,
  );

  poll(async () => {
    let data;
    try {
      data = await get(ROUTES.WORKERS);
    } catch (err) {
      replace(errorSlot, alertBox(`Could not load workers: ${err.message}`));
      return true;
    }
    replace(errorSlot);
    const items = Array.isArray(data) ? data : data.items || [];
    replace(tbody, items.map(workerRow));
    table.hidden = !items.length;
    empty.hidden = items.length > 0;
    const hours = items.reduce((sum, w) => sum + gpuHoursOf(w), 0);
    const jobs = items.reduce((sum, w) => sum + Number(w.jobs_run ?? 0), 0);
    replace(totals, items.length ? `${items.length} worker${items.length === 1 ? '' : 's'} · ${jobs} jobs run · ${formatNumber(hours, 3)} GPU-hours credited` : '');
    return true;
  }, REFRESH_MS);
}
