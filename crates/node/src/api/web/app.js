// Peerchat web app: talks to the node only through its local API (docs/api.md).
// No framework, no build step. Text from peers is only ever set with
// textContent, never parsed as HTML.
'use strict';

(() => {
  const MAX_TEXT_BYTES = 960;
  const TOKEN_KEY = 'peerchat-token';
  const $ = (id) => document.getElementById(id);
  const enc = new TextEncoder();

  // ----- the token: from the URL's fragment (never sent to a server), kept in
  // sessionStorage, and removed from the address bar at once.
  let token = null;
  {
    const m = /(?:^#|&)token=([0-9a-fA-F]+)/.exec(location.hash);
    if (m) {
      token = m[1];
      try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* private mode */ }
      history.replaceState(null, '', location.pathname + location.search);
    } else {
      try { token = sessionStorage.getItem(TOKEN_KEY); } catch (_) { token = null; }
    }
  }

  const state = {
    me: null, // status
    convs: [], // conversations
    peer: null, // the open conversation's name
    fingerprints: new Map(), // name -> fingerprint
    drafts: new Map(), // name -> unsent text
    view: 'chats',
    live: false,
  };

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { Authorization: 'Bearer ' + token };
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, 'cannot reach the node: is `peerchat run` still running?');
    }
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (!r.ok) {
      const msg = (data && data.error) || ('the node answered ' + r.status);
      if (r.status === 401) needToken('The token was refused (wrong, or from an earlier run of the node).');
      throw new ApiError(r.status, msg);
    }
    return data;
  }

  // ----- small DOM helpers ---------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'type' || k === 'title') e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }

  function banner(text, kind) {
    const b = $('banner');
    if (!text) { b.hidden = true; b.textContent = ''; return; }
    b.textContent = text;
    b.className = 'banner' + (kind === 'warn' ? ' warn' : '');
    b.hidden = false;
  }

  function time(ms) {
    const d = new Date(ms);
    const now = new Date();
    const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return d.toDateString() === now.toDateString() ? hm : d.toLocaleDateString() + ' ' + hm;
  }

  const STATE_LABEL = {
    queued: '◷ queued', relayed: '↪ relayed', delivered: '✓ delivered', read: '✓✓ read',
  };

  function needToken(why) {
    $('login').hidden = false;
    $('app').hidden = true;
    banner(why || 'No token: open the address printed by `peerchat run --web`.');
    $('login-token').focus();
  }

  // ----- status bar ------------------------------------------------------------

  async function refreshStatus() {
    const s = await api('GET', '/api/status');
    state.me = s;
    $('me').textContent = s.name;
    $('me').title = 'you: ' + s.name + ', fingerprint ' + s.fingerprint;
    const net = $('net');
    net.textContent = (s.online ? 'online' : 'offline') + ' · ' + s.routing_table + ' peers'
      + (s.outbox ? ' · outbox ' + s.outbox : '') + (s.relay_queue ? ' · relaying ' + s.relay_queue : '');
    net.className = 'pill ' + (s.online ? 'live' : 'down');
  }

  // ----- conversations ---------------------------------------------------------

  async function refreshConvs() {
    state.convs = await api('GET', '/api/conversations');
    renderConvs();
  }

  function renderConvs() {
    const ul = $('convs');
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.peer : null;
    ul.replaceChildren();
    for (const c of state.convs) {
      const b = el('button', {
        type: 'button', class: 'conv', 'data-peer': c.peer,
        'aria-current': String(c.peer === state.peer),
      },
      el('span', { class: 'name', text: c.peer }),
      c.unread ? el('span', { class: 'badge', text: String(c.unread), title: c.unread + ' unread' }) : el('span'),
      el('span', { class: 'last', text: (c.last.direction === 'out' ? 'you: ' : '') + c.last.text }));
      b.addEventListener('click', () => openChat(c.peer));
      if (unknownPeer(c)) b.title = 'not in your contacts: their name is unknown';
      ul.append(el('li', {}, b));
      if (focused === c.peer) b.focus();
    }
    $('no-convs').hidden = state.convs.length > 0;
  }

  // ----- the open conversation --------------------------------------------------

  // A sender we hold no name for is shown by the start of their key.
  function unknownPeer(c) {
    return c && c.peer_key && c.peer === c.peer_key.slice(0, c.peer.length) && /^[0-9a-f]{16}$/.test(c.peer);
  }

  function msgItem(m) {
    const li = el('li', { class: 'msg ' + m.direction, 'data-id': m.id, 'data-state': m.state },
      el('div', { class: 'text', text: m.text }),
      el('div', { class: 'meta' },
        el('time', { text: time(m.sent_ms), title: new Date(m.sent_ms).toString() }),
        m.direction === 'out' ? ' · ' : null,
        m.direction === 'out' ? el('span', { class: 'state', text: STATE_LABEL[m.state] || m.state }) : null));
    return li;
  }

  function setMsgState(id, st) {
    const li = document.querySelector('#messages li[data-id="' + CSS.escape(id) + '"]');
    if (!li) return false;
    li.dataset.state = st;
    const s = li.querySelector('.state');
    if (s) s.textContent = STATE_LABEL[st] || st;
    return true;
  }

  function atBottom(ol) {
    return ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  }

  function appendMsg(m) {
    const ol = $('messages');
    if (ol.querySelector('li[data-id="' + CSS.escape(m.id) + '"]')) {
      setMsgState(m.id, m.state);
      return;
    }
    const stick = atBottom(ol) || m.direction === 'out';
    ol.append(msgItem(m));
    if (stick) ol.scrollTop = ol.scrollHeight;
  }

  function saveDraft() {
    if (state.peer) state.drafts.set(state.peer, $('text').value);
  }

  async function openChat(name) {
    saveDraft();
    state.peer = name;
    $('chat-title').textContent = name;
    $('chat-fp').textContent = state.fingerprints.has(name) ? 'fingerprint ' + state.fingerprints.get(name) : '';
    $('composer').hidden = false;
    $('send-error').textContent = '';
    $('text').value = state.drafts.get(name) || '';
    updateCount();
    renderConvs();
    $('messages').replaceChildren();
    const conv = state.convs.find((c) => c.peer === name);
    const unknown = unknownPeer(conv);
    $('composer').hidden = unknown;
    if (unknown) {
      $('chat-title').textContent = 'Unknown sender ' + name + '…';
      $('chat-fp').textContent = 'They are not in your contacts, so their name is unknown here. Ask them for '
        + 'it and add them by name (the key they hold must be ' + conv.peer_key + ') to answer.';
    } else {
      $('text').focus();
    }
    await loadHistory();
  }

  async function loadHistory() {
    const name = state.peer;
    if (!name) return;
    const conv = state.convs.find((c) => c.peer === name);
    try {
      const msgs = unknownPeer(conv)
        ? (await api('GET', '/api/inbox?limit=1000')).filter((m) => m.peer_key === conv.peer_key).reverse()
        : await api('GET', '/api/history/' + encodeURIComponent(name) + '?limit=500');
      if (state.peer !== name) return;
      const ol = $('messages');
      ol.replaceChildren(...msgs.map(msgItem));
      ol.scrollTop = ol.scrollHeight;
      await markRead();
    } catch (e) {
      $('send-error').textContent = 'Cannot load the conversation: ' + e.message;
    }
  }

  async function markRead() {
    const name = state.peer;
    const c = state.convs.find((c) => c.peer === name);
    if (!name || document.hidden || !c || !c.unread || unknownPeer(c)) return;
    try {
      await api('POST', '/api/read/' + encodeURIComponent(name));
      c.unread = 0;
      renderConvs();
    } catch (_) { /* shown again next time */ }
  }

  function updateCount() {
    const n = enc.encode($('text').value.replace(/[\r\n]+$/, '')).length;
    $('count').textContent = n > MAX_TEXT_BYTES * 0.8 ? n + ' / ' + MAX_TEXT_BYTES + ' bytes' : '';
  }

  async function send(ev) {
    ev.preventDefault();
    const name = state.peer;
    const ta = $('text');
    const text = ta.value.replace(/[\r\n]+$/, '');
    const err = $('send-error');
    err.textContent = '';
    if (!name) return;
    if (!text.trim()) { err.textContent = 'Type a message first.'; return; }
    const n = enc.encode(text).length;
    if (n > MAX_TEXT_BYTES) {
      err.textContent = 'The message is ' + n + ' bytes; the most is ' + MAX_TEXT_BYTES + '. Shorten it or split it.';
      return;
    }
    const btn = $('send');
    btn.disabled = true;
    try {
      const r = await api('POST', '/api/messages', { to: name, text });
      // Sent (queued durably): only now is the typed text let go.
      if (ta.value.replace(/[\r\n]+$/, '') === text) ta.value = '';
      state.drafts.delete(name);
      updateCount();
      if (state.peer === name && !document.querySelector('#messages li[data-id="' + CSS.escape(r.id) + '"]')) {
        await loadHistory();
      }
    } catch (e) {
      // The text stays in the box.
      err.textContent = 'Not sent: ' + e.message;
    } finally {
      btn.disabled = false;
      ta.focus();
    }
  }

  // ----- new chat and contacts ---------------------------------------------------

  function friendly(e, name) {
    if (e.status === 404) return 'No user called “' + name + '” on the network (check the spelling, or they have not joined yet).';
    if (e.status === 503) return 'Not connected to the network yet: ' + e.message;
    return e.message;
  }

  async function lookUp(ev) {
    ev.preventDefault();
    const input = $('new-name');
    const name = input.value.trim().toLowerCase();
    const box = $('whois');
    if (!name) { input.focus(); return; }
    box.hidden = false;
    box.replaceChildren(el('p', { class: 'muted', text: 'Looking up ' + name + '…' }));
    try {
      const w = await api('GET', '/api/whois/' + encodeURIComponent(name));
      state.fingerprints.set(w.name, w.fingerprint);
      const start = el('button', { type: 'button', text: 'Start chat with ' + w.name });
      start.addEventListener('click', async () => {
        start.disabled = true;
        try {
          const c = await api('POST', '/api/contacts', { name: w.name });
          state.fingerprints.set(c.name, c.fingerprint);
          input.value = '';
          box.hidden = true;
          await openChat(c.name);
        } catch (e) {
          box.append(el('p', { class: 'error', text: friendly(e, w.name) }));
          start.disabled = false;
        }
      });
      box.replaceChildren(
        el('p', {}, el('strong', { text: w.name }),
          w.presence_ms ? el('span', { class: 'muted', text: ' · seen ' + time(w.presence_ms) }) : el('span', { class: 'muted', text: ' · no presence record (maybe offline)' })),
        el('p', { class: 'fp', text: 'fingerprint ' + w.fingerprint }),
        el('p', { class: 'muted', text: 'Compare it with theirs before you trust it.' }),
        start);
      start.focus();
    } catch (e) {
      box.replaceChildren(el('p', { class: 'error', text: friendly(e, name) }));
      input.focus();
    }
  }

  async function refreshContacts() {
    const list = await api('GET', '/api/contacts');
    const ul = $('contacts');
    ul.replaceChildren();
    for (const c of list) {
      state.fingerprints.set(c.name, c.fingerprint);
      const b = el('button', { type: 'button', class: 'link', text: 'message' });
      b.addEventListener('click', () => { showView('chats'); openChat(c.name); });
      ul.append(el('li', {}, el('span', { class: 'name', text: c.name }), el('span', { class: 'fp', text: c.fingerprint }), b));
    }
    if (!list.length) ul.append(el('li', { class: 'muted', text: 'No contacts yet.' }));
  }

  async function addContact(ev) {
    ev.preventDefault();
    const input = $('add-name');
    const name = input.value.trim().toLowerCase();
    const out = $('add-result');
    if (!name) { input.focus(); return; }
    out.className = 'muted';
    out.textContent = 'Looking up ' + name + '…';
    try {
      const c = await api('POST', '/api/contacts', { name });
      out.className = '';
      out.textContent = 'Added ' + c.name + ', fingerprint ' + c.fingerprint + '.';
      input.value = '';
      await refreshContacts();
    } catch (e) {
      out.className = 'error';
      out.textContent = friendly(e, name);
      input.focus();
    }
  }

  // ----- the network picture -------------------------------------------------------

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text != null) e.textContent = text;
    return e;
  }

  // Angle of an id: from bits past the shared prefix, so peers spread around.
  function angleOf(hex) {
    return (parseInt(hex.slice(-6), 16) / 0x1000000) * 2 * Math.PI;
  }

  async function refreshNetwork() {
    const n = await api('GET', '/api/network');
    const R = 190;
    const depthOf = (log2) => 160 - log2; // 0..160: how many leading bits are shared
    let maxDepth = 4;
    for (const b of n.buckets) maxDepth = Math.max(maxDepth, 160 - b.index);
    for (const l of n.lookups) if (l.log2_distance != null) maxDepth = Math.max(maxDepth, Math.ceil(depthOf(l.log2_distance)));
    maxDepth = Math.min(maxDepth + 1, 160);
    const radius = (depth) => R * (1 - Math.min(depth, maxDepth) / maxDepth) + 14 * (Math.min(depth, maxDepth) / maxDepth);
    const g = $('netsvg');
    g.replaceChildren();
    // One ring per bucket, labelled with its index.
    for (let d = 0; d < maxDepth; d++) {
      const r = radius(d);
      g.append(svg('circle', { class: 'ring', cx: 0, cy: 0, r: r.toFixed(1) }));
      if (d < 12 || d === maxDepth - 1) g.append(svg('text', { class: 'ringlabel', x: 2, y: (-r + 10).toFixed(1) }, String(159 - d)));
    }
    for (const l of n.lookups.slice().reverse()) {
      if (l.log2_distance == null) continue;
      const r = radius(depthOf(l.log2_distance));
      const a = angleOf(l.target);
      const x = (r * Math.cos(a)).toFixed(1), y = (r * Math.sin(a)).toFixed(1);
      const fade = Math.max(0.15, 1 - l.ago_ms / 120000);
      g.append(svg('line', { class: 'lookup', x1: 0, y1: 0, x2: x, y2: y, opacity: fade.toFixed(2) }));
      const t = svg('rect', { class: 'target', x: x - 3, y: y - 3, width: 6, height: 6, opacity: fade.toFixed(2), transform: 'rotate(45 ' + x + ' ' + y + ')' });
      t.append(svg('title', {}, l.kind + ' ' + l.target + ': ' + l.hops + ' hops, ' + l.rpcs + ' requests, ' + l.elapsed_ms + ' ms'));
      g.append(t);
    }
    for (const b of n.buckets) {
      for (const p of b.contacts) {
        const r = radius(depthOf(p.log2_distance));
        const a = angleOf(p.id);
        const c = svg('circle', {
          class: 'peer' + (p.failures ? ' failing' : ''),
          cx: (r * Math.cos(a)).toFixed(1), cy: (r * Math.sin(a)).toFixed(1), r: 5,
        });
        c.append(svg('title', {}, p.addr + ' · bucket ' + b.index + ' · id ' + p.id + ' · seen ' + Math.round(p.last_seen_ms / 1000) + ' s ago' + (p.failures ? ' · ' + p.failures + ' failures' : '')));
        g.append(c);
      }
    }
    const me = svg('circle', { class: 'me', cx: 0, cy: 0, r: 8 });
    me.append(svg('title', {}, 'you: node id ' + n.node_id));
    g.append(me);
    const nb = n.buckets.length;
    $('net-summary').textContent = n.contacts + ' peer' + (n.contacts === 1 ? '' : 's') + ' in ' + nb
      + ' bucket' + (nb === 1 ? '' : 's') + '; node id ' + n.node_id + '.';
    const ol = $('lookups');
    ol.replaceChildren();
    for (const l of n.lookups.slice(0, 12)) {
      const where = l.log2_distance == null ? 'own id' : 'bucket ' + Math.floor(l.log2_distance);
      ol.append(el('li', { text: l.kind + ' → ' + where + ': ' + l.found + ' found, ' + l.hops + ' hops, '
        + l.rpcs + ' requests, ' + l.elapsed_ms + ' ms, ' + Math.round(l.ago_ms / 1000) + ' s ago' }));
    }
    if (!n.lookups.length) ol.append(el('li', { class: 'muted', text: 'none yet' }));
  }

  // ----- views ----------------------------------------------------------------------

  function showView(v) {
    state.view = v;
    for (const b of document.querySelectorAll('.tab')) b.setAttribute('aria-pressed', String(b.dataset.view === v));
    for (const name of ['chats', 'contacts', 'network']) $('view-' + name).hidden = name !== v;
    // Chats: names may have changed (a sender added as a contact gets one).
    const load = v === 'contacts' ? refreshContacts : v === 'network' ? refreshNetwork : refreshConvs;
    if (load) load().catch((e) => banner('Cannot load the ' + v + ': ' + e.message));
  }

  // ----- the event stream: fetch() with a reader (EventSource cannot send the token)

  function setLive(live, text) {
    state.live = live;
    const c = $('conn');
    c.textContent = text;
    c.className = 'pill ' + (live ? 'live' : 'down');
  }

  let refreshTimer = null;
  function refreshSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      refreshConvs().then(markRead).catch(() => {});
      refreshStatus().catch(() => {});
    }, 150);
  }

  function onEvent(name, data) {
    let e;
    try { e = JSON.parse(data); } catch (_) { return; }
    if (name === 'ready') {
      setLive(true, 'live');
      banner('');
      // Events are not replayed: re-read what is shown.
      refreshSoon();
      loadHistory();
    } else if (name === 'message') {
      if (e.peer === state.peer) appendMsg(e);
      refreshSoon();
    } else if (name === 'state') {
      setMsgState(e.id, e.state);
      refreshSoon();
    } else if (name === 'lagged') {
      refreshSoon();
      loadHistory();
    }
  }

  async function streamOnce() {
    const r = await fetch('/api/events', { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' });
    if (r.status === 401) { needToken('The token was refused (wrong, or from an earlier run of the node).'); return 'stop'; }
    if (!r.ok || !r.body) throw new Error('status ' + r.status);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return 'ended';
      buf += value.replace(/\r\n?/g, '\n');
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let ev = 'message', data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          const val = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
          if (field === 'event') ev = val;
          else if (field === 'data') data.push(val);
        }
        if (data.length) onEvent(ev, data.join('\n'));
      }
    }
  }

  async function streamLoop() {
    let delay = 1000;
    for (;;) {
      let why;
      try {
        const r = await streamOnce();
        if (r === 'stop') return;
        why = 'the node closed the event stream';
      } catch (e) {
        why = 'the connection to the node dropped';
      }
      // The back-off starts again after a stream that worked (got `ready`).
      if (state.live) delay = 1000;
      setLive(false, 'reconnecting…');
      banner('Live updates stopped: ' + why + '. Reconnecting in ' + Math.round(delay / 1000)
        + ' s… (what you type is kept)', 'warn');
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, 15000);
    }
  }

  // ----- start ----------------------------------------------------------------------

  function wire() {
    for (const b of document.querySelectorAll('.tab')) b.addEventListener('click', () => showView(b.dataset.view));
    $('new-chat').addEventListener('submit', lookUp);
    $('add-contact').addEventListener('submit', addContact);
    $('composer').addEventListener('submit', send);
    const ta = $('text');
    ta.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $('composer').requestSubmit();
      }
    });
    ta.addEventListener('input', () => { updateCount(); saveDraft(); });
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const t = $('login-token').value.trim();
      if (!/^[0-9a-fA-F]{64}$/.test(t)) { banner('A token is 64 hex characters.'); return; }
      try { sessionStorage.setItem(TOKEN_KEY, t); } catch (_) { /* kept in memory only */ }
      token = t;
      $('login-token').value = '';
      start();
    });
    document.addEventListener('visibilitychange', () => { if (!document.hidden) markRead(); });
    setInterval(() => {
      if (!token || !$('login').hidden) return;
      refreshStatus().catch((e) => {
        if (e.status === 0) { $('net').textContent = 'node unreachable'; $('net').className = 'pill down'; }
      });
      if (state.view === 'network') refreshNetwork().catch(() => {});
    }, 5000);
  }

  let streaming = false;
  async function start() {
    if (!token) { needToken(); return; }
    try {
      await refreshStatus();
    } catch (e) {
      if (e.status !== 401) banner('Cannot reach the node: ' + e.message);
      return;
    }
    $('login').hidden = true;
    $('app').hidden = false;
    banner('');
    showView(state.view);
    refreshConvs().catch((e) => banner('Cannot load conversations: ' + e.message));
    if (!streaming) {
      streaming = true;
      streamLoop().finally(() => { streaming = false; });
    }
  }

  wire();
  start();
})();
