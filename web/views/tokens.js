// API tokens: create (the secret is shown once, with ready-to-paste client snippets) and revoke.

import { get, post, del, q } from '../api.js';
import { h, fill, field, fmtTime, toast } from '../dom.js';
import { session } from '../app.js';

export async function tokensView(main) {
  const list = h('div', { id: 'token-list' });
  const created = h('div', { id: 'created-token' });
  const name = h('input', { type: 'text', name: 'name', required: true, maxlength: 200, placeholder: 'laptop claude-code' });
  const scope = h('select', { name: 'workspace' }, h('option', { value: '' }, 'All my workspaces'),
    session.me.workspaces.map((w) => h('option', { value: w.slug }, w.name)));
  const form = h('form.card.inline', {
    'aria-label': 'Create an API token',
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        const body = { name: name.value.trim() };
        if (scope.value) body.workspace = scope.value;
        const t = await post('/api/tokens', body);
        name.value = '';
        fill(created, snippets(t.token));
        refresh();
      } catch (err) { toast(err.message, 'error'); }
    },
  }, field('Name', name), field('Limited to', scope), h('button.primary', { type: 'submit', id: 'create-token' }, 'Create token'));
  fill(main, h('h1', {}, 'API tokens'),
    h('p.muted', {}, 'Tokens let agents and scripts act as you, over MCP or the REST API.'),
    form, created, list);

  async function refresh() {
    try {
      const out = await get('/api/tokens');
      const live = out.tokens.filter((t) => !t.revoked_at);
      fill(list, live.length ? h('table.list', { id: 'tokens' },
        h('caption.sr', {}, 'Your tokens'),
        h('thead', {}, h('tr', {}, ['Name', 'Created', 'Expires', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, live.map((t) => h('tr', { dataset: { token: t.id } },
          h('td', { 'data-label': 'Name' }, t.name || '(unnamed)'),
          h('td', { 'data-label': 'Created' }, fmtTime(t.created_at)),
          h('td', { 'data-label': 'Expires' }, t.expires_at ? fmtTime(t.expires_at) : 'never'),
          h('td.actions', { 'data-label': 'Actions' }, h('button.danger', {
            type: 'button', 'aria-label': `Revoke ${t.name || t.id}`,
            onclick: async () => {
              if (!confirm(`Revoke ${t.name || t.id}? Clients using it stop working.`)) return;
              try { await del(`/api/tokens/${q(t.id)}`); } catch (err) { toast(err.message, 'error'); }
              refresh();
            },
          }, 'Revoke'))))))
        : h('p.muted', {}, 'No tokens yet.'));
    } catch (e) { fill(list, h('p.error', { role: 'alert' }, e.message)); }
  }
  refresh();
}

/** The new secret once, and how to use it from Claude Code, Codex and Open WebUI. */
function snippets(token) {
  const base = location.origin;
  const mcp = `${base}/mcp`;
  const block = (title, text, id) => h('div.snippet', {},
    h('h3', {}, title),
    h('pre', { id, tabindex: 0 }, text),
    h('button.plain', { type: 'button', onclick: () => copy(text) }, `Copy ${title}`));
  return h('section.card.secret', { 'aria-label': 'Your new token' },
    h('h2', {}, 'Your new token'),
    h('p', {}, 'Copy it now: it is shown only this once.'),
    h('pre.token', { id: 'new-token', tabindex: 0 }, token),
    block('Claude Code', `claude mcp add --transport http delegate ${mcp} \\\n  --header "Authorization: Bearer ${token}"`, 'snippet-claude'),
    block('Codex', `# ~/.codex/config.toml  (export DELEGATE_TOKEN=${token})\n[mcp_servers.delegate]\nurl = "${mcp}"\nbearer_token_env_var = "DELEGATE_TOKEN"\ntool_timeout_sec = 1800`, 'snippet-codex'),
    block('Open WebUI', `Admin Settings → External Tools → add a server:\n  Type: MCP (Streamable HTTP)\n  URL:  ${mcp}\n  Auth: Bearer\n  Key:  ${token}`, 'snippet-openwebui'));
}

async function copy(text) {
  try { await navigator.clipboard.writeText(text); toast('Copied'); } catch { toast('Select the text and copy it', 'error'); }
}
