// The bounded queue: with the publisher out of reach, the app's writes go on at full
// speed; what does not fit in `maxQueue` is dropped and counted, `flush()` gives up at its
// timeout saying how much is still queued, and once the publisher is there the rest goes
// out in order.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { test } from 'node:test';
import {
  cleanup, freePort, loopbackChanges, memoryLogger, openEventStream, startApp, startFleet,
} from './harness.js';

test('a full queue drops and counts; flush() reports what is left; the rest arrives in order', async (t) => {
  const defer = cleanup(t);
  const fleet = await startFleet({ gateways: 1 });
  defer(() => fleet.stop());
  // The mixin talks to a port nobody listens on yet (connection refused), later to a
  // proxy to the publisher on that port.
  const port = await freePort();

  const MAX_QUEUE = 5;
  const logger = memoryLogger();
  const app = await startApp({
    Beep: {
      forceId: false,
      properties: { i: 'number' },
      mixins: {
        ChangeStreamPublisher: {
          publisher: `http://127.0.0.1:${port}`, logger, maxQueue: MAX_QUEUE, retryBase: 20, retryCap: 100,
        },
      },
    },
  });
  defer(() => app.stop());
  const { Beep } = app.models;
  const lb = await loopbackChanges(Beep);
  const stream = await openEventStream(`${fleet.gateways[0].base}/api/Beeps/change-stream?_format=event-stream`);
  defer(() => stream.close());

  const started = Date.now();
  for (let i = 0; i < 12; i += 1) await Beep.create({ i });
  assert.ok(Date.now() - started < 2000, 'the writes did not wait for the publisher');
  const stats = Beep.changeStreamPublisher.stats();
  assert.equal(stats.dropped, 12 - MAX_QUEUE);
  assert.equal(stats.queued, MAX_QUEUE);
  assert.match(logger.lines.join('\n'), /queue full \(maxQueue 5\): 1 change\(s\) dropped, 1 in all/);
  assert.deepEqual(await Beep.changeStreamPublisher.flush(300), { drained: false, pending: MAX_QUEUE });

  // The publisher appears on that port: the queued changes go out, oldest first.
  const upstream = Number(new URL(fleet.publisher.base).port);
  const sockets = new Set();
  const proxy = net.createServer((client) => {
    const to = net.connect(upstream, '127.0.0.1');
    sockets.add(client).add(to);
    client.pipe(to).pipe(client);
    client.on('error', () => to.destroy());
    to.on('error', () => client.destroy());
  });
  proxy.listen(port, '127.0.0.1');
  await once(proxy, 'listening');
  defer(() => { for (const s of sockets) s.destroy(); proxy.close(); });
  assert.deepEqual(await Beep.changeStreamPublisher.flush(10_000), { drained: true, pending: 0 });
  assert.deepEqual(await stream.take(MAX_QUEUE, 'the queued changes'), lb.seen.slice(0, MAX_QUEUE));
  const after = Beep.changeStreamPublisher.stats();
  assert.equal(after.published, MAX_QUEUE);
  assert.ok(after.retried > 0);
  assert.equal(after.failed, 0);
  t.diagnostic(`queue: 12 writes, ${after.dropped} dropped at maxQueue ${MAX_QUEUE}, ${after.published} published after ${after.retried} retries`);
});
