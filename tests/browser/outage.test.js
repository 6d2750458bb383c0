// A plain EventSource (LoopBack's documented snippet, no reconnect code) behind a real
// reverse proxy (nginx, as an ingress) in front of two gateway pods: Redis goes down for
// 10 s and both pods restart meanwhile (a node drain, a deploy). EventSource closes for
// good on any non-200 answer; the pods answer the streams they cannot serve with 200 and
// `retry:`, so the page reconnects by itself and, once Redis is back, sees the next change.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  cleanup, freePort, launchBrowser, LOOPBACK_SNIPPET, rest, startGateway, startNginx,
  startPublisher, startRedis, STEP_MS, within,
} from './harness.js';

/** Polls `check` (each call bounded) until it returns a value other than undefined. */
async function until(what, check, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await within(what, check()).catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50)); // poll interval, not a wait
  }
}

/** `gateway_streams_turned_away_total{reason="redis"}` on a pod (0 when none yet). */
async function turnedAway(pod) {
  const text = await (await fetch(`${pod.base}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
  const line = text.split('\n').find((l) => l.startsWith('gateway_streams_turned_away_total{reason="redis"}'));
  return line ? Number(line.split(' ').pop()) : 0;
}

async function readyStatus(pod) {
  const response = await fetch(`${pod.base}/readyz`, { signal: AbortSignal.timeout(2000) });
  return (await response.json()).status;
}

test('a plain EventSource behind nginx outlives a 10 s Redis outage in which both pods restart', async (t) => {
  const defer = cleanup(t);
  const redis = await startRedis({ appendonly: true });
  defer(() => redis.stop());
  const publisher = await startPublisher({ redisUrl: redis.url });
  defer(() => publisher.stop());

  // Two pods on fixed ports (nginx's upstream names them), each knowing the other.
  const ports = [await freePort(), await freePort()];
  const peers = ports.map((p) => `127.0.0.1:${p}`).join(',');
  const startPod = (port) => startGateway({
    redisUrl: redis.url,
    env: { GATEWAY_LISTEN: `127.0.0.1:${port}`, GATEWAY_PEERS: peers },
  });
  const pods = [await startPod(ports[0]), await startPod(ports[1])];
  defer(() => Promise.all(pods.map((pod) => pod.stop())));

  // As an ingress would: change streams to the gateways (unbuffered, long reads, the next
  // pod when one refuses the connection), the rest of /api to the publisher.
  const nginx = await startNginx((port) => `
  upstream gateways {
    server 127.0.0.1:${ports[0]} max_fails=0;
    server 127.0.0.1:${ports[1]} max_fails=0;
  }
  server {
    listen 127.0.0.1:${port};
    location ~ ^/api/[^/]+/change-stream {
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 1h;
      proxy_next_upstream error timeout;
    }
    location /api/ {
      proxy_pass http://${publisher.addr};
    }
  }`, {
    'snippet.html': `<!doctype html><title>snippet</title><script>\n${LOOPBACK_SNIPPET}\n</script>`,
  });
  defer(() => nginx.stop());

  const browser = await launchBrowser();
  defer(() => browser.close());
  const page = await browser.newPage();
  const logged = [];
  page.on('console', async (message) => {
    if (message.type() === 'log') logged.push(await message.args()[0].jsonValue());
  });
  const logsOf = (n) => logged.filter((change) => change.data?.n === n).length;

  const opened = Promise.any(pods.map((pod) => pod.waitForLog('stream opened', (f) => f.topics === 'MyModels')));
  await page.goto(`${nginx.base}/snippet.html`);
  await opened;
  await rest('POST', `${nginx.base}/api/MyModels`, { n: 1 });
  await until('the first change in the page', async () => (logsOf(1) === 1 ? true : undefined));

  // Redis down; both pods restart one after the other while it is.
  const down = Date.now();
  await redis.kill();
  for (const i of [0, 1]) {
    await pods[i].kill();
    pods[i] = await startPod(ports[i]);
  }
  // The outage lasts 10 s, and the page's reconnects reach the new pods meanwhile, which
  // tell them to retry (a 503 here would close the EventSource for good).
  await until('10 s of outage with the page turned away by the new pods', async () => {
    const count = (await turnedAway(pods[0])) + (await turnedAway(pods[1]));
    return count >= 3 && Date.now() - down >= 10_000 ? count : undefined;
  }, 60_000);
  assert.deepEqual(await Promise.all(pods.map(readyStatus)), ['degraded', 'degraded'],
    'a fleet-wide outage keeps both pods in the Service');
  assert.notEqual(await page.evaluate(() => window.src.readyState), 2, 'the EventSource is not closed');

  await redis.start();
  await until('both pods ready', async () => {
    const statuses = await Promise.all(pods.map(readyStatus));
    return statuses.every((s) => s === 'ready') ? true : undefined;
  });
  await until('the publisher writes again', async () => {
    await rest('POST', `${nginx.base}/api/MyModels`, { n: 2 });
    return true;
  });
  // No reconnect code in the page: the browser's own EventSource came back, resumed with
  // Last-Event-ID and gets the new change, once.
  await until('the change after the outage in the page', async () => (logsOf(2) === 1 ? true : undefined), 30_000);
  assert.equal(logsOf(1), 1, 'nothing twice');
  assert.equal(await page.evaluate(() => window.src.readyState), 1, 'open');
});
