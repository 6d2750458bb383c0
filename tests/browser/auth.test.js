// live-set.js against a gateway with auth on: the token goes in the stream's query (and the
// load's Authorization header, without snapshots); when a short-lived token expires, the
// gateway ends the stream, the browser's reconnect with the old token is refused, and the
// set reopens with a fresh token from where it was. Once with the records in the stream's
// snapshot, once loaded by GET.
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { test } from 'node:test';
import { cleanup, launchBrowser, rest, startGateway, STEP_MS } from './harness.js';

const SECRET = 'browser-test-secret-of-enough-length-0123456789';

/** An HS256 JWT (what a login service would mint). */
function mint(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

const now = () => Math.floor(Date.now() / 1000);

async function authed(method, url, body) {
  const token = mint({ sub: 'backend', exp: now() + 60, topics: { subscribe: ['*'], publish: ['*'] } });
  const response = await fetch(url, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(STEP_MS),
  });
  assert.ok(response.ok, `${method} ${url}: ${response.status}`);
  return response.json();
}

for (const snapshot of [true, false]) {
  test(`with auth on, an expiring token is renewed and the set resumes where it was (snapshot: ${snapshot})`, async (t) => {
    const defer = cleanup(t);
    const gateway = await startGateway({ env: { GATEWAY_JWT_SECRET: SECRET, GATEWAY_JWT_LEEWAY: '0s' } });
    defer(() => gateway.stop());
    const browser = await launchBrowser();
    defer(() => browser.close());
    const api = `${gateway.base}/api/Secret`;
    await authed('POST', api, { n: 1 });
    // Without a token: refused.
    await assert.rejects(rest('GET', api), /401/);

    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (error) => errors.push(error));
    const streams = []; // [url, status] of each change-stream response
    page.on('response', (response) => {
      if (response.url().includes('/change-stream')) streams.push([new URL(response.url()), response.status()]);
    });

    // The page asks "its login service" (a route here) for tokens: the first ones (the
    // stream's, and the load's without snapshots) live 5-6 s (time enough to load and see
    // one change under load), later ones a minute. The reopen's token waits for the test's go.
    const first = snapshot ? 1 : 2;
    let minted = 0;
    let release;
    const gate = new Promise((resolve) => { release = resolve; });
    await page.route(`${gateway.base}/token`, async (route) => {
      minted += 1;
      if (minted === first + 1) await gate;
      const life = minted <= first ? 6 : 60;
      await route.fulfill({
        contentType: 'text/plain',
        body: mint({ sub: 'user-1', exp: now() + life, topics: { subscribe: ['Secret'], publish: [] } }),
      });
    });
    await page.route(`${gateway.base}/auth-test.html`, (route) => route.fulfill({
      contentType: 'text/html; charset=utf-8',
      body: `<!doctype html><title>auth</title><script type="module">
  import { liveSet } from '/client/live-set.js';
  window.set = liveSet('/api/Secret/change-stream?_format=event-stream', {
    token: () => fetch('/token').then((r) => r.text()),
    snapshot: ${snapshot},
    onError: (error) => console.warn(error.message),
  });
  </script>`,
    }));
    const expired = gateway.waitForLog('access token expired; ending the stream', () => true, STEP_MS);
    await page.goto(`${gateway.base}/auth-test.html`);
    await page.waitForFunction(() => window.set.ready.then(() => true), null, { timeout: STEP_MS });
    await authed('PATCH', `${api}/1`, { n: 2 });
    await page.waitForFunction(() => window.set.get(1)?.n === 2, null, { timeout: STEP_MS });
    const lastSeen = await page.evaluate(() => window.set.lastEventId);

    await expired; // the stream ended at the token's exp
    // While the set waits for its new token: changes it must not miss.
    await authed('POST', api, { n: 3 });
    await authed('DELETE', `${api}/1`);
    release();

    const expected = await authed('GET', api);
    await page.waitForFunction((want) => JSON.stringify(window.set.records) === want, JSON.stringify(expected), { timeout: STEP_MS });
    assert.deepEqual(expected, [{ n: 3, id: 2 }]);

    // The browser's own reconnect, with the expired token, was refused; the reopen carried
    // a new token and the resume position.
    assert.ok(streams.some(([, status]) => status === 401), `stream statuses: ${streams.map((s) => s[1])}`);
    const reopened = streams.find(([url, status]) => status === 200 && url.searchParams.has('last_event_id'));
    assert.ok(reopened, 'a reopened stream');
    assert.equal(reopened[0].searchParams.get('last_event_id'), lastSeen);
    assert.notEqual(reopened[0].searchParams.get('access_token'), streams[0][0].searchParams.get('access_token'));
    assert.equal(minted, first + 1, snapshot ? 'stream, reopen' : 'stream, load, reopen');
    assert.deepEqual(errors, []);
  });
}
