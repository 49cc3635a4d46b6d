// Sign in with an API token: POST /auth/session sets the twinkle_session cookie.

import { ApiError, ROUTES, post } from '../api.js';
import { h, pageTitle, replace } from '../ui.js';

function nextUrl() {
  const next = new URLSearchParams(location.search).get('next') || '/';
  // Only same-site paths: never bounce a user to another origin after sign-in.
  return next.startsWith('/') && !next.startsWith('//') ? next : '/';
}

export async function render(root) {
  const error = h('p', { class: 'field-error', id: 'token-error', hidden: true });
  const input = h('input', {
    id: 'token',
    name: 'token',
    type: 'password',
    autocomplete: 'current-password',
    spellcheck: 'false',
    required: true,
    'aria-describedby': 'token-hint',
  });
  const button = h('button', { type: 'submit', class: 'button' }, 'Sign in');
  const form = h(
    'form',
    { class: 'card narrow', novalidate: true },
    h(
      'div',
      { class: 'field' },
      h('label', { for: 'token' }, 'API token'),
      h(
        'p',
        { class: 'hint', id: 'token-hint' },
        'Starts with ',
        h('code', {}, 'twk_u_'),
        '. Your platform admin makes one with ',
        h('code', {}, 'twinkle-scheduler create-user NAME'),
        '; the same token works with ',
        h('code', {}, 'twinkle-submit'),
        '.',
      ),
      error,
      input,
    ),
    button,
  );

  const showError = (message) => {
    replace(error, message);
    error.hidden = false;
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', 'token-error token-hint');
    input.focus();
  };

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      showError('Enter your API token.');
      return;
    }
    button.disabled = true;
    try {
      await post(ROUTES.AUTH_SESSION, { token }, { auth: false });
      location.assign(nextUrl());
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        showError('That token was not accepted. Check it and try again, or ask for a new one.');
      } else if (err instanceof ApiError && err.fields && err.fields.token) {
        showError(err.fields.token);
      } else {
        showError(err.message || 'Sign-in failed.');
      }
    } finally {
      button.disabled = false;
    }
  });

  root.append(pageTitle('Sign in'), form);
  input.focus();
}
