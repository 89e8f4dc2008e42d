// Sandboxes of a workspace: a live list (polled, so status changes appear without a reload),
// create, pause, resume, delete, and Open into opencode's own UI through delegate's gateway.

import { get, post, del, q } from '../api.js';
import { h, fill, field, badge, fmtCost, fmtTime, toast } from '../dom.js';
import { can, roleIn, session, setWorkspace } from '../app.js';
import { runTable } from './runs.js';

/** How often the list looks again. */
const POLL_MS = 1500;

/** Today's spend against the daily budget and the quotas, in one line (the Usage page has more). */
function spendLine(l) {
  const e = l.effective;
  const parts = [e.daily_budget_usd == null
    ? `Spent today: ${fmtCost(l.spent_today_usd)}`
    : `Spent today: ${fmtCost(l.spent_today_usd)} of ${fmtCost(e.daily_budget_usd)}`];
  if (e.max_concurrent_runs != null) parts.push(`runs at once: ${e.max_concurrent_runs}`);
  if (e.max_warm_sandboxes != null) parts.push(`warm sandboxes: ${e.max_warm_sandboxes}`);
  return parts.join(' · ');
}

export async function sandboxesView(main, ws) {
  const role = roleIn(ws);
  const writer = can(role, 'developer');
  const list = h('div', { id: 'sandbox-list', 'aria-live': 'polite' }, h('p.muted', {}, 'Loading…'));
  const spend = h('p.muted', { id: 'workspace-spend' });
  const parts = [h('h1', {}, 'Sandboxes'), spend];
  get(`/api/workspaces/${q(ws)}/limits`).then((l) => fill(spend, spendLine(l)), () => {});
  if (writer) parts.push(createForm(ws, () => refresh()), connectMachine(ws));
  else parts.push(h('p.muted', { id: 'read-only-note' }, `You are a ${role || 'visitor'} here: you can look, not change.`));
  parts.push(list);
  fill(main, ...parts);

  let timer = null;
  let stopped = false;
  let lastKey = '';
  async function refresh() {
    try {
      const out = await get(`/api/sandboxes?workspace=${q(ws)}`);
      const key = JSON.stringify(out.sandboxes.map((s) => [s.sandbox_id, s.status, s.name, s.status_reason]));
      // Redraw only on change, so focus and the keyboard position survive the polling.
      if (key !== lastKey) {
        lastKey = key;
        fill(list, sandboxTable(out.sandboxes, writer, refresh));
      }
    } catch (e) {
      fill(list, h('p.error', { role: 'alert' }, e.message));
    }
  }
  async function loop() {
    await refresh();
    if (!stopped) timer = setTimeout(loop, POLL_MS);
  }
  loop();
  return () => { stopped = true; clearTimeout(timer); };
}

function createForm(ws, done) {
  const name = h('input', { type: 'text', name: 'name', maxlength: 200, placeholder: 'e.g. parser work' });
  const button = h('button.primary', { type: 'submit', id: 'create-sandbox' }, 'Create sandbox');
  return h('form.card.inline', {
    'aria-label': 'Create a sandbox',
    onsubmit: async (e) => {
      e.preventDefault();
      button.disabled = true;
      button.textContent = 'Creating…';
      try {
        const body = { workspace: ws };
        if (name.value.trim()) body.name = name.value.trim();
        const s = await post('/api/sandboxes', body);
        toast(`Sandbox ${s.name} is ${s.status}`);
        name.value = '';
        done();
      } catch (err) {
        toast(err.message, 'error');
      } finally {
        button.disabled = false;
        button.textContent = 'Create sandbox';
      }
    },
  }, field('Name (optional)', name), button);
}

// A one-time code that registers a developer's own machine (its opencode serve) as a `local`
// sandbox of this workspace, shown with the command to run there.
function connectMachine(ws) {
  const out = h('div', { id: 'agent-code', 'aria-live': 'polite' });
  const button = h('button', { type: 'submit', id: 'create-agent-code' }, 'Connect a machine');
  return h('form.card.inline', {
    'aria-label': 'Connect a machine of your own',
    onsubmit: async (e) => {
      e.preventDefault();
      button.disabled = true;
      try {
        const c = await post(`/api/workspaces/${q(ws)}/agent-codes`, {});
        // Without DELEGATE_PUBLIC_URL the server cannot know its own address; this page does.
        const command = c.command.replace('--server URL ', `--server ${location.origin} `);
        fill(out,
          h('p', {}, `Run this on the machine, next to its opencode serve. The code works once, until ${fmtTime(c.expires_at)}.`),
          h('pre', { id: 'agent-command', tabindex: 0 }, command));
      } catch (err) {
        toast(err.message, 'error');
      } finally {
        button.disabled = false;
      }
    },
  }, button, out);
}

function sandboxTable(sandboxes, writer, refresh) {
  if (!sandboxes.length) return h('p.muted', {}, 'No sandboxes yet.');
  return h('table.list', { id: 'sandboxes' },
    h('caption.sr', {}, 'Sandboxes, newest first'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'Status'),
      h('th', { scope: 'col' }, 'Kind'), h('th', { scope: 'col' }, 'Created'), h('th', { scope: 'col' }, 'Actions'))),
    h('tbody', {}, sandboxes.map((s) => h('tr', { dataset: { sandbox: s.sandbox_id } },
      h('td', { 'data-label': 'Name' }, h('a', { href: `/sandboxes/${q(s.sandbox_id)}` }, s.name)),
      h('td', { 'data-label': 'Status' }, badge(s.status), s.status_reason ? h('span.reason', {}, s.status_reason) : null),
      h('td', { 'data-label': 'Kind' }, `${s.kind} · ${s.backend}`),
      h('td', { 'data-label': 'Created' }, fmtTime(s.created_at)),
      h('td.actions', { 'data-label': 'Actions' }, actions(s, writer, refresh))))));
}

/** The buttons a sandbox offers this user; none for guests. */
export function actions(s, writer, refresh) {
  if (!writer) return [];
  const btn = (label, cls, fn) => h(`button.${cls}`, {
    type: 'button', 'aria-label': `${label} ${s.name}`, dataset: { action: label.toLowerCase() },
    onclick: async (e) => {
      e.currentTarget.disabled = true;
      try { await fn(); } catch (err) { toast(err.message, 'error'); }
      refresh();
    },
  }, label);
  const out = [];
  const id = q(s.sandbox_id);
  if (s.status === 'running' && s.kind === 'warm') {
    out.push(btn('Open', 'primary', () => openSandbox(s.sandbox_id)));
    out.push(btn('Pause', 'plain', () => post(`/api/sandboxes/${id}/pause`)));
  }
  if (s.status === 'paused') out.push(btn('Resume', 'plain', () => post(`/api/sandboxes/${id}/resume`)));
  if (s.status !== 'deleted' && s.status !== 'deleting') {
    out.push(btn('Delete', 'danger', async () => {
      if (!confirm(`Delete sandbox ${s.name} and its files?`)) return;
      await del(`/api/sandboxes/${id}`);
    }));
  }
  return out;
}

/** Asks for a one-time ticket and goes to opencode through the gateway. */
export async function openSandbox(id) {
  const t = await post(`/api/sandboxes/${q(id)}/open`);
  location.assign(t.url);
}

/** One sandbox: its facts, its actions, its runs. Also the target of a sandbox's watch_url. */
export async function sandboxView(main, id) {
  let s;
  try {
    s = await get(`/api/sandboxes/${q(id)}`);
  } catch (e) {
    fill(main, h('h1', {}, 'Sandbox'), h('p.error', { role: 'alert' }, e.message));
    return;
  }
  const runs = await get(`/api/runs/summaries?sandbox_id=${q(id)}`);
  const role = await roleOfSandbox(id);
  const facts = h('div');
  const draw = (s) => fill(facts,
    h('dl.facts', {},
      h('dt', {}, 'Status'), h('dd', {}, badge(s.status), s.status_reason ? ` ${s.status_reason}` : ''),
      h('dt', {}, 'Kind'), h('dd', {}, `${s.kind} · ${s.backend}`),
      h('dt', {}, 'Created'), h('dd', {}, fmtTime(s.created_at)),
      h('dt', {}, 'Id'), h('dd', {}, h('code', {}, s.sandbox_id))),
    h('div.actions', {}, actions(s, can(role, 'developer'), async () => {
      try { draw(await get(`/api/sandboxes/${q(id)}`)); } catch (e) { toast(e.message, 'error'); }
    })));
  draw(s);
  fill(main, h('h1', {}, `Sandbox ${s.name}`), facts, h('h2', {}, 'Runs'), runTable(runs.runs));
}

/** The user's role in the workspace holding a sandbox (the API answers per workspace). */
async function roleOfSandbox(id) {
  for (const w of session.me.workspaces) {
    try {
      const out = await get(`/api/sandboxes?workspace=${q(w.slug)}`);
      if (out.sandboxes.some((s) => s.sandbox_id === id)) { setWorkspace(w.slug); return w.role; }
    } catch { /* try the next */ }
  }
  return null;
}
