// The one place that talks to the HTTP API. Every call goes to the same documented /api/v1 routes the CLI
// uses; the browser sends the twinkle_session cookie that POST /auth/session set.

export const API = '/api/v1';

// The routes this UI calls, named as in the shared contract (contract/routes.py); a test keeps them equal.
export const ROUTES = {
  USERS_ME: '/users/me',
  AUTH_SESSION: '/auth/session',
  SCRIPTS_INSPECT: '/scripts/inspect',
  JOBS: '/jobs',
  JOB: '/jobs/{job_id}',
  JOB_CANCEL: '/jobs/{job_id}/cancel',
  JOB_RESUBMIT: '/jobs/{job_id}/resubmit',
  JOB_LOGS: '/jobs/{job_id}/logs',
  JOB_LOGS_STREAM: '/jobs/{job_id}/logs/stream',
  JOB_METRICS: '/jobs/{job_id}/metrics',
  JOB_ARTIFACTS: '/jobs/{job_id}/artifacts',
  JOB_ARTIFACTS_ZIP: '/jobs/{job_id}/artifacts/zip',
  WORKERS: '/workers',
};

/** Fill in a route template: route(ROUTES.JOB, {job_id: 'j1'}) is '/jobs/j1' (each value URL-encoded). */
export function route(template, params = {}) {
  const out = template.replace(/\{(\w+)\}/g, (_, name) => {
    if (!(name in params)) throw new Error(`route ${template} needs ${name}`);
    return encodeURIComponent(String(params[name]));
  });
  return out;
}

/** An error from the API, normalised from `{"error": {code, message, fields}}` (or FastAPI's `{"detail"}`). */
export class ApiError extends Error {
  constructor(status, code, message, fields = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

// FastAPI's own validation errors list `loc` paths such as ["body", "file"]; the API's error envelope uses
// field names. Both end up as {field: message}.
function fieldsFromDetail(detail) {
  const fields = {};
  if (!Array.isArray(detail)) return fields;
  for (const item of detail) {
    const loc = (item.loc || []).filter((part) => part !== 'body' && part !== 'query');
    const key = loc.join('.') || '_';
    fields[key] = fields[key] ? `${fields[key]}; ${item.msg}` : item.msg;
  }
  return fields;
}

function fieldText(value) {
  if (Array.isArray(value)) return value.map(fieldText).join('; ');
  if (value && typeof value === 'object') return value.message || value.msg || JSON.stringify(value);
  return String(value);
}

export async function toError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // A proxy or the server's own 413/502 page: not JSON.
  }
  const status = response.status;
  if (body && body.error) {
    const fields = {};
    for (const [key, value] of Object.entries(body.error.fields || {})) fields[key] = fieldText(value);
    // An oversized bundle is a problem with the file field even when the server names no field.
    if (status === 413 && !Object.keys(fields).length) fields.file = body.error.message;
    return new ApiError(status, body.error.code || `http_${status}`, body.error.message || response.statusText, fields);
  }
  if (body && body.detail !== undefined) {
    if (typeof body.detail === 'string') return new ApiError(status, `http_${status}`, body.detail);
    return new ApiError(status, 'validation_error', 'Some fields need attention.', fieldsFromDetail(body.detail));
  }
  if (status === 413) {
    return new ApiError(status, 'too_large', 'The upload is larger than the server accepts.', {
      file: 'This file is larger than the server accepts. Make the bundle smaller (leave out data and checkpoints).',
    });
  }
  return new ApiError(status, `http_${status}`, `The server answered ${status} ${response.statusText}.`);
}

/** Where to send someone whose session is missing or expired; brings them back afterwards. */
export function signInUrl() {
  const here = location.pathname + location.search;
  return here === '/login' || here.startsWith('/login?') ? '/login' : `/login?next=${encodeURIComponent(here)}`;
}

/**
 * Call the API. `body` may be FormData (multipart) or a plain object (JSON).
 * A 401 sends the browser to the sign-in page unless `{auth: false}` (the sign-in call itself).
 */
export async function request(method, path, { body, auth = true, signal } = {}) {
  const init = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin', signal };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network', 'Could not reach the server. Check your connection and try again.');
  }
  if (response.status === 401 && auth) {
    location.assign(signInUrl());
    throw new ApiError(401, 'unauthorized', 'Please sign in.');
  }
  if (!response.ok) throw await toError(response);
  if (response.status === 204) return null;
  const type = response.headers.get('Content-Type') || '';
  return type.includes('application/json') ? response.json() : response.text();
}

export const get = (path, opts) => request('GET', path, opts);
export const post = (path, body, opts) => request('POST', path, { ...opts, body });
export const del = (path, opts) => request('DELETE', path, opts);

/** Query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') q.set(key, String(value));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
