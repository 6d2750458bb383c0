// live-set.js in the browser, on the cases a plain EventSource gets wrong: changes racing
// the initial GET, history trimmed while away (`reset`), a reconnect with no id to resume
// from, the browser giving up on an HTTP error, and the multi-topic /events stream.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cleanup, launchBrowser, Proxy, rest, startGateway, STEP_MS } from './harness.js';

/**
 * A page at `origin` whose module script is `script` (live-set is imported as `liveSet`).
 * The page keeps what the set reports in `window.report`.
 */
async function openPage(browser, origin, script) {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
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
  return { page, errors };
}

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

  // The load is held open by the test: it resolves with a snapshot taken when the test says.
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

test('a reset (history trimmed while away) reloads the collection', async (t) => {
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
window.set = liveSet('/api/Trim/change-stream?_format=event-stream', report);`);
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
  assert.equal(lists.length, 2, 'loaded at start and once more after the reset');
  // Live after the reload.
  await rest('PATCH', `${api}/6`, { n: 60 });
  await assertInSync(page, api);
  assert.deepEqual(errors, []);
});

test('a stream dropped before its first event resumes from its starting position', async (t) => {
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
window.set = liveSet('/api/Quiet/change-stream?_format=event-stream', report);`);
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
  // Resumed, not reloaded.
  const lists = proxy.requests.filter((r) => r.method === 'GET' && r.url === '/api/GiveUp');
  assert.equal(lists.length, 1);
  assert.deepEqual(errors, []);
});

test('one set over /events?topic=A&topic=B keeps each topic apart', async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  await rest('POST', `${gateway.base}/api/Alpha`, { name: 'a1' });
  await rest('POST', `${gateway.base}/api/Beta`, { name: 'b1' });

  const { page, errors } = await openPage(browser, gateway.base, `
window.set = liveSet('/events?topic=Alpha&topic=Beta', report);`);
  await page.waitForFunction(() => window.set.ready.then(() => true), null, { timeout: STEP_MS });
  await rest('POST', `${gateway.base}/api/Beta`, { name: 'b2' });
  await rest('PATCH', `${gateway.base}/api/Alpha/1`, { name: 'a1!' });
  await rest('DELETE', `${gateway.base}/api/Beta/1`);
  await until(page, () => window.report.changes.length === 5); // 2 loads + 3 changes
  assert.deepEqual(await page.evaluate(() => window.set.records), [
    { name: 'a1!', id: 1 },
    { name: 'b2', id: 2 },
  ]);
  assert.equal(await page.evaluate(() => window.set.get(1, 'Alpha').name), 'a1!');
  assert.equal(await page.evaluate(() => window.set.get(1, 'Beta')), undefined);
  const changes = await page.evaluate(() => window.report.changes.map((c) => `${c.topic} ${c.type} ${c.target ?? ''}`));
  // Topics interleave as their events arrive; each topic is in its own order.
  const ofTopic = (name) => changes.slice(2).filter((c) => c.startsWith(`${name} `));
  assert.deepEqual(ofTopic('Alpha'), ['Alpha update 1']);
  assert.deepEqual(ofTopic('Beta'), ['Beta create 2', 'Beta remove 1']);
  assert.deepEqual(errors, []);
});
