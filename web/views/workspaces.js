// Workspaces (list, create) and a workspace's members (invite, change role, remove) as the
// user's role allows: maintainers manage members below maintainer, owners everyone.

import { get, post, patch, del, q } from '../api.js';
import { h, fill, field, toast } from '../dom.js';
import { can, go, refreshMe, roleIn, session } from '../app.js';

const ROLES = ['guest', 'developer', 'maintainer', 'owner'];

export async function workspacesView(main) {
  await refreshMe();
  const slug = h('input', { type: 'text', name: 'slug', required: true, pattern: '[a-z0-9-]{2,40}', placeholder: 'team-x' });
  const name = h('input', { type: 'text', name: 'name', required: true, maxlength: 200, placeholder: 'Team X' });
  fill(main, h('h1', {}, 'Workspaces'),
    h('ul.cards', { id: 'workspaces' }, session.me.workspaces.map((w) => h('li', {},
      h('a', { href: `/w/${q(w.slug)}` }, w.name), ' ', h('span.muted', {}, `${w.slug} · ${w.role}`)))),
    h('form.card.inline', {
      'aria-label': 'Create a workspace',
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          const w = await post('/api/workspaces', { slug: slug.value.trim(), name: name.value.trim() });
          await refreshMe();
          go(`/w/${q(w.slug)}`);
        } catch (err) { toast(err.message, 'error'); }
      },
    }, field('Slug', slug, 'a-z, 0-9 and -, 2 to 40 characters'), field('Name', name),
    h('button.primary', { type: 'submit', id: 'create-workspace' }, 'Create workspace')));
}

export async function membersView(main, ws) {
  const role = roleIn(ws);
  const list = h('div', { id: 'member-list' });
  const parts = [h('h1', {}, 'Members'), list];
  if (can(role, 'maintainer')) parts.push(addForm(ws, role, () => refresh()), inviteForm(ws, role));
  fill(main, ...parts);

  async function refresh() {
    try {
      const out = await get(`/api/workspaces/${q(ws)}/members`);
      fill(list, h('table.list', { id: 'members' },
        h('caption.sr', {}, 'Members'),
        h('thead', {}, h('tr', {}, ['Name', 'Email', 'Role', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, out.members.map((m) => memberRow(ws, role, m, refresh)))));
    } catch (e) { fill(list, h('p.error', { role: 'alert' }, e.message)); }
  }
  refresh();
}

/** Roles `actor` may hand out or take away (the server decides again). */
function assignable(actor) {
  if (actor === 'owner') return ROLES;
  if (actor === 'maintainer') return ['guest', 'developer'];
  return [];
}

function memberRow(ws, actor, m, refresh) {
  const mayChange = assignable(actor).includes(m.role) && m.user_id !== session.me.user_id;
  const cells = [
    h('td', { 'data-label': 'Name' }, m.name),
    h('td', { 'data-label': 'Email' }, m.email),
  ];
  if (!mayChange) {
    cells.push(h('td', { 'data-label': 'Role' }, m.role), h('td', { 'data-label': 'Actions' }));
  } else {
    const sel = h('select', {
      'aria-label': `Role of ${m.email}`,
      onchange: async (e) => {
        try { await patch(`/api/workspaces/${q(ws)}/members/${q(m.user_id)}`, { role: e.target.value }); toast('Role changed'); } catch (err) { toast(err.message, 'error'); }
        refresh();
      },
    }, assignable(actor).map((r) => h('option', { value: r, selected: r === m.role }, r)));
    cells.push(h('td', { 'data-label': 'Role' }, sel), h('td.actions', { 'data-label': 'Actions' }, h('button.danger', {
      type: 'button', 'aria-label': `Remove ${m.email}`,
      onclick: async () => {
        if (!confirm(`Remove ${m.email} from this workspace?`)) return;
        try { await del(`/api/workspaces/${q(ws)}/members/${q(m.user_id)}`); } catch (err) { toast(err.message, 'error'); }
        refresh();
      },
    }, 'Remove')));
  }
  return h('tr', { dataset: { member: m.user_id } }, cells);
}

function addForm(ws, actor, done) {
  const email = h('input', { type: 'email', name: 'email', required: true });
  const role = h('select', { name: 'role' }, assignable(actor).map((r) => h('option', { value: r, selected: r === 'developer' }, r)));
  return h('form.card.inline', {
    'aria-label': 'Add a member',
    onsubmit: async (e) => {
      e.preventDefault();
      try { await post(`/api/workspaces/${q(ws)}/members`, { email: email.value.trim(), role: role.value }); email.value = ''; done(); } catch (err) { toast(err.message, 'error'); }
    },
  }, h('h2', {}, 'Add someone with an account'), field('Email', email), field('Role', role), h('button.primary', { type: 'submit', id: 'add-member' }, 'Add member'));
}

function inviteForm(ws, actor) {
  const role = h('select', { name: 'role' }, assignable(actor).map((r) => h('option', { value: r, selected: r === 'developer' }, r)));
  const out = h('div', { id: 'invite-code' });
  return h('form.card.inline', {
    'aria-label': 'Invite someone new',
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        const inv = await post(`/api/workspaces/${q(ws)}/invites`, { role: role.value });
        fill(out, h('p', {}, 'Invite code (works once, for 7 days): '), h('pre.token', { tabindex: 0 }, inv.code));
      } catch (err) { toast(err.message, 'error'); }
    },
  }, h('h2', {}, 'Invite someone new'), field('Role', role), h('button.plain', { type: 'submit' }, 'Create invite code'), out);
}
