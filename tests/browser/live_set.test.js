// live-set.js in the browser, on the cases a plain EventSource gets wrong: the in-band
// snapshot (pages gathered by id, a reconnect before its last page), a source that ignores
// `snapshot=true` (the fallback to GET), changes racing the initial GET, history trimmed
// while away (`reset`, followed by a snapshot or a reload), a reconnect with no id to
// resume from, the browser giving up on an HTTP error, and the multi-topic /events stream.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cleanup, launchBrowser, Proxy, rest, startGateway, STEP_MS } from './harness.js';

/**
 * A page at `origin` whose module script is `script` (live-set is imported as `liveSet`).
 * The page keeps what the set reports in `window.report`. `setup(page)` runs before the
 * page loads (routes). `lists` collects the page's list GETs (`/api/{c}`, any query).
 */
async function openPage(browser, origin, script, setup = async () => {}) {
  const page = await browser.newPage();
  const errors = [];
  const lists = [];
  page.on('pageerror', (error) => errors.push(error));
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (request.method() === 'GET' && /^\/api\/[^/]+$/.test(url.pathname)) lists.push(url.pathname + url.search);
  });
  await setup(page);
  await page.route(`${origin}/live-set-test.html`, (route) => route.fulfill({
    contentType: 'text/html; charset=utf-8',
    body: `<!doctype html><title>live-set</title><script type="module">
import { liveSet } from '/client/live-set.js';
window.report = { state: null, changes: [], resets: [], errors: [] };
const report = {
  onChange: (change) => window.report.changes.push(change),
  onReset: (info) => window.report.resets.push(info),
  onStatus: (state) => { window.report.state = state; },
  onError: (error) => window.report.errors.push(error.message),
};
${script}
</script>`,
  }));
  await page.goto(`${origin}/live-set-test.html`);
  return { page, errors, lists };
}

/** Routes the page's change streams to the gateway without `snapshot=true`: a source that ignores it. */
async function withoutSnapshots(page) {
  await page.route((url) => url.pathname.endsWith('/change-stream'), (route) => {
    const url = new URL(route.request().url());
    url.searchParams.delete('snapshot');
    return route.continue({ url: url.href });
  });
}

const loads = (page) => page.evaluate(() => window.report.changes.filter((c) => c.type === 'load').length);

const until = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: STEP_MS });

/** The REST API's order: integer ids ascending, then string ids. */
const byId = (records) => [...records].sort((a, b) => {
  if (typeof a.id !== typeof b.id) return typeof a.id === 'number' ? -1 : 1;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
});

/** Waits until `window.set` holds exactly what GET `url` answers (in any order). */
async function assertInSync(page, url) {
  const expected = byId(await rest('GET', url));
  await until(page, (want) => {
    const order = (r) => [...r].sort((a, b) => {
      if (typeof a.id !== typeof b.id) return typeof a.id === 'number' ? -1 : 1;
      return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
    });
    return JSON.stringify(order(window.set.records)) === want;
  }, JSON.stringify(expected)).catch(async (error) => {
    assert.deepEqual(byId(await page.evaluate(() => window.set.records)), expected, error.message);
    throw error;
  });
  return expected;
}

test('changes that race the initial load are applied on top of the list, each once', async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const api = `${gateway.base}/api/Race`;
  for (const n of [1, 2, 3]) await rest('POST', api, { n });

  // The load path (a custom `load` asks for no snapshot). The load is held open by the
  // test: it resolves with a snapshot taken when the test says.
  const { page, errors } = await openPage(browser, gateway.base, `
window.seen = 0;
class Counting extends EventSource {
  constructor(url) { super(url); this.addEventListener('data', () => { window.seen += 1; }); }
}
window.set = liveSet('/api/Race/change-stream?_format=event-stream', {
  ...report,
  EventSource: Counting,
  load: (topic) => new Promise((resolve) => { window.finishLoad = resolve; window.loading = topic; }),
});`);
  await until(page, () => window.report.state === 'live' && window.loading === 'Race');

  // Between the stream's opening and the snapshot: in both, must not be doubled.
  await rest('PATCH', `${api}/1`, { n: 11 });
  await rest('POST', api, { n: 5 });
  await until(page, () => window.seen === 2);
  await page.evaluate(async () => { window.snapshot = await (await fetch('/api/Race')).json(); });
  // After the snapshot, before the load finishes: the list is stale for these.
  await rest('DELETE', `${api}/2`);
  await rest('PATCH', `${api}/4`, { n: 55 });
  await rest('POST', api, { id: 0, n: 0 });
  await rest('POST', api, { id: 'tmp', n: 'gone again' });
  await rest('DELETE', `${api}/tmp`);
  await until(page, () => window.seen === 7);
  assert.equal(await page.evaluate(() => window.set.size), 0, 'nothing applied before the list');

  await page.evaluate(() => window.finishLoad(window.snapshot));
  const expected = await assertInSync(page, api);
  assert.deepEqual(expected.map((r) => r.id), [0, 1, 3, 4]);
  // Order: the list's, then creates as they came.
  assert.deepEqual(await page.evaluate(() => window.set.records.map((r) => r.id)), [1, 3, 4, 0]);
  assert.equal(await page.evaluate(() => window.set.get(0).n), 0);
  const changes = await page.evaluate(() => window.report.changes.map((c) => `${c.type} ${c.target ?? ''}`));
  assert.deepEqual(changes, [
    'load ', 'update 1', 'create 4', 'remove 2', 'update 4', 'create 0', 'create tmp', 'remove tmp',
  ]);
  assert.deepEqual(errors, []);
});

for (const snapshot of [false, true]) {
  const what = snapshot
    ? 'is followed by a snapshot that rebuilds the set, with no GET'
    : 'reloads the collection (snapshot: false)';
  test(`a reset (history trimmed while away) ${what}`, async (t) => {
    const defer = cleanup(t);
    const gateway = await startGateway({ env: { GATEWAY_STREAM_MAX_LEN: '3' } });
    defer(() => gateway.stop());
    const proxy = await new Proxy({ gateway: gateway.addr }).listen();
    defer(() => proxy.close());
    const browser = await launchBrowser();
    defer(() => browser.close());
    const api = `${gateway.base}/api/Trim`;
    await rest('POST', api, { n: 1 });

    const { page, errors } = await openPage(browser, proxy.base, `
  window.set = liveSet('/api/Trim/change-stream?_format=event-stream', { ...report, snapshot: ${snapshot} });`);
    await page.waitForFunction(() => window.set.ready.then(() => true), null, { timeout: STEP_MS });
    await rest('POST', api, { n: 2 });
    await assertInSync(page, api);
    const lastSeen = await page.evaluate(() => window.set.lastEventId);

    proxy.setGateway(null);
    proxy.cutStreams();
    await until(page, () => window.report.state === 'reconnecting');
    // More changes than the stream keeps: where the page was is gone.
    for (const n of [3, 4, 5, 6]) await rest('POST', api, { n });
    await rest('DELETE', `${api}/1`);
    proxy.setGateway(gateway.addr);

    const expected = await assertInSync(page, api);
    assert.deepEqual(expected.map((r) => r.n), [2, 3, 4, 5, 6]);
    const resets = await page.evaluate(() => window.report.resets);
    assert.equal(resets.length, 1);
    assert.equal(resets[0].reason, 'history-trimmed');
    assert.equal(resets[0].lastEventId, lastSeen);
    const lists = proxy.requests.filter((r) => r.method === 'GET' && r.url === '/api/Trim');
    if (snapshot) {
      assert.equal(lists.length, 0, 'the snapshots came in the stream');
      const reopened = proxy.requests.filter((r) => r.stream && r.backend === gateway.addr).at(-1);
      assert.equal(reopened.lastEventId, lastSeen, 'the browser resumed, and got the reset');
      assert.match(reopened.url, /[?&]snapshot=true(&|$)/);
    } else {
      assert.equal(lists.length, 2, 'loaded at start and once more after the reset');
    }
    assert.equal(await loads(page), 2, 'the first records, and once more after the reset');
    // Live after the reload.
    await rest('PATCH', `${api}/6`, { n: 60 });
    await assertInSync(page, api);
    assert.deepEqual(errors, []);
  });
}

test('a stream dropped before its first event resumes from its starting position (snapshot: false)', async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const proxy = await new Proxy({ gateway: gateway.addr }).listen();
  defer(() => proxy.close());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const api = `${gateway.base}/api/Quiet`;
  await rest('POST', api, { n: 1 });

  const { page, errors } = await openPage(browser, proxy.base, `
window.set = liveSet('/api/Quiet/change-stream?_format=event-stream', { ...report, snapshot: false });`);
  await page.waitForFunction(() => window.set.ready.then(() => true), null, { timeout: STEP_MS });
  assert.equal(await page.evaluate(() => window.set.lastEventId), '');

  // The stream drops before it carried any event; changes are made meanwhile. The gateway
  // sent the starting position as an id without an event, so the browser's own
  // EventSource reconnects with it as Last-Event-ID and nothing is missed.
  proxy.setGateway(null);
  proxy.cutStreams();
  await until(page, () => window.report.state === 'reconnecting');
  await rest('POST', api, { n: 2 });
  await rest('DELETE', `${api}/1`);
  proxy.setGateway(gateway.addr);

  await assertInSync(page, api);
  const streams = proxy.requests.filter((r) => r.stream && r.backend === gateway.addr);
  assert.ok(streams.length >= 2, 'reconnected');
  assert.equal(streams[0].lastEventId, null);
  assert.ok(streams.slice(1).every((r) => r.lastEventId !== null), 'the reconnect resumed from the starting position');
  assert.deepEqual(errors, []);
});

test('when the browser gives up on an HTTP error, live-set reopens with last_event_id', async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const proxy = await new Proxy({ gateway: gateway.addr }).listen();
  defer(() => proxy.close());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const api = `${gateway.base}/api/GiveUp`;
  await rest('POST', api, { n: 1 });

  const { page, errors } = await openPage(browser, proxy.base, `
window.set = liveSet('/api/GiveUp/change-stream?_format=event-stream', report);`);
  await page.waitForFunction(() => window.set.ready.then(() => true), null, { timeout: STEP_MS });
  await rest('POST', api, { n: 2 });
  await assertInSync(page, api);
  const lastSeen = await page.evaluate(() => window.set.lastEventId);

  // An error status (a 502 from an ingress with no pod) makes EventSource close for good.
  proxy.setGateway({ status: 502 });
  proxy.cutStreams();
  await proxy.waitForRequest('a change stream request answered 502', (r) => r.stream && typeof r.backend === 'object');
  await rest('POST', api, { n: 3 });
  await rest('DELETE', `${api}/1`);
  proxy.setGateway(gateway.addr);

  const reopened = await proxy.waitForRequest('the reopened stream', (r) => r.stream && r.backend === gateway.addr && r.url.includes('last_event_id='));
  assert.equal(new URL(reopened.url, proxy.base).searchParams.get('last_event_id'), lastSeen);
  await assertInSync(page, api);
  await until(page, () => window.report.state === 'live');
  // Resumed, not reloaded: the records came once, in the first stream's snapshot.
  const lists = proxy.requests.filter((r) => r.method === 'GET' && r.url === '/api/GiveUp');
  assert.equal(lists.length, 0);
  assert.equal(await loads(page), 1);
  assert.match(reopened.url, /[?&]snapshot=true(&|$)/);
  assert.deepEqual(errors, []);
});

test('one set over /events?topic=A&topic=B keeps each topic apart', async (t) => {
  const defer = cleanup(t);
  // One record per page: the topics' snapshot pages interleave.
  const gateway = await startGateway({ env: { GATEWAY_SNAPSHOT_PAGE: '1' } });
  defer(() => gateway.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  await rest('POST', `${gateway.base}/api/Alpha`, { name: 'a1' });
  await rest('POST', `${gateway.base}/api/Alpha`, { name: 'a2' });
  await rest('POST', `${gateway.base}/api/Beta`, { name: 'b1' });

  const { page, errors, lists } = await openPage(browser, gateway.base, `
window.set = liveSet('/events?topic=Alpha&topic=Beta', report);`);
  await page.waitForFunction(() => window.set.ready.then(() => true), null, { timeout: STEP_MS });
  await rest('POST', `${gateway.base}/api/Beta`, { name: 'b2' });
  await rest('PATCH', `${gateway.base}/api/Alpha/1`, { name: 'a1!' });
  await rest('DELETE', `${gateway.base}/api/Beta/1`);
  await until(page, () => window.report.changes.length === 5); // 2 loads + 3 changes
  assert.deepEqual(await page.evaluate(() => window.set.records), [
    { name: 'a1!', id: 1 },
    { name: 'a2', id: 2 },
    { name: 'b2', id: 2 },
  ]);
  assert.equal(await page.evaluate(() => window.set.get(1, 'Alpha').name), 'a1!');
  assert.equal(await page.evaluate(() => window.set.get(1, 'Beta')), undefined);
  const changes = await page.evaluate(() => window.report.changes.map((c) => `${c.topic} ${c.type} ${c.target ?? ''}`));
  // Topics interleave as their events arrive; each topic is in its own order.
  const ofTopic = (name) => changes.slice(2).filter((c) => c.startsWith(`${name} `));
  assert.deepEqual(ofTopic('Alpha'), ['Alpha update 1']);
  assert.deepEqual(ofTopic('Beta'), ['Beta create 2', 'Beta remove 1']);
  assert.deepEqual(changes.slice(0, 2).sort(), ['Alpha load ', 'Beta load ']);
  assert.deepEqual(lists, [], 'both topics came in the stream\'s snapshots');
  assert.deepEqual(errors, []);
});

test('a reconnect before the snapshot\'s last page gathers a fresh one; pages are kept by id', async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const api = `${gateway.base}/api/Pages`;
  await rest('POST', api, { n: 1 });
  await rest('POST', api, { n: 2 });
  const at = (await fetch(api)).headers.get('last-event-id'); // the state [1, 2] is at `at`

  // The first two stream answers are the test's: a snapshot cut off before its last page,
  // with a record that is not there (99); then a whole one, the state at `at`, whose
  // record 1 comes on two pages (as a Redis snapshot may send it). Then the gateway's,
  // which resumes from `at`.
  const asked = []; // the snapshot param of each stream request
  const sse = (frames) => ({ contentType: 'text/event-stream', body: `retry: 50\n\n${frames.join('')}` });
  const page = (records, last, id) => `${id ? `id: ${id}\n` : ''}event: snapshot\ndata: ${JSON.stringify({ records, last })}\n\n`;
  const { page: tab, errors, lists } = await openPage(browser, gateway.base, `
window.sizes = []; // the set's size when each snapshot page arrived
class Watching extends EventSource {
  constructor(url) { super(url); this.addEventListener('snapshot', () => window.sizes.push(window.set.size)); }
}
window.set = liveSet('/api/Pages/change-stream?_format=event-stream', { ...report, EventSource: Watching });`,
  (p) => p.route((url) => url.pathname.endsWith('/change-stream'), (route) => {
    const request = route.request();
    asked.push(new URL(request.url()).searchParams.get('snapshot'));
    if (asked.length === 1) {
      return route.fulfill(sse([page([{ n: 1, id: 1 }, { n: 'ghost', id: 99 }], false)]));
    }
    if (asked.length === 2) {
      return route.fulfill(sse([
        page([{ n: 1, id: 1 }, { n: 2, id: 2 }], false),
        page([{ n: 1, id: 1 }], true, at),
      ]));
    }
    return route.continue();
  }));
  await tab.waitForFunction(() => window.set.ready.then(() => true), null, { timeout: STEP_MS });
  assert.deepEqual(await tab.evaluate(() => window.set.records), [{ n: 1, id: 1 }, { n: 2, id: 2 }]);
  assert.deepEqual(await tab.evaluate(() => window.sizes), [0, 0, 0], 'nothing shown before a last page');
  assert.equal(await loads(tab), 1, 'the cut-off snapshot never loaded');

  // Live from `at` on the gateway's stream.
  await until(tab, () => window.report.state === 'live');
  await rest('PATCH', `${api}/2`, { n: 20 });
  await rest('POST', api, { n: 3 });
  await rest('DELETE', `${api}/1`);
  await assertInSync(tab, api);
  assert.equal(await tab.evaluate(() => window.set.get(99)), undefined);
  assert.deepEqual(asked, ['true', 'true', 'true']);
  // The browser's own reconnect after the whole snapshot resumed from its id (Playwright
  // does not show the Last-Event-ID header EventSource adds; the gateway's log does).
  await gateway.waitForLog('stream opened', (fields) => fields.resume === JSON.stringify([`Pages:${at}`]));
  assert.deepEqual(lists, []);
  assert.deepEqual(errors, []);
});

test('a source that ignores snapshot=true: the set loads by GET at its first change, or after snapshotTimeout', async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  for (const name of ['Busy', 'Idle']) {
    await rest('POST', `${gateway.base}/api/${name}`, { n: 1 });
    await rest('POST', `${gateway.base}/api/${name}`, { n: 2 });
  }

  // A change comes before any snapshot page: it is buffered, and the list is loaded.
  const busy = await openPage(browser, gateway.base, `
window.set = liveSet('/api/Busy/change-stream?_format=event-stream', report);
window.set.ready.then(() => { window.isReady = true; });`, withoutSnapshots);
  await until(busy.page, () => window.report.state === 'live');
  assert.deepEqual(await busy.page.evaluate(() => [window.set.size, window.set.snapshots, window.isReady]), [0, true, undefined]);
  await rest('PATCH', `${gateway.base}/api/Busy/2`, { n: 20 });
  await busy.page.waitForFunction(() => window.set.ready.then(() => true), null, { timeout: STEP_MS });
  await assertInSync(busy.page, `${gateway.base}/api/Busy`);
  assert.equal(await busy.page.evaluate(() => window.set.snapshots), false);
  const changes = await busy.page.evaluate(() => window.report.changes.map((c) => `${c.type} ${c.target ?? ''}`));
  assert.deepEqual(changes, ['load ', 'update 2'], 'the change that came first, on top of the list');
  assert.deepEqual(busy.lists, ['/api/Busy']);
  await rest('POST', `${gateway.base}/api/Busy`, { n: 3 });
  await assertInSync(busy.page, `${gateway.base}/api/Busy`);

  // Nothing comes at all: after snapshotTimeout the list is loaded.
  const idle = await openPage(browser, gateway.base, `
window.set = liveSet('/api/Idle/change-stream?_format=event-stream', { ...report, snapshotTimeout: 300 });`, withoutSnapshots);
  await idle.page.waitForFunction(() => window.set.ready.then(() => true), null, { timeout: STEP_MS });
  await assertInSync(idle.page, `${gateway.base}/api/Idle`);
  assert.deepEqual(idle.lists, ['/api/Idle']);
  await rest('DELETE', `${gateway.base}/api/Idle/1`);
  await assertInSync(idle.page, `${gateway.base}/api/Idle`);
  assert.deepEqual([...busy.errors, ...idle.errors], []);
});

test('a stream refused with 409 (a raw-publish topic) is reported and reopened without snapshot', async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const publish = (n) => rest('POST', `${gateway.base}/publish`, {
    topic: 'Raw', change: { target: n, data: { n, id: n }, type: 'create' },
  });
  await publish(1); // the topic is raw now: it keeps no records

  const streams = [];
  const { page, errors } = await openPage(browser, gateway.base, `
window.set = liveSet('/api/Raw/change-stream?_format=event-stream', { ...report, load: false, snapshot: true });`,
  async (p) => p.on('request', (request) => {
    if (request.resourceType() === 'eventsource') streams.push(new URL(request.url()).searchParams.get('snapshot'));
  }));
  await page.waitForFunction(() => window.set.ready.then(() => true), null, { timeout: STEP_MS });
  const reported = await page.evaluate(() => window.report.errors);
  assert.equal(reported.length, 1);
  assert.match(reported[0], /^change stream refused: 409 /);
  assert.equal(await page.evaluate(() => window.set.snapshots), false);
  assert.deepEqual(streams, ['true', null]);
  await publish(2);
  await until(page, () => window.set.get(2)?.n === 2);
  assert.deepEqual(errors, []);
});
