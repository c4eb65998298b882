// graysplit dashboard: reads /status?format=json and /rollout, draws them with DOM text nodes
// and inline SVG. No framework, nothing loaded from elsewhere (see src/admin/dashboard.rs).
'use strict';

(function () {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const KEEP_MS = 10 * 60 * 1000;
  const COLOURS = ['#1570ef', '#7a5af8', '#039855', '#dc6803', '#e31b54', '#0e9384', '#667085',
    '#c11574'];
  const PIN_SET = ['new', 'changed', 'refreshed', 'repinned'];
  const PIN_REJECTED = ['malformed', 'version', 'forged', 'expired', 'stale'];
  const REFRESH_MS = refreshFrom(new URLSearchParams(location.search).get('refresh'));

  // Counter readings over time: {t, builds: Map(key -> {requests, errors}), reasons: same}.
  const samples = [];
  const colourOf = new Map();
  let refreshes = 0;

  // "?refresh=500ms", "10s" or a number of milliseconds; at least 200 ms, default 2 s.
  function refreshFrom(text) {
    const m = /^(\d+)(ms|s)?$/.exec(text || '');
    if (!m) return 2000;
    const ms = Number(m[1]) * (m[2] === 's' ? 1000 : 1);
    return Math.max(200, ms);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'class') node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function setText(selector, value) {
    const node = document.querySelector(selector);
    if (node) node.textContent = String(value);
  }

  function problem(message) {
    const node = document.getElementById('problem');
    node.textContent = message || '';
    node.style.display = message ? 'block' : 'none';
  }

  function onOff(b) { return b ? 'on' : 'off'; }

  function duration(seconds) {
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (d) return d + 'd ' + h + 'h';
    if (h) return h + 'h ' + m + 'm';
    if (m) return m + 'm ' + s + 's';
    return s + 's';
  }

  function colour(key) {
    if (!colourOf.has(key)) colourOf.set(key, COLOURS[colourOf.size % COLOURS.length]);
    return colourOf.get(key);
  }

  function renderProcess(s) {
    const p = s.process || {};
    setText('#process', 'graysplit ' + p.version + ' · pid ' + p.pid + ' · up ' +
      duration(p.uptime_seconds || 0));
    setText('#updated', 'updated ' + new Date().toLocaleTimeString() + ' · every ' +
      (REFRESH_MS / 1000) + ' s');
  }

  function renderSwitches(sw) {
    setText('[data-field="switch-enabled"]', onOff(sw.enabled));
    setText('[data-field="switch-all"]', onOff(sw.all));
    setText('[data-field="switch-percent"]', sw.percent + ' %');
    setText('[data-field="switch-source"]', sw.source);
  }

  function serverRow(poolName, srv) {
    const flags = [];
    if (srv.down) flags.push('down');
    if (srv.backup) flags.push('backup');
    if (srv.draining) flags.push('draining');
    const cls = srv.draining ? 'draining' : (srv.selectable ? '' : 'unavailable');
    const health = el('span', { class: 'tag ' + (srv.health === 'up' ? 'up' : 'down') }, srv.health);
    const passive = el('span', { class: srv.ejected ? 'tag down' : 'muted' },
      srv.ejected ? 'ejected' : 'ok');
    return el('tr', { class: cls, 'data-pool': poolName, 'data-server': srv.name },
      el('td', { 'data-field': 'name' }, srv.name),
      el('td', { 'data-field': 'build' }, srv.effective_build),
      el('td', { class: 'num', 'data-field': 'weight' }, srv.weight),
      el('td', { 'data-field': 'health' }, health),
      el('td', { class: 'num muted', 'data-field': 'checks' },
        'rise ' + srv.rise + ' / fall ' + srv.fall),
      el('td', { 'data-field': 'passive' }, passive),
      el('td', { class: 'num', 'data-field': 'in_flight' }, srv.in_flight),
      el('td', { 'data-field': 'flags' }, flags.join(' ')));
  }

  function renderPools(pools) {
    const out = [];
    for (const [name, pool] of Object.entries(pools)) {
      const usable = pool.servers.filter((s) => s.selectable).length;
      out.push(el('h3', { 'data-pool-title': name }, name + ' · ' + pool.servers.length +
        ' server(s), ' + usable + ' usable · active checks ' + onOff(pool.checked)));
      if (!pool.servers.length) {
        out.push(el('div', { class: 'muted' }, pool.allow_empty ? 'empty (no ' + name + ')' : 'empty'));
        continue;
      }
      const head = el('tr', null, ...['server', 'build', 'weight', 'health', 'checks', 'passive',
        'in flight', ''].map((h, i) => el('th', { class: [2, 4, 6].includes(i) ? 'num' : '' }, h)));
      out.push(el('table', { 'data-pool-table': name }, el('thead', null, head),
        el('tbody', null, ...pool.servers.map((s) => serverRow(name, s)))));
    }
    document.getElementById('pools-body').replaceChildren(...out);
  }

  // Sums of the counters by pool/build and by pool/reason.
  function aggregate(requests) {
    const builds = new Map();
    const reasons = new Map();
    for (const r of requests) {
      const err = r.class === '5xx' ? r.requests : 0;
      const bk = r.pool + ' / ' + r.build;
      const b = builds.get(bk) || { pool: r.pool, build: r.build, requests: 0, errors: 0 };
      b.requests += r.requests; b.errors += err; builds.set(bk, b);
      const rk = r.pool + ' / ' + r.reason;
      const x = reasons.get(rk) || { pool: r.pool, reason: r.reason, requests: 0, errors: 0 };
      x.requests += r.requests; x.errors += err; reasons.set(rk, x);
    }
    return { builds, reasons };
  }

  // Rates between consecutive samples of `which` (builds or reasons): [{t, rate, share}] per key.
  function series(which) {
    const out = new Map();
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i];
      const dt = (b.t - a.t) / 1000;
      if (dt <= 0) continue;
      for (const [key, now] of b[which]) {
        const before = a[which].get(key) || { requests: 0, errors: 0 };
        const dr = now.requests - before.requests, de = now.errors - before.errors;
        if (dr < 0 || de < 0) continue; // a restart or a pruned build: no rate for this step
        if (!out.has(key)) out.set(key, []);
        out.get(key).push({ t: b.t, rate: dr / dt, share: dr ? 100 * de / dr : 0 });
      }
    }
    return out;
  }

  function drawChart(id, legendId, data, pick, unit, floor) {
    const chart = document.getElementById(id);
    const W = 600, H = 150, PAD = 4;
    // The time axis grows with the page's age: at least a minute, at most the 10 minutes kept.
    const now = Date.now();
    const span = Math.min(KEEP_MS, Math.max(60000, samples.length ? now - samples[0].t : 0));
    const t0 = now - span;
    let max = floor;
    for (const points of data.values()) for (const p of points) max = Math.max(max, pick(p));
    const nodes = [];
    for (const frac of [0.25, 0.5, 0.75]) {
      const y = H - PAD - frac * (H - 2 * PAD);
      nodes.push(svg('line', { x1: 0, x2: W, y1: y, y2: y, stroke: '#eaecf0', 'stroke-width': 1 }));
    }
    let points = 0;
    const legend = [];
    for (const key of [...data.keys()].sort()) {
      const pts = data.get(key).filter((p) => p.t >= t0);
      points += pts.length;
      const coords = pts.map((p) => {
        const x = ((p.t - t0) / span) * W;
        const y = H - PAD - (pick(p) / max) * (H - 2 * PAD);
        return x.toFixed(1) + ',' + y.toFixed(1);
      }).join(' ');
      nodes.push(svg('polyline', { points: coords, fill: 'none', stroke: colour(key),
        'stroke-width': 1.8, 'data-series': key }));
      const last = pts.length ? pick(pts[pts.length - 1]) : 0;
      legend.push(el('span', null, el('i', { style: 'background:' + colour(key) }),
        key + ' ' + last.toFixed(1) + unit));
    }
    const label = svg('text', { x: 4, y: 12, fill: '#5b6475', 'font-size': 11 });
    label.textContent = 'max ' + max.toFixed(1) + unit;
    nodes.push(label);
    chart.replaceChildren(...nodes);
    chart.setAttribute('data-points', String(points));
    document.getElementById(legendId).replaceChildren(...legend);
  }

  function renderTraffic(requests) {
    const { builds, reasons } = aggregate(requests || []);
    const t = Date.now();
    const counts = (m) => new Map([...m].map(([k, v]) => [k, { requests: v.requests, errors: v.errors }]));
    samples.push({ t, builds: counts(builds), reasons: counts(reasons) });
    while (samples.length > 2 && samples[0].t < t - KEEP_MS) samples.shift();
    const data = series('builds');
    const rows = [...builds.values()].sort((a, b) => (a.pool + a.build).localeCompare(b.pool + b.build));
    document.getElementById('builds-body').replaceChildren(...rows.map((b) => {
      const key = b.pool + ' / ' + b.build;
      const pts = data.get(key) || [];
      const now = pts.length ? pts[pts.length - 1].rate.toFixed(1) : '–';
      return el('tr', { 'data-pool': b.pool, 'data-build': b.build },
        el('td', null, b.pool), el('td', null, b.build),
        el('td', { class: 'num', 'data-field': 'requests' }, b.requests),
        el('td', { class: 'num', 'data-field': 'errors' }, b.errors),
        el('td', { class: 'num' }, b.requests ? (100 * b.errors / b.requests).toFixed(2) : '0.00'),
        el('td', { class: 'num' }, now));
    }));
    const byReason = [...reasons.values()].sort((a, b) => (a.pool + a.reason).localeCompare(b.pool + b.reason));
    document.getElementById('reasons-body').replaceChildren(...byReason.map((r) =>
      el('tr', { 'data-pool': r.pool, 'data-reason': r.reason },
        el('td', null, r.pool), el('td', null, r.reason),
        el('td', { class: 'num', 'data-field': 'requests' }, r.requests),
        el('td', { class: 'num', 'data-field': 'errors' }, r.errors))));
    drawChart('chart-rate', 'legend-rate', data, (p) => p.rate, '/s', 1);
    drawChart('chart-errors', 'legend-errors', data, (p) => p.share, ' %', 1);
    drawChart('chart-reasons', 'legend-reasons', series('reasons'), (p) => p.rate, '/s', 1);
  }

  function renderPins(pins) {
    const set = Object.assign(Object.fromEntries(PIN_SET.map((k) => [k, 0])), pins.set);
    const rejected = Object.assign(Object.fromEntries(PIN_REJECTED.map((k) => [k, 0])), pins.rejected);
    const a = Object.entries(set), b = Object.entries(rejected);
    const rows = [];
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      const [sk, sv] = a[i] || ['', ''];
      const [rk, rv] = b[i] || ['', ''];
      rows.push(el('tr', null, el('td', null, sk),
        el('td', { class: 'num', 'data-pin-set': sk || null }, sv),
        el('td', null, rk),
        el('td', { class: 'num', 'data-pin-rejected': rk || null }, rv)));
    }
    document.getElementById('pins-body').replaceChildren(...rows);
  }

  function renderConsul(consul) {
    const pools = Object.entries(consul || {});
    const body = document.getElementById('consul-body');
    if (!pools.length) {
      body.replaceChildren('no Consul pools');
      body.className = 'muted';
      return;
    }
    body.className = '';
    body.replaceChildren(...pools.map(([name, w]) => el('dl', { class: 'kv', 'data-consul': name },
      el('dt', null, 'pool'), el('dd', null, name + ' (' + w.prefix + ')'),
      el('dt', null, 'agent'), el('dd', null, (w.address || '–') + (w.reachable === false ? ' (unreachable)' : '')),
      el('dt', null, 'index'), el('dd', null, w.index),
      el('dt', null, 'servers from'), el('dd', null, w.servers_from),
      el('dt', null, 'failed polls'), el('dd', null, w.errors + ' now, ' + w.errors_total + ' in all'),
      el('dt', null, 'last error'), el('dd', { class: 'muted' }, w.last_error || '–'))));
  }

  // The rollout section: GET /rollout (src/rollout/status.rs, shape in docs/rollout.md). Mode
  // "off" (no [rollout] source) shows "no rollout"; otherwise the plan, where it stands, the
  // open window and the last judged windows with their verdicts.
  function pct(x) { return (x === null || x === undefined) ? '–' : (100 * x).toFixed(2) + ' %'; }
  function ms(x) { return (x === null || x === undefined) ? '–' : Number(x).toFixed(1) + ' ms'; }

  function rolloutSummary(v) {
    const st = v.state;
    const plan = v.plan;
    const items = [
      ['mode', v.mode],
      ['driver', v.driver && v.driver.holder ? v.driver.holder + (v.driver.this_instance ? ' (this instance)' : '') : '–'],
      ['plan', plan ? (plan.name || 'unnamed') + ' — steps ' + plan.steps.join(' → ') + ' %' : '–'],
    ];
    if (st) {
      items.push(
        ['status', st.status + (st.reason ? ' (' + st.reason + ')' : '')],
        ['stage', st.stage === 'mirror' ? 'mirror (' + st.mirror_percent + ' % copied)' : 'step ' + st.step + ' / ' + st.steps],
        ['gray percent', st.percent + ' %'],
        ['passing windows', st.passes + ' of ' + st.passes_needed + ' needed'],
        ['failed windows', st.failures + ' of ' + st.failure_limit + ' allowed'],
      );
    }
    if (v.open_window) {
      const w = v.open_window;
      items.push(['open window', '#' + w.number + ': base ' + w.base.requests + ' req (' + w.base.failed +
        ' failed), gray ' + w.gray.requests + ' req (' + w.gray.failed + ' failed), ' + w.instances + ' instance(s)']);
    }
    if ((v.plan_errors || []).length) {
      items.push(['plan errors', v.plan_errors.map((e) => e.text).join('; ')]);
    }
    if (v.last_error) items.push(['last error', v.last_error]);
    return el('dl', { class: 'kv', 'data-rollout': 'summary' },
      ...items.flatMap(([k, x]) => [el('dt', null, k), el('dd', { 'data-rollout-field': k }, x)]));
  }

  function rolloutWindows(windows) {
    const rows = windows.slice(-10).reverse().map((w) => el('tr', { 'data-window': w.number },
      el('td', null, '#' + w.number),
      el('td', null, w.stage === 'mirror' ? 'mirror' : 'step ' + w.step + ' (' + w.percent + ' %)'),
      el('td', { class: 'verdict-' + w.verdict }, w.verdict),
      el('td', { class: 'num' }, w.base.requests),
      el('td', { class: 'num' }, pct(w.base.error_rate)),
      el('td', { class: 'num' }, w.gray.requests),
      el('td', { class: 'num' }, pct(w.gray.error_rate)),
      el('td', { class: 'num' }, ms(w.base.p99_ms) + ' / ' + ms(w.gray.p99_ms)),
      el('td', { class: 'muted' }, w.reason)));
    return el('table', { 'data-rollout': 'windows' },
      el('thead', null, el('tr', null, el('th', null, 'window'), el('th', null, 'stage'),
        el('th', null, 'verdict'), el('th', { class: 'num' }, 'base req'),
        el('th', { class: 'num' }, 'base err'), el('th', { class: 'num' }, 'gray req'),
        el('th', { class: 'num' }, 'gray err'), el('th', { class: 'num' }, 'p99 base / gray'),
        el('th', null, 'why'))),
      el('tbody', null, ...rows));
  }

  async function renderRollout() {
    const body = document.getElementById('rollout-body');
    try {
      const r = await fetch('/rollout', { cache: 'no-store' });
      if (!r.ok) throw new Error('/rollout answered ' + r.status);
      const v = await r.json();
      if (!v || v.mode === 'off') {
        body.className = 'muted';
        body.replaceChildren('no rollout');
        return;
      }
      body.className = '';
      const parts = [rolloutSummary(v)];
      if ((v.windows || []).length) parts.push(el('h3', null, 'Last windows'), rolloutWindows(v.windows));
      const events = (v.events || []).slice(-5).reverse();
      if (events.length) {
        parts.push(el('h3', null, 'Events'), el('ul', { 'data-rollout': 'events' },
          ...events.map((e) => el('li', null, new Date(e.at_unix_ms).toLocaleTimeString() + ' ' + e.kind + ': ' + e.message))));
      }
      body.replaceChildren(...parts);
    } catch (e) {
      body.className = 'muted';
      body.replaceChildren('rollout state unavailable: ' + e.message);
    }
  }

  async function tick() {
    try {
      const r = await fetch('/status?format=json', { cache: 'no-store' });
      if (!r.ok) throw new Error('/status answered ' + r.status);
      const s = await r.json();
      renderProcess(s);
      renderSwitches(s.switches);
      renderPools(s.pools);
      renderTraffic(s.requests);
      renderPins(s.pins);
      renderConsul(s.consul);
      await renderRollout();
      problem(null);
      refreshes += 1;
      document.body.setAttribute('data-refreshes', String(refreshes));
    } catch (e) {
      problem('cannot read the admin listener (' + e.message + '); showing the last answer');
    }
    setTimeout(tick, REFRESH_MS);
  }

  tick();
})();
