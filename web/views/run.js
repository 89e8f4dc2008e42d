// One run, live: its events stream in over SSE (a reload replays the history, then follows; a
// dropped stream resumes with Last-Event-ID), then the changed files and the diff. Cancel stops it.

import { get, post, q, followEvents } from '../api.js';
import { h, fill, badge, fmtDuration, fmtTokens, fmtCost, fmtTime, toast } from '../dom.js';
import { can, roleIn, setWorkspace } from '../app.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'timed_out', 'lost']);

export async function runView(main, id) {
  const run = await get(`/api/runs/${q(id)}/summary`);
  setWorkspace(run.workspace);
  const writer = can(roleIn(run.workspace), 'developer');
  const status = h('span', { id: 'run-status' }, badge(run.status));
  const meta = h('p.meta', {}, `Delegated by ${run.delegated_by} · ${fmtTime(run.created_at)} · sandbox `,
    h('a', { href: `/sandboxes/${q(run.sandbox_id)}` }, h('code', {}, run.sandbox_id)));
  const cancel = writer && !TERMINAL.has(run.status)
    ? h('button.danger', {
      type: 'button', id: 'cancel-run',
      onclick: async () => {
        cancel.disabled = true;
        cancel.textContent = 'Cancelling…';
        try {
          const out = await post(`/api/runs/${q(id)}/cancel`);
          setStatus(out.status);
        } catch (e) {
          toast(e.message, 'error');
          cancel.disabled = false;
          cancel.textContent = 'Cancel run';
        }
      },
    }, 'Cancel run')
    : null;
  const events = h('ol.events.hide-other', { id: 'events', 'aria-live': 'polite', 'aria-relevant': 'additions' });
  // opencode's bookkeeping events (plugins, sessions) are kept in the log, shown on request.
  const showOther = h('input', {
    type: 'checkbox', id: 'show-other',
    onchange: (e) => events.classList.toggle('hide-other', !e.target.checked),
  });
  const connection = h('p.muted', { id: 'stream-note' });
  const outcome = h('section', { id: 'outcome', 'aria-label': 'Result' });
  fill(main,
    h('div.run-head', {}, h('h1', {}, 'Run ', status), cancel),
    meta,
    h('h2', {}, 'Task'), h('pre.task', { id: 'task' }, run.task),
    h('h2', {}, 'Events'),
    h('p.toggle', {}, showOther, ' ', h('label', { for: 'show-other' }, "Show opencode's internal events")),
    connection, events, outcome);

  function setStatus(s) {
    fill(status, badge(s));
    if (TERMINAL.has(s) && cancel) cancel.remove();
  }

  const stop = followEvents(id, {
    onEvent: (e) => {
      fill(connection);
      if (e.type === 'status' && e.data && e.data.status) setStatus(e.data.status);
      events.append(eventItem(e));
    },
    onEnd: async (s) => {
      setStatus(s);
      fill(connection, `Run ${s}.`);
      try { drawOutcome(outcome, await get(`/api/runs/${q(id)}/summary`)); } catch (e) { toast(e.message, 'error'); }
    },
    onError: (m) => fill(connection, m),
  });
  return stop;
}

/** One event as a list item; everything from the run goes in as text. */
export function eventItem(e) {
  const d = e.data || {};
  const li = h(`li.ev.ev-${String(e.type).replace(/[^a-z_]/g, '')}`, { dataset: { seq: e.seq, type: e.type } });
  const time = h('span.seq', { title: fmtTime(e.ts) }, `#${e.seq}`);
  switch (e.type) {
    case 'text':
      li.append(time, h('div.text', {}, d.text || ''));
      break;
    case 'reasoning':
      li.append(time, h('details', {}, h('summary', {}, 'Reasoning'), h('div.text', {}, d.text || '')));
      break;
    case 'tool': {
      const title = [d.tool, d.title].filter(Boolean).join(' · ');
      li.append(time, h('details.tool', {},
        h('summary', {}, h('span.tool-name', {}, title || 'tool'), ' ', badge(d.status || 'unknown')),
        h('h3', {}, 'Input'), h('pre', {}, pretty(d.input)),
        d.output != null ? [h('h3', {}, 'Output'), h('pre', {}, pretty(d.output))] : null,
        d.error ? [h('h3', {}, 'Error'), h('pre.error', {}, pretty(d.error))] : null));
      break;
    }
    case 'step_start':
      li.append(time, h('span.muted', {}, 'Step started'));
      break;
    case 'step_finish': {
      const u = d.usage || {};
      li.append(time, h('span.muted', {}, `Step finished${d.reason ? ` (${d.reason})` : ''} · ${fmtTokens(u)} tokens · ${fmtCost(u.cost_usd)}`));
      break;
    }
    case 'error':
      li.append(time, h('div.error', { role: 'alert' }, `${d.name || 'Error'}: ${d.message || ''}`));
      break;
    case 'status':
      li.append(time, h('span', {}, 'Status ', badge(d.status || '?'),
        d.error ? h('span.error', {}, ` ${d.error.kind || ''}: ${d.error.message || ''}`) : null));
      break;
    case 'stderr':
      li.append(time, h('details', {}, h('summary.muted', {}, 'stderr'), h('pre', {}, d.line || d.text || pretty(d))));
      break;
    default:
      li.classList.add('ev-other');
      li.append(time, h('details', {}, h('summary', {}, String(e.type)), h('pre', {}, pretty(e.raw || d))));
  }
  return li;
}

function pretty(v) {
  if (v == null) return '';
  if (typeof v === 'string') return v;
  try { return JSON.stringify(v, null, 2); } catch { return String(v); }
}

/** The result at the end: totals, changed files, a readable diff. */
function drawOutcome(el, run) {
  const u = run.usage || {};
  const parts = [
    h('h2', {}, 'Result'),
    h('dl.facts', {},
      h('dt', {}, 'Status'), h('dd', {}, badge(run.status)),
      h('dt', {}, 'Duration'), h('dd', {}, fmtDuration(run.duration_ms)),
      h('dt', {}, 'Tokens'), h('dd', {}, `${fmtTokens(u)} (${u.input_tokens || 0} in, ${u.output_tokens || 0} out)`),
      h('dt', {}, 'Cost'), h('dd', {}, fmtCost(u.cost_usd))),
  ];
  if (run.error) parts.push(h('p.error', { role: 'alert', id: 'run-error' }, `${run.error.kind}: ${run.error.message}`));
  if (run.final_message) parts.push(h('h3', {}, 'Final message'), h('div.text.final', { id: 'final-message' }, run.final_message));
  parts.push(h('h3', {}, 'Changed files'));
  parts.push(run.changed_files.length
    ? h('ul.files', { id: 'changed-files' }, run.changed_files.map((f) => h('li', {}, h('span.change', { dataset: { change: f.change } }, f.change), ' ', h('code', {}, f.path))))
    : h('p.muted', {}, 'No files changed.'));
  if (run.diff) {
    parts.push(h('h3', {}, 'Diff'), diffView(run.diff));
    if (run.diff_truncated) parts.push(h('p.muted', {}, 'The diff was cut short; the files have the rest.'));
  }
  fill(el, ...parts);
}

/** A unified diff with added, removed and hunk lines told apart (class and a sign, not only colour). */
function diffView(diff) {
  return h('pre.diff', { id: 'diff', tabindex: 0, 'aria-label': 'Diff' }, diff.split('\n').map((line) => {
    let cls = 'ctx';
    if (line.startsWith('+++') || line.startsWith('---') || line.startsWith('diff ') || line.startsWith('index ')) cls = 'file';
    else if (line.startsWith('@@')) cls = 'hunk';
    else if (line.startsWith('+')) cls = 'add';
    else if (line.startsWith('-')) cls = 'del';
    return h(`span.${cls}`, {}, `${line}\n`);
  }));
}
