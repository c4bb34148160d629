// hookd operator dashboard: plain script, no build step, nothing loaded from elsewhere.
//
// Everything that comes from outside (target URLs, response snippets, error texts, ids)
// enters the page only as text: nodes are built with createElement and filled with
// text nodes; innerHTML is never used. The token lives in this tab's sessionStorage and
// travels only in the Authorization header of requests to this server.
'use strict';

(function () {
  const TOKEN_KEY = 'hookd.token';
  const TENANT_KEY = 'hookd.tenant';
  const REFRESH_MS = 3000;
  const HOOKS_LIMIT = 200;
  const DELIVERIES_LIMIT = 100;

  // The /metrics series shown in the header strip.
  const HEADLINES = [
    ['events published', 'hookd_events_published_total'],
    ['delivered', 'hookd_deliveries_total{result="delivered"}'],
    ['failed', 'hookd_deliveries_total{result="failed"}'],
    ['dead', 'hookd_deliveries_total{result="dead"}'],
    ['outbox pending', 'hookd_outbox_pending'],
    ['dispatchers busy', 'hookd_dispatchers_busy'],
  ];

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    admin: false,
    tenant: sessionStorage.getItem(TENANT_KEY) || '',
    selected: null, // the hook whose deliveries are shown
    timer: null,
  };

  // --- DOM helpers ----------------------------------------------------------

  // el('td', {class: 'x', data: {hookId: id}, title: t}, 'text', childNode, ...)
  // Strings become text nodes; attribute names are always ours, values may be data.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') node.className = v;
      else if (k === 'data') Object.assign(node.dataset, v);
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function button(label, onClick, cls) {
    const b = el('button', { type: 'button', class: cls || '' }, label);
    b.addEventListener('click', () => onClick(b));
    return b;
  }

  function badge(status) {
    return el('span', { class: 'badge s-' + String(status).replace(/[^a-z]/g, '') }, status);
  }

  function when(iso) {
    if (!iso) return el('span', { class: 'muted' }, '–');
    const ago = Math.round((Date.now() - Date.parse(iso)) / 1000);
    const rel = Number.isNaN(ago) ? '' : ago >= 0 ? ago + ' s ago' : 'in ' + -ago + ' s';
    return el('span', { title: rel }, String(iso).replace('T', ' ').replace(/\.\d+/, ''));
  }

  function message(text, isError) {
    const m = $('status');
    m.textContent = text || '';
    m.className = isError ? 'error' : 'muted';
  }

  // --- API ------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, text) {
      super(text);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: 'Bearer ' + state.token };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    const text = await resp.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch (_) {
      json = null;
    }
    if (!resp.ok) {
      const err = json && json.error;
      throw new ApiError(resp.status, err ? err.code + ': ' + err.message : 'HTTP ' + resp.status);
    }
    return json;
  }

  function failed(e) {
    if (e instanceof ApiError && e.status === 401) {
      logout('The token was refused (401); sign in again.');
    } else {
      message(String(e.message || e), true);
    }
  }

  // --- Metrics strip --------------------------------------------------------

  async function loadMetrics() {
    const resp = await fetch('/metrics', { cache: 'no-store', credentials: 'omit' });
    if (!resp.ok) throw new Error('/metrics answered HTTP ' + resp.status);
    const values = new Map();
    for (const line of (await resp.text()).split('\n')) {
      if (!line || line[0] === '#') continue;
      const cut = line.lastIndexOf(' ');
      if (cut > 0) values.set(line.slice(0, cut), line.slice(cut + 1));
    }
    $('metrics').replaceChildren(...HEADLINES.map(([label, series]) =>
      el('span', { class: 'metric', data: { metric: label } },
        label + ' ', el('b', {}, values.has(series) ? values.get(series) : '–'))));
  }

  // --- Hooks ----------------------------------------------------------------

  // When the hook last delivered: the latest last attempt among its newest delivered
  // deliveries (a retried or replayed old one may have succeeded after newer ones).
  async function lastSuccess(hookId) {
    const page = await api('GET', '/v1/hooks/' + enc(hookId) + '/deliveries?status=delivered&limit=20');
    let latest = null;
    for (const d of page.data) {
      const at = d.attempts.length ? d.attempts[d.attempts.length - 1].at : null;
      if (at && (!latest || Date.parse(at) > Date.parse(latest))) latest = at;
    }
    return latest;
  }

  async function loadHooks() {
    let path = '/v1/hooks?limit=' + HOOKS_LIMIT;
    if (state.admin && state.tenant) path += '&tenant=' + enc(state.tenant);
    const page = await api('GET', path);
    const hooks = page.data;
    const lastOk = await Promise.all(hooks.map((h) => lastSuccess(h.id).catch(() => null)));
    $('hooks').replaceChildren(...hooks.map((h, i) => hookRow(h, lastOk[i])));
    if (!hooks.length) {
      $('hooks').append(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No hooks.')));
    }
    let note = hooks.length + (page.next ? '+ hooks (first ' + HOOKS_LIMIT + ' shown)' : ' hook(s)');
    if (state.admin) note += state.tenant ? ' in tenant ' + state.tenant : ' in all tenants';
    $('hooks-note').textContent = note;
  }

  function hookRow(h, lastOk) {
    const tr = el('tr', { data: { hookId: h.id, status: h.status } });
    if (h.id === state.selected) tr.className = 'selected';
    const actions = el('div', { class: 'row' }, button('Deliveries', () => select(h.id)));
    if (h.status !== 'active') {
      actions.append(button('Activate', (b) => activate(h.id, b), 'primary'));
    }
    tr.append(
      el('td', {}, el('code', {}, h.id)),
      el('td', {}, h.tenant),
      el('td', {}, badge(h.status)),
      el('td', { class: 'target mono' }, h.target_url,
        h.pending_target_url ? el('div', { class: 'muted' }, 'awaiting verification: ', h.pending_target_url) : null),
      el('td', { class: 'mono' }, (h.events || []).join(', ')),
      el('td', {}, lastOk ? when(lastOk) : el('span', { class: 'muted' }, 'never')),
      el('td', { class: h.consecutive_failures > 0 ? 'error' : '' }, h.consecutive_failures),
      el('td', {}, actions),
    );
    return tr;
  }

  async function activate(hookId, b) {
    // An admin may skip the handshake with {"verify": false}.
    const body = state.admin && $('noverify').checked ? { verify: false } : undefined;
    await act(b, () => api('POST', '/v1/hooks/' + enc(hookId) + '/activate', body),
      (h) => 'Hook ' + hookId + ' is ' + h.status + '.');
  }

  // --- Deliveries of one hook -----------------------------------------------

  function select(hookId) {
    state.selected = hookId;
    $('detail-hook').textContent = hookId;
    $('deliveries').replaceChildren();
    $('since').value = localInput(new Date(Date.now() - 3600 * 1000));
    $('detail').classList.remove('hidden');
    for (const tr of $('hooks').children) {
      tr.classList.toggle('selected', tr.dataset.hookId === hookId);
    }
    refresh();
  }

  async function loadDeliveries() {
    const hookId = state.selected;
    if (!hookId) return;
    const filter = $('filter').value;
    let path = '/v1/hooks/' + enc(hookId) + '/deliveries?limit=' + DELIVERIES_LIMIT;
    if (filter) path += '&status=' + enc(filter);
    const page = await api('GET', path);
    if (state.selected !== hookId || $('filter').value !== filter) return; // stale answer
    $('deliveries').replaceChildren(...page.data.map(deliveryRow));
    if (!page.data.length) {
      $('deliveries').append(el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No deliveries.')));
    }
  }

  function deliveryRow(d) {
    const tr = el('tr', { data: { deliveryId: d.id, status: d.status } });
    const attempts = el('td', { class: 'attempts' });
    if (!d.attempts.length) attempts.append(el('span', { class: 'muted' }, 'not attempted yet'));
    d.attempts.forEach((a, i) => {
      const ok = a.status_code >= 200 && a.status_code < 300;
      const outcome = a.status_code !== undefined && a.status_code !== null
        ? 'HTTP ' + a.status_code
        : 'error: ' + (a.error || 'unknown');
      attempts.append(el('div', { class: 'attempt' },
        el('div', {},
          '#' + (i + 1) + ' ', el('span', { class: ok ? 's-delivered' : 's-dead' }, outcome),
          ' · ' + a.duration_ms + ' ms · ', when(a.at)),
        a.response_snippet ? el('pre', { class: 'snippet' }, a.response_snippet) : null));
    });
    const actions = el('td');
    if (d.status === 'dead') actions.append(button('Retry', (b) => retry(d.id, b), 'primary'));
    tr.append(
      el('td', {}, el('code', {}, d.id),
        el('div', { class: 'muted mono' }, (d.event_ids || []).join(' '))),
      el('td', {}, d.sequence),
      el('td', {}, badge(d.status)),
      el('td', {}, when(d.created_at)),
      el('td', {}, when(d.next_attempt_at)),
      attempts,
      actions,
    );
    return tr;
  }

  async function retry(deliveryId, b) {
    await act(b, () => api('POST', '/v1/deliveries/' + enc(deliveryId) + '/retry'),
      () => 'Delivery ' + deliveryId + ' queued again.');
  }

  async function replay(event) {
    event.preventDefault();
    const hookId = state.selected;
    const since = new Date($('since').value);
    if (!hookId || Number.isNaN(since.getTime())) return;
    const rfc3339 = since.toISOString().replace(/\.\d+Z$/, 'Z');
    await act(event.submitter || null,
      () => api('POST', '/v1/hooks/' + enc(hookId) + '/replay', { since: rfc3339 }),
      (r) => r.queued + ' dead deliveries of ' + hookId + ' since ' + rfc3339 + ' queued again.');
  }

  // `YYYY-MM-DDTHH:MM:SS` in local time, as a datetime-local input wants it.
  function localInput(date) {
    const p = (n) => String(n).padStart(2, '0');
    return date.getFullYear() + '-' + p(date.getMonth() + 1) + '-' + p(date.getDate()) +
      'T' + p(date.getHours()) + ':' + p(date.getMinutes()) + ':' + p(date.getSeconds());
  }

  // Runs one action: the button is disabled meanwhile; the outcome goes to the status line
  // and the view is refreshed at once and again shortly after (dispatch is quick).
  async function act(b, call, describe) {
    if (b) b.disabled = true;
    try {
      message(describe(await call()), false);
    } catch (e) {
      failed(e);
    } finally {
      if (b) b.disabled = false;
    }
    refresh();
    setTimeout(refresh, 1000);
  }

  // --- Refresh loop ---------------------------------------------------------

  let running = null;
  let again = false;

  // One refresh at a time; a request for another while one runs is run after it.
  function refresh() {
    if (!state.token) return Promise.resolve();
    if (running) {
      again = true;
      return running;
    }
    running = Promise.allSettled([loadMetrics(), loadHooks(), loadDeliveries()])
      .then((results) => {
        const bad = results.find((r) => r.status === 'rejected');
        if (bad) failed(bad.reason);
        else if ($('status').className === 'error') message('', false);
      })
      .finally(() => {
        running = null;
        if (again) {
          again = false;
          refresh();
        }
      });
    return running;
  }

  // --- Sign in and out ------------------------------------------------------

  async function login(token) {
    state.token = token;
    // Only an admin may list keys: that tells whether to offer the tenant switch.
    try {
      await api('GET', '/v1/keys?limit=1');
      state.admin = true;
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 403) throw e;
      state.admin = false;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $('who').textContent = state.admin ? 'admin key' : 'key scoped by its role';
    $('tenant').value = state.tenant;
    $('login').classList.add('hidden');
    for (const id of ['app', 'metrics', 'logout']) $(id).classList.remove('hidden');
    $('tenant-form').classList.toggle('hidden', !state.admin);
    $('noverify-label').classList.toggle('hidden', !state.admin);
    clearInterval(state.timer);
    state.timer = setInterval(refresh, REFRESH_MS);
    await refresh();
  }

  function logout(why) {
    clearInterval(state.timer);
    state.timer = null;
    state.token = null;
    state.selected = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $('who').textContent = '';
    $('hooks').replaceChildren();
    $('deliveries').replaceChildren();
    $('detail').classList.add('hidden');
    for (const id of ['app', 'metrics', 'logout', 'tenant-form']) $(id).classList.add('hidden');
    $('login').classList.remove('hidden');
    $('login-error').textContent = why || '';
    $('token').value = '';
    $('token').focus();
  }

  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    if (!token) return;
    $('login-error').textContent = '';
    login(token).catch((e) => logout(e instanceof ApiError && e.status === 401
      ? 'That token is not valid.'
      : 'Could not sign in: ' + (e.message || e)));
  });
  $('logout').addEventListener('click', () => logout(''));
  $('tenant-form').addEventListener('submit', (event) => {
    event.preventDefault();
    state.tenant = $('tenant').value.trim();
    sessionStorage.setItem(TENANT_KEY, state.tenant);
    state.selected = null;
    $('detail').classList.add('hidden');
    refresh();
  });
  $('filter').addEventListener('change', () => {
    $('deliveries').replaceChildren();
    refresh();
  });
  $('replay-form').addEventListener('submit', replay);
  $('close-detail').addEventListener('click', () => {
    state.selected = null;
    $('detail').classList.add('hidden');
    refresh();
  });

  if (state.token) {
    login(state.token).catch(() => logout('Sign in again.'));
  } else {
    logout('');
  }
})();
