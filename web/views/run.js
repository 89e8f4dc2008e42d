// One run, live: its events stream in over SSE (a reload replays the history, then follows; a
// dropped stream resumes with Last-Event-ID), then the changed files with their diffs and the
// whole patch to download. Cancel stops it.

import { get, post, q, followEvents } from '../api.js';
import { h, fill, badge, fmtDuration, fmtTokens, fmtCost, fmtTime, toast } from '../dom.js';
import { can, roleIn, setWorkspace, session } from '../app.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'timed_out', 'lost']);

export async function runView(main, id) {
  const run = await get(`/api/runs/${q(id)}/summary`);
  setWorkspace(run.workspace);
  const writer = can(roleIn(run.workspace), 'developer');
  const status = h('span', { id: 'run-status' }, badge(run.status));
  // A parent of attempts has no sandbox of its own: its attempts are listed side by side.
  const parent = (run.attempts || []).length > 0;
  const meta = h('p.meta', {}, `Delegated by ${run.delegated_by} · ${fmtTime(run.created_at)}`,
    parent ? ` · ${run.attempts.length} attempts` : [' · sandbox ',
      // The watch UI of `delegate mcp` / `delegate run` serves runs only.
      session.me && session.me.watch ? h('code', {}, run.sandbox_id)
        : h('a', { href: `/sandboxes/${q(run.sandbox_id)}` }, h('code', {}, run.sandbox_id))],
    run.parent_run_id ? h('span', { id: 'parent-run' }, ' · attempt of ',
      h('a', { href: `/runs/${q(run.parent_run_id)}` }, h('code', {}, run.parent_run_id))) : '',
    run.max_cost_usd == null ? '' : h('span', { id: 'run-budget' }, ` · budget ${fmtCost(run.max_cost_usd)}`),
    run.queue_position == null ? '' : h('span', { id: 'queue-position' }, ` · waiting for a run slot, #${run.queue_position} in line`));
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
  const attempts = h('section', { id: 'attempts', 'aria-label': 'Attempts' });
  if (parent) fill(attempts, ...attemptsView(run));
  fill(main,
    h('div.run-head', {}, h('h1', {}, parent ? 'Attempts ' : 'Run ', status), cancel),
    meta,
    h('h2', {}, 'Task'), h('pre.task', { id: 'task' }, run.task),
    parent ? attempts : null,
    h('h2', {}, 'Events'),
    h('p.toggle', {}, showOther, ' ', h('label', { for: 'show-other' }, "Show opencode's internal events")),
    connection, events, outcome);

  function setStatus(s) {
    fill(status, badge(s));
    if (TERMINAL.has(s) && cancel) cancel.remove();
  }

  const stop = followEvents(id, {
    onEvent: async (e) => {
      fill(connection);
      if (e.type === 'status' && e.data && e.data.status) setStatus(e.data.status);
      events.append(eventItem(e));
      // An attempt ended: the comparison is read again.
      if (parent && e.type === 'attempt') {
        try { fill(attempts, ...attemptsView(await get(`/api/runs/${q(id)}/summary`))); } catch (err) { toast(err.message, 'error'); }
      }
    },
    onEnd: async (s) => {
      setStatus(s);
      fill(connection, `Run ${s}.`);
      try {
        const ended = await get(`/api/runs/${q(id)}/summary`);
        if (parent) fill(attempts, ...attemptsView(ended));
        drawOutcome(outcome, ended);
      } catch (e) { toast(e.message, 'error'); }
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
    case 'egress': {
      // One connection through the egress proxy: where to, allowed or refused, and why or how much.
      const where = `${d.host || '?'}:${d.port ?? '?'}`;
      const detail = d.reason
        ? h('span.error', {}, ` ${d.reason}`)
        : h('span.muted', {}, ` ${fmtBytes(d.bytes_up)} up · ${fmtBytes(d.bytes_down)} down · ${d.duration_ms ?? 0} ms`);
      li.append(time, h('span', {}, 'Egress ', h('code', {}, where), ' ', badge(d.decision || '?'), detail));
      break;
    }
    case 'attempt':
      li.append(time, h('span', {}, 'Attempt ', h('a', { href: `/runs/${q(d.run_id || '')}` }, h('code', {}, d.run_id || '?')),
        ' ', badge(d.status || '?'), h('span.muted', {}, ` ${d.files_changed ?? 0} files · +${d.additions ?? 0} −${d.deletions ?? 0}`)));
      break;
    case 'setup':
      li.append(time, h('pre.setup', {}, `setup${d.stream === 'stderr' ? ' (stderr)' : ''}: ${d.line || ''}`));
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

function fmtBytes(n) {
  const v = Number(n) || 0;
  if (v < 1024) return `${v} B`;
  if (v < 1024 * 1024) return `${(v / 1024).toFixed(1)} KiB`;
  return `${(v / 1024 / 1024).toFixed(1)} MiB`;
}

function pretty(v) {
  if (v == null) return '';
  if (typeof v === 'string') return v;
  try { return JSON.stringify(v, null, 2); } catch { return String(v); }
}

/** A parent's attempts side by side: one card each, with what to compare them on and a link to its page. */
export function attemptsView(run) {
  const cards = (run.attempts || []).map((a, i) => h('li.attempt', { dataset: { run: a.run_id, status: a.status } },
    h('h3', {}, h('a', { href: `/runs/${q(a.run_id)}` }, `Attempt ${i + 1}`), ' ', badge(a.status)),
    h('dl.facts', {},
      h('dt', {}, 'Files'), h('dd', {}, String(a.files_changed)),
      h('dt', {}, 'Lines'), h('dd', {}, h('span.add', {}, `+${a.additions}`), ' ', h('span.del', {}, `−${a.deletions}`)),
      h('dt', {}, 'Cost'), h('dd', {}, fmtCost(a.cost_usd)),
      h('dt', {}, 'Duration'), h('dd', {}, fmtDuration(a.duration_ms))),
    a.error ? h('p.error', {}, `${a.error.kind}${a.error.message ? `: ${a.error.message}` : ''}`) : null,
    a.summary ? h('p.summary', {}, a.summary) : null,
    h('p.links', {},
      h('a', { href: `/runs/${q(a.run_id)}` }, h('code', {}, a.run_id)),
      a.commit ? [' · ', h('a', { href: `/api/runs/${q(a.run_id)}/patch`, download: `${a.run_id}.patch` }, 'patch')] : null,
      a.branch ? [' · branch ', h('code', {}, a.branch)] : null)));
  return [h('h2', {}, 'Attempts'), h('ol.attempts', { id: 'attempt-list' }, cards)];
}

/** The result at the end: totals, then each changed file with its part of the diff preview. */
function drawOutcome(el, run) {
  const u = run.usage || {};
  const parts = [
    h('h2', {}, 'Result'),
    h('dl.facts', {},
      h('dt', {}, 'Status'), h('dd', {}, badge(run.status)),
      h('dt', {}, 'Duration'), h('dd', {}, fmtDuration(run.duration_ms)),
      h('dt', {}, 'Tokens'), h('dd', {}, `${fmtTokens(u)} (${u.input_tokens || 0} in, ${u.output_tokens || 0} out)`),
      h('dt', {}, 'Cost'), h('dd', { id: 'run-cost' }, run.max_cost_usd == null
        ? fmtCost(u.cost_usd)
        : `${fmtCost(u.cost_usd)} of ${fmtCost(run.max_cost_usd)} budget`)),
  ];
  if (run.error) parts.push(h('p.error', { role: 'alert', id: 'run-error' }, `${run.error.kind}: ${run.error.message}`));
  if (run.final_message) parts.push(h('h3', {}, 'Final message'), h('div.text.final', { id: 'final-message' }, run.final_message));
  // A parent's changes are its attempts', each on its own page.
  if (!(run.attempts || []).length) parts.push(...changesView(run));
  fill(el, ...parts);
}

/** Changed files, each with its change, line counts and its part of the preview; the whole patch as a download. */
export function changesView(run) {
  const files = run.changed_files || [];
  const patch = h('a.button', { id: 'download-patch', href: `/api/runs/${q(run.run_id)}/patch`, download: `${run.run_id}.patch` }, 'Download patch');
  const head = h('div.files-head', {}, h('h3', {}, `Changed files (${files.length})`), files.length ? patch : null);
  if (!files.length) return [head, h('p.muted', { id: 'changed-files' }, 'No files changed.')];
  const { pieces, other } = splitDiff(run.diff || '', files.map((f) => f.path));
  // Many files start folded, so the page stays a list to scan.
  const open = files.length <= 10;
  const out = [head, h('ul.files', { id: 'changed-files' }, files.map((f) => fileItem(f, pieces.get(f.path), run.diff_truncated, open)))];
  if (other.length) out.push(h('h3', {}, 'Other changes'), diffView(other.join('\n'), 'Other changes'));
  if (run.diff_truncated) {
    out.push(h('p.muted', { id: 'diff-truncated' }, 'The preview was cut short; ',
      h('a', { href: patch.getAttribute('href'), download: patch.getAttribute('download') }, 'download the patch'), ' for every change.'));
  }
  return out;
}

function fileItem(f, piece, truncated, open) {
  const stat = f.binary
    ? h('span.binary', { title: 'Binary file' }, 'binary')
    : [h('span.add', { title: `${f.additions} lines added` }, `+${f.additions}`), ' ',
      h('span.del', { title: `${f.deletions} lines removed` }, `−${f.deletions}`)];
  const summary = h('summary', {},
    h('span.change', { dataset: { change: f.change } }, f.change), ' ',
    h('code.path', {}, f.path), ' ', h('span.stat', {}, stat));
  let body;
  if (f.binary) body = h('p.muted', {}, 'Binary file: not shown here; its bytes are in the patch.');
  else if (piece) body = diffView(piece, `Diff of ${f.path}`);
  else if (truncated) body = h('p.muted', {}, 'Not in the preview, which was cut short; the patch has it.');
  else body = h('p.muted', {}, 'No lines to show (an empty file or a mode change).');
  return h('li.file', { dataset: { path: f.path, binary: f.binary ? 'true' : 'false' } }, h('details', { open }, summary, body));
}

/**
 * The preview cut at each `diff --git` header, each piece given to the path its header names
 * (compared whole, so a file name that looks like a header cannot take another file's piece).
 * Pieces no changed file claims go to `other`.
 */
export function splitDiff(diff, paths) {
  const byHeader = new Map(paths.map((p) => [`diff --git ${cQuote(`a/${p}`)} ${cQuote(`b/${p}`)}`, p]));
  const pieces = new Map();
  const other = [];
  let lines = null;
  const flush = () => {
    if (!lines) return;
    while (lines.length && lines[lines.length - 1] === '') lines.pop();
    const path = byHeader.get(lines[0]);
    if (path !== undefined && !pieces.has(path)) pieces.set(path, lines.join('\n'));
    else other.push(...lines);
  };
  for (const line of diff.split('\n')) {
    if (line.startsWith('diff --git ')) { flush(); lines = [line]; } else if (lines) lines.push(line);
  }
  flush();
  return { pieces, other };
}

/** A path as git writes it in a diff header: C-quoted when it holds a quote, a backslash or a control character. */
function cQuote(s) {
  if (!/["\\\x00-\x1f\x7f]/.test(s)) return s;
  const named = { '\x07': '\\a', '\b': '\\b', '\t': '\\t', '\n': '\\n', '\v': '\\v', '\f': '\\f', '\r': '\\r', '"': '\\"', '\\': '\\\\' };
  return `"${s.replace(/["\\\x00-\x1f\x7f]/g, (c) => named[c] || `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`)}"`;
}

/** A unified diff with added, removed and hunk lines told apart (class and a sign, not only colour). */
function diffView(diff, label) {
  return h('pre.diff', { tabindex: 0, 'aria-label': label }, diff.split('\n').map((line) => {
    let cls = 'ctx';
    if (line.startsWith('+++') || line.startsWith('---') || line.startsWith('diff ') || line.startsWith('index ')) cls = 'file';
    else if (line.startsWith('@@')) cls = 'hunk';
    else if (line.startsWith('+')) cls = 'add';
    else if (line.startsWith('-')) cls = 'del';
    return h(`span.${cls}`, {}, `${line}\n`);
  }));
}
