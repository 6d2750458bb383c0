// The /demo page in two windows, the second with a filter: a record edited out of the
// filter leaves the "Filtered" table (the gateway sends its move-out as a remove) and stays
// in both full tables. Then the pages lose their streams while more changes are made than
// the stream keeps: when they come back their positions are gone, and each of the three
// live sets rebuilds from the reset's in-band snapshot, with no list request at any time.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cleanup, launchBrowser, Proxy, rest, startGateway, STEP_MS, within } from './harness.js';

const COLLECTION = 'Tickets';
const OPEN = { status: 'open' };

/**
 * What the demo's table shows of `records`: one object per row, column -> cell text (keys
 * sorted, so two can be compared as JSON), by id.
 */
function rowsOf(records) {
  const show = (value) => (typeof value === 'string' ? value : JSON.stringify(value));
  return records
    .map((record) => Object.fromEntries(Object.keys(record).sort().map((key) => [key, show(record[key])])))
    .sort((a, b) => a.id.localeCompare(b.id));
}

/** In the page: the rows of the table body `selector`, as `rowsOf` makes them. */
function tableRows(selector) {
  return [...document.querySelectorAll(`${selector} tr`)]
    .map((tr) => {
      const cells = [...tr.querySelectorAll('td[data-column]')].filter((td) => td.textContent !== '');
      cells.sort((a, b) => (a.dataset.column < b.dataset.column ? -1 : 1));
      return Object.fromEntries(cells.map((td) => [td.dataset.column, td.textContent]));
    })
    .sort((a, b) => a.id.localeCompare(b.id));
}

/** Waits until the table body `tbody` of `page` shows exactly the records GET `url` answers. */
async function waitForRows(page, tbody, url) {
  const expected = rowsOf(await rest('GET', url));
  const rows = `(${tableRows})(${JSON.stringify(tbody)})`;
  try {
    await page.waitForFunction(`JSON.stringify(${rows}) === ${JSON.stringify(JSON.stringify(expected))}`, null, { timeout: STEP_MS });
  } catch (error) {
    assert.deepEqual(await page.evaluate(rows), expected, `${tbody} of ${page.url()}: ${error.message}`);
  }
  return expected;
}

async function openDemo(browser, base) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 700 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(`${base}/demo?collection=${COLLECTION}`);
  await page.waitForFunction(() => window.liveSet?.ready.then(() => true), null, { timeout: STEP_MS });
  return { page, errors };
}

const logOf = (page) => page.$$eval('#log li span', (items) => items.map((span) => span.textContent));
const state = (page, id) => page.waitForFunction(
  ([el, want]) => document.getElementById(el).dataset.state === want,
  id,
  { timeout: STEP_MS },
);

test('the demo\'s filtered table drops a record edited out of its filter; after a trimmed history both windows rebuild from the snapshot', async (t) => {
  const defer = cleanup(t);
  // The stream keeps 3 changes; snapshots come 2 records a page.
  const gateway = await startGateway({ env: { GATEWAY_STREAM_MAX_LEN: '3', GATEWAY_SNAPSHOT_PAGE: '2' } });
  defer(() => gateway.stop());
  const proxy = await new Proxy({ gateway: gateway.addr }).listen();
  defer(() => proxy.close());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const api = `${gateway.base}/api/${COLLECTION}`;
  const filteredApi = `${api}?filter=${encodeURIComponent(JSON.stringify({ where: OPEN }))}`;
  await rest('POST', api, { title: 'a', status: 'open' }); // 1
  await rest('POST', api, { title: 'b', status: 'done' }); // 2
  await rest('POST', api, { title: 'c', status: 'open' }); // 3

  const a = await openDemo(browser, proxy.base);
  const b = await openDemo(browser, proxy.base);

  // B: a filter the gateway refuses is shown, and no set is kept; then a good one.
  await b.page.fill('#where', '{"status": {"gt": [1]}}');
  await b.page.click('#apply');
  await b.page.waitForFunction(() => /^change stream refused: 400 options: where\.status\.gt/.test(document.getElementById('filter-message').textContent), null, { timeout: STEP_MS });
  assert.equal(await b.page.evaluate(() => window.filteredSet), null);
  await b.page.fill('#where', 'not json');
  await b.page.click('#apply');
  assert.match(await b.page.textContent('#filter-message'), /^Not a where filter: /);
  await b.page.fill('#where', JSON.stringify(OPEN));
  await b.page.click('#apply');
  await b.page.waitForFunction(() => window.filteredSet?.ready.then(() => true), null, { timeout: STEP_MS });
  assert.equal(await b.page.textContent('#filter-message'), '');
  assert.equal(new URL(b.page.url()).searchParams.get('where'), JSON.stringify(OPEN));
  const inSync = async () => {
    for (const { page } of [a, b]) await waitForRows(page, '#rows', api);
    return waitForRows(b.page, '#filtered-rows', filteredApi);
  };
  assert.deepEqual((await inSync()).map((r) => r.id), ['1', '3']);

  // Creates through A's form, one in the filter and one not.
  for (const record of [{ title: 'd', status: 'open' }, { title: 'e', status: 'done' }]) {
    await a.page.fill('#record', JSON.stringify(record));
    await a.page.click('#submit');
  }
  // (The form's requests are the page's own: the change shows once they are made.)
  await a.page.waitForFunction(() => window.liveSet.size === 5, null, { timeout: STEP_MS });
  assert.deepEqual((await inSync()).map((r) => r.id), ['1', '3', '4']);

  // A edits 3 out of the filter: it leaves B's filtered table only.
  await a.page.locator("#rows tr[data-id='3'] button.edit").click();
  await a.page.fill('#record', JSON.stringify({ title: 'c', status: 'done' }));
  await a.page.click('#submit');
  await a.page.waitForFunction(() => window.liveSet.get(3).status === 'done', null, { timeout: STEP_MS });
  assert.deepEqual((await inSync()).map((r) => r.id), ['1', '4']);
  for (const { page } of [a, b]) {
    assert.equal(await page.textContent("#rows tr[data-id='3'] td[data-column='status']"), 'done');
  }
  // And 5 into it.
  await rest('PATCH', `${api}/5`, OPEN);
  assert.deepEqual((await inSync()).map((r) => r.id), ['1', '4', '5']);
  const before = await logOf(b.page);
  assert.ok(before.includes('filtered: remove 3'), 'the move-out came as a remove');
  assert.ok(before.includes('filtered: update 5'), 'the move-in came as an update');
  const lastSeen = await b.page.evaluate(() => [window.liveSet.lastEventId, window.filteredSet.lastEventId]);

  // An ingress without a pod (502) for the pages' streams: EventSource gives up and live-set
  // reopens after a backoff. Meanwhile more changes than the stream keeps.
  const cut = proxy.requests.length;
  proxy.setGateway({ status: 502 });
  proxy.cutStreams();
  // The browsers' own reconnects (after `retry:`, with the stream's first URL) are refused,
  // all three; live-set's reopens carry `last_event_id=`.
  const refused = () => proxy.requests.slice(cut)
    .filter((r) => r.stream && typeof r.backend === 'object' && !r.url.includes('last_event_id=')).length;
  await within('the three streams\' reconnects answered 502', new Promise((resolve) => {
    const check = () => {
      if (refused() < 3) return;
      proxy.off('request', check);
      resolve();
    };
    proxy.on('request', check);
    check();
  }));
  for (const { page } of [a, b]) await state(page, ['status', 'reconnecting']);
  await state(b.page, ['filtered-status', 'reconnecting']);
  await rest('DELETE', `${api}/1`);
  await rest('POST', api, { title: 'f', status: 'open' }); // 6
  await rest('PATCH', `${api}/4`, { status: 'done' });
  await rest('PATCH', `${api}/2`, OPEN);
  await rest('POST', api, { title: 'g', status: 'done' }); // 7
  proxy.setGateway(gateway.addr);

  assert.deepEqual((await inSync()).map((r) => r.id), ['2', '5', '6']);
  for (const { page } of [a, b]) await state(page, ['status', 'live']);
  await state(b.page, ['filtered-status', 'live']);

  // Each set reopened where it was, got the reset and then a snapshot (a second "loaded").
  const reopened = proxy.requests.slice(cut).filter((r) => r.stream && r.backend === gateway.addr);
  const resumedFrom = reopened.map((r) => new URL(r.url, proxy.base).searchParams);
  assert.equal(reopened.length, 3, reopened.map((r) => r.url).join('\n'));
  assert.ok(resumedFrom.every((q) => q.get('snapshot') === 'true' && q.has('last_event_id')));
  assert.ok(resumedFrom.some((q) => q.get('last_event_id') === lastSeen[0] && !q.has('options')));
  assert.ok(resumedFrom.some((q) => q.get('last_event_id') === lastSeen[1] && q.get('options') === JSON.stringify({ where: OPEN })));
  const logA = await logOf(a.page);
  const logB = await logOf(b.page);
  for (const log of [logA, logB]) {
    assert.ok(log.includes('reset (history-trimmed): rebuilding from the snapshot'), log.join('\n'));
    assert.equal(log.filter((line) => line.startsWith('loaded ')).length, 2, log.join('\n'));
  }
  assert.ok(logB.includes('filtered: reset (history-trimmed)'));
  assert.equal(logB.filter((line) => line.startsWith('filtered: loaded ')).length, 2);

  // Live again: 6 leaves the filter, 2 is deleted.
  await rest('PATCH', `${api}/6`, { status: 'done' });
  await rest('DELETE', `${api}/2`);
  assert.deepEqual((await inSync()).map((r) => r.id), ['5']);

  // The records only ever came in the streams: the pages never asked for the list.
  const lists = proxy.requests.filter((r) => r.method === 'GET' && new URL(r.url, proxy.base).pathname === `/api/${COLLECTION}`);
  assert.deepEqual(lists, []);
  assert.deepEqual([...a.errors, ...b.errors], []);
});
