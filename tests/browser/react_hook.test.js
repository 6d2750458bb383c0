// The npm package clients/live-set in a browser: its React hook (`useLiveSet`, React 18 from
// this test package's node_modules) in a page served by a small static server, as an app's
// own dev server would serve it, against a real embedded gateway on another origin. No
// bundler: React's UMD files are loaded as scripts and an import map resolves `react` (a
// two-line module over the UMD global) and the package's own `exports` entry points.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { test } from 'node:test';
import { cleanup, launchBrowser, REPO, rest, startGateway, STEP_MS } from './harness.js';

const PACKAGE = path.join(REPO, 'clients/live-set');
const MODULES = path.join(REPO, 'tests/browser/node_modules');

/** URL prefix -> directory. Only these are served. */
const ROOTS = {
  '/live-set/': PACKAGE,
  '/node_modules/': MODULES,
};

const TYPES = { '.js': 'text/javascript; charset=utf-8', '.html': 'text/html; charset=utf-8' };

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>useLiveSet</title>
<link rel="icon" href="data:,">
<script src="/node_modules/react/umd/react.development.js"></script>
<script src="/node_modules/react-dom/umd/react-dom.development.js"></script>
<script type="importmap">
{"imports": {
  "react": "/react.js",
  "@changestream/live-set": "/live-set/live-set.js",
  "@changestream/live-set/react": "/live-set/react.js"
}}
</script>
<div id="root"></div>
<script type="module" src="/app.js"></script>
`;

/** `react` as an ES module: React's UMD build has put it on `globalThis`. */
const REACT_MODULE = `const React = globalThis.React;
export default React;
export const { createElement, StrictMode, useEffect, useLayoutEffect, useRef, useState } = React;
`;

/**
 * The app: `<Live path>` shows the hook's status, error and records; `window.show(path)`
 * changes the stream (a path on the gateway; null unmounts `Live`). Every EventSource the
 * hook opens is kept in `window.sources` (through the `EventSource` option). In
 * StrictMode, as apps run in development: React mounts, unmounts and mounts again.
 */
const APP = `import { createElement as h, StrictMode, useState } from 'react';
import { useLiveSet } from '@changestream/live-set/react';

const gateway = new URL(location.href).searchParams.get('gateway');
window.sources = [];
class Tracked extends EventSource {
  constructor(url) {
    super(url);
    window.sources.push(this);
  }
}

function Live({ path }) {
  const { records, status, error, ready, set } = useLiveSet(gateway + path, { EventSource: Tracked });
  window.set = set;
  return h('div', null,
    h('p', { id: 'status' }, status + (ready ? ' ready' : '')),
    h('p', { id: 'error' }, error ? String(error.status ?? '') + ' ' + error.message : ''),
    h('ul', { id: 'list' }, records.map((r) => h('li', { key: JSON.stringify(r.id) }, JSON.stringify(r.id) + ' ' + r.title))));
}

function App() {
  const [path, setPath] = useState(new URL(location.href).searchParams.get('path'));
  window.show = setPath;
  return path === null ? h('p', { id: 'none' }, 'nothing open') : h(Live, { path });
}

ReactDOM.createRoot(document.getElementById('root')).render(h(StrictMode, null, h(App)));
`;

/** A static file server for the page, the package and node_modules, on 127.0.0.1:0. */
async function startStatic() {
  const server = http.createServer(async (req, res) => {
    const { pathname } = new URL(req.url, 'http://x');
    const inline = { '/app.html': PAGE, '/react.js': REACT_MODULE, '/app.js': APP }[pathname];
    let body = inline;
    if (body === undefined) {
      const prefix = Object.keys(ROOTS).find((p) => pathname.startsWith(p));
      const file = prefix && path.resolve(ROOTS[prefix], `.${pathname.slice(prefix.length - 1)}`);
      if (file && file.startsWith(ROOTS[prefix] + path.sep)) body = await readFile(file).catch(() => undefined);
    }
    if (body === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(pathname)] ?? 'application/octet-stream' }).end(body);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    async stop() {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** The gateway's count of open SSE streams (`gateway_sse_connections`, every endpoint). */
async function openStreams(gateway) {
  const response = await fetch(`${gateway.base}/metrics`, { signal: AbortSignal.timeout(2000) });
  const lines = (await response.text()).split('\n').filter((l) => /^gateway_sse_connections[{ ]/.test(l));
  return lines.reduce((sum, line) => sum + Number(line.split(' ').pop()), 0);
}

/** Polls until the gateway holds `n` open streams (a closed EventSource is noticed at once). */
async function waitForStreams(gateway, n) {
  const until = Date.now() + STEP_MS;
  let seen;
  for (;;) {
    seen = await openStreams(gateway);
    if (seen === n) return;
    if (Date.now() > until) assert.equal(seen, n, 'open streams on the gateway');
    await new Promise((resolve) => setTimeout(resolve, 20)); // poll interval, not a wait
  }
}

/** What the page shows: the status line and the list items. */
function viewOf(page) {
  return page.evaluate(() => ({
    status: document.querySelector('#status')?.textContent,
    items: [...document.querySelectorAll('#list li')].map((li) => li.textContent),
  }));
}

/** Waits until the page shows `status` and exactly `items` ("<id> <title>", in order). */
async function waitForView(page, status, items) {
  try {
    await page.waitForFunction((want) => {
      const got = {
        status: document.querySelector('#status')?.textContent,
        items: [...document.querySelectorAll('#list li')].map((li) => li.textContent),
      };
      return JSON.stringify(got) === want;
    }, JSON.stringify({ status, items }), { timeout: STEP_MS });
  } catch (error) {
    assert.deepEqual(await viewOf(page), { status, items }, error.message);
    throw error;
  }
}

test('the gateway serves the package\'s live-set.js byte for byte', async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const served = await fetch(`${gateway.base}/client/live-set.js`, { signal: AbortSignal.timeout(STEP_MS) });
  assert.equal(served.status, 200);
  const bytes = Buffer.from(await served.arrayBuffer());
  assert.ok(bytes.equals(await readFile(path.join(PACKAGE, 'live-set.js'))),
    'GET /client/live-set.js differs from clients/live-set/live-set.js (gateway built from another copy?)');
});

test('useLiveSet renders the records, follows creates, updates and removes, and closes its stream', async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const site = await startStatic();
  defer(() => site.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const api = `${gateway.base}/api/Todos`;
  await rest('POST', api, { title: 'first' });
  await rest('POST', api, { title: 'second' });
  await rest('POST', `${gateway.base}/api/Notes`, { id: 'n', title: 'a note' });

  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  page.on('console', (message) => {
    if (message.type() === 'error' || message.type() === 'warning') errors.push(message.text());
  });
  page.on('response', (response) => {
    if (response.status() >= 400) errors.push(`${response.status()} ${response.url()}`);
  });
  const stream = '/api/Todos/change-stream?_format=event-stream';
  await page.goto(`${site.base}/app.html?gateway=${encodeURIComponent(gateway.base)}&path=${encodeURIComponent(stream)}`);

  // Mounted: the records come from the stream's snapshot.
  await waitForView(page, 'live ready', ['1 first', '2 second']);
  // StrictMode's mount, unmount, mount: the first set was closed before it had opened its
  // EventSource (that waits for the token, a microtask), so one stream was ever opened.
  assert.deepEqual(await page.evaluate(() => window.sources.map((s) => s.readyState)), [1]);
  assert.equal(await page.evaluate(() => window.set.snapshots), true);
  await waitForStreams(gateway, 1);

  // Changes through the REST API re-render the component.
  await rest('POST', api, { id: 0, title: 'zero' });
  await waitForView(page, 'live ready', ['1 first', '2 second', '0 zero']);
  await rest('PATCH', `${api}/1`, { title: 'first, edited' });
  await waitForView(page, 'live ready', ['1 first, edited', '2 second', '0 zero']);
  await rest('DELETE', `${api}/2`);
  await waitForView(page, 'live ready', ['1 first, edited', '0 zero']);
  await rest('PUT', `${api}/0`, { title: 'zero, replaced' });
  await waitForView(page, 'live ready', ['1 first, edited', '0 zero, replaced']);

  // A new input: the old stream is closed, the new one opened, its records shown alone.
  await page.evaluate(() => window.show('/api/Notes/change-stream?_format=event-stream'));
  await waitForView(page, 'live ready', ['"n" a note']);
  assert.deepEqual(await page.evaluate(() => window.sources.map((s) => s.readyState)), [2, 1]);
  await waitForStreams(gateway, 1);
  await rest('PATCH', `${gateway.base}/api/Notes/n`, { title: 'a note, edited' });
  await waitForView(page, 'live ready', ['"n" a note, edited']);

  assert.deepEqual(errors, []);

  // A stream the gateway refuses (a filter it cannot honour): the hook shows the error
  // (and live-set retries with backoff; the browser logs the 400 and live-set warns).
  const bad = encodeURIComponent(JSON.stringify({ where: { n: { nosuchop: 1 } } }));
  await page.evaluate((path) => window.show(path), `/api/Todos/change-stream?_format=event-stream&options=${bad}`);
  await page.waitForFunction(() => document.querySelector('#error')?.textContent.startsWith('400 '), null, { timeout: STEP_MS });
  const refused = await viewOf(page);
  assert.deepEqual(refused.items, []);
  assert.match(refused.status, /^(connecting|reconnecting)$/);

  // Unmounted: every EventSource the hook opened is closed, and the gateway holds none.
  await page.evaluate(() => window.show(null));
  await page.waitForSelector('#none', { timeout: STEP_MS });
  assert.ok(await page.evaluate(() => window.sources.every((s) => s.readyState === 2)));
  await waitForStreams(gateway, 0);
});
