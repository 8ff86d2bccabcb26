// The bridge operator console. It uses only the public HTTP API (PROTOCOL.md 4) and the
// live stream (4.5), with the `service` token from this tab's session storage in
// `Authorization: Bearer` (none in development mode). Every piece of server data reaches
// the page through textContent, never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'bridge.console.token';
  /** Polling period while the stream is not readable. */
  const POLL_MS = 3000;
  /**
   * Full re-read period while the stream is live (commands in flight are not streamed). A
   * device's page re-reads its queue every POLL_MS all the same: the stream tells when a
   * command ends, not when one is queued.
   */
  const LIVE_REFRESH_MS = 15000;
  const METRICS_MS = 3000;
  const FEED_MAX = 200;
  /** At most this many devices get their detail (holders, queue size) read. */
  const DETAIL_MAX = 200;

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    signedIn: false,
    generation: 0,
    live: false,
    streamAbort: null,
    pollTimer: null,
    metricsTimer: null,
    metricsPrev: null,
    devices: new Map(),
    /** Read sequence numbers: the last read asked for each device, and the page's. */
    stamp: 0,
    requested: new Map(),
    pageStamp: 0,
    route: { view: 'overview' },
    deviceTypesLoaded: false,
  };

  // ---- HTTP -------------------------------------------------------------------------

  class Refused extends Error {
    constructor(status, body) {
      super(errorText(status, body));
      this.status = status;
    }
  }

  function errorText(status, body) {
    if (body && typeof body === 'object' && body.error) {
      return `${status} ${body.error.code}: ${body.error.message}`;
    }
    return `the server answered ${status}`;
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    return headers;
  }

  /** Calls the API; a 401 or 403 ends the session (the token was refused). */
  async function api(path, options) {
    const opts = options || {};
    const headers = authHeaders({ Accept: 'application/json' });
    let body;
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    const generation = state.generation;
    const response = await fetch(path, {
      method: opts.method || 'GET',
      headers,
      body,
      cache: 'no-store',
      credentials: 'omit',
    });
    const text = await response.text();
    let json = null;
    if (text) {
      try { json = JSON.parse(text); } catch (_) { json = text; }
    }
    if ((response.status === 401 || response.status === 403) && !opts.probe) {
      if (generation === state.generation) signOut(`Token refused: ${errorText(response.status, json)}`);
      throw new Refused(response.status, json);
    }
    return { status: response.status, ok: response.ok, body: json, text };
  }

  // ---- Signing in and out -----------------------------------------------------------

  async function signIn(token, fromForm) {
    state.token = token || null;
    let answer;
    try {
      answer = await api('v1/devices', { probe: true });
    } catch (error) {
      state.token = null;
      showSignIn(`Cannot reach the server: ${error.message}`);
      return;
    }
    if (answer.ok) {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      enter(token ? 'signed in with a service token' : 'development mode: no token needed');
      return;
    }
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (answer.status === 401 || answer.status === 403) {
      const asked = token || fromForm;
      showSignIn(asked ? `Token refused: ${errorText(answer.status, answer.body)}` : '');
    } else {
      showSignIn(`The server cannot list devices: ${errorText(answer.status, answer.body)}`);
    }
  }

  function showSignIn(message, notice) {
    state.signedIn = false;
    $('app').hidden = true;
    $('session').hidden = true;
    $('signin').hidden = false;
    const error = $('signin-error');
    error.textContent = message || '';
    error.className = notice ? 'notice' : 'error';
    const input = $('token');
    input.value = '';
    input.setAttribute('aria-invalid', message && !notice ? 'true' : 'false');
    input.focus();
  }

  function enter(mode) {
    state.signedIn = true;
    state.generation += 1;
    $('signin').hidden = true;
    $('signin-error').textContent = '';
    $('app').hidden = false;
    $('session').hidden = false;
    $('mode').textContent = mode;
    $('sign-out').hidden = !state.token;
    setSource(false, 'connecting to the stream');
    route();
    refreshAll();
    metricsLoop();
    streamLoop(state.generation);
  }

  /** Ends the session; `message` says why (an error unless `notice`). */
  function signOut(message, notice) {
    state.generation += 1;
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (state.streamAbort) state.streamAbort.abort();
    state.streamAbort = null;
    clearTimeout(state.pollTimer);
    clearTimeout(state.metricsTimer);
    state.metricsPrev = null;
    state.devices.clear();
    state.requested.clear();
    // Nothing of the session stays in the page for whoever signs in next.
    renderDevices();
    $('feed').replaceChildren();
    $('feed-empty').hidden = false;
    $('send-result').replaceChildren();
    $('queue').tBodies[0].replaceChildren();
    showSignIn(message || '', notice);
  }

  // ---- The live stream, or polling --------------------------------------------------

  function setSource(live, reason) {
    state.live = live;
    const source = $('source');
    if (live) {
      source.textContent = 'Live: reading /v1/stream';
      source.dataset.source = 'stream';
    } else {
      source.textContent = `Polling every ${POLL_MS / 1000} s (${reason})`;
      source.dataset.source = 'polling';
    }
    schedulePoll();
  }

  function schedulePoll() {
    clearTimeout(state.pollTimer);
    if (!state.signedIn) return;
    const generation = state.generation;
    state.pollTimer = setTimeout(() => {
      if (generation !== state.generation) return;
      refreshAll().finally(schedulePoll);
    }, state.live && state.route.view !== 'device' ? LIVE_REFRESH_MS : POLL_MS);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function streamLoop(generation) {
    let backoff = 1000;
    while (generation === state.generation) {
      const controller = new AbortController();
      state.streamAbort = controller;
      let reason;
      try {
        const response = await fetch('v1/stream', {
          headers: authHeaders({ Accept: 'text/event-stream' }),
          cache: 'no-store',
          credentials: 'omit',
          signal: controller.signal,
        });
        if (response.status === 401 || response.status === 403) {
          let body = null;
          try { body = await response.json(); } catch (_) { /* not JSON */ }
          if (generation === state.generation) signOut(`Token refused: ${errorText(response.status, body)}`);
          return;
        }
        if (!response.ok || !response.body) {
          throw new Error(`the stream answered ${response.status}`);
        }
        setSource(true);
        backoff = 1000;
        // What happened before this connection is read over HTTP (PROTOCOL.md 4.5).
        refreshAll();
        reason = await readEvents(response.body, onStreamEvent);
      } catch (error) {
        if (controller.signal.aborted || generation !== state.generation) return;
        reason = `stream unavailable: ${error.message}`;
      }
      if (generation !== state.generation) return;
      setSource(false, reason);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 5000);
    }
  }

  /**
   * Reads Server-Sent Events from a byte stream until it ends or overflows; answers why
   * it stopped.
   */
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let name = '';
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return 'the stream ended; reconnecting';
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith('\r\n', end) ? 2 : 1));
        if (line === '') {
          if (data.length) {
            const type = name || 'message';
            if (type === 'overflow') {
              reader.cancel().catch(() => {});
              return 'the console fell behind the stream (overflow); reconnecting';
            }
            try { onEvent(type, JSON.parse(data.join('\n'))); } catch (_) { /* skip */ }
          }
          name = '';
          data = [];
        } else if (line.startsWith(':')) {
          // A comment: the server's keep-alive.
        } else {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? '' : line.slice(colon + 1);
          if (value.startsWith(' ')) value = value.slice(1);
          if (field === 'event') name = value;
          else if (field === 'data') data.push(value);
        }
      }
    }
  }

  function onStreamEvent(type, event) {
    addToFeed(type, event);
    const device = event && event.deviceId;
    if (!device) return;
    if (type === 'device_status' || type === 'command_result') {
      refreshDevice(device);
      if (state.route.view === 'device' && state.route.id === device) refreshDevicePage();
    }
  }

  // ---- Devices ----------------------------------------------------------------------

  const devicePath = (id) => `v1/devices/${encodeURIComponent(id)}`;

  async function refreshAll() {
    if (!state.signedIn) return;
    try {
      await refreshDevices();
      if (state.route.view === 'device') await refreshDevicePage();
    } catch (_) {
      // Refused: already signed out. Unreachable: the next round tries again.
    }
  }

  async function refreshDevices() {
    const generation = state.generation;
    const start = state.stamp;
    const answer = await api('v1/devices');
    if (!answer.ok || generation !== state.generation) return;
    const online = (answer.body.devices || []).map((d) => d.deviceId);
    const details = await mapLimited(online.slice(0, DETAIL_MAX), 6, async (id) => {
      const view = await api(devicePath(id));
      return view.ok ? view.body : null;
    });
    if (generation !== state.generation) return;
    const next = new Map();
    online.forEach((id, i) => {
      const summary = answer.body.devices[i];
      next.set(id, details[i] || Object.assign({ holders: [], pendingCommands: null }, summary));
    });
    // A device read on its own since this listing began (a streamed change) keeps what
    // that newer read said.
    for (const [id, stamp] of state.requested) {
      if (stamp <= start) continue;
      if (state.devices.has(id)) next.set(id, state.devices.get(id));
      else next.delete(id);
    }
    state.devices = next;
    renderDevices();
  }

  async function refreshDevice(id) {
    const generation = state.generation;
    const stamp = ++state.stamp;
    state.requested.set(id, stamp);
    try {
      const answer = await api(devicePath(id));
      // Answers may arrive out of order: only the last read asked for counts.
      if (!answer.ok || generation !== state.generation) return;
      if (state.requested.get(id) !== stamp) return;
      if (answer.body.online) state.devices.set(id, answer.body);
      else state.devices.delete(id);
      renderDevices();
    } catch (_) {
      // See refreshAll.
    }
  }

  async function mapLimited(items, limit, f) {
    const out = new Array(items.length);
    let next = 0;
    const worker = async () => {
      while (next < items.length) {
        const i = next++;
        try { out[i] = await f(items[i]); } catch (_) { out[i] = null; }
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
    return out;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === 'class') node.className = value;
      else if (key.startsWith('data-')) node.setAttribute(key, value);
      else if (key === 'text') node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function linkText(connected) {
    if (connected === true) return 'up';
    if (connected === false) return 'down';
    return 'not reported';
  }

  function linkBadge(connected) {
    const cls = connected === true ? 'ok' : connected === false ? 'bad' : 'muted';
    return el('span', { class: `pill ${cls}` }, linkText(connected));
  }

  function rssiText(rssi) {
    return rssi === null || rssi === undefined ? 'no rssi' : `${rssi} dBm`;
  }

  function holderLine(h) {
    return el('li', { 'data-bridge': h.userId },
      el('strong', {}, h.userId), ' · link ', linkBadge(h.bleConnected), ' · ',
      rssiText(h.rssi), ' · ', `${h.commandsInFlight} in flight`);
  }

  function renderDevices() {
    const body = $('devices').tBodies[0];
    const rows = [];
    const ids = [...state.devices.keys()].sort();
    for (const id of ids) {
      const d = state.devices.get(id);
      const holders = d.holders || [];
      const others = (d.bridges || 0) - holders.length;
      const list = el('ul', { class: 'holders' }, ...holders.map(holderLine));
      if (others > 0) list.append(el('li', {}, `${others} on other nodes`));
      rows.push(el('tr', { 'data-device-id': id },
        el('th', { scope: 'row' }, el('a', { href: `#/devices/${encodeURIComponent(id)}` }, id)),
        el('td', {}, linkBadge(d.bleConnected)),
        el('td', {}, list),
        el('td', { class: 'num' }, d.pendingCommands === null ? '–' : String(d.pendingCommands))));
    }
    body.replaceChildren(...rows);
    $('devices-caption').textContent = ids.length === 0
      ? 'No device is online.'
      : `${ids.length} device${ids.length === 1 ? '' : 's'} online.`;
  }

  // ---- A device's page --------------------------------------------------------------

  async function refreshDevicePage() {
    const { id } = state.route;
    const generation = state.generation;
    const stamp = ++state.pageStamp;
    const [view, queue] = await Promise.all([
      api(devicePath(id)),
      api(`${devicePath(id)}/commands`),
    ]);
    if (generation !== state.generation || state.route.id !== id) return;
    if (stamp !== state.pageStamp) return;
    if (view.ok) renderDeviceStatus(view.body);
    if (queue.ok) renderQueue(queue.body.commands || []);
    else $('queue-caption').textContent = `The queue cannot be read: ${errorText(queue.status, queue.body)}`;
  }

  function renderDeviceStatus(d) {
    $('d-online').textContent = d.online ? 'yes' : 'no';
    $('d-link').replaceChildren(d.online ? linkBadge(d.bleConnected) : 'offline');
    $('d-bridges').textContent = String(d.bridges);
    $('d-pending').textContent = String(d.pendingCommands);
    $('device').dataset.online = d.online ? 'true' : 'false';
    const rows = (d.holders || []).map((h) => el('tr', { 'data-bridge': h.userId },
      el('th', { scope: 'row' }, h.userId),
      el('td', {}, linkBadge(h.bleConnected)),
      el('td', {}, rssiText(h.rssi)),
      el('td', { class: 'num' }, String(h.commandsInFlight))));
    if (rows.length === 0) {
      rows.push(el('tr', {}, el('td', { colspan: '4', class: 'muted' },
        d.bridges > 0 ? 'Held by bridges on other nodes only.' : 'No bridge holds it.')));
    }
    $('holders').tBodies[0].replaceChildren(...rows);
  }

  function time(value) {
    if (!value) return '–';
    const date = new Date(value);
    return el('time', { datetime: value, title: value },
      Number.isNaN(date.getTime()) ? value : date.toLocaleString());
  }

  function renderQueue(commands) {
    const rows = commands.map((c, i) => {
      const actions = el('td', { class: 'actions' });
      if (c.status === 'awaiting_confirmation') {
        actions.append(el('button', { type: 'button', 'data-action': 'confirm',
          'data-command': c.commandId, 'aria-label': `Confirm command ${c.commandId}` }, 'Confirm'));
      }
      if (c.status === 'awaiting_confirmation' || c.status === 'pending') {
        actions.append(el('button', { type: 'button', class: 'danger', 'data-action': 'cancel',
          'data-command': c.commandId, 'aria-label': `Cancel command ${c.commandId}` }, 'Cancel'));
      }
      return el('tr', { 'data-command-id': c.commandId, 'data-status': c.status },
        el('td', { class: 'num' }, String(i + 1)),
        el('td', {}, el('code', { title: c.commandId }, shortId(c.commandId))),
        el('td', {}, c.commandType || '–'),
        el('td', {}, el('span', { class: `pill ${statusClass(c.status)}` }, c.status)),
        el('td', { class: 'num' }, String(c.attempts)),
        el('td', {}, time(c.createdAt)),
        el('td', {}, time(c.expiresAt)),
        actions);
    });
    $('queue').tBodies[0].replaceChildren(...rows);
    $('queue-caption').textContent = commands.length === 0
      ? 'Nothing is queued for this device.'
      : `${commands.length} queued, in delivery order.`;
  }

  function shortId(id) {
    return id && id.length > 13 ? `${id.slice(0, 8)}…` : id;
  }

  function statusClass(status) {
    switch (status) {
      case 'succeeded': return 'ok';
      case 'pending': case 'delivering': case 'queued': case 'awaiting_confirmation': return 'wait';
      case 'cancelled': case 'expired': return 'muted';
      default: return 'bad';
    }
  }

  async function queueAction(action, commandId, button) {
    const message = $('queue-message');
    button.disabled = true;
    try {
      const answer = await api(`v1/commands/${encodeURIComponent(commandId)}/${action}`,
        { method: 'POST', body: {} });
      message.className = answer.ok ? '' : 'error';
      message.textContent = answer.ok
        ? `Command ${commandId} is now ${answer.body.status}.`
        : `Could not ${action} command ${commandId}: ${errorText(answer.status, answer.body)}`;
    } catch (error) {
      if (!(error instanceof Refused)) {
        message.className = 'error';
        message.textContent = `Could not ${action} command ${commandId}: ${error.message}`;
      }
    }
    await refreshDevicePage().catch(() => {});
    // The button is gone with its row: keep keyboard focus on what happened.
    message.focus();
  }

  async function loadDeviceTypes() {
    if (state.deviceTypesLoaded) return;
    try {
      const answer = await api('v1/device-types');
      if (!answer.ok) return;
      const select = $('send-device-type');
      const types = answer.body.deviceTypes || [];
      const options = types.map((t) => el('option', { value: t.deviceType }, t.deviceType));
      if (answer.body.defaultType === null || answer.body.defaultType === undefined) {
        options.unshift(el('option', { value: '' }, '(none)'));
      }
      select.replaceChildren(...options);
      if (answer.body.defaultType) select.value = answer.body.defaultType;
      state.deviceTypesLoaded = true;
    } catch (_) {
      // Refused: signed out.
    }
  }

  async function sendCommand(event) {
    event.preventDefault();
    const { id } = state.route;
    const out = $('send-result');
    const payload = $('send-payload').value.trim();
    if (!/^([0-9a-fA-F]{2})+$/.test(payload)) {
      $('send-payload').setAttribute('aria-invalid', 'true');
      showResult(out, 'error', 'The payload must be hex bytes, such as 02 or 0a1b.');
      $('send-payload').focus();
      return;
    }
    $('send-payload').setAttribute('aria-invalid', 'false');
    const request = { payload };
    const commandType = $('send-type').value.trim();
    if (commandType) request.commandType = commandType;
    const deviceType = $('send-device-type').value;
    if (deviceType) request.deviceType = deviceType;
    const timeout = Number($('send-timeout').value);
    if (timeout) request.timeoutMs = timeout;
    if ($('send-queue').checked) request.ifOffline = 'queue';
    if ($('send-confirm').checked) request.requiresConfirmation = true;
    const button = $('send-button');
    button.disabled = true;
    showResult(out, 'wait', `Sending ${payload} to ${id}…`);
    try {
      const answer = await api(`${devicePath(id)}/commands`, { method: 'POST', body: request });
      renderAnswer(out, answer);
    } catch (error) {
      if (!(error instanceof Refused)) showResult(out, 'error', `Not sent: ${error.message}`);
    } finally {
      button.disabled = false;
    }
    refreshDevicePage().catch(() => {});
  }

  function showResult(out, kind, text) {
    out.dataset.status = kind;
    out.replaceChildren(el('p', { class: kind === 'error' ? 'error' : '' }, text));
  }

  function renderAnswer(out, answer) {
    const body = answer.body && typeof answer.body === 'object' ? answer.body : {};
    const status = body.status || (body.error ? body.error.code : `HTTP ${answer.status}`);
    out.dataset.status = status;
    const rows = [['HTTP status', String(answer.status)]];
    if (body.payload !== undefined) rows.push(['Answer payload', body.payload]);
    if (body.latencyMs !== undefined) rows.push(['Latency', `${body.latencyMs} ms`]);
    if (body.error !== undefined) {
      rows.push(['Error', typeof body.error === 'string' ? body.error
        : `${body.error.code}: ${body.error.message}`]);
    }
    if (body.requestId) rows.push(['Request id', body.requestId]);
    if (body.commandId) rows.push(['Command id', body.commandId]);
    const list = el('dl', { class: 'answer' });
    for (const [k, v] of rows) list.append(el('div', {}, el('dt', {}, k), el('dd', {}, v)));
    out.replaceChildren(
      el('p', {}, 'Result: ', el('span', { class: `pill ${statusClass(status)}`, id: 'send-status' }, status)),
      list);
    if (body.stage) out.append(hops(body.stage, body.progress || {}));
  }

  /** The hops of a sent command (PROTOCOL.md 4.1, `stage`/`progress`). */
  function hops(stage, progress) {
    const order = ['sent', 'received', 'connected', 'written'];
    const reached = order.indexOf(stage);
    const list = el('ol', { class: 'hops', 'aria-label': `Last stage reached: ${stage}` });
    order.forEach((s, i) => {
      const ms = progress[`${s}Ms`];
      const label = s === 'sent' ? 'sent' : ms !== undefined ? `${s} +${ms} ms` : s;
      list.append(el('li', { class: i <= reached ? 'reached' : 'missed', 'data-stage': s }, label));
    });
    return el('div', { class: 'stage' }, el('p', {}, 'Stage: ', el('strong', { id: 'send-stage' }, stage)), list);
  }

  // ---- The feed ---------------------------------------------------------------------

  function addToFeed(type, event) {
    const feed = $('feed');
    const now = new Date();
    const device = event.deviceId;
    let summary;
    if (type === 'device_status') {
      summary = event.online ? `online, BLE link ${linkText(event.bleConnected)}` : 'offline';
    } else if (type === 'command_result') {
      const id = event.commandId || event.requestId || '';
      const parts = [event.status];
      if (event.payload) parts.push(`payload ${event.payload}`);
      if (event.error) parts.push(`error ${event.error}`);
      if (event.stage) parts.push(`stage ${event.stage}`);
      summary = `${parts.join(', ')} (${shortId(id)})`;
    } else {
      summary = JSON.stringify(event.data === undefined ? event : event.data).slice(0, 160);
    }
    const item = el('li', { 'data-type': type, 'data-device-id': device || '' },
      el('time', { datetime: now.toISOString() }, now.toLocaleTimeString()), ' ',
      el('span', { class: 'kind' }, type), ' ',
      device ? el('a', { href: `#/devices/${encodeURIComponent(device)}` }, device) : '', ' ',
      summary);
    feed.prepend(item);
    $('feed-empty').hidden = true;
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  }

  // ---- Metrics ----------------------------------------------------------------------

  function parseMetrics(text) {
    const samples = [];
    for (const line of text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[3]) {
        for (const pair of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
          labels[pair[1]] = pair[2];
        }
      }
      samples.push({ name: m[1], labels, value: Number(m[4]) });
    }
    return samples;
  }

  async function metricsLoop() {
    clearTimeout(state.metricsTimer);
    const generation = state.generation;
    try {
      const answer = await api('metrics');
      if (answer.ok && generation === state.generation) renderMetrics(parseMetrics(answer.text));
    } catch (_) {
      // Refused: signed out. Unreachable: tried again.
    }
    if (generation === state.generation) state.metricsTimer = setTimeout(metricsLoop, METRICS_MS);
  }

  function renderMetrics(samples) {
    const sum = (name, filter) => samples
      .filter((s) => s.name === name && (!filter || filter(s.labels)))
      .reduce((a, s) => a + s.value, 0);
    const bridges = sum('bridge_connections', (l) => l.role === 'bridge');
    const users = sum('bridge_connections', (l) => l.role === 'user');
    $('m-connections').textContent = `${bridges} bridge${bridges === 1 ? '' : 's'}, ${users} user${users === 1 ? '' : 's'}`;
    $('m-devices').textContent = String(sum('bridge_devices_online'));
    $('m-pending').textContent = String(sum('bridge_commands_pending'));
    const outcomes = {};
    for (const s of samples) {
      if (s.name === 'bridge_commands_total') outcomes[s.labels.outcome || '?'] = s.value;
    }
    const now = performance.now();
    const prev = state.metricsPrev;
    state.metricsPrev = { at: now, outcomes };
    if (!prev) {
      $('m-rate').textContent = 'measuring…';
      return;
    }
    const seconds = (now - prev.at) / 1000;
    let total = 0;
    const parts = [];
    for (const name of Object.keys(outcomes).sort()) {
      const rate = Math.max(0, outcomes[name] - (prev.outcomes[name] || 0)) / seconds;
      total += rate;
      parts.push(`${name} ${rate.toFixed(1)}/s (${outcomes[name]} in all)`);
    }
    $('m-rate').textContent = `${total.toFixed(1)}/s`;
    $('m-outcomes').textContent = parts.length ? `By outcome: ${parts.join(' · ')}` : 'No command yet.';
  }

  // ---- Routing ----------------------------------------------------------------------

  function route() {
    const hash = location.hash || '#/';
    const match = /^#\/devices\/(.+)$/.exec(hash);
    if (match) {
      let id;
      try { id = decodeURIComponent(match[1]); } catch (_) { id = match[1]; }
      const changed = state.route.id !== id;
      state.route = { view: 'device', id };
      $('overview').hidden = true;
      $('device').hidden = false;
      $('device-title').textContent = `Device ${id}`;
      document.title = `${id} · bridge console`;
      if (changed) {
        $('send-result').replaceChildren();
        $('queue-message').textContent = '';
        $('queue').tBodies[0].replaceChildren();
        $('holders').tBodies[0].replaceChildren();
      }
      if (state.signedIn) {
        loadDeviceTypes();
        refreshDevicePage().catch(() => {});
        schedulePoll();
      }
    } else {
      state.route = { view: 'overview' };
      $('overview').hidden = false;
      $('device').hidden = true;
      document.title = 'bridge console';
    }
  }

  // ---- Wiring -----------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('signin-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token').value.trim();
      if (!token) {
        showSignIn('Enter a service token: this server needs one.');
        return;
      }
      signIn(token, true);
    });
    $('sign-out').addEventListener('click', () => signOut('Signed out.', true));
    $('open-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const id = $('open-id').value.trim();
      if (id) location.hash = `#/devices/${encodeURIComponent(id)}`;
    });
    $('send-form').addEventListener('submit', sendCommand);
    $('queue').addEventListener('click', (event) => {
      const button = event.target.closest('button[data-action]');
      if (button) queueAction(button.dataset.action, button.dataset.command, button);
    });
    window.addEventListener('hashchange', () => {
      route();
      $('content').focus({ preventScroll: true });
    });
    signIn(sessionStorage.getItem(TOKEN_KEY) || '', false);
  });
})();
