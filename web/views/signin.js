// Sign in with a password, or a single sign-on provider when the server has one.

import { get, post } from '../api.js';
import { h, field, fill } from '../dom.js';
import { go, refreshMe, session } from '../app.js';

/** Only a path on this server may be a place to return to. */
export function safeNext(raw) {
  const local = raw && raw.startsWith('/') && !raw.startsWith('//') && !raw.startsWith('/\\');
  // Never back to the sign-in page itself (that would go round in circles).
  return local && !raw.startsWith('/signin') ? raw : '/';
}

export async function signinView(main) {
  const next = safeNext(new URLSearchParams(location.search).get('next'));
  // Already signed in: straight on.
  try {
    await refreshMe();
    return go(next, { replace: true });
  } catch { session.me = null; }
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true });
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true });
  const error = h('p.error', { role: 'alert', id: 'signin-error' });
  const form = h('form.card.narrow', {
    onsubmit: async (e) => {
      e.preventDefault();
      fill(error);
      try {
        session.me = await post('/api/auth/login', { email: email.value, password: password.value });
        go(next, { replace: true });
      } catch (err) {
        fill(error, err.message);
      }
    },
  },
  h('h1', {}, 'Sign in to delegate'),
  field('Email', email), field('Password', password), error,
  h('button.primary', { type: 'submit' }, 'Sign in'));
  fill(main, form);
  email.focus();
  let providers = { oidc: false, github: false };
  try { providers = await get('/api/auth/providers'); } catch { /* password only */ }
  const sso = [];
  const ret = `?return_to=${encodeURIComponent(next)}`;
  if (providers.github) sso.push(h('a.button', { href: `/api/auth/github/start${ret}` }, 'Sign in with GitHub'));
  if (providers.oidc) sso.push(h('a.button', { href: `/api/auth/oidc/start${ret}` }, 'Sign in with single sign-on'));
  if (sso.length) form.append(h('div.sso', {}, h('p.muted', {}, 'or'), sso));
}
