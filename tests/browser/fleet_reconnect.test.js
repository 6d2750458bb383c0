// A fleet (Redis, the publisher, gateway pods) behind one origin. The pod serving an open
// demo page is killed (SIGKILL) and the page's connection moves to another pod, then to a
// freshly started one; changes are made while the page has no stream. The page took its
// records from the first stream's snapshot (read from Redis in pages); the browser's own
// EventSource reconnects with Last-Event-ID and the table ends exactly as GET /api/{c}.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  cleanup, launchBrowser, Proxy, rest, startGateway, startPublisher, startRedis, STEP_MS,
} from './harness.js';

const COLLECTION = 'Fleet';

/** Sorted by id (integers, then strings): the table's order is arrival order. */
const byId = (records) => [...records].sort((a, b) => {
  if (typeof a.id !== typeof b.id) return typeof a.id === 'number' ? -1 : 1;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
});

/** Waits until the page's live set and its table hold exactly what the REST API holds. */
async function waitInSync(page, api) {
  const expected = byId(await rest('GET', `${api}/api/${COLLECTION}`));
  const want = JSON.stringify(expected);
  try {
    await page.waitForFunction(([want, ids]) => {
      const order = (r) => [...r].sort((a, b) => {
        if (typeof a.id !== typeof b.id) return typeof a.id === 'number' ? -1 : 1;
        return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
      });
      const rows = [...document.querySelectorAll('#rows tr')].map((tr) => tr.dataset.id).sort();
      return JSON.stringify(order(window.liveSet.records)) === want
        && JSON.stringify(rows) === JSON.stringify(ids);
    }, [want, expected.map((r) => JSON.stringify(r.id)).sort()], { timeout: STEP_MS });
  } catch (error) {
    const records = await page.evaluate(() => window.liveSet.records);
    assert.deepEqual(byId(records), expected, error.message);
    throw error;
  }
  return expected;
}

test('after its pod is killed, the page resumes on other pods with Last-Event-ID and ends exactly right', async (t) => {
  const defer = cleanup(t);
  const redis = await startRedis();
  defer(() => redis.stop());
  const publisher = await startPublisher({ redisUrl: redis.url });
  defer(() => publisher.stop());
  // Two records per snapshot page: the page's first records come in two reads of Redis.
  const podA = await startGateway({ redisUrl: redis.url, env: { GATEWAY_SNAPSHOT_PAGE: '2' } });
  defer(() => podA.stop());
  const podB = await startGateway({ redisUrl: redis.url });
  defer(() => podB.stop());
  const proxy = await new Proxy({ gateway: podA.addr, api: publisher.addr }).listen();
  defer(() => proxy.close());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const api = publisher.base; // the test's own writes go straight to the publisher

  for (const n of [1, 2, 3]) await rest('POST', `${api}/api/${COLLECTION}`, { n });
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(`${proxy.base}/demo?collection=${COLLECTION}`);
  await page.waitForFunction(() => window.liveSet?.ready.then(() => true), null, { timeout: STEP_MS });
  await rest('PATCH', `${api}/api/${COLLECTION}/2`, { n: 20 });
  await rest('POST', `${api}/api/${COLLECTION}`, { n: 4 });
  await waitInSync(page, api);

  // Pod A dies with the page's stream on it, and the page moves to pod B; then B dies
  // and the page lands on a pod started afterwards (a restart).
  const podC = { pod: null };
  const moves = [
    { from: podA, to: () => podB },
    { from: podB, to: async () => { podC.pod = await startGateway({ redisUrl: redis.url }); defer(() => podC.pod.stop()); return podC.pod; } },
  ];
  let round = 0;
  for (const { from, to } of moves) {
    round += 1;
    const lastSeen = await page.evaluate(() => window.liveSet.lastEventId);
    assert.match(lastSeen, /^\d+-\d+$/);
    const lost = new Promise((resolve) => proxy.once('upstream-lost', resolve));
    proxy.setGateway(null); // no pod for a while: reconnects are refused
    await from.kill();
    await lost;
    await page.waitForFunction(() => document.getElementById('status').dataset.state === 'reconnecting', null, { timeout: STEP_MS });

    // Changes while the page has no stream: create, update, remove, and awkward ids.
    await rest('POST', `${api}/api/${COLLECTION}`, { n: 10 * round });
    await rest('PUT', `${api}/api/${COLLECTION}/1`, { n: 100 + round });
    await rest('DELETE', `${api}/api/${COLLECTION}/${round === 1 ? 3 : 4}`);
    await rest('POST', `${api}/api/${COLLECTION}`, { id: round === 1 ? 0 : `s-${round}`, n: -round });
    await rest('PATCH', `${api}/api/${COLLECTION}/${round === 1 ? 0 : `s-${round}`}`, { patched: true });

    const pod = await to();
    proxy.setGateway(pod.addr);
    const resumed = await proxy.waitForRequest(
      `a change stream request to ${pod.addr} with Last-Event-ID`,
      (r) => r.stream && r.backend === pod.addr,
    );
    assert.equal(resumed.lastEventId, lastSeen, 'the browser resumed from the last id it had');
    await waitInSync(page, api);
    await page.waitForFunction(() => document.getElementById('status').dataset.state === 'live', null, { timeout: STEP_MS });
  }

  // Live again on the new pod.
  await rest('POST', `${api}/api/${COLLECTION}`, { n: 'after' });
  await rest('DELETE', `${api}/api/${COLLECTION}/1`);
  const final = await waitInSync(page, api);
  assert.ok(final.length >= 5);

  // It was the resume that made it right, not a reload: the page took the records once,
  // from the first stream's snapshot, and never asked for the list.
  const lists = proxy.requests.filter((r) => r.method === 'GET' && new URL(r.url, proxy.base).pathname === `/api/${COLLECTION}`);
  assert.equal(lists.length, 0);
  const log = await page.$$eval('#log li span', (items) => items.map((span) => span.textContent));
  assert.equal(log.filter((line) => line.startsWith('loaded ')).length, 1);
  // Every stream request after the first carried Last-Event-ID.
  const streams = proxy.requests.filter((r) => r.stream);
  assert.equal(streams[0].lastEventId, null);
  assert.ok(streams.slice(1).every((r) => r.lastEventId !== null));
  assert.deepEqual(errors, []);
});
