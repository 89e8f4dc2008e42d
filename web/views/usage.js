// Usage of a workspace: today's spend against its daily budget and its quotas, totals, and tokens
// and cost per day as a small inline SVG chart.

import { get, q } from '../api.js';
import { h, fill, svg, fmtCost } from '../dom.js';

const DAYS = 14;

export async function usageView(main, ws) {
  const [total, runs, limits] = await Promise.all([
    get(`/api/usage?workspace=${q(ws)}`),
    get(`/api/runs/summaries?workspace=${q(ws)}&limit=500`),
    get(`/api/workspaces/${q(ws)}/limits`),
  ]);
  const u = total.usage;
  const days = perDay(runs.runs);
  fill(main, h('h1', {}, 'Usage'),
    budgetView(limits),
    h('dl.facts', { id: 'usage-totals' },
      h('dt', {}, 'Runs'), h('dd', {}, String(total.runs)),
      h('dt', {}, 'Input tokens'), h('dd', {}, u.input_tokens.toLocaleString()),
      h('dt', {}, 'Output tokens'), h('dd', {}, u.output_tokens.toLocaleString()),
      h('dt', {}, 'Cache read / write'), h('dd', {}, `${u.cache_read_tokens.toLocaleString()} / ${u.cache_write_tokens.toLocaleString()}`),
      h('dt', {}, 'Cost'), h('dd', {}, fmtCost(u.cost_usd))),
    h('h2', {}, `The last ${DAYS} days`),
    chart(days),
    table(days));
}

/** Today's spend against the daily budget, and the quotas in effect (no limit: "none"). */
export function budgetView(limits) {
  const e = limits.effective;
  const none = (v, f) => (v == null ? 'none' : f(v));
  const spent = fmtCost(limits.spent_today_usd);
  const today = e.daily_budget_usd == null
    ? `${spent} (no daily budget)`
    : `${spent} of ${fmtCost(e.daily_budget_usd)} (${limits.resets})`;
  return h('section', { 'aria-label': 'Budget and quotas' },
    h('h2', {}, 'Budget and quotas'),
    h('dl.facts', { id: 'workspace-budget' },
      h('dt', {}, 'Spent today (UTC)'), h('dd', { id: 'spent-today' }, today),
      h('dt', {}, 'Budget per run'), h('dd', {}, none(e.max_run_cost_usd, fmtCost)),
      h('dt', {}, 'Runs at once'), h('dd', {}, none(e.max_concurrent_runs, String)),
      h('dt', {}, 'Warm sandboxes'), h('dd', {}, none(e.max_warm_sandboxes, (n) => `${n} (paused ones count)`))));
}

/** Tokens and cost per calendar day (local time) of the recent runs, oldest first. */
function perDay(runs) {
  const out = [];
  const today = new Date();
  today.setHours(0, 0, 0, 0);
  for (let i = DAYS - 1; i >= 0; i--) {
    const d = new Date(today);
    d.setDate(d.getDate() - i);
    out.push({ day: d, tokens: 0, cost: 0 });
  }
  for (const r of runs) {
    const d = new Date(r.created_at);
    d.setHours(0, 0, 0, 0);
    const slot = out.find((x) => x.day.getTime() === d.getTime());
    if (!slot) continue;
    const u = r.usage;
    slot.tokens += u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens;
    slot.cost += u.cost_usd;
  }
  return out;
}

function chart(days) {
  const W = 600, H = 180, pad = 28, bw = (W - pad * 2) / days.length;
  const maxT = Math.max(1, ...days.map((d) => d.tokens));
  const maxC = Math.max(1e-9, ...days.map((d) => d.cost));
  const bars = days.map((d, i) => {
    const bh = (d.tokens / maxT) * (H - pad * 2);
    return svg('rect', { x: pad + i * bw + 2, y: H - pad - bh, width: Math.max(1, bw - 4), height: bh, class: 'bar' },
      svg('title', {}, `${d.day.toLocaleDateString()}: ${d.tokens} tokens, ${fmtCost(d.cost)}`));
  });
  const points = days.map((d, i) => `${pad + i * bw + bw / 2},${H - pad - (d.cost / maxC) * (H - pad * 2)}`).join(' ');
  return h('figure.chart', {},
    svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': 'chart-title', id: 'usage-chart' },
      svg('title', { id: 'chart-title' }, 'Tokens (bars) and cost (line) per day'),
      svg('line', { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, class: 'axis' }),
      ...bars,
      svg('polyline', { points, class: 'cost' }),
      svg('text', { x: pad, y: H - 8, class: 'label' }, days[0].day.toLocaleDateString()),
      svg('text', { x: W - pad, y: H - 8, class: 'label', 'text-anchor': 'end' }, days[days.length - 1].day.toLocaleDateString())),
    h('figcaption', {}, 'Bars: tokens per day. Line: cost per day. The table below has the numbers.'));
}

function table(days) {
  return h('table.list', { id: 'usage-days' },
    h('caption.sr', {}, 'Tokens and cost per day'),
    h('thead', {}, h('tr', {}, ['Day', 'Tokens', 'Cost'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, days.filter((d) => d.tokens || d.cost).reverse().map((d) => h('tr', {},
      h('td', { 'data-label': 'Day' }, d.day.toLocaleDateString()),
      h('td.num', { 'data-label': 'Tokens' }, d.tokens.toLocaleString()),
      h('td.num', { 'data-label': 'Cost' }, fmtCost(d.cost))))));
}
