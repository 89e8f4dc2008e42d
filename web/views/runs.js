// Runs of a workspace: who or what delegated each (a person, an API token, an MCP client), its
// status, duration, tokens and cost. Best-of-N attempts come as one row, their parent's.

import { get, q } from '../api.js';
import { h, fill, badge, fmtDuration, fmtTokens, fmtCost, fmtTime } from '../dom.js';

const POLL_MS = 3000;

export async function runsView(main, ws) {
  const list = h('div', { id: 'run-list' }, h('p.muted', {}, 'Loading…'));
  fill(main, h('h1', {}, 'Runs'), list);
  let stopped = false, timer = null, lastKey = '';
  async function loop() {
    try {
      const out = await get(`/api/runs/summaries?workspace=${q(ws)}&limit=100`);
      const key = JSON.stringify(out.runs.map((r) => [r.run_id, r.status, r.duration_ms, r.usage]));
      if (key !== lastKey) { lastKey = key; fill(list, runTable(out.runs)); }
    } catch (e) {
      fill(list, h('p.error', { role: 'alert' }, e.message));
    }
    if (!stopped) timer = setTimeout(loop, POLL_MS);
  }
  loop();
  return () => { stopped = true; clearTimeout(timer); };
}

/** A table of run summaries. */
export function runTable(runs) {
  if (!runs.length) return h('p.muted', {}, 'No runs yet.');
  return h('table.list', { id: 'runs' },
    h('caption.sr', {}, 'Runs, newest first'),
    h('thead', {}, h('tr', {}, ['Task', 'Delegated by', 'Status', 'Started', 'Duration', 'Tokens', 'Cost']
      .map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, runs.map((r) => h('tr', { dataset: { run: r.run_id } },
      h('td.task', { 'data-label': 'Task' }, h('a', { href: `/runs/${q(r.run_id)}` }, oneLine(r.task)),
        // A parent of attempts is one row; its page shows them side by side.
        r.attempts ? h('span.attempt-count', {}, ` · ${r.attempts} attempts`) : null),
      h('td', { 'data-label': 'Delegated by' }, r.delegated_by),
      h('td', { 'data-label': 'Status' }, badge(r.status)),
      h('td', { 'data-label': 'Started' }, fmtTime(r.created_at)),
      h('td', { 'data-label': 'Duration' }, fmtDuration(r.duration_ms)),
      h('td.num', { 'data-label': 'Tokens' }, fmtTokens(r.usage)),
      h('td.num', { 'data-label': 'Cost' }, fmtCost(r.usage.cost_usd))))));
}

function oneLine(text) {
  const t = (text || '').replace(/\s+/g, ' ').trim();
  return t.length > 120 ? `${t.slice(0, 119)}…` : t || '(no task text)';
}
