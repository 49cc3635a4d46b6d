// Submit a job: upload a .py or a zipped folder, or paste code. The device groups come from the script's own
// DeviceGroup declarations (POST /scripts/inspect, a static read) and can be changed before submitting.
// The API's 422 lists every problem at once; each appears beside its field and in a summary at the top.

import { ApiError, ROUTES, post } from '../api.js';
import { parseArgs, parseEnv } from '../resubmit.js';
import { h, pageTitle, replace } from '../ui.js';

const DEVICE_TYPES = ['any', 'cuda', 'gpu', 'npu', 'cpu'];
const PASTE_NAME = 'train.py';
const INSPECT_DELAY_MS = 500;

function extensionOf(name) {
  const dot = name.lastIndexOf('.');
  return dot < 0 ? '' : name.slice(dot + 1).toLowerCase();
}

/** Client-side check of the chosen file; the API checks again (size included) and its answer wins. */
export function fileProblem(file) {
  if (!file) return 'Choose a Python script (.py) or a zipped folder (.zip).';
  const ext = extensionOf(file.name);
  if (ext !== 'py' && ext !== 'zip') {
    const what = ext ? `a .${ext} file` : 'a file without an extension';
    return `“${file.name}” is ${what}. Choose a Python script (.py) or a zipped folder (.zip).`;
  }
  if (file.size === 0) return `“${file.name}” is empty.`;
  return null;
}

/** "request.device_groups[0].ranks" and "device_groups.0.ranks" both become "device_groups.0.ranks". */
export function normaliseField(key) {
  return String(key)
    .replace(/\[(\d+)\]/g, '.$1')
    .replace(/^request\./, '')
    .replace(/^body\./, '');
}

function field({ id, label, hint, control, wide = false }) {
  const error = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
  const describedBy = [hint ? `${id}-hint` : null].filter(Boolean).join(' ');
  if (describedBy) control.setAttribute('aria-describedby', describedBy);
  const wrapper = h(
    'div',
    { class: `field${wide ? ' field-wide' : ''}`, dataset: { field: id } },
    h('label', { for: id }, label),
    hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null,
    error,
    control,
  );
  return { wrapper, error, control };
}

export async function render(root) {
  // groupsTouched: the user changed the device groups since the script last changed, so a reading of the
  // script that lands late must not overwrite them.
  const state = { mode: 'upload', groups: [], inspectSeq: 0, inspectTimer: null, groupsTouched: false };
  const errorSummary = h('div', { class: 'error-summary', tabindex: '-1', hidden: true, role: 'alert' });

  // ---- script source
  const modeUpload = h('input', { type: 'radio', name: 'source', id: 'source-upload', value: 'upload', checked: true });
  const modePaste = h('input', { type: 'radio', name: 'source', id: 'source-paste', value: 'paste' });
  const fileInput = h('input', { type: 'file', id: 'file', name: 'file', accept: '.py,.zip,text/x-python,application/zip' });
  const fileField = field({
    id: 'file',
    label: 'Script or zipped folder',
    hint: 'A .py training script, or a .zip of your project folder. Leave datasets and checkpoints out of the bundle.',
    control: fileInput,
  });
  const codeInput = h('textarea', { id: 'code', name: 'code', rows: '14', spellcheck: 'false', class: 'mono', autocomplete: 'off' });
  const codeField = field({ id: 'code', label: 'Code', hint: `Submitted as ${PASTE_NAME}.`, control: codeInput, wide: true });
  codeField.wrapper.hidden = true;

  const nameInput = h('input', { type: 'text', id: 'name', name: 'name', maxlength: '200', autocomplete: 'off' });
  const nameField = field({ id: 'name', label: 'Job name (optional)', hint: 'Defaults to the script name.', control: nameInput });
  const envInput = h('textarea', { id: 'env', name: 'env', class: 'mono short', rows: '3', spellcheck: 'false', placeholder: 'EPOCHS=3' });
  const envField = field({ id: 'env', label: 'Environment variables (optional)', hint: 'One NAME=value per line; the script reads them with os.environ. TWINKLE_* and a few others are set by the platform.', control: envInput, wide: true });
  const argsInput = h('textarea', { id: 'args', name: 'args', class: 'mono short', rows: '2', spellcheck: 'false', placeholder: '--epochs' });
  const argsField = field({ id: 'args', label: 'Arguments (optional)', hint: 'One argument per line, given to the script in this order (sys.argv[1:]).', control: argsInput, wide: true });
  const entryInput = h('input', { type: 'text', id: 'entrypoint', name: 'entrypoint', placeholder: 'train.py', autocomplete: 'off', class: 'mono' });
  const entryField = field({
    id: 'entrypoint',
    label: 'Entrypoint',
    hint: 'The script inside the .zip to run with python. Defaults to train.py.',
    control: entryInput,
  });
  entryField.wrapper.hidden = true;

  // ---- device groups
  const inspectStatus = h('div', { class: 'inspect-status', role: 'status', id: 'inspect-status' });
  const groupsList = h('div', { class: 'groups', id: 'device-groups' });
  const groupsError = h('p', { class: 'field-error', id: 'device_groups-error', hidden: true });
  const addGroup = h('button', { type: 'button', class: 'button secondary', id: 'add-group' }, 'Add a device group');

  // ---- isolation: jobs run only on sandboxed workers unless the owner opts out (a trusted pool)
  const unsandboxedInput = h('input', { type: 'checkbox', id: 'allow_unsandboxed', name: 'allow_unsandboxed', 'aria-describedby': 'allow_unsandboxed-hint' });
  const unsandboxedField = h(
    'div',
    { class: 'isolation-choice', id: 'isolation' },
    h('div', { class: 'checkbox' }, unsandboxedInput, h('label', { for: 'allow_unsandboxed' }, 'Allow a worker without a sandbox')),
    h('p', { class: 'hint', id: 'allow_unsandboxed-hint' }, 'By default your job runs only on workers that isolate it (bubblewrap or a container runtime). Tick this to also accept workers of a trusted pool that run jobs unisolated.'),
  );

  // ---- launcher: read from the script (twinkle.initialize(mode=...) and its ranks); the owner may choose
  const launcherSelect = h(
    'select',
    { id: 'launcher', name: 'launcher', 'aria-describedby': 'launcher-hint' },
    h('option', { value: '' }, 'As the script says'),
    h('option', { value: 'python' }, 'python: one process'),
    h('option', { value: 'torchrun' }, 'torchrun: one process per device (local mode)'),
    h('option', { value: 'ray' }, 'ray: a Ray cluster of the job\'s own'),
  );
  const launcherHint = h('p', { class: 'hint', id: 'launcher-hint' }, 'How the worker starts your script.');
  const launcherField = h('div', { class: 'field', id: 'launcher-field' }, h('label', { for: 'launcher' }, 'Launcher'), launcherSelect, launcherHint);

  const submitButton = h('button', { type: 'submit', class: 'button', id: 'submit-job' }, 'Submit job');
  const form = h(
    'form',
    { class: 'card', id: 'submit-form', novalidate: true },
    h(
      'fieldset',
      { class: 'plain' },
      h('legend', {}, 'Training script'),
      h(
        'div',
        { class: 'radios' },
        h('div', { class: 'radio' }, modeUpload, h('label', { for: 'source-upload' }, 'Upload a file')),
        h('div', { class: 'radio' }, modePaste, h('label', { for: 'source-paste' }, 'Paste code')),
      ),
      fileField.wrapper,
      codeField.wrapper,
      entryField.wrapper,
    ),
    nameField.wrapper,
    envField.wrapper,
    argsField.wrapper,
    h(
      'fieldset',
      { class: 'plain', id: 'devices', 'aria-describedby': 'devices-hint' },
      h('legend', {}, 'Devices'),
      h(
        'p',
        { class: 'hint', id: 'devices-hint' },
        'Read from the DeviceGroup declarations in your script (never by running it). Change them if you need to; a job only goes to a worker that offers every group.',
      ),
      inspectStatus,
      groupsError,
      groupsList,
      addGroup,
    ),
    launcherField,
    unsandboxedField,
    h('div', { class: 'actions' }, submitButton),
  );

  root.append(pageTitle('Submit a job'), errorSummary, form);

  // ---- errors

  const fieldErrors = new Map(); // control id -> {error, control}
  const register = (id, error, control) => fieldErrors.set(id, { error, control });
  const labelOf = (id) => {
    const label = root.querySelector(`label[for="${id}"]`);
    return label ? label.textContent.replace(/ \(optional\)$/, '') : id;
  };
  register('file', fileField.error, fileInput);
  register('code', codeField.error, codeInput);
  register('name', nameField.error, nameInput);
  register('entrypoint', entryField.error, entryInput);
  register('env', envField.error, envInput);
  register('args', argsField.error, argsInput);

  function setFieldError(id, message) {
    const entry = fieldErrors.get(id);
    if (!entry) return false;
    const { error, control } = entry;
    replace(error, message || '');
    error.hidden = !message;
    const hint = control.getAttribute('aria-describedby') || '';
    const ids = hint.split(' ').filter((x) => x && x !== error.id);
    if (message) {
      control.setAttribute('aria-invalid', 'true');
      control.setAttribute('aria-describedby', [error.id, ...ids].join(' '));
      const wrapper = control.closest('.field');
      if (wrapper) wrapper.hidden = false;
    } else {
      control.removeAttribute('aria-invalid');
      control.setAttribute('aria-describedby', ids.join(' '));
    }
    return true;
  }

  function clearErrors() {
    for (const id of fieldErrors.keys()) setFieldError(id, null);
    groupsError.hidden = true;
    errorSummary.hidden = true;
    replace(errorSummary);
  }

  /** Show every error beside its field and list them all in the summary; unknown fields go only in the summary. */
  function showErrors(fields, message) {
    const items = [];
    for (const [rawKey, message] of Object.entries(fields)) {
      let text = message;
      let key = normaliseField(rawKey);
      if (key === 'file' && state.mode === 'paste') key = 'code';
      // "env.TWINKLE_X" and "args.3" belong to the env and args boxes; the message keeps the name or number.
      const sub = /^(env|args)\.(.+)$/.exec(key);
      if (sub) {
        key = sub[1];
        text = `${sub[2]}: ${text}`;
      }
      if (key === 'request' || key === 'device_groups') {
        replace(groupsError, text);
        groupsError.hidden = false;
        items.push(h('li', {}, h('a', { href: '#devices' }, text)));
        continue;
      }
      const m = /^device_groups\.(\d+)(?:\.(\w+))?$/.exec(key);
      if (m) {
        const id = m[2] ? `dg-${m[1]}-${m[2]}` : `dg-${m[1]}-name`;
        if (setFieldError(id, text)) {
          items.push(h('li', {}, h('a', { href: `#${id}` }, `Device group ${Number(m[1]) + 1}, ${labelOf(id).toLowerCase()}: ${text}`)));
          continue;
        }
      }
      if (setFieldError(key, text)) {
        items.push(h('li', {}, h('a', { href: `#${key}` }, `${labelOf(key)}: ${text}`)));
      } else {
        items.push(h('li', {}, rawKey && rawKey !== '_' ? `${rawKey}: ${text}` : text));
      }
    }
    const sentence = (t) => (t ? t[0].toUpperCase() + t.slice(1) : t);
    replace(
      errorSummary,
      h('h2', {}, 'The job was not submitted'),
      message ? h('p', {}, sentence(message)) : null,
      items.length ? h('ul', {}, items) : null,
    );
    errorSummary.hidden = false;
    errorSummary.focus();
  }

  // ---- device group rows

  function groupRow(group, index) {
    const ids = { name: `dg-${index}-name`, ranks: `dg-${index}-ranks`, device_type: `dg-${index}-device_type`, min_memory_gb: `dg-${index}-min_memory_gb` };
    const nameCtl = h('input', { type: 'text', id: ids.name, value: group.name ?? 'default', autocomplete: 'off', required: true });
    const ranksCtl = h('input', { type: 'number', id: ids.ranks, value: group.ranks ?? 1, min: '1', step: '1', inputmode: 'numeric', required: true });
    const types = DEVICE_TYPES.includes(group.device_type) || !group.device_type ? DEVICE_TYPES : [...DEVICE_TYPES, group.device_type];
    const typeCtl = h('select', { id: ids.device_type }, types.map((t) => h('option', { value: t, selected: t === (group.device_type || 'any') }, t)));
    const memCtl = h('input', { type: 'number', id: ids.min_memory_gb, value: group.min_memory_gb ? group.min_memory_gb : '', min: '0', step: 'any', inputmode: 'decimal', placeholder: 'any' });
    const parts = [
      field({ id: ids.name, label: 'Name', control: nameCtl }),
      field({ id: ids.ranks, label: 'Devices (ranks)', control: ranksCtl }),
      field({ id: ids.device_type, label: 'Device type', control: typeCtl }),
      field({ id: ids.min_memory_gb, label: 'Min memory per device (GB)', control: memCtl }),
    ];
    for (const p of parts) register(p.control.id, p.error, p.control);
    const remove = h('button', { type: 'button', class: 'button-link danger' }, `Remove device group ${index + 1}`);
    remove.addEventListener('click', () => {
      state.groupsTouched = true;
      state.groups = readGroups();
      state.groups.splice(index, 1);
      drawGroups();
      addGroup.focus();
    });
    return h(
      'fieldset',
      { class: 'group', dataset: { index: String(index) } },
      h('legend', {}, `Device group ${index + 1}`),
      h('div', { class: 'group-fields' }, parts.map((p) => p.wrapper)),
      remove,
    );
  }

  function drawGroups() {
    for (const id of [...fieldErrors.keys()]) if (id.startsWith('dg-')) fieldErrors.delete(id);
    replace(groupsList, state.groups.map(groupRow));
    if (!state.groups.length) {
      groupsList.append(h('p', { class: 'muted', id: 'no-groups' }, 'No device groups: the server uses what the script declares.'));
    }
  }

  /** The groups as the form shows them now (the user may have edited them). */
  function readGroups() {
    return [...groupsList.querySelectorAll('fieldset.group')].map((fs) => {
      const i = fs.dataset.index;
      const value = (name) => document.getElementById(`dg-${i}-${name}`).value.trim();
      const group = { name: value('name'), ranks: value('ranks') === '' ? null : Number(value('ranks')), device_type: value('device_type') };
      const mem = value('min_memory_gb');
      if (mem !== '') group.min_memory_gb = Number(mem);
      return group;
    });
  }

  groupsList.addEventListener('input', () => {
    state.groupsTouched = true;
  });

  addGroup.addEventListener('click', () => {
    state.groupsTouched = true;
    state.groups = readGroups();
    state.groups.push({ name: state.groups.length ? `group${state.groups.length + 1}` : 'default', ranks: 1, device_type: 'any' });
    drawGroups();
    document.getElementById(`dg-${state.groups.length - 1}-name`).focus();
  });

  // ---- reading the script's declarations

  function currentFile() {
    if (state.mode === 'paste') {
      const code = codeInput.value;
      return code.trim() ? new File([code], PASTE_NAME, { type: 'text/x-python' }) : null;
    }
    return fileInput.files && fileInput.files[0] ? fileInput.files[0] : null;
  }

  async function inspect() {
    const file = currentFile();
    const controlId = state.mode === 'paste' ? 'code' : 'file';
    if (!file) return;
    const seq = ++state.inspectSeq;
    replace(inspectStatus, h('p', { class: 'muted' }, `Reading device groups from ${file.name}…`));
    const body = new FormData();
    body.append('file', file);
    try {
      const result = await post(ROUTES.SCRIPTS_INSPECT, body);
      if (seq !== state.inspectSeq) return; // a newer file or edit won
      setFieldError(controlId, null);
      const groups = (result.request && result.request.device_groups) || [];
      const kept = state.groupsTouched;
      if (!kept) {
        state.groups = groups.map((g) => ({ ...g }));
        drawGroups();
      }
      const warnings = result.warnings || [];
      const read = groups.length
        ? `Read ${groups.length} device group${groups.length === 1 ? '' : 's'} from ${file.name}`
        : `${file.name} declares no device groups`;
      const launcherRead = result.request && result.request.launcher;
      replace(launcherHint, launcherRead ? `How the worker starts your script. Read from ${file.name}: ${launcherRead}.` : 'How the worker starts your script.');
      replace(
        inspectStatus,
        h('p', { class: 'ok' }, kept ? `${read}; your own device groups below are kept.` : `${read}.`),
        warnings.length
          ? h('ul', { class: 'warnings', 'aria-label': 'Warnings' }, warnings.map((w) => h('li', {}, typeof w === 'string' ? w : w.message || JSON.stringify(w))))
          : null,
      );
    } catch (err) {
      if (seq !== state.inspectSeq) return;
      replace(inspectStatus);
      if (err instanceof ApiError && Object.keys(err.fields || {}).length) {
        const text = err.fields.file || Object.values(err.fields).join('; ');
        setFieldError(controlId, text);
      } else {
        setFieldError(controlId, err.message);
      }
    }
  }

  fileInput.addEventListener('change', () => {
    clearErrors();
    const file = fileInput.files[0];
    const problem = fileProblem(file);
    if (file && problem) {
      setFieldError('file', problem);
      return;
    }
    const isZip = file && extensionOf(file.name) === 'zip';
    entryField.wrapper.hidden = !isZip;
    state.groupsTouched = false;
    if (file) inspect();
  });

  codeInput.addEventListener('input', () => {
    state.groupsTouched = false;
    clearTimeout(state.inspectTimer);
    state.inspectTimer = setTimeout(inspect, INSPECT_DELAY_MS);
  });

  const setMode = (mode) => {
    state.mode = mode;
    fileField.wrapper.hidden = mode !== 'upload';
    codeField.wrapper.hidden = mode !== 'paste';
    const file = fileInput.files && fileInput.files[0];
    entryField.wrapper.hidden = !(mode === 'upload' && file && extensionOf(file.name) === 'zip');
    clearErrors();
    if (currentFile()) inspect();
  };
  modeUpload.addEventListener('change', () => setMode('upload'));
  modePaste.addEventListener('change', () => setMode('paste'));

  // ---- submit

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors();
    const file = currentFile();
    const local = {};
    if (state.mode === 'paste') {
      if (!file) local.code = 'Paste your training script.';
    } else {
      const problem = fileProblem(file);
      if (problem) local.file = problem;
    }
    const env = parseEnv(envInput.value);
    if (env.problems.length) local.env = env.problems.join(' ');
    const groups = readGroups();
    groups.forEach((g, i) => {
      if (!g.name) local[`device_groups.${i}.name`] = 'Give the group a name.';
      if (!Number.isInteger(g.ranks) || g.ranks < 1) local[`device_groups.${i}.ranks`] = 'Enter a whole number of devices, 1 or more.';
      if (g.min_memory_gb !== undefined && !(g.min_memory_gb >= 0)) local[`device_groups.${i}.min_memory_gb`] = 'Enter a number of GB, or leave it empty.';
    });
    if (Object.keys(local).length) {
      showErrors(local, 'Fix these, then submit again.');
      return;
    }

    const body = new FormData();
    body.append('file', file);
    if (nameInput.value.trim()) body.append('name', nameInput.value.trim());
    if (!entryField.wrapper.hidden && entryInput.value.trim()) body.append('entrypoint', entryInput.value.trim());
    if (groups.length) body.append('request', JSON.stringify({ device_groups: groups }));
    if (unsandboxedInput.checked) body.append('allow_unsandboxed', 'true');
    if (Object.keys(env.env).length) body.append('env', JSON.stringify(env.env));
    const args = parseArgs(argsInput.value);
    if (args.length) body.append('args', JSON.stringify(args));
    if (launcherSelect.value) body.append('launcher', launcherSelect.value);

    submitButton.disabled = true;
    replace(submitButton, 'Submitting…');
    try {
      const job = await post(ROUTES.JOBS, body);
      location.assign(`/jobs/${encodeURIComponent(job.id)}`);
    } catch (err) {
      const fields = err instanceof ApiError ? err.fields || {} : {};
      const hasFields = Object.keys(fields).length > 0;
      showErrors(hasFields ? fields : { _: err.message }, hasFields ? err.message : undefined);
    } finally {
      submitButton.disabled = false;
      replace(submitButton, 'Submit job');
    }
  });

  drawGroups();
}
