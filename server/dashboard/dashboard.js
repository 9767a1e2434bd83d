// kvbus dashboard: a live feed over /v1/ws, a publish form, the topics and
// stores tables (polled from /v1/topics and /v1/stats), and a small key
// browser. Plain browser JavaScript, no libraries, same origin only. When
// the server asks for an API token (a 401, or an `unauthorized` frame) the
// page shows a token form; the token is kept in sessionStorage (this tab
// only), sent as Authorization on fetches and as the WebSocket's first
// frame ({"op":"auth","token":...}).
'use strict';

(function () {
  const MAX_ROWS = 500;          // feed rows kept; older ones are removed
  const POLL_MS = 1500;          // topics and stores refresh period
  const RECONNECT_MAX_MS = 5000; // WebSocket reconnect back-off cap
  const SHOW_BYTES = 2048;       // payload / value bytes rendered at most
  const KEYS_PAGE = 100;         // keys asked per page in the browser

  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...kids) => {
    const e = document.createElement(tag);
    Object.assign(e, props || {});
    for (const k of kids) e.append(k);
    return e;
  };

  /* ---------------- formatting ---------------- */

  function hex(bytes) {
    const n = Math.min(bytes.length, SHOW_BYTES);
    let s = '';
    for (let i = 0; i < n; i++) s += (i ? ' ' : '') + bytes[i].toString(16).padStart(2, '0');
    return bytes.length > n ? s + ` … (${bytes.length} bytes)` : s;
  }
  function b64bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function clip(text) {
    return text.length > SHOW_BYTES ? text.slice(0, SHOW_BYTES) + ` … (${text.length} chars)` : text;
  }
  function clock(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  }
  function duration(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24,
      m = Math.floor(s / 60) % 60, sec = s % 60;
    return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + (d || h || m ? m + 'm ' : '') + sec + 's';
  }
  function num(n) { return n === undefined || n === null ? '—' : Number(n).toLocaleString('en-US'); }
  function bytesText(n) {
    if (n === undefined || n === null) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
    return (u ? n.toFixed(1) : String(n)) + ' ' + units[u];
  }

  /* ---------------- the API token ---------------- */

  const TOKEN_KEY = 'kvbus.token';
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let tokenNeeded = false; // the server answered 401 or `unauthorized`

  function authHeaders() { return token ? { Authorization: 'Bearer ' + token } : {}; }

  /* fetch() with the token; a 401 opens the token form. */
  async function api(path, opts = {}) {
    const r = await fetch(path, { cache: 'no-store', ...opts, headers: { ...authHeaders(), ...(opts.headers || {}) } });
    if (r.status === 401) askToken(token ? 'The server refused the saved token: enter another one.' : '');
    return r;
  }

  function showAuthError(text) {
    const e = $('auth-error');
    e.textContent = text;
    e.hidden = !text;
  }

  /* Shows the token form (focused the first time); forgets a refused token. */
  function askToken(why) {
    tokenNeeded = true;
    if (token) forgetToken();
    setState('waiting for a token', 'bad');
    const box = $('auth'), first = box.hidden;
    box.hidden = false;
    if (why) showAuthError(why);
    if (first) $('auth-token').focus();
  }
  function forgetToken() {
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    $('auth-forget').hidden = true;
  }

  /* A 403: says what this token may not do, and leaves the page usable. */
  function noteForbidden(what, doc) {
    const n = $('auth-notice');
    n.textContent = `Not allowed with this token: ${what}` + (doc && doc.message ? ` (${doc.message})` : '');
    n.hidden = false;
  }

  $('auth-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = $('auth-token').value.trim();
    if (!t) return;
    let r;
    try {
      r = await fetch('/readyz', { cache: 'no-store', headers: { Authorization: 'Bearer ' + t } });
    } catch (e) {
      showAuthError('The server cannot be reached.');
      return;
    }
    if (r.status === 401) {
      showAuthError('This token was refused.');
      $('auth-token').select();
      return;
    }
    token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
    $('auth-token').value = '';
    showAuthError('');
    $('auth').hidden = true;
    $('auth-forget').hidden = false;
    reconnect();
    refresh();
  });
  $('auth-forget').addEventListener('click', () => {
    forgetToken();
    reconnect();
    askToken('');
  });
  $('auth-forget').hidden = !token;

  /* ---------------- the WebSocket ---------------- */

  const subs = new Set();      // patterns the user asked for
  const pending = new Map();   // id -> callback for replies
  let ws = null, nextId = 1, backoff = 250, retryTimer = null;

  function setState(text, cls) {
    const s = $('ws-state');
    s.textContent = text;
    s.className = 'state ' + (cls || '');
  }

  /* Sends {op,...} with a fresh id; onReply gets the reply or error frame. */
  function send(frame, onReply) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    const id = 'd' + nextId++;
    if (onReply) pending.set(id, onReply);
    ws.send(JSON.stringify({ ...frame, id }));
    return true;
  }

  function connect() {
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/v1/ws';
    setState('connecting');
    ws = new WebSocket(url);
    const ready = () => {
      setState('connected', 'ok');
      if (subs.size) send({ op: 'subscribe', topics: [...subs] }, null);
    };
    ws.onopen = () => {
      backoff = 250;
      if (!token) { ready(); return; }
      setState('signing in');
      send({ op: 'auth', token }, (f) => {
        if (f.type === 'authenticated') ready();
        else if (f.error === 'unauthorized') {
          setState('token refused', 'bad');
          askToken('The server refused the token for the live feed.');
        }
      });
    };
    ws.onclose = () => {
      failPending();
      if (tokenNeeded && !token) {
        setState('waiting for a token', 'bad');
        return; // connect() again once a token is given
      }
      setState('disconnected, retrying', 'bad');
      retryTimer = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, RECONNECT_MAX_MS);
    };
    ws.onmessage = (ev) => {
      let f;
      try { f = JSON.parse(ev.data); } catch { return; }
      if (f.type === 'message') feedAdd(f);
      else if (f.type === 'reset') feedEvent(`reset on ${f.topic}: ${f.reason || 'messages may have been missed'}`);
      else if (f.type === 'dropped') feedEvent(`dropped ${f.count} message(s): this tab read too slowly`);
      if (f.id !== undefined && pending.has(f.id)) {
        const cb = pending.get(f.id);
        pending.delete(f.id);
        cb(f);
      }
    };
  }

  function failPending() {
    for (const cb of pending.values()) cb({ type: 'error', error: 'disconnected', message: 'the connection closed' });
    pending.clear();
  }

  /* Drops the socket (without the retry) and opens a new one. */
  function reconnect() {
    clearTimeout(retryTimer);
    if (ws) {
      const old = ws;
      ws = null;
      old.onclose = null;
      old.onmessage = null;
      old.close();
    }
    failPending();
    backoff = 250;
    connect();
  }

  /* ---------------- the feed ---------------- */

  let paused = false, held = [], heldSkipped = 0, shown = 0, queue = [], scheduled = false;

  function rowFor(f) {
    let payload;
    if (f.data_b64 !== undefined) {
      payload = el('td', { className: 'hex', title: 'bytes (not UTF-8), in hex' }, hex(b64bytes(f.data_b64)));
    } else {
      payload = el('td', {}, clip(String(f.data)));
    }
    const tr = el('tr', { className: 'fresh' },
      el('td', {}, clock(f.ts)), el('td', {}, f.topic), el('td', {}, f.node),
      el('td', { className: 'num' }, String(f.seq)), payload);
    tr.dataset.topic = f.topic;
    return tr;
  }
  function eventRow(text) {
    const td = el('td', { colSpan: 5 }, text);
    return el('tr', { className: 'event' }, td);
  }

  /* Rows are added once per animation frame, so a busy topic costs at most
   * MAX_ROWS new nodes per frame and never more than MAX_ROWS in the page. */
  function enqueue(node) {
    if (paused) {
      held.push(node);
      if (held.length > MAX_ROWS) { held.shift(); heldSkipped++; }
      updateCount();
      return;
    }
    queue.push(node);
    if (queue.length > MAX_ROWS) queue.shift();
    if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
  }
  function flush() {
    scheduled = false;
    const body = $('feed');
    const frag = document.createDocumentFragment();
    for (let i = queue.length - 1; i >= 0; i--) frag.append(queue[i]);
    shown += queue.length;
    queue = [];
    body.prepend(frag);
    while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
    updateCount();
  }
  function feedAdd(f) { enqueue(rowFor(f)); }
  function feedEvent(text) {
    enqueue(eventRow(text));
    const n = $('feed-notice');
    n.textContent = text;
    n.hidden = false;
  }
  function updateCount() {
    const rows = $('feed').rows.length;
    let t = `${rows} shown (newest first, ${MAX_ROWS} kept), ${shown} received`;
    if (paused) t += `, paused: ${held.length} waiting` + (heldSkipped ? `, ${heldSkipped} skipped` : '');
    $('feed-count').textContent = t;
  }

  $('pause').addEventListener('click', () => {
    paused = !paused;
    $('pause').setAttribute('aria-pressed', String(paused));
    $('pause').textContent = paused ? 'Resume' : 'Pause';
    if (!paused) {
      const h = held; held = []; heldSkipped = 0;
      for (const n of h) enqueue(n);
    }
    updateCount();
  });
  $('clear').addEventListener('click', () => {
    $('feed').replaceChildren();
    held = []; heldSkipped = 0; queue = []; shown = 0;
    $('feed-notice').hidden = true;
    updateCount();
  });

  function renderSubs() {
    const ul = $('subs');
    ul.replaceChildren();
    for (const p of subs) {
      const b = el('button', { type: 'button', title: 'unsubscribe ' + p }, '×');
      b.setAttribute('aria-label', 'Unsubscribe from ' + p);
      b.addEventListener('click', () => {
        subs.delete(p);
        send({ op: 'unsubscribe', topics: [p] }, null);
        renderSubs();
      });
      ul.append(el('li', {}, el('span', {}, p), b));
    }
  }
  $('sub-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('sub-topic');
    const p = input.value.trim();
    if (!p) return;
    const ok = send({ op: 'subscribe', topics: [p] }, (f) => {
      if (f.type === 'subscribed') {
        subs.add(p);
        renderSubs();
        input.value = '';
        $('feed-notice').hidden = true;
      } else {
        if (f.error === 'unauthorized') askToken('');
        feedNotice(`subscribe refused: ${f.error}: ${f.message}`);
      }
    });
    if (!ok) feedNotice('not connected yet');
  });
  function feedNotice(text) {
    const n = $('feed-notice');
    n.textContent = text;
    n.hidden = false;
  }

  /* ---------------- publish ---------------- */

  $('pub-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const out = $('pub-result');
    const topic = $('pub-topic').value;
    out.className = '';
    out.textContent = 'sending…';
    const ok = send({ op: 'publish', topic, data: $('pub-payload').value }, (f) => {
      if (f.type === 'published') {
        out.className = 'okt';
        out.textContent = `published on ${f.topic}, seq ${f.seq}`;
      } else {
        if (f.error === 'unauthorized') askToken('');
        out.className = 'err';
        out.textContent = `error ${f.error}: ${f.message}`;
      }
    });
    if (!ok) { out.className = 'err'; out.textContent = 'not connected'; }
  });

  /* ---------------- topics and stores ---------------- */

  let lastOps = new Map(), lastAt = 0;

  async function getJson(path) {
    const r = await api(path);
    if (!r.ok) {
      const e = new Error(path + ': HTTP ' + r.status);
      e.status = r.status;
      try { e.doc = await r.json(); } catch { e.doc = null; }
      throw e;
    }
    return r.json();
  }

  function renderTopics(doc) {
    const rows = doc.topics.slice().sort((a, b) => a.name < b.name ? -1 : 1).map((t) =>
      el('tr', {}, el('td', {}, t.name), el('td', { className: 'num' }, num(t.subscribers)),
        el('td', { className: 'num' }, num(t.published)),
        el('td', { className: 'num' }, (t.rate || 0).toFixed(2))));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colSpan: 4, className: 'muted' }, 'no topics yet')));
    $('topics').replaceChildren(...rows);
  }

  function renderStats(doc) {
    $('node').textContent = doc.node;
    $('uptime').textContent = duration(doc.uptime_s);
    const p = doc.provider;
    // Consumer lag only means something for a log-based provider (Kafka).
    const lag = p.name === 'kafka' ? `, lag ${p.lag}` : '';
    $('provider').textContent = `${p.name}, ${p.healthy ? 'up' : 'DOWN'}${lag}`;
    $('provider').className = p.healthy ? 'state ok' : 'state bad';
    const now = performance.now(), dt = (now - lastAt) / 1000, ops = new Map();
    const rows = doc.stores.map((s) => {
      ops.set(s.name, s.ops_total);
      const before = lastOps.get(s.name);
      const rate = before === undefined || !lastAt ? '—' : Math.max(0, (s.ops_total - before) / dt).toFixed(1);
      return el('tr', {}, el('td', {}, s.name), el('td', {}, s.backend),
        el('td', { className: s.healthy ? 'health-ok' : 'health-bad' }, s.healthy ? 'up' : 'DOWN'),
        el('td', { className: 'num' }, rate), el('td', { className: 'num' }, num(s.keys)),
        el('td', { className: 'num' }, bytesText(s.bytes)));
    });
    lastOps = ops; lastAt = now;
    $('stores').replaceChildren(...rows);
    const sel = $('kv-store'), cur = sel.value;
    const names = doc.stores.map((s) => s.name);
    if (names.join('\n') !== [...sel.options].map((o) => o.value).join('\n')) {
      sel.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
      if (names.includes(cur)) sel.value = cur;
    }
  }

  async function refresh() {
    try {
      const [t, s] = await Promise.all([getJson('/v1/topics'), getJson('/v1/stats')]);
      renderTopics(t);
      renderStats(s);
      $('auth-notice').hidden = true;
    } catch (e) {
      let text = 'unreachable';
      if (e.status === 401) text = 'token needed';
      else if (e.status === 403) {
        text = 'not allowed';
        noteForbidden('the header, topics and stores need the admin permission', e.doc);
      }
      $('provider').textContent = text;
      $('provider').className = 'state bad';
    }
  }
  function poll() {
    refresh().finally(() => setTimeout(poll, POLL_MS));
  }

  /* ---------------- the key browser ---------------- */

  let kvCursor = null;
  // Dots are escaped so that "." and ".." keys are not collapsed as path
  // segments by the browser; "/" becomes %2F, which the server reads as "/".
  const encKey = (k) => encodeURIComponent(k).replace(/\./g, '%2E');

  async function listKeys(more) {
    const store = $('kv-store').value;
    const ul = $('kv-keys');
    if (!store) return;
    if (!more) { ul.replaceChildren(); kvCursor = null; }
    let q = `?limit=${KEYS_PAGE}&prefix=${encodeURIComponent($('kv-prefix').value)}`;
    if (more && kvCursor) q += '&cursor=' + encodeURIComponent(kvCursor);
    let doc;
    try {
      const r = await api('/v1/kv/' + encodeURIComponent(store) + q);
      doc = await r.json();
      if (!r.ok) throw new Error(`${doc.error}: ${doc.message}`);
    } catch (e) {
      ul.replaceChildren(el('li', { className: 'err' }, String(e.message || e)));
      return;
    }
    for (const k of doc.keys) {
      const b = el('button', { type: 'button' }, k);
      b.addEventListener('click', () => {
        for (const o of ul.querySelectorAll('button[aria-current]')) o.removeAttribute('aria-current');
        b.setAttribute('aria-current', 'true');
        showValue(store, k);
      });
      ul.append(el('li', {}, b));
    }
    kvCursor = doc.cursor || null;
    $('kv-more').hidden = !kvCursor;
    if (!ul.children.length && !kvCursor) ul.append(el('li', { className: 'muted' }, 'no keys'));
  }

  async function showValue(store, key) {
    const box = $('kv-value');
    let r;
    try {
      r = await api('/v1/kv/' + encodeURIComponent(store) + '/' + encKey(key));
    } catch (e) {
      box.replaceChildren(el('p', { className: 'err' }, String(e)));
      return;
    }
    const bytes = new Uint8Array(await r.arrayBuffer());
    if (r.status === 404) {
      box.replaceChildren(el('p', { className: 'muted' }, `${key}: absent (deleted or expired)`));
      return;
    }
    if (!r.ok) {
      let text = new TextDecoder().decode(bytes);
      try { const d = JSON.parse(text); text = `${d.error}: ${d.message}`; } catch { /* not JSON */ }
      box.replaceChildren(el('p', { className: 'err' }, `HTTP ${r.status}: ${text}`));
      return;
    }
    let text = null;
    try { text = new TextDecoder('utf-8', { fatal: true }).decode(bytes); } catch { text = null; }
    const ttl = r.headers.get('X-Kvbus-TTL');
    const facts = el('dl', {},
      el('dt', {}, 'key'), el('dd', { id: 'kv-key' }, key),
      el('dt', {}, 'ETag'), el('dd', { id: 'kv-etag' }, r.headers.get('ETag') || '—'),
      el('dt', {}, 'TTL'), el('dd', { id: 'kv-ttl' }, ttl ? ttl + ' s' : 'none'),
      el('dt', {}, 'size'), el('dd', {}, `${bytes.length} bytes` + (text === null ? ', shown in hex' : '')));
    const pre = el('pre', { id: 'kv-data', className: text === null ? 'hex' : '' },
      text === null ? hex(bytes) : clip(text));
    box.replaceChildren(facts, pre);
  }

  $('kv-form').addEventListener('submit', (ev) => { ev.preventDefault(); listKeys(false); });
  $('kv-more').addEventListener('click', () => listKeys(true));

  updateCount();
  connect();
  poll();
})();
