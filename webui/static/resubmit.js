// "Resubmit" and "Edit and resubmit" on a job's page: run the same bundle again as a new job (POST
// /jobs/{id}/resubmit), as it was or with a new name, environment variables, arguments or device groups.
// The API checks every field (names, reserved variables, limits) and its 422 appears beside each field.

import { ApiError, ROUTES, post, route } from './api.js';
import { requestGroups } from './model.js';
import { h, replace } from './ui.js';

const DEVICE_TYPES = ['any', 'cuda', 'gpu', 'npu', 'cpu'];

/** "K=V" lines → {K: V}; blank lines and "# comments" skipped. Returns {env, problems: [line messages]}. */
export function parseEnv(text) {
  const env = {};
  const problems = [];
  String(text || '')
    .split('\n')
    .forEach((raw, i) => {
      const line = raw.trim();
      if (!line || line.startsWith('#')) return;
      const eq = line.indexOf('=');
      if (eq <= 0) {
        problems.push(`Line ${i + 1} (“${line}”) is not NAME=value.`);
        return;
      }
      env[line.slice(0, eq).trim()] = line.slice(eq + 1);
    });
  return { env, problems };
}

export const envText = (env) => Object.entries(env || {}).map(([k, v]) => `${k}=${v}`).join('\n');
/** One argument per line, so an argument may hold spaces without any quoting rules. */
export const parseArgs = (text) => String(text || '').split('\n').filter((line) => line.trim() !== '');

/** Which form field an API error key belongs to: "env.X" → env, "args.3" → args, "request.…" → devices. */
export function fieldOf(key) {
  const k = String(key).replace(/^body\./, '');
  if (k.startsWith('env')) return 'env';
  if (k.startsWith('args')) return 'args';
  if (k.startsWith('request') || k.startsWith('device_groups')) return 'devices';
  if (k.startsWith('name')) return 'name';
  return '_';
}

function groupRow(group, i) {
  const input = (name, attrs) => h('input', { id: `rs-dg-${i}-${name}`, name, ...attrs });
  const type = h('select', { id: `rs-dg-${i}-device_type`, name: 'device_type' }, [...new Set([...DEVICE_TYPES, group.device_type || 'any'])].map((t) => h('option', { value: t, selected: t === (group.device_type || 'any') }, t)));
  const cell = (id, label, control) => h('div', { class: 'field' }, h('label', { for: id }, label), control);
  return h(
    'div',
    { class: 'group-fields rs-group', dataset: { index: String(i) } },
    cell(`rs-dg-${i}-name`, 'Group name', input('name', { type: 'text', value: group.name || 'default' })),
    cell(`rs-dg-${i}-ranks`, 'Ranks', input('ranks', { type: 'number', min: '1', step: '1', value: String(group.ranks ?? 1) })),
    cell(`rs-dg-${i}-device_type`, 'Device type', type),
    cell(`rs-dg-${i}-min_memory_gb`, 'Min memory (GB)', input('min_memory_gb', { type: 'number', min: '0', step: 'any', value: String(group.min_memory_gb ?? 0) })),
  );
}

/**
 * The two buttons and the edit dialog for `job`. Returns {el, dialog}; both go on the page (the dialog is
 * modal). A new job opens its own page.
 */
export function resubmitControls(job) {
  const again = h('button', { type: 'button', class: 'button secondary', id: 'resubmit' }, 'Resubmit');
  const edit = h('button', { type: 'button', class: 'button secondary', id: 'edit-resubmit' }, 'Edit and resubmit');
  const problem = h('div', { id: 'resubmit-error' });

  const errors = {};
  const fieldBox = (id, label, hint, control) => {
    errors[id.replace('rs-', '')] = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
    if (hint) control.setAttribute('aria-describedby', `${id}-hint ${id}-error`);
    return h('div', { class: 'field field-wide' }, h('label', { for: id }, label), hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null, errors[id.replace('rs-', '')], control);
  };
  const name = h('input', { type: 'text', id: 'rs-name', value: job.name || '' });
  const env = h('textarea', { id: 'rs-env', class: 'mono', rows: '4', spellcheck: 'false' });
  env.value = envText(job.env);
  const args = h('textarea', { id: 'rs-args', class: 'mono', rows: '3', spellcheck: 'false' });
  args.value = (job.args || []).join('\n');
  const groups = h('div', { class: 'groups', id: 'rs-groups' }, requestGroups(job).map(groupRow));
  errors.devices = h('p', { class: 'field-error', id: 'rs-devices-error', hidden: true });
  errors._ = h('p', { class: 'field-error', id: 'rs-form-error', hidden: true });
  const unsandboxed = h('input', { type: 'checkbox', id: 'rs-unsandboxed', checked: Boolean(job.request && job.request.allow_unsandboxed) });
  const submit = h('button', { type: 'submit', class: 'button', id: 'rs-submit' }, 'Submit as a new job');
  const cancel = h('button', { type: 'button', class: 'button secondary', id: 'rs-cancel' }, 'Cancel');

  const form = h(
    'form',
    { id: 'resubmit-form', novalidate: true },
    errors._,
    fieldBox('rs-name', 'Job name', null, name),
    fieldBox('rs-env', 'Environment variables', 'One NAME=value per line. TWINKLE_* and a few others are set by the platform.', env),
    fieldBox('rs-args', 'Arguments', 'One argument per line, given to the script in this order.', args),
    h('fieldset', { class: 'plain' }, h('legend', {}, 'Devices'), errors.devices, groups, h('span', { class: 'checkbox' }, unsandboxed, h('label', { for: 'rs-unsandboxed' }, 'Allow a worker without a sandbox'))),
    h('div', { class: 'actions' }, submit, cancel),
  );
  const dialog = h('dialog', { id: 'resubmit-dialog', class: 'wide-dialog', 'aria-labelledby': 'resubmit-dialog-h' }, h('h2', { id: 'resubmit-dialog-h' }, 'Edit and resubmit'), h('p', { class: 'muted' }, 'The same code runs again as a new job; this one stays as it is.'), form);

  function showErrors(fields, message) {
    for (const el of Object.values(errors)) {
      el.hidden = true;
      el.textContent = '';
    }
    const byField = {};
    for (const [key, msg] of Object.entries(fields)) (byField[fieldOf(key)] ||= []).push(key.includes('.') ? `${key}: ${msg}` : msg);
    if (!Object.keys(byField).length && message) byField._ = [message];
    for (const [f, msgs] of Object.entries(byField)) {
      const el = errors[f] || errors._;
      el.textContent = msgs.join(' ');
      el.hidden = false;
    }
    for (const [f, control] of [['name', name], ['env', env], ['args', args]]) control.setAttribute('aria-invalid', byField[f] ? 'true' : 'false');
    form.querySelector('.field-error:not([hidden])')?.nextElementSibling?.focus?.();
  }

  async function send(body, button) {
    button.disabled = true;
    try {
      const created = await post(route(ROUTES.JOB_RESUBMIT, { job_id: job.id }), body);
      location.assign(`/jobs/${encodeURIComponent(created.id)}`);
      return null;
    } catch (err) {
      return err;
    } finally {
      button.disabled = false;
    }
  }

  again.addEventListener('click', async () => {
    const err = await send({}, again);
    if (err) replace(problem, h('div', { class: 'alert', role: 'alert' }, `Could not resubmit: ${err.message}`));
  });
  edit.addEventListener('click', () => dialog.showModal());
  cancel.addEventListener('click', () => dialog.close());
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const parsed = parseEnv(env.value);
    if (parsed.problems.length) {
      showErrors({ env: parsed.problems.join(' ') });
      return;
    }
    const deviceGroups = [...groups.querySelectorAll('.rs-group')].map((row) => ({
      name: row.querySelector('[name=name]').value.trim(),
      ranks: Number(row.querySelector('[name=ranks]').value),
      device_type: row.querySelector('[name=device_type]').value,
      min_memory_gb: Number(row.querySelector('[name=min_memory_gb]').value || 0),
    }));
    const body = {
      name: name.value.trim() || null,
      env: parsed.env,
      args: parseArgs(args.value),
      request: deviceGroups.length ? { device_groups: deviceGroups, allow_unsandboxed: unsandboxed.checked } : null,
    };
    const err = await send(body, submit);
    if (err) showErrors(err instanceof ApiError ? err.fields || {} : {}, err.message);
  });

  return { el: h('div', { class: 'resubmit' }, again, edit, problem), dialog };
}
