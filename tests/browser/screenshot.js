// Makes docs/demo.png: the /demo page in two windows, one above the other, each with its own
// filter: the first editing, the second following live (a record updated out of its
// filter has just left its "Filtered" table). Run by hand (`npm run screenshot` here, after `cargo build`); the PNG is
// committed, so CI does not run this.
import path from 'node:path';
import { launchBrowser, REPO, rest, startGateway, STEP_MS } from './harness.js';

const out = process.argv[2] ?? path.join(REPO, 'docs/demo.png');
const gateway = await startGateway();
const browser = await launchBrowser();
try {
  const api = `${gateway.base}/api/Todos`;
  await rest('POST', api, { title: 'Ship the gateway', owner: 'ada', done: true });
  await rest('POST', api, { title: 'Write the browser client', owner: 'grace', done: true });
  await rest('POST', api, { title: 'Try it on two pods', owner: 'linus', done: false });

  const page = await browser.newPage({ viewport: { width: 1400, height: 874 } });
  const frame = (n, where) => {
    const query = `collection=Todos&where=${encodeURIComponent(JSON.stringify(where))}`;
    return `<figure><figcaption>window ${n} &middot; /demo?collection=Todos&amp;where=${JSON.stringify(where).replaceAll('"', '&quot;')}</figcaption>
    <iframe name="w${n}" src="/demo?${query}"></iframe></figure>`;
  };
  await page.route(`${gateway.base}/two-windows.html`, (route) => route.fulfill({
    contentType: 'text/html; charset=utf-8',
    body: `<!doctype html><style>
      body { margin: 0; padding: 10px; display: flex; flex-direction: column; gap: 10px; background: #cfd5de; font: 12px system-ui, sans-serif; }
      figure { margin: 0; flex: 1; border-radius: 8px; overflow: hidden; box-shadow: 0 2px 8px #0003; background: #fff; }
      figcaption { padding: 5px 10px; background: #e8ebf0; color: #444; border-bottom: 1px solid #d0d5dd; }
      iframe { border: 0; width: 100%; height: 398px; display: block; }
    </style>${frame(1, { done: true })}${frame(2, { done: false })}`,
  }));
  await page.goto(`${gateway.base}/two-windows.html`);
  const [left, right] = [page.frame('w1'), page.frame('w2')];
  for (const f of [left, right]) {
    await f.waitForFunction(() => window.liveSet?.ready.then(() => true), null, { timeout: STEP_MS });
    await f.waitForFunction(() => window.filteredSet?.ready.then(() => true), null, { timeout: STEP_MS });
  }

  // Window 1 creates a record and starts editing another; window 2 shows the new one, and
  // drops 3 from its filtered table when it is done.
  await left.fill('#record', JSON.stringify({ title: 'Watch both windows', owner: 'you', done: false }));
  await left.click('#submit');
  await right.waitForSelector("#rows tr[data-id='4']", { timeout: STEP_MS });
  await rest('PATCH', `${api}/3`, { done: true });
  await right.waitForFunction(() => window.liveSet.get(3).done === true && !window.filteredSet.get(3), null, { timeout: STEP_MS });
  await left.locator("#rows tr[data-id='2'] button.edit").click();
  await page.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await gateway.stop();
}
