// delegate's web UI: a small client-side router over the REST API. Each view draws into <main>
// and may return a cleanup function (stop polling, close streams) called when leaving it.

import { get, post, ApiError } from './api.js';
import { h, fill, toast } from './dom.js';
import { signinView } from './views/signin.js';
import { sandboxesView, sandboxView } from './views/sandboxes.js';
import { runsView } from './views/runs.js';
import { runView } from './views/run.js';
import { tokensView } from './views/tokens.js';
import { usageView } from './views/usage.js';
import { workspacesView, membersView } from './views/workspaces.js';

/** Shared state: who is signed in, which workspace is current. */
export const session = { me: null, ws: null };

const routes = [
  [/^\/signin$/, signinView, { public: true }],
  [/^\/$/, home],
  [/^\/workspaces$/, workspacesView],
  [/^\/w\/([^/]+)$/, sandboxesView],
  [/^\/w\/([^/]+)\/runs$/, runsView],
  [/^\/w\/([^/]+)\/members$/, membersView],
  [/^\/w\/([^/]+)\/usage$/, usageView],
  [/^\/runs\/([^/]+)$/, runView],
  [/^\/sandboxes\/([^/]+)$/, sandboxView],
  [/^\/tokens$/, tokensView],
];

let cleanup = null;

/** Navigates within the app (no reload). */
export function go(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

/** The role the signed-in user has in a workspace (by slug or id). */
export function roleIn(ws) {
  const w = session.me && session.me.workspaces.find((x) => x.slug === ws || x.id === ws);
  return w ? w.role : null;
}

const RANK = { guest: 0, developer: 1, maintainer: 2, owner: 3 };
/** Whether the role may do what `least` may. The server checks again; this only hides controls. */
export function can(role, least) {
  return role != null && RANK[role] >= RANK[least];
}

/** Makes `ws` (slug) the current workspace, e.g. the one a run or sandbox belongs to. */
export function setWorkspace(ws) {
  if (ws && session.ws !== ws) {
    session.ws = ws;
    drawHeader();
  }
}

export async function refreshMe() {
  session.me = await get('/api/auth/me');
  return session.me;
}

async function home() {
  const ws = session.me.workspaces[0];
  if (!ws) return go('/workspaces', { replace: true });
  go(`/w/${encodeURIComponent(ws.slug)}`, { replace: true });
}

async function render() {
  if (cleanup) { try { cleanup(); } catch { /* ignore */ } cleanup = null; }
  const path = location.pathname;
  const match = routes.map(([re, view, opts]) => [path.match(re), view, opts || {}]).find(([m]) => m);
  const main = document.getElementById('main');
  if (!match) {
    drawHeader();
    fill(main, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '/' }, 'Back to the start')));
    return;
  }
  const [m, view, opts] = match;
  if (!opts.public && !session.me) {
    try {
      await refreshMe();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401 && e.code === 'watch_link_required') {
        // The watch UI of `delegate mcp` / `delegate run` has no sign-in: only a run's link opens it.
        drawHeader();
        fill(main, h('h1', {}, 'Open a watch link'), h('p', { id: 'watch-link-required' }, e.message));
        return;
      }
      if (e instanceof ApiError && e.status === 401) {
        const next = location.pathname + location.search;
        return go(`/signin?next=${encodeURIComponent(next)}`, { replace: true });
      }
      fill(main, h('p.error', { role: 'alert' }, e.message));
      return;
    }
  }
  const params = m.slice(1).map(decodeURIComponent);
  if (params[0] && /^\/w\//.test(path)) session.ws = params[0];
  drawHeader();
  fill(main);
  try {
    const c = await view(main, ...params);
    if (typeof c === 'function') cleanup = c;
  } catch (e) {
    fill(main, h('h1', {}, 'Something went wrong'), h('p.error', { role: 'alert' }, e.message));
  }
  const h1 = main.querySelector('h1');
  document.title = h1 ? `${h1.textContent} · delegate` : 'delegate';
  // After an in-app navigation, screen readers and the keyboard start at the new content (a view
  // that focused a field itself keeps it); the first page load leaves focus alone.
  if (rendered && !main.contains(document.activeElement)) main.focus({ preventScroll: true });
  rendered = true;
}

let rendered = false;

function drawHeader() {
  const top = document.getElementById('top');
  if (!session.me) {
    fill(top, h('a.brand', { href: '/' }, 'delegate'));
    return;
  }
  if (session.me.watch) {
    // The watch UI of `delegate mcp` / `delegate run` serves runs only: no workspaces, no tokens.
    fill(top, h('span.brand', {}, 'delegate'), h('span.muted', { id: 'watch-note' }, 'Watching runs on this machine'));
    return;
  }
  const wss = session.me.workspaces;
  const current = session.ws || (wss[0] && wss[0].slug);
  const wsSel = h('select', { id: 'ws-select', 'aria-label': 'Workspace', onchange: (e) => go(`/w/${encodeURIComponent(e.target.value)}`) },
    wss.map((w) => h('option', { value: w.slug, selected: w.slug === current || w.id === current }, `${w.name} (${w.role})`)));
  const enc = encodeURIComponent(current || '');
  const link = (href, text) => h('a', { href, 'aria-current': location.pathname === href ? 'page' : null }, text);
  const nav = h('nav', { 'aria-label': 'Main' },
    current ? [link(`/w/${enc}`, 'Sandboxes'), link(`/w/${enc}/runs`, 'Runs'), link(`/w/${enc}/usage`, 'Usage'), link(`/w/${enc}/members`, 'Members')] : [],
    link('/workspaces', 'Workspaces'), link('/tokens', 'Tokens'));
  const out = h('button.link', { type: 'button', id: 'signout', onclick: signOut }, 'Sign out');
  fill(top, h('a.brand', { href: '/' }, 'delegate'), wss.length ? wsSel : null, nav,
    h('span.who', {}, h('span.muted', {}, session.me.email), ' ', out));
}

async function signOut() {
  try { await post('/api/auth/logout'); } catch (e) { toast(e.message, 'error'); }
  session.me = null;
  go('/signin');
}

// Links inside the app navigate without a reload; modified clicks keep their usual meaning.
document.addEventListener('click', (e) => {
  const a = e.target.closest && e.target.closest('a[href]');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  if (a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith('/api/') || url.pathname.startsWith('/ui/')) return;
  e.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener('popstate', render);
render();
