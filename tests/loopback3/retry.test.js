// Exactly once through faults: the app writes through its own REST API while the
// publisher is SIGKILLed and started again on the same port, or while answers are lost
// after the publisher wrote (a TCP proxy that cuts the connection instead of passing the
// answer back). Every change reaches the gateway once, in the order LoopBack's own change
// stream emitted them, and no write of the app fails. The figures (changes, retries,
// replays, duplicates, time) are printed as `#` lines.

import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import net from 'node:net';
import { test } from 'node:test';
import {
  cleanup, loopbackChanges, memoryLogger, openEventStream, request, startApp, startFleet, within,
} from './harness.js';

const WRITES = 200;
/** Short backoff keeps the test quick; the defaults are 100 ms doubling to 5 s. */
const FAST_RETRIES = { retryBase: 50, retryCap: 400, timeout: 3000 };

/**
 * Writes WRITES times through the app's REST API: a create, then a patch of the record
 * just created, and so on. Emits `written` with the count after each write.
 */
async function writeLoop(base, progress) {
  let failed = 0;
  let id;
  for (let i = 0; i < WRITES; i += 1) {
    const answer = i % 2 === 0
      ? await request('POST', `${base}/api/Ticks`, { i, phase: 'created' })
      : await request('PATCH', `${base}/api/Ticks/${id}`, { i, phase: 'updated' });
    if (answer.status !== 200) failed += 1;
    else if (i % 2 === 0) id = answer.body.id;
    progress.emit('written', i + 1);
  }
  return failed;
}

/**
 * The app with its `Tick` model publishing to `publisher` (the fleet's, or a proxy in front
 * of it), LoopBack's own change stream of it, and a gateway's; all stopped by `defer`.
 */
async function tickApp(defer, fleet, publisher) {
  const logger = memoryLogger();
  const app = await startApp({
    Tick: {
      forceId: false,
      properties: { i: 'number', phase: 'string' },
      mixins: { ChangeStreamPublisher: { publisher, logger, ...FAST_RETRIES } },
    },
  });
  defer(() => app.stop());
  const { Tick } = app.models;
  const lb = await loopbackChanges(Tick);
  const stream = await openEventStream(`${fleet.gateways[0].base}/api/Ticks/change-stream?_format=event-stream`);
  defer(() => stream.close());
  return { app, Tick, lb, stream, logger };
}

/** Resolves once `progress` reports at least `n` writes (and `also()` holds then). */
function written(progress, n, also = () => true) {
  return within(`${n} writes`, new Promise((resolve) => {
    const on = (count) => {
      if (count >= n && (also() || count >= WRITES)) {
        progress.off('written', on);
        resolve();
      }
    };
    progress.on('written', on);
  }));
}

/** What the gateway sent equals what LoopBack emitted: once each, in order. */
async function checkDelivered(t, { stream, lb, Tick, publisher, started, label }) {
  const flushed = await Tick.changeStreamPublisher.flush(60_000);
  assert.deepEqual(flushed, { drained: true, pending: 0 }, 'the queue drained');
  const expected = [...lb.seen];
  assert.equal(expected.length, WRITES, 'LoopBack emitted one change per write');
  const got = await stream.take(expected.length, 'every change at the gateway', 30_000);
  const duplicates = got.length - new Set(got).size;
  // Nothing after them: the next event is a marker's.
  const marker = await Tick.create({ i: -1, phase: 'marker' });
  assert.deepEqual(await stream.take(1, 'the marker'), [JSON.stringify({ target: marker.id, data: marker, type: 'create' })]);
  assert.equal(duplicates, 0, 'no change twice');
  assert.deepEqual(got, expected, 'every change, in LoopBack\'s order, byte for byte');
  const stats = Tick.changeStreamPublisher.stats();
  t.diagnostic(`${label}: ${expected.length} changes, ${got.length} delivered, duplicates ${duplicates}, `
    + `retries ${stats.retried}, replayed answers ${stats.replayed} changes, failed ${stats.failed}, dropped ${stats.dropped}, `
    + `${Date.now() - started} ms`);
  assert.equal(stats.failed, 0, publisher.logger.lines.join('\n'));
  assert.equal(stats.dropped, 0);
  return stats;
}

test('the publisher SIGKILLed and restarted on its port while the app writes', async (t) => {
  const defer = cleanup(t);
  const fleet = await startFleet({ gateways: 1 });
  defer(() => fleet.stop());
  const { app, Tick, lb, stream, logger } = await tickApp(defer, fleet, fleet.publisher.base);

  const started = Date.now();
  const progress = new EventEmitter();
  let queuedAtKill;
  const outage = (async () => {
    // From the 60th write on, the first moment a change is queued or in flight.
    await written(progress, 60, () => Tick.changeStreamPublisher.stats().queued > 0);
    queuedAtKill = Tick.changeStreamPublisher.stats().queued;
    await fleet.publisher.kill();
    await written(progress, 120);
    await fleet.publisher.restart();
  })();
  const failedWrites = await writeLoop(app.base, progress);
  await outage;
  assert.equal(failedWrites, 0, 'no write of the app failed');
  const stats = await checkDelivered(t, { stream, lb, Tick, publisher: { logger }, started, label: 'kill/restart' });
  assert.ok(stats.retried > 0, 'the outage was seen (retries)');
  t.diagnostic(`kill/restart: ${queuedAtKill} change(s) queued or in flight at the SIGKILL`);
  assert.ok(logger.lines.some((l) => l.includes('retrying with the same key')), 'retries are logged');
});

test('answers lost after the publisher wrote: the retries are replays, nothing twice', async (t) => {
  const defer = cleanup(t);
  const fleet = await startFleet({ gateways: 1 });
  defer(() => fleet.stop());
  // A proxy in front of the publisher that, for every other answer until LOST are lost,
  // closes the connection when the answer arrives instead of passing it on: the write
  // happened, the mixin does not know.
  const LOST = 6;
  let lost = 0;
  let answers = 0;
  const upstreamPort = Number(new URL(fleet.publisher.base).port);
  const sockets = new Set();
  const proxy = net.createServer((client) => {
    const upstream = net.connect(upstreamPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    client.pipe(upstream);
    upstream.on('data', (chunk) => {
      answers += 1;
      if (lost < LOST && answers % 2 === 1) {
        lost += 1;
        client.destroy();
        upstream.destroy();
      } else {
        client.write(chunk);
      }
    });
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  });
  proxy.listen(0, '127.0.0.1');
  await once(proxy, 'listening');
  defer(async () => {
    for (const socket of sockets) socket.destroy();
    proxy.close();
  });

  const { app, Tick, lb, stream, logger } = await tickApp(defer, fleet, `http://127.0.0.1:${proxy.address().port}`);

  const started = Date.now();
  const failedWrites = await writeLoop(app.base, new EventEmitter());
  assert.equal(failedWrites, 0, 'no write of the app failed');
  const stats = await checkDelivered(t, { stream, lb, Tick, publisher: { logger }, started, label: 'lost answers' });
  assert.equal(lost, LOST, 'the proxy cut that many answers');
  assert.ok(stats.retried >= LOST, `each lost answer was retried (${stats.retried})`);
  assert.ok(stats.replayed > 0, 'the publisher answered retries of writes it had made as replays');
});
