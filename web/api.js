// The REST API (same origin, session cookie) and a resumable SSE reader.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** fetch + JSON with the API's error envelope turned into ApiError. */
export async function api(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', 'The server did not answer; check your connection.');
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (resp.status === 401 && !path.startsWith('/api/auth/') && location.pathname !== '/signin'
      && !(data && data.error && data.error.code === 'watch_link_required')) {
    // The session ended (expired, signed out elsewhere): sign in again and come back here.
    location.assign(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  if (!resp.ok) {
    const err = data && data.error;
    throw new ApiError(resp.status, err ? err.code : 'http', err ? err.message : `HTTP ${resp.status}`);
  }
  return data;
}

export const get = (p) => api('GET', p);
export const post = (p, b) => api('POST', p, b === undefined ? {} : b);
export const del = (p) => api('DELETE', p);
export const patch = (p, b) => api('PATCH', p, b);

export const q = encodeURIComponent;

/**
 * Follows `/api/runs/{id}/events` as SSE. `onEvent(event)` gets each event once, in order;
 * `onEnd(status)` when the run ended. A dropped stream resumes with Last-Event-ID. Returns a stop
 * function.
 */
export function followEvents(runId, { onEvent, onEnd, onError }) {
  const ctrl = new AbortController();
  let last = 0;
  let stopped = false;
  let delay = 500;

  async function connect() {
    while (!stopped) {
      try {
        const headers = { Accept: 'text/event-stream' };
        if (last > 0) headers['Last-Event-ID'] = String(last);
        const resp = await fetch(`/api/runs/${q(runId)}/events`, { headers, signal: ctrl.signal, credentials: 'same-origin' });
        if (!resp.ok) {
          let msg = `HTTP ${resp.status}`;
          try { msg = (await resp.json()).error.message; } catch { /* keep the status */ }
          if (resp.status < 500) { onError && onError(msg); return; }
          throw new Error(msg);
        }
        delay = 500;
        const ended = await read(resp.body.getReader());
        if (ended) return;
      } catch (e) {
        if (stopped) return;
        onError && onError(`reconnecting: ${e.message}`);
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  // Parses SSE frames; true once `event: end` arrived.
  async function read(reader) {
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let type = 'message', id = null;
        const data = [];
        for (const line of frame.split('\n')) {
          if (line.startsWith(':')) continue;
          const i = line.indexOf(':');
          const k = i < 0 ? line : line.slice(0, i);
          const v = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
          if (k === 'event') type = v;
          else if (k === 'id') id = v;
          else if (k === 'data') data.push(v);
        }
        if (!data.length) continue;
        let payload;
        try { payload = JSON.parse(data.join('\n')); } catch { continue; }
        if (type === 'end') { onEnd && onEnd(payload.status); return true; }
        const seq = Number(id || payload.seq);
        if (seq <= last) continue; // never twice
        last = seq;
        onEvent(payload);
      }
    }
  }

  connect();
  return () => { stopped = true; ctrl.abort(); };
}
