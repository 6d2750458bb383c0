// The /demo page in two browser windows: what one does through the form, the other shows.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cleanup, launchBrowser, rest, startGateway, STEP_MS } from './harness.js';

/** The table as the user sees it: one object per row, column name -> cell text. */
function tableOf(page) {
  return page.$$eval('#rows tr', (rows) => rows.map((tr) => {
    const row = {};
    for (const td of tr.querySelectorAll('td[data-column]')) {
      if (td.textContent !== '') row[td.dataset.column] = td.textContent;
    }
    return row;
  }));
}

/** Waits until the page's table shows exactly `rows`. */
async function waitForTable(page, rows) {
  const expected = JSON.stringify(rows);
  try {
    await page.waitForFunction((want) => {
      const got = [...document.querySelectorAll('#rows tr')].map((tr) => {
        const row = {};
        for (const td of tr.querySelectorAll('td[data-column]')) {
          if (td.textContent !== '') row[td.dataset.column] = td.textContent;
        }
        return row;
      });
      return JSON.stringify(got) === want;
    }, expected, { timeout: STEP_MS });
  } catch (error) {
    assert.deepEqual(await tableOf(page), rows, `table of ${page.url()}: ${error.message}`);
  }
}

async function openDemo(browser, base, collection) {
  // A context per page: two windows that share nothing but the server.
  const context = await browser.newContext({ viewport: { width: 900, height: 600 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(`${base}/demo?collection=${collection}`);
  await page.waitForFunction(() => window.liveSet?.ready.then(() => true), null, { timeout: STEP_MS });
  return { page, errors };
}

async function submit(page, record) {
  await page.fill('#record', JSON.stringify(record));
  await page.click('#submit');
}

const row = (page, id) => page.locator(`#rows tr[data-id='${JSON.stringify(id)}']`);

test('the demo page updates in a second window after the first creates, edits, deletes', async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());

  // A record from before the pages opened comes from the initial load.
  await rest('POST', `${gateway.base}/api/Todos`, { title: 'existing' });
  const a = await openDemo(browser, gateway.base, 'Todos');
  const b = await openDemo(browser, gateway.base, 'Todos');
  for (const { page } of [a, b]) await waitForTable(page, [{ id: '1', title: 'existing' }]);
  assert.equal(await b.page.textContent('#status'), 'live');

  // Create through the form of window A.
  await submit(a.page, { title: 'write tests', done: false });
  const created = [{ id: '1', title: 'existing' }, { id: '2', title: 'write tests', done: 'false' }];
  for (const { page } of [a, b]) await waitForTable(page, created);

  // Edit: the form takes the row, Save PUTs it.
  await row(a.page, 2).locator('button.edit').click();
  assert.equal(await a.page.textContent('#submit'), 'Save');
  await submit(a.page, { title: 'write tests', done: true });
  const edited = [{ id: '1', title: 'existing' }, { id: '2', title: 'write tests', done: 'true' }];
  for (const { page } of [a, b]) await waitForTable(page, edited);

  // Ids that are easy to get wrong: 0 (falsy) and a string.
  await submit(a.page, { id: 0, title: 'zero' });
  await waitForTable(a.page, [...edited, { id: '0', title: 'zero' }]);
  await submit(a.page, { id: 'x-1', title: 'string id' });
  const more = [...edited, { id: '0', title: 'zero' }, { id: 'x-1', title: 'string id' }];
  for (const { page } of [a, b]) await waitForTable(page, more);
  await row(a.page, 0).locator('button.edit').click();
  await submit(a.page, { title: 'zero, edited' });
  const zeroEdited = more.map((r) => (r.id === '0' ? { id: '0', title: 'zero, edited' } : r));
  for (const { page } of [a, b]) await waitForTable(page, zeroEdited);

  // Delete from A, one at a time (so the log's order is known).
  let left = zeroEdited;
  for (const id of [0, 'x-1', 2]) {
    await row(a.page, id).locator('button.delete').click();
    left = left.filter((r) => r.id !== String(id));
    await waitForTable(a.page, left);
  }
  for (const { page } of [a, b]) await waitForTable(page, [{ id: '1', title: 'existing' }]);
  await row(b.page, 1).locator('button.delete').click(); // and from B
  for (const { page } of [a, b]) {
    await waitForTable(page, []);
    assert.equal(await page.isVisible('#empty'), true);
  }

  // The server agrees, and nothing threw in either page.
  assert.deepEqual(await rest('GET', `${gateway.base}/api/Todos`), []);
  assert.deepEqual([...a.errors, ...b.errors], []);
  // B's log shows the changes as they came (newest first).
  const log = await b.page.$$eval('#log li span', (items) => items.map((span) => span.textContent));
  assert.deepEqual(log.slice(0, 4), ['remove 1', 'remove 2', 'remove "x-1"', 'remove 0']);
  assert.equal(log.at(-1), 'loaded 1 record');
});
