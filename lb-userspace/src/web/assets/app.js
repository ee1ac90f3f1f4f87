// lbd's status page: polls /api/status and /api/samples every second, draws with uPlot.
// Every string from lbd goes into the page as text (textContent), never as HTML.
'use strict';
(() => {
  const WINDOW = 900; // seconds of history, as lbd keeps them
  const METRICS = { pps: 'pkt/s', bps: 'bit/s', fps: 'flows/s' };
  const TITLES = { pps: 'Packets', bps: 'Bits', fps: 'New flows' };
  const PALETTE = ['#3b82f6', '#10b981', '#f59e0b', '#ef4444', '#8b5cf6', '#06b6d4', '#ec4899', '#84cc16', '#f97316', '#64748b'];

  const $ = (id) => document.getElementById(id);
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const kid of kids.flat()) if (kid != null) el.append(kid);
    return el;
  }

  // Replaces el's children with the given ones, leaving out the absent (null) ones.
  const fill = (el, ...kids) => el.replaceChildren(...kids.flat().filter((k) => k != null));

  // Puts `els` in `parent` in this order, touching nothing if they already are: a node taken
  // out and put back loses its focus (a weight being typed) and restarts its animations.
  function arrange(parent, els) {
    const same = parent.children.length === els.length && els.every((el, i) => parent.children[i] === el);
    if (!same) parent.replaceChildren(...els);
  }

  // 1234567 -> "1.23M": three significant digits and a k, M, G or T, as lbctl prints rates.
  function si(x) {
    if (x == null || !isFinite(x)) return '–';
    const a = Math.abs(x);
    for (const [scale, unit] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
      if (a >= scale) {
        const v = x / scale;
        return (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)) + unit;
      }
    }
    return a >= 100 || a === 0 ? x.toFixed(0) : String(+x.toPrecision(3));
  }
  const rate = (x, metric) => `${si(x)} ${METRICS[metric]}`;
  function ago(unix) {
    if (!unix) return 'not yet';
    const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
    if (s < 90) return `${s} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }
  function duration(s) {
    const d = Math.floor(s / 86400), hr = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    return d ? `${d}d ${hr}h` : hr ? `${hr}h ${m}m` : `${m}m ${Math.floor(s % 60)}s`;
  }
  // A time axis label: 23:05:10 (seconds only while the charts span less than 10 minutes).
  function clock(t) {
    const [first, last] = xRange();
    const opts = { hour: '2-digit', minute: '2-digit', hour12: false };
    if (last - first < 600) opts.second = '2-digit';
    return new Date(t * 1000).toLocaleTimeString([], opts);
  }
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  // ---- History: columns aligned with `t`, per series key ------------------------------------
  const hist = { t: [], cols: new Map() };
  const vipKey = (vip) => `vip:${vip}`;
  const backendKey = (vip, address) => `be:${vip}|${address}`;
  const dropKey = (reason) => `drop:${reason}`;

  function merge(s) {
    const n = s.t.length;
    if (!n) return;
    const before = hist.t.length;
    const seen = new Set();
    const add = (key, src) => {
      let c = hist.cols.get(key);
      if (!c) {
        c = { pps: Array(before).fill(null), bps: Array(before).fill(null), fps: Array(before).fill(null) };
        hist.cols.set(key, c);
      }
      for (const m of Object.keys(METRICS)) c[m].push(...(src[m] || Array(n).fill(null)));
      seen.add(key);
    };
    for (const v of s.vips) {
      add(vipKey(v.name), v);
      for (const b of v.backends) add(backendKey(v.name, b.address), b);
    }
    for (const d of s.drops) add(dropKey(d.reason), { pps: d.pps });
    for (const [key, c] of hist.cols) {
      if (!seen.has(key)) for (const m of Object.keys(METRICS)) c[m].push(...Array(n).fill(null));
    }
    hist.t.push(...s.t);
    const extra = hist.t.length - WINDOW;
    if (extra > 0) {
      hist.t.splice(0, extra);
      for (const c of hist.cols.values()) for (const m of Object.keys(METRICS)) c[m].splice(0, extra);
    }
  }
  const column = (key, metric) => {
    const c = hist.cols.get(key);
    return c ? c[metric] : Array(hist.t.length).fill(null);
  };
  const lastOf = (values) => {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i];
    return null;
  };

  // ---- Charts --------------------------------------------------------------------------------
  const charts = new Set();
  class Chart {
    // series: [{key, label}], each drawn from column(key, metric).
    constructor(parent, id, metric, title) {
      this.metric = metric;
      this.series = [];
      this.plot = null;
      this.plotEl = h('div', { class: 'plot' });
      this.legendEl = h('div', { class: 'legend' });
      this.el = h('div', { class: 'chart', 'data-chart': id },
        h('div', { class: 'chart-head' }, h('span', { class: 'chart-title', text: title }), h('span', { text: METRICS[metric] })),
        this.plotEl, this.legendEl);
      parent.append(this.el);
      new ResizeObserver(() => this.resize()).observe(this.plotEl);
      charts.add(this);
    }
    setSeries(series) {
      const same = series.length === this.series.length && series.every((s, i) => s.key === this.series[i].key && s.label === this.series[i].label);
      if (same) return;
      this.series = series;
      this.legendEl.replaceChildren(...series.map((s, i) => h('span', { class: 'lg', 'data-series': s.key },
        h('i', { style: `background:${color(i)}` }), h('span', { text: s.label }), h('span', { class: 'v', text: '–' }))));
      this.rebuild();
    }
    rebuild() {
      if (this.plot) this.plot.destroy();
      this.plot = null;
      this.draw();
    }
    options(width) {
      const axis = { stroke: css('--muted'), grid: { stroke: css('--grid'), width: 1 }, ticks: { stroke: css('--grid'), width: 1 }, font: '11px system-ui, sans-serif' };
      return {
        width, height: 170, legend: { show: false }, cursor: { points: { size: 6 } },
        // Room on the right for half a time label at the edge.
        padding: [8, 26, 0, 0],
        scales: {
          x: { time: true, range: () => xRange() },
          y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
        },
        axes: [{ ...axis, space: 70, size: 28, values: (u, splits) => splits.map(clock) }, { ...axis, size: 52, values: (u, splits) => splits.map(si) }],
        series: [{}, ...this.series.map((s, i) => ({ label: s.label, stroke: color(i), width: 1.6, fill: color(i) + '14', points: { show: false } }))],
        hooks: { setCursor: [(u) => this.legend(u.cursor.idx)] },
      };
    }
    data() {
      return [hist.t, ...this.series.map((s) => column(s.key, this.metric))];
    }
    draw() {
      const width = this.plotEl.clientWidth;
      if (!width) return; // hidden (a closed VIP): drawn when shown
      if (!this.plot) this.plot = new uPlot(this.options(width), this.data(), this.plotEl);
      else this.plot.setData(this.data());
      this.legend(this.plot.cursor.idx);
    }
    // The legend shows the values under the cursor, else the latest ones.
    legend(idx) {
      const items = this.legendEl.children;
      this.series.forEach((s, i) => {
        const values = column(s.key, this.metric);
        const v = idx != null && idx >= 0 ? values[idx] : lastOf(values);
        const item = items[i];
        item.lastChild.textContent = si(v);
        if (idx == null || idx < 0) item.dataset.value = v == null ? '' : String(v);
      });
    }
    resize() {
      const width = this.plotEl.clientWidth;
      if (!width) return;
      if (this.plot) this.plot.setSize({ width, height: 170 });
      else this.draw();
    }
  }
  const color = (i) => PALETTE[i % PALETTE.length];
  // The charts span the history there is (up to the window), at least a minute.
  function xRange() {
    const last = hist.t.length ? hist.t[hist.t.length - 1] : Date.now() / 1000;
    const first = hist.t.length ? hist.t[0] : last;
    return [Math.min(first, last - 60), last];
  }
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => charts.forEach((c) => c.rebuild()));

  const overview = Object.keys(METRICS).map((m) => new Chart($('overview'), `overview-${m}`, m, TITLES[m]));
  const dropsChart = new Chart($('drops'), 'drops', 'pps', 'Dropped packets');

  // ---- Status --------------------------------------------------------------------------------
  const cards = new Map(); // VIP name -> card

  function tile(label, value, unit, bad, note) {
    return h('div', { class: bad ? 'tile bad' : 'tile', 'data-tile': label }, h('div', { class: 'label', text: label }),
      h('div', { class: 'value' }, value, unit ? h('small', { text: unit }) : null),
      note ? h('div', { class: 'note', text: note }) : null);
  }

  function renderHost(st) {
    const host = st.host;
    $('hostname').textContent = host.hostname;
    document.title = `lbd · ${host.hostname}`;
    $('version').textContent = `lbd ${host.version}`;
    const fact = (label, value) => h('span', null, `${label} `, h('b', { text: value }));
    $('facts').replaceChildren(
      fact('up', duration(Date.now() / 1000 - host.started_unix)),
      fact('XDP', host.xdp.map((x) => (x.mode ? `${x.mode} on ${x.interface}` : `not attached to ${x.interface}`)).join(', ')),
      fact('event loop lag', `${(host.event_loop_lag_recent_max_seconds * 1000).toFixed(1)} ms`),
      fact('state', host.adopted ? 'adopted from the previous lbd' : 'started fresh'),
      fact('lbd', host.version),
    );
  }

  function renderTiles(st) {
    const sum = (f) => st.vips.reduce((a, v) => a + (v.rates ? v.rates[f] : 0), 0);
    const drops = st.drops.reduce((a, d) => a + d.pps, 0);
    const backends = st.vips.flatMap((v) => v.backends);
    const down = backends.filter((b) => b.health === 'down').length;
    const drained = backends.filter((b) => b.drained).length;
    // lbd's census of the flow table (every 10 s). Finished connections stay in it until new
    // flows take their entries, so a busy table runs near full by design; what new flows cannot
    // take is the active flows' entries: past half of them, more new flows find both sets held.
    const ft = st.host.flow_table;
    const flows = ft ? ft.confirmed + ft.unconfirmed : 0;
    const pct = (n) => (100 * n / ft.entries).toFixed(1);
    $('tiles').replaceChildren(
      tile('Packets', si(sum('pps')), '/s'),
      tile('Bits', si(sum('bps')), 'bit/s'),
      tile('New flows', si(sum('fps')), '/s'),
      tile('Drops', si(drops), '/s', drops > 0),
      tile('VIPs', String(st.vips.length)),
      tile('Backends down', `${down}`, `of ${backends.length}${drained ? `, ${drained} drained` : ''}`, down > 0),
      ft
        ? tile('Flow table', pct(ft.active), '% active', ft.active > 0.5 * ft.entries,
          `${si(ft.active)} active (a packet in the last 2 s) · ${si(flows)} flows, ${pct(flows)}% full, ${si(ft.unconfirmed)} unconfirmed`)
        : tile('Flow table', '–', 'not counted yet'),
    );
  }

  function vipCard(v, count) {
    const saved = localStorage.getItem(`lbd.open.${v.name}`);
    const el = h('details', { class: 'vip', 'data-vip': v.name, open: saved === null ? count <= 4 : saved === '1' });
    const c = { el, rows: new Map() };
    c.name = h('span', { class: 'vip-name', text: v.name });
    c.svc = h('span', { class: 'svc', text: v.service });
    c.tags = h('span', { class: 'tags' });
    c.health = h('span', { class: 'badge' });
    c.rates = h('span', { class: 'vip-rates' });
    c.tbody = h('tbody');
    const head = ['Backend', 'State', 'Health', 'Next hop', 'Conns', 'pkt/s', 'bit/s', 'flows/s', 'Share', 'Actions'];
    const num = new Set(['Conns', 'pkt/s', 'bit/s', 'flows/s', 'Share']);
    const chartsEl = h('div', { class: 'charts' });
    el.append(
      h('summary', null, c.name, c.svc, c.tags, c.health, c.rates),
      h('div', { class: 'vip-body' },
        h('table', { class: 'backends' },
          h('thead', null, h('tr', null, head.map((t) => h('th', { class: t === 'Actions' ? 'act' : num.has(t) ? 'num' : null, text: t })))),
          c.tbody),
        chartsEl));
    c.charts = Object.keys(METRICS).map((m) => new Chart(chartsEl, `vip-${v.name}-${m}`, m, `${TITLES[m]} by backend`));
    el.addEventListener('toggle', () => {
      localStorage.setItem(`lbd.open.${v.name}`, el.open ? '1' : '0');
      if (el.open) c.charts.forEach((ch) => ch.draw());
    });
    return c;
  }

  function backendRow(vip, address) {
    const cell = (label, cls) => h('td', { 'data-label': label, class: cls });
    const r = {
      addr: cell('Backend', 'addr'), state: cell('State'), health: cell('Health'), hop: cell('Next hop', 'hop'),
      conns: cell('Conns', 'num'), pps: cell('pkt/s', 'num'), bps: cell('bit/s', 'num'), fps: cell('flows/s', 'num'),
      share: cell('Share', 'num'), act: cell('Actions', 'act'),
    };
    r.addr.textContent = address;
    r.toggle = h('button', { type: 'button', 'data-action': 'drain', onclick: () => act(vip, address, r.toggle.dataset.action) });
    const setWeight = () => act(vip, address, 'weight', Number(r.weight.value)).then((ok) => { if (ok) delete r.weight.dataset.edited; });
    // A weight being edited is left alone by the refreshes until it is set.
    r.weight = h('input', {
      type: 'number', min: 0, max: 65535, 'aria-label': `weight of ${address}`,
      oninput: () => { r.weight.dataset.edited = '1'; },
      onkeydown: (e) => { if (e.key === 'Enter') setWeight(); },
    });
    r.setWeight = h('button', { type: 'button', class: 'ghost', 'data-action': 'weight', text: 'Set weight', onclick: setWeight });
    r.act.append(r.toggle, ' ', r.weight, ' ', r.setWeight);
    r.tr = h('tr', { 'data-backend': address, onanimationend: () => r.tr.classList.remove('flash') },
      r.addr, r.state, r.health, r.hop, r.conns, r.pps, r.bps, r.fps, r.share, r.act);
    return r;
  }

  function badge(cls, text) {
    return h('span', { class: `badge ${cls}`, text });
  }

  function nextHop(n) {
    if (!n) return [h('span', { class: 'muted', text: '–' })];
    const hops = n.hops.map((hop) => {
      const via = hop.via_gateway ? ` via ${hop.neighbour}` : '';
      return h('span', { class: 'mono' }, `${hop.interface}${via}`, h('span', { class: 'sub', text: `${hop.mac || 'no MAC'} · ${hop.state.toLowerCase()}` }));
    });
    if (n.problem) hops.push(h('span', { class: 'sub warn', text: n.problem }));
    return hops;
  }

  function updateRow(r, b) {
    const wasDown = r.tr.classList.contains('down');
    const down = b.health === 'down';
    r.tr.classList.toggle('down', down);
    r.tr.classList.toggle('drained', b.drained);
    if (down && !wasDown && r.seen) {
      r.tr.classList.remove('flash');
      void r.tr.offsetWidth; // restart the animation
      r.tr.classList.add('flash');
    }
    r.seen = true;
    const state = b.drained ? badge('drained', 'drained') : b.weight === 0 ? badge('zero', 'weight 0') : badge('active', 'active');
    r.state.replaceChildren(state, h('span', { class: 'sub', text: `weight ${b.weight}` }));
    const word = b.health === '-' ? badge('none', 'no check') : badge(b.health, b.health);
    const checked = b.health === '-' ? null : h('span', { class: 'sub', text: `checked ${ago(b.last_checked_unix)}` });
    const why = b.last_error ? h('span', { class: down ? 'sub bad' : 'sub', text: b.last_error }) : null;
    fill(r.health, word, checked, why);
    r.health.title = `${b.transitions} state changes since lbd started`;
    fill(r.hop, nextHop(b.next_hop));
    r.conns.textContent = b.connections == null ? '–' : si(b.connections);
    for (const m of Object.keys(METRICS)) r[m].textContent = b.rates ? si(b.rates[m]) : '–';
    const share = b.share == null ? null : Math.round(b.share * 1000) / 10;
    r.share.replaceChildren(h('span', { class: 'share' },
      h('span', { class: 'bar' }, h('i', { style: `width:${share || 0}%` })), share == null ? '–' : `${share}%`));
    r.toggle.dataset.action = b.drained ? 'undrain' : 'drain';
    r.toggle.textContent = b.drained ? 'Undrain' : 'Drain';
    if (!r.weight.dataset.edited) r.weight.value = b.weight;
  }

  function updateCard(c, v) {
    c.svc.textContent = v.service;
    const tags = [v.mode, v.scheduler, `ring ${v.ring_size}`];
    if (v.health) tags.push(`${v.health.type || 'tcp'} check`);
    c.tags.replaceChildren(...tags.map((t) => h('span', { class: 'tag', text: t })));
    const checked = v.backends.filter((b) => b.health !== '-');
    const down = v.backends.filter((b) => b.health === 'down').length;
    const inService = v.backends.filter((b) => b.health !== 'down' && !b.drained && b.weight > 0).length;
    c.health.className = `badge ${down ? 'down' : 'up'}`;
    c.health.textContent = down ? `${down} down` : checked.length ? `${checked.length}/${checked.length} up` : `${inService} in service`;
    c.health.title = `${inService} of ${v.backends.length} backends take new flows`;
    c.el.classList.toggle('has-down', down > 0);
    c.rates.replaceChildren(...Object.keys(METRICS).map((m) => h('span', { 'data-metric': m }, h('b', { text: si(v.rates && v.rates[m]) }), ` ${METRICS[m]}`)));
    const rows = v.backends.map((b) => {
      let r = c.rows.get(b.address);
      if (!r) {
        r = backendRow(v.name, b.address);
        c.rows.set(b.address, r);
      }
      updateRow(r, b);
      return r.tr;
    });
    for (const [address, r] of c.rows) if (!v.backends.some((b) => b.address === address)) { c.rows.delete(address); r.tr.remove(); }
    arrange(c.tbody, rows);
    c.charts.forEach((ch) => ch.setSeries(v.backends.map((b) => ({ key: backendKey(v.name, b.address), label: b.address }))));
  }

  function render(st) {
    renderHost(st);
    renderTiles(st);
    const els = st.vips.map((v) => {
      let c = cards.get(v.name);
      if (!c) {
        c = vipCard(v, st.vips.length);
        cards.set(v.name, c);
      }
      updateCard(c, v);
      return c.el;
    });
    for (const [name, c] of cards) if (!st.vips.some((v) => v.name === name)) { cards.delete(name); c.el.remove(); c.charts.forEach((ch) => charts.delete(ch)); }
    arrange($('vips'), els);
    overview.forEach((ch) => ch.setSeries(st.vips.map((v) => ({ key: vipKey(v.name), label: v.name }))));
    dropsChart.setSeries(st.drops.map((d) => ({ key: dropKey(d.reason), label: d.reason.replaceAll('_', ' ') })));
    $('admin').hidden = !st.admin;
    if (!st.admin) lock();
  }

  // ---- Actions (with web_admin_token) ---------------------------------------------------------
  const TOKEN = 'lbd.token';
  let toastTimer = 0;
  function toast(text, bad) {
    const t = $('toast');
    t.textContent = text;
    t.className = `toast show${bad ? ' bad' : ''}`;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.className = 'toast'; }, 3500);
  }
  function lock() {
    sessionStorage.removeItem(TOKEN);
    document.body.classList.remove('unlocked');
    $('lock').hidden = false;
    $('relock').hidden = true;
    $('unlock-form').hidden = true;
  }
  async function unlock(token, quiet) {
    const r = await fetch('/api/auth', { headers: { Authorization: `Bearer ${token}` } });
    if (r.status !== 204) {
      lock();
      if (!quiet) toast(r.status === 401 ? 'Wrong token: it is web_admin_token in lbd\'s config' : `lbd answered ${r.status}`, true);
      return;
    }
    sessionStorage.setItem(TOKEN, token);
    document.body.classList.add('unlocked');
    $('lock').hidden = true;
    $('relock').hidden = false;
    $('unlock-form').hidden = true;
    if (!quiet) toast('Actions unlocked for this tab');
  }
  $('lock').addEventListener('click', () => {
    $('lock').hidden = true;
    $('unlock-form').hidden = false;
    $('token').focus();
  });
  $('relock').addEventListener('click', () => {
    lock();
    toast('Actions locked');
  });
  $('unlock-form').addEventListener('submit', (e) => {
    e.preventDefault();
    unlock($('token').value, false).catch((err) => toast(`lbd is not answering: ${err.message}`, true));
    $('token').value = '';
  });

  async function act(vip, address, action, weight) {
    const token = sessionStorage.getItem(TOKEN);
    if (!token) {
      lock();
      return false;
    }
    const path = `/api/vips/${encodeURIComponent(vip)}/backends/${encodeURIComponent(address)}/${action}`;
    const init = { method: action === 'weight' ? 'PUT' : 'POST', headers: { Authorization: `Bearer ${token}` } };
    if (action === 'weight') {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify({ weight });
    }
    try {
      const r = await fetch(path, init);
      if (r.status === 401) {
        lock();
        toast('The token was refused: unlock again', true);
        return false;
      }
      const body = await r.json().catch(() => ({}));
      if (!r.ok) {
        toast(body.error || `lbd answered ${r.status}`, true);
        return false;
      }
      const done = action === 'weight' ? `weight ${weight} for` : action === 'drain' ? 'drained' : 'undrained';
      toast(`${vip}: ${done} ${address}`);
      await refresh();
      return true;
    } catch (err) {
      toast(`lbd is not answering: ${err.message}`, true);
      return false;
    }
  }

  // ---- The loop -------------------------------------------------------------------------------
  async function getJSON(path) {
    const r = await fetch(path, { cache: 'no-store' });
    if (!r.ok) throw new Error(`${path}: ${r.status}`);
    return r.json();
  }
  async function refresh() {
    const after = hist.t.length ? hist.t[hist.t.length - 1] : 0;
    const [st, samples] = await Promise.all([getJSON('/api/status'), getJSON(`/api/samples?after=${after}`)]);
    merge(samples);
    render(st);
    charts.forEach((c) => c.draw());
    const live = $('live');
    live.className = 'live ok';
    live.textContent = hist.t.length ? `live · ${new Date(hist.t[hist.t.length - 1] * 1000).toLocaleTimeString([], { hour12: false })}` : 'live';
    document.body.classList.remove('stale');
  }
  async function loop() {
    try {
      await refresh();
    } catch (err) {
      const live = $('live');
      live.className = 'live fail';
      live.textContent = 'lbd is not answering: retrying';
      document.body.classList.add('stale');
    }
    setTimeout(loop, 1000);
  }
  const saved = sessionStorage.getItem(TOKEN);
  if (saved) unlock(saved, true).catch(() => {});
  loop();
})();
