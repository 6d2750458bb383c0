// The mixin inside a real LoopBack 3 app (memory connector), publishing to a real fleet
// (Redis, the publisher, two gateway pods): for every write, through the app's own REST API
// and through model methods, the `data:` lines a gateway's change stream sends equal, byte
// for byte, the `JSON.stringify` of what the same app's own `createChangeStream` emitted
// for it. Except, on purpose (clients/loopback3/README.md, "Bulk operations"):
// - `updateAll` publishes one `update` per record it matched, the whole record after the
//   write, in find order; LoopBack emits one change for the call (the where and the patch,
//   `type` create unless the where names an id);
// - `destroyAll` whose where names no single id publishes one `remove` per record it
//   matched, in deleteById's shape; LoopBack emits `{"where":...,"type":"remove"}`.
// Each case checks what LoopBack emitted too, so a change in LoopBack's behaviour shows.
//
// Also: a filtered stream (`options={"where":...}`) sees records leave thanks to `last`.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  loopbackChanges, memoryLogger, mixin, openEventStream, request, startApp, startFleet,
} from './harness.js';

const q = (value) => encodeURIComponent(JSON.stringify(value));
/** Lets LoopBack's change stream (a PassThrough) hand over what its hooks wrote. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

describe('the mixin publishes what LoopBack 3 emits', () => {
  let fleet;
  let app;
  let logger;
  before(async () => {
    fleet = await startFleet({ gateways: 2 });
    logger = memoryLogger();
    const publisherOptions = { publisher: fleet.publisher.base, logger, retryCap: 500 };
    app = await startApp({
      Item: {
        forceId: false,
        properties: { name: 'string', n: 'number', tag: 'string', at: 'date', meta: 'object' },
        mixins: { ChangeStreamPublisher: publisherOptions },
      },
      // Based on Item: inherits the mixin (with its own topic) and Item's hooks.
      SpecialItem: { base: 'Item', properties: { level: 'number' } },
      Task: {
        forceId: false,
        properties: { title: 'string', status: 'string' },
        mixins: { ChangeStreamPublisher: publisherOptions },
      },
    });
  });
  after(async () => {
    await app?.stop();
    await fleet?.stop();
  });

  test('every write, REST and model methods, byte for byte', async (t) => {
    const { Item } = app.models;
    assert.equal(Item.changeStreamPublisher.topic, 'Items');
    const rest = (method, path, body) => request(method, `${app.base}/api/Items${path}`, body);
    const ok = async (promise) => {
      const answer = await promise;
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      return answer.body;
    };
    const lb = await loopbackChanges(Item);
    const pods = await Promise.all(fleet.gateways.map((gw) =>
      openEventStream(`${gw.base}/api/Items/change-stream?_format=event-stream`)));

    // [case, write, override]: `override(emitted, before)` gives what the gateway must send
    // when it is not LoopBack's change; `before()` runs ahead of the write.
    const matching = (where) => async () => (await Item.find({ where })).map((r) => r.id);
    const bulkUpdate = (where, loopbackEmitted) => ({
      before: matching(where),
      async expect(emitted, ids) {
        assert.deepEqual(emitted, [loopbackEmitted], 'LoopBack emits one change for the call');
        const records = await Promise.all(ids.map((id) => Item.findById(id)));
        return records.map((data) => JSON.stringify({ target: data.id, data, type: 'update' }));
      },
    });
    const bulkRemove = (where, loopbackEmitted) => ({
      before: matching(where),
      async expect(emitted, ids) {
        assert.deepEqual(emitted, [loopbackEmitted], 'LoopBack emits one change for the call');
        return ids.map((id) => JSON.stringify({ target: id, where: { id }, type: 'remove' }));
      },
    });
    const cases = [
      ['REST create', () => ok(rest('POST', '', { name: 'a', n: 1, tag: 'x', extra: { deep: [1, 'two'] } }))],
      ['REST create with an id', () => ok(rest('POST', '', { id: 50, name: 'b', n: 2, tag: 'x' }))],
      ['REST create: strings, numbers, a date', () => ok(rest('POST', '', {
        name: 'quote " backslash \\ newline \n tab \t bell \u0007 ü € 😀 \u2028', n: -1.5, tag: 'x', at: '2024-02-29T12:34:56.789Z', meta: { z: null, a: true },
      }))],
      ['REST create array', () => ok(rest('POST', '', [{ name: 'c', n: 3, tag: 'y' }, { name: 'd', n: 4, tag: 'x' }]))],
      ['REST patchAttributes', () => ok(rest('PATCH', '/1', { tag: 'y' }))],
      ['REST patchAttributes, a new property', () => ok(rest('PATCH', '/1', { added: 1 }))],
      ['REST replaceById (PUT)', () => ok(rest('PUT', '/1', { name: 'R', n: 10, tag: 'x' }))],
      ['REST replaceById (POST /replace)', () => ok(rest('POST', '/1/replace', { name: 'R2', n: 11, tag: 'x' }))],
      ['REST upsert, existing', () => ok(rest('PATCH', '', { id: 1, n: 12 }))],
      ['REST upsert, new', () => ok(rest('PATCH', '', { id: 60, name: 'u60', tag: 'y' }))],
      ['REST upsert, without id', () => ok(rest('PATCH', '', { name: 'noid' }))],
      ['REST replaceOrCreate (PUT), existing', () => ok(rest('PUT', '', { id: 1, name: 'RC', n: 13, tag: 'x' }))],
      ['REST replaceOrCreate (PUT), new', () => ok(rest('PUT', '', { id: 70, name: 'RC70', tag: 'y' }))],
      ['REST replaceOrCreate (POST), existing', () => ok(rest('POST', '/replaceOrCreate', { id: 70, name: 'RC70b', tag: 'y' }))],
      ['REST upsertWithWhere, one match', () => ok(rest('POST', `/upsertWithWhere?where=${q({ name: 'RC70b' })}`, { n: 7 }))],
      ['REST upsertWithWhere, no match', () => ok(rest('POST', `/upsertWithWhere?where=${q({ name: 'uww' })}`, { name: 'uww', n: 8, tag: 'x' }))],
      ['REST updateAll', () => ok(rest('POST', `/update?where=${q({ tag: 'x' })}`, { n: 0 })),
        bulkUpdate({ tag: 'x' }, '{"where":{"tag":"x"},"data":{"n":0},"type":"create"}')],
      ['REST updateAll, no match', () => ok(rest('POST', `/update?where=${q({ tag: 'none' })}`, { n: 0 })),
        bulkUpdate({ tag: 'none' }, '{"where":{"tag":"none"},"data":{"n":0},"type":"create"}')],
      ['REST deleteById', () => ok(rest('DELETE', '/50'))],
      ['REST deleteById, missing (LoopBack emits a remove)', () => ok(rest('DELETE', '/999'))],
      ['REST failed write (duplicate id): nothing', async () => assert.equal((await rest('POST', '', { id: 1 })).status, 409)],

      ['create', () => Item.create({ name: 'm', n: 20, tag: 'x' })],
      ['create array', () => Item.create([{ name: 'm2', tag: 'y' }, { name: 'm3', tag: 'x' }])],
      ['save, existing', async () => { const r = await Item.findById(1); r.n = 21; await r.save(); }],
      ['save, new instance', () => new Item({ name: 'fresh', tag: 'y' }).save()],
      ['patchAttributes', async () => (await Item.findById(1)).patchAttributes({ tag: 'z' })],
      ['updateAttribute', async () => (await Item.findById(1)).updateAttribute('n', 22)],
      ['updateAttributes', async () => (await Item.findById(1)).updateAttributes({ n: 23, tag: 'x' })],
      ['replaceAttributes', async () => (await Item.findById(1)).replaceAttributes({ name: 'RA', n: 24, tag: 'x' })],
      ['replaceById', () => Item.replaceById(1, { name: 'RB', n: 25, tag: 'x' })],
      ['upsert, existing', () => Item.upsert({ id: 1, n: 26 })],
      ['upsert, new', () => Item.upsert({ id: 80, name: 'u80', tag: 'y' })],
      ['replaceOrCreate, existing', () => Item.replaceOrCreate({ id: 80, name: 'u80b', tag: 'y' })],
      ['replaceOrCreate, new', () => Item.replaceOrCreate({ id: 90, name: 'u90', tag: 'x' })],
      ['upsertWithWhere, one match', () => Item.upsertWithWhere({ name: 'u90' }, { n: 9 })],
      ['upsertWithWhere, no match', () => Item.upsertWithWhere({ name: 'uww2' }, { name: 'uww2', tag: 'y' })],
      ['findOrCreate, created', () => Item.findOrCreate({ where: { name: 'foc' } }, { name: 'foc', tag: 'y' })],
      ['findOrCreate, found: nothing', () => Item.findOrCreate({ where: { name: 'foc' } }, { name: 'foc' })],
      ['updateAll', () => Item.updateAll({ tag: 'y' }, { n: 5 }),
        bulkUpdate({ tag: 'y' }, '{"where":{"tag":"y"},"data":{"n":5},"type":"create"}')],
      ['updateAll, where by id', () => Item.updateAll({ id: 1 }, { n: 6 }),
        bulkUpdate({ id: 1 }, '{"target":1,"where":{"id":1},"data":{"n":6},"type":"update"}')],
      ['updateAll, where id inq', () => Item.updateAll({ id: { inq: [1, 80] } }, { n: 7 }),
        bulkUpdate({ id: { inq: [1, 80] } }, '{"target":{"inq":[1,80]},"where":{"id":{"inq":[1,80]}},"data":{"n":7},"type":"update"}')],
      ['destroy (instance)', async () => (await Item.findById(60)).destroy()],
      ['deleteById', () => Item.deleteById(70)],
      ['destroyById', () => Item.destroyById(80)],
      ['destroyAll, where by one id (LoopBack\'s change)', () => Item.destroyAll({ id: 90 })],
      ['destroyAll', () => Item.destroyAll({ tag: 'x' }),
        bulkRemove({ tag: 'x' }, '{"where":{"tag":"x"},"type":"remove"}')],
      ['destroyAll, no match', () => Item.destroyAll({ tag: 'none' }),
        bulkRemove({ tag: 'none' }, '{"where":{"tag":"none"},"type":"remove"}')],
      ['destroyAll, everything', () => Item.destroyAll(),
        bulkRemove({}, '{"where":{},"type":"remove"}')],
      ['create after all that', () => Item.create({ name: 'last', tag: 'x' })],
    ];

    const everything = [];
    let identical = 0;
    for (const [name, write, bulk] of cases) {
      const ahead = bulk ? await bulk.before() : undefined;
      await write();
      await settle();
      const emitted = lb.drain();
      const want = bulk ? await bulk.expect(emitted, ahead) : emitted;
      if (!bulk) identical += want.length;
      const got = await pods[0].take(want.length, `${name}: the gateway's change stream`);
      assert.deepEqual(got, want, `${name}: the gateway sent other bytes than ${bulk ? 'the documented per-record changes' : 'LoopBack emitted'}`);
      everything.push(...want);
      // SHOW_CHANGES=1 prints what each case published, for reading along.
      if (process.env.SHOW_CHANGES) console.log(`## ${name}\n${got.join("\n")}`);
    }
    // Nothing else went out: the next event is the marker's.
    const marker = await Item.create({ name: 'marker' });
    await settle();
    const [markerChange] = lb.drain();
    assert.equal(markerChange, JSON.stringify({ target: marker.id, data: marker, type: 'create' }));
    assert.deepEqual(await pods[0].take(1, 'the marker'), [markerChange]);
    everything.push(markerChange);
    // The other pod of the fleet saw the very same sequence.
    assert.deepEqual(await pods[1].take(everything.length, 'the second gateway'), everything);

    assert.deepEqual(await Item.changeStreamPublisher.flush(5000), { drained: true, pending: 0 });
    const stats = Item.changeStreamPublisher.stats();
    assert.equal(stats.failed, 0, logger.lines.join('\n'));
    assert.equal(stats.dropped, 0);
    t.diagnostic(`${cases.length + 1} writes, ${everything.length} changes at both gateways, ${identical + 1} of them LoopBack's own change (the rest per-record changes of bulk operations); stats ${JSON.stringify(stats)}`);
    for (const pod of pods) pod.close();
    lb.close();
  });

  test('a filtered stream sees records move out and get deleted, thanks to `last`', async () => {
    const { Task } = app.models;
    const open = await openEventStream(
      `${fleet.gateways[1].base}/api/Tasks/change-stream?_format=event-stream&options=${q({ where: { status: 'open' } })}`);
    const all = await openEventStream(`${fleet.gateways[0].base}/api/Tasks/change-stream?_format=event-stream`);
    const removal = (id) => JSON.stringify({ target: id, where: { id }, type: 'remove' });

    const a = await Task.create({ title: 'a', status: 'open' });
    const b = await Task.create({ title: 'b', status: 'open' });
    const c = await Task.create({ title: 'c', status: 'done' });
    const d = await Task.create({ title: 'd', status: 'open' });
    const e = await Task.create({ title: 'e', status: 'open' });
    assert.deepEqual(await open.take(4, 'the open creates'), [a, b, d, e].map((t) =>
      JSON.stringify({ target: t.id, data: t, type: 'create' })));

    await a.patchAttributes({ status: 'done' }); // move-out: last (from currentInstance) matched
    assert.deepEqual(await open.take(1, 'a moves out (patchAttributes)'), [removal(a.id)]);
    await Task.replaceById(b.id, { title: 'b', status: 'done' }); // last from a lookup by id
    assert.deepEqual(await open.take(1, 'b moves out (replaceById)'), [removal(b.id)]);
    await Task.upsertWithWhere({ title: 'c' }, { status: 'open' }); // move-in
    const cNow = await Task.findById(c.id);
    assert.deepEqual(await open.take(1, 'c moves in'), [JSON.stringify({ target: c.id, data: cNow, type: 'update' })]);
    await Task.updateAll({ id: { inq: [c.id, d.id] } }, { status: 'done' }); // bulk move-out
    assert.deepEqual(await open.take(2, 'c and d move out (updateAll)'), [removal(c.id), removal(d.id)]);
    await Task.deleteById(e.id); // a remove that the filter lets through because its last matched
    assert.deepEqual(await open.take(1, 'e deleted'), [removal(e.id)]);
    const f = await Task.create({ title: 'f', status: 'open' });
    assert.deepEqual(await open.take(1, 'then f'), [JSON.stringify({ target: f.id, data: f, type: 'create' })]);
    assert.equal((await all.take(12, 'the unfiltered stream')).length, 12);
    open.close();
    all.close();
    assert.equal(mixin.stats().failed, 0, logger.lines.join('\n'));
  });

  test('a model based on a model with the mixin publishes once, to its own topic', async () => {
    const { Item, SpecialItem } = app.models;
    assert.equal(SpecialItem.changeStreamPublisher.topic, 'SpecialItems');
    const specials = await openEventStream(`${fleet.gateways[0].base}/api/SpecialItems/change-stream?_format=event-stream`);
    const items = await openEventStream(`${fleet.gateways[0].base}/api/Items/change-stream?_format=event-stream`);
    const lb = await loopbackChanges(SpecialItem);
    const special = await SpecialItem.create({ name: 's', level: 3 });
    await special.patchAttributes({ level: 4 });
    const item = await Item.create({ name: 'plain' });
    await settle();
    assert.deepEqual(await specials.take(2, 'the SpecialItems changes'), lb.drain());
    assert.deepEqual(await items.take(1, 'the Items change'), [JSON.stringify({ target: item.id, data: item, type: 'create' })]);
    // Nothing else on either: the next events are markers'.
    const marks = [await SpecialItem.create({ name: 'mark' }), await Item.create({ name: 'mark' })];
    assert.deepEqual(await specials.take(1, 'the SpecialItems marker'), [JSON.stringify({ target: marks[0].id, data: marks[0], type: 'create' })]);
    assert.deepEqual(await items.take(1, 'the Items marker'), [JSON.stringify({ target: marks[1].id, data: marks[1], type: 'create' })]);
    specials.close();
    items.close();
  });
});
