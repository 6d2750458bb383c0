// The five-minute migration as the package README writes it: a LoopBack 3 app laid out as
// the generator lays it out (boot-app/: server/model-config.json, datasources.json,
// common/models/note.json), booted by loopback-boot, finds the mixin through
// `_meta.mixins: ["@changestream/loopback3/mixins"]` and takes the publisher's URL and
// token from CHANGESTREAM_PUBLISHER_URL / CHANGESTREAM_PUBLISHER_TOKEN. Auth is on (HS256,
// DESIGN.md's claims): the app's token may publish `Notes`, the browser's may subscribe.
// A model whose token may not publish its topic gets a 403: counted as failed, not
// retried, and the app's write still succeeds.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import loopback from 'loopback';
import {
  cleanup, jwt, loopbackChanges, memoryLogger, mixin, openEventStream, request, startFleet, within,
} from './harness.js';

const boot = createRequire(import.meta.url)('loopback-boot');
/** What `boot(app, __dirname)` gets in a generated app's server/server.js. */
const APP = path.join(path.dirname(fileURLToPath(import.meta.url)), 'boot-app', 'server');
const SECRET = 'loopback3-mixin-test-secret-at-least-32-bytes';

test('model-config.json + loopback-boot, with auth: the change reaches the browser', async (t) => {
  const defer = cleanup(t);
  const fleet = await startFleet({
    gateways: 1,
    gatewayEnv: { GATEWAY_JWT_SECRET: SECRET },
    publisherEnv: { PUBLISHER_JWT_SECRET: SECRET },
  });
  defer(() => fleet.stop());
  const exp = Math.floor(Date.now() / 1000) + 600;
  const appToken = jwt(SECRET, { sub: 'lb3-app', exp, topics: { publish: ['Notes'], subscribe: [] } });
  const browserToken = jwt(SECRET, { sub: 'user-42', exp, topics: { subscribe: ['Notes'], publish: [] } });
  process.env.CHANGESTREAM_PUBLISHER_URL = fleet.publisher.base;
  process.env.CHANGESTREAM_PUBLISHER_TOKEN = appToken;

  const app = loopback();
  app.set('remoting', { errorHandler: { log: false } });
  await within('loopback-boot', new Promise((resolve, reject) => boot(app, APP, (error) => (error ? reject(error) : resolve()))));
  delete process.env.CHANGESTREAM_PUBLISHER_URL;
  delete process.env.CHANGESTREAM_PUBLISHER_TOKEN;
  const { Note } = app.models;
  assert.equal(Note.changeStreamPublisher.topic, 'Notes', 'the mixin was applied by loopback-boot');

  // A model the app's token may not publish: its changes are refused with a 403.
  const logger = memoryLogger();
  const Denied = app.registry.createModel({
    name: 'Denied',
    base: 'PersistedModel',
    properties: { title: 'string' },
    mixins: { ChangeStreamPublisher: { publisher: fleet.publisher.base, token: appToken, logger } },
  });
  app.model(Denied, { dataSource: 'db', public: true });
  app.use('/api', loopback.rest());
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  defer(() => { server.closeAllConnections(); server.close(); });
  const base = `http://127.0.0.1:${server.address().port}/api`;

  const url = `${fleet.gateways[0].base}/api/Notes/change-stream?_format=event-stream`;
  assert.equal((await request('GET', url)).status, 401, 'the gateway wants a token');
  const stream = await openEventStream(`${url}&access_token=${browserToken}`);
  defer(() => stream.close());
  const lb = await loopbackChanges(Note);

  const created = await request('POST', `${base}/Notes`, { title: 'migrate' });
  assert.equal(created.status, 200);
  const patched = await request('PATCH', `${base}/Notes/${created.body.id}`, { done: true });
  assert.equal(patched.status, 200);
  const removed = await request('DELETE', `${base}/Notes/${created.body.id}`);
  assert.equal(removed.status, 200);
  assert.deepEqual(await stream.take(3, 'the Notes changes'), lb.drain());
  assert.deepEqual(await Note.changeStreamPublisher.flush(5000), { drained: true, pending: 0 });
  const noteStats = Note.changeStreamPublisher.stats();
  assert.deepEqual({ ...noteStats, queued: undefined }, { published: 3, replayed: 0, retried: 0, dropped: 0, failed: 0, queued: undefined });

  const denied = await request('POST', `${base}/Denieds`, { title: 'x' });
  assert.equal(denied.status, 200, 'the write succeeded although its publish is refused');
  assert.deepEqual(await Denied.changeStreamPublisher.flush(5000), { drained: true, pending: 0 });
  const deniedStats = Denied.changeStreamPublisher.stats();
  assert.equal(deniedStats.failed, 1);
  assert.equal(deniedStats.retried, 0, 'a 403 is not retried');
  assert.match(logger.lines.join('\n'), /Denieds: 1 change\(s\) not published: 403 .*\(not retried\)/);
  const total = mixin.stats();
  assert.equal(total.published, 3);
  assert.equal(total.failed, 1);
});
