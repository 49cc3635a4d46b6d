// Entry point: pick the page module from the path, check the session, render into <main>.
// Navigation between pages is plain links (full loads of a tiny cached shell), so no page leaks timers
// or open log streams into the next one.

import { ApiError, ROUTES, del, get } from './api.js';
import { alertBox, h, replace, scrollCues } from './ui.js';

const PAGES = [
  { pattern: /^\/$/, module: './pages/jobs.js', nav: 'jobs' },
  { pattern: /^\/submit$/, module: './pages/submit.js', nav: 'submit' },
  { pattern: /^\/workers$/, module: './pages/workers.js', nav: 'workers' },
  { pattern: /^\/jobs\/([^/]+)$/, module: './pages/job.js', nav: 'jobs' },
  { pattern: /^\/compare$/, module: './pages/compare.js', nav: 'jobs' },
  { pattern: /^\/login$/, module: './pages/login.js', nav: null, public: true },
];

function findRoute(path) {
  for (const route of PAGES) {
    const match = route.pattern.exec(path);
    if (match) return { route, params: match.slice(1).map(decodeURIComponent) };
  }
  return null;
}

function showNav(user, active) {
  const nav = document.getElementById('site-nav');
  nav.hidden = false;
  for (const link of nav.querySelectorAll('a[data-nav]')) {
    if (link.dataset.nav === active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const name = user && (user.name || user.username);
  replace(document.getElementById('who'), name ? h('span', {}, 'Signed in as ', h('strong', {}, name)) : '');
  document.getElementById('sign-out').addEventListener('click', async () => {
    try {
      await del(ROUTES.AUTH_SESSION, { auth: false });
    } finally {
      location.assign('/login');
    }
  });
}

async function main() {
  const root = document.getElementById('main');
  scrollCues(root);
  const found = findRoute(location.pathname);
  if (!found) {
    document.title = 'Page not found · Twinkle Commons';
    replace(
      root,
      h('h1', {}, 'Page not found'),
      h('p', {}, 'Nothing lives at ', h('code', {}, location.pathname), '. The address may be mistyped, or the page has moved.'),
      h('ul', {}, h('li', {}, h('a', { href: '/' }, 'Go to your jobs')), h('li', {}, h('a', { href: '/docs' }, 'API documentation'))),
    );
    return;
  }
  const { route, params } = found;
  try {
    let user = null;
    if (!route.public) {
      // Also the session check: a 401 here sends the browser to /login and back.
      user = await get(ROUTES.USERS_ME);
      showNav(user, route.nav);
    }
    const page = await import(route.module);
    root.replaceChildren();
    await page.render(root, { params, user });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return; // already on the way to /login
    console.error(err);
    replace(root, h('h1', {}, 'Something went wrong'), alertBox(err.message || String(err)));
  }
}

main();
