// `lookups: false`: the mixin makes no reads of its own. Every change it publishes is then
// exactly LoopBack's (an updateAll or destroyAll naming one id included); `last` is only
// what the hooks give (`ctx.currentInstance`, `ctx.instance`); a bulk operation whose
// change names no record cannot be published: it is counted as failed and logged, and the
// app's write succeeds.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  cleanup, loopbackChanges, memoryLogger, openEventStream, startApp, startFleet,
} from './harness.js';

const q = (value) => encodeURIComponent(JSON.stringify(value));
const settle = () => new Promise((resolve) => setImmediate(resolve));

test('lookups off: LoopBack\'s own changes, last only from the hooks, unpublishable bulk changes counted', async (t) => {
  const defer = cleanup(t);
  const fleet = await startFleet({ gateways: 1 });
  defer(() => fleet.stop());
  const logger = memoryLogger();
  const app = await startApp({
    Light: {
      forceId: false,
      properties: { name: 'string', tag: 'string' },
      mixins: { ChangeStreamPublisher: { publisher: fleet.publisher.base, logger, lookups: false } },
    },
  });
  defer(() => app.stop());
  const { Light } = app.models;
  assert.match(logger.lines.join('\n'), /Light: lookups off/);
  const lb = await loopbackChanges(Light);
  const base = `${fleet.gateways[0].base}/api/Lights/change-stream?_format=event-stream`;
  const all = await openEventStream(base);
  const tagged = await openEventStream(`${base}&options=${q({ where: { tag: 'x' } })}`);
  defer(() => { all.close(); tagged.close(); });

  const a = await Light.create({ name: 'a', tag: 'x' });
  const b = await Light.create({ name: 'b', tag: 'x' });
  await a.patchAttributes({ tag: 'y' }); // last from ctx.currentInstance: moves out
  await Light.replaceById(b.id, { name: 'b', tag: 'y' }); // no last: cannot move out
  await Light.updateAll({ id: a.id }, { name: 'a2' }); // LoopBack's change, the patch as data
  await Light.deleteById(b.id); // LoopBack's change, no last: passes every filter
  const published = lb.drain();
  await settle();
  const failedBefore = Light.changeStreamPublisher.stats().failed;
  await Light.updateAll({ tag: 'y' }, { name: 'z' }); // names no record: not publishable
  await Light.destroyAll({ tag: 'y' }); // the same
  await settle();
  const unpublishable = lb.drain();
  assert.deepEqual(unpublishable, [
    '{"where":{"tag":"y"},"data":{"name":"z"},"type":"create"}',
    '{"where":{"tag":"y"},"type":"remove"}',
  ]);
  const marker = await Light.create({ name: 'marker', tag: 'x' });
  await settle();
  published.push(...lb.drain());

  assert.equal(published[4], `{"target":${a.id},"where":{"id":${a.id}},"data":{"name":"a2"},"type":"update"}`);
  assert.deepEqual(await all.take(published.length, 'every publishable change'), published);
  const removal = (id) => JSON.stringify({ target: id, where: { id }, type: 'remove' });
  const creates = [a, b].map((r) => JSON.stringify({ target: r.id, data: { name: r.name, tag: 'x', id: r.id }, type: 'create' }));
  assert.deepEqual(await tagged.take(5, 'the filtered stream'), [
    ...creates,
    removal(a.id), // moved out: the hook gave the previous state
    // b's replaceById is not sent: its new state does not match and no last says it did
    removal(b.id), // the delete without last passes the filter
    JSON.stringify({ target: marker.id, data: marker, type: 'create' }),
  ]);
  const stats = Light.changeStreamPublisher.stats();
  assert.equal(stats.failed - failedBefore, 2, 'the two bulk changes without a record are counted');
  assert.match(logger.lines.join('\n'), /updateAll without a single-record target cannot be published without lookups/);
  assert.match(logger.lines.join('\n'), /destroyAll without a single-record target cannot be published without lookups/);
});
