// LoopBack 3's documented browser code, unchanged, against our change stream.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { cleanup, launchBrowser, LOOPBACK_SNIPPET, REPO, rest, startGateway, within } from './harness.js';

test('the quoted snippet is the documented one', (t) => {
  // The documents the project was started from sit beside the repo (not in a clone of it
  // alone); when they are there, the quote must match them byte for byte.
  const seeds = path.join(REPO, '../shared/seeds');
  if (!existsSync(seeds)) {
    t.skip('shared/seeds is not beside the repo');
    return;
  }
  const documents = readdirSync(seeds).map((f) => readFileSync(path.join(seeds, f), 'utf8'));
  assert.ok(documents.some((text) => text.includes(LOOPBACK_SNIPPET)));
});

test("LoopBack's browser snippet logs the change object after a POST", async (t) => {
  const defer = cleanup(t);
  const gateway = await startGateway();
  defer(() => gateway.stop());
  const browser = await launchBrowser();
  defer(() => browser.close());
  const page = await browser.newPage();

  const logged = [];
  let onLog;
  page.on('console', async (message) => {
    if (message.type() !== 'log') return;
    logged.push(await message.args()[0].jsonValue());
    onLog?.();
  });

  // A page of the gateway's origin (the snippet's URL is relative) holding only the snippet.
  await page.route(`${gateway.base}/snippet.html`, (route) =>
    route.fulfill({
      contentType: 'text/html; charset=utf-8',
      body: `<!doctype html><title>snippet</title><script>\n${LOOPBACK_SNIPPET}\n</script>`,
    }));
  const opened = gateway.waitForLog('stream opened', (f) => f.topics === 'MyModels');
  await page.goto(`${gateway.base}/snippet.html`);
  await opened; // the gateway has positioned the EventSource: what follows reaches it

  const record = await rest('POST', `${gateway.base}/api/MyModels`, { foo: 'bar' });
  assert.deepEqual(record, { foo: 'bar', id: 1 });
  await within('the change object in the console', new Promise((resolve) => {
    onLog = () => logged.length && resolve();
    onLog();
  }));
  assert.deepEqual(logged, [{ target: 1, data: { foo: 'bar', id: 1 }, type: 'create' }]);
  // Key order is LoopBack's too.
  assert.deepEqual(Object.keys(logged[0]), ['target', 'data', 'type']);
});
