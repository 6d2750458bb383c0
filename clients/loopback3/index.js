'use strict';
// The LoopBack 3 mixin: every `after save` / `after delete` of the model it is added to is
// published to the change-stream fleet through the publisher's `POST /publish`, as the
// change object LoopBack's own `createChangeStream` emits for it, with the record's
// previous state as `last` where it can be had (so filtered views move records out).
//
//   "mixins": {"ChangeStreamPublisher": {"publisher": "http://publisher:8081", "token": "<jwt>"}}
//
// What is looked up, and when (README, "What is published"):
// - `before save` keeps the previous state: `ctx.currentInstance` where LoopBack gives it
//   (patchAttributes, and upsert on connectors without an atomic one), else one read by id
//   (save, replaceById, replaceOrCreate) or by the `where` (upsert, upsertWithWhere,
//   updateAll); a create has none.
// - `before delete` reads the records the `where` selects (or takes `ctx.instance`).
// - `after save` of an `updateAll` (no instance: LoopBack emits one change for the call)
//   reads the updated records back and publishes one `update` per record.
// - `after delete` publishes LoopBack's own change when it names one record (deleteById,
//   destroy), else one `remove` per record read in `before delete`.
// A failed lookup or publish never fails the app's write: it is logged and counted.

const { Publisher, DEFAULTS } = require('./lib/publisher');
const { loopbackChange, wireId, idKey, recordUpdate, recordRemove } = require('./lib/change');

/** The key of this mixin's state in `ctx.hookState` (one per operation). */
const STATE = Symbol.for('changestream.loopback3');
/**
 * Models the mixin was applied to. A model based on one of them inherits its mixin
 * settings (so the mixin is applied to it too, with its own topic), and LoopBack runs the
 * base model's hooks for its writes as well: only the hooks of the model written to
 * publish. (A model that turns the inherited mixin off, `"ChangeStreamPublisher": false`,
 * is not published.)
 */
const applied = new WeakSet();
/** Allowed topic names: the publisher's (proto/src/topic.rs). */
const TOPIC = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$/;

/**
 * Publishers by logger, then by publisher URL, token and settings: models configured
 * alike share one queue (and its counters) per process.
 */
const publishers = new Map();
/** Every publisher made in this process, for `stats()` and `flush()`. */
const all = new Set();

function publisherFor(settings) {
  if (typeof settings.token === 'function') {
    const publisher = new Publisher(settings);
    all.add(publisher);
    return publisher;
  }
  const key = JSON.stringify([settings.publisher, settings.token || '', ...Object.keys(DEFAULTS).map((k) => settings[k])]);
  let byKey = publishers.get(settings.logger);
  if (!byKey) {
    byKey = new Map();
    publishers.set(settings.logger, byKey);
  }
  let publisher = byKey.get(key);
  if (!publisher) {
    publisher = new Publisher(settings);
    byKey.set(key, publisher);
    all.add(publisher);
  }
  return publisher;
}

/** The topic of a model: its REST path without the slash (`/api/MyModels` -> `MyModels`). */
function topicOf(Model) {
  const path = (Model.http && Model.http.path) || `/${Model.pluralModelName}`;
  return String(path).replace(/^\/+/, '');
}

function changeStreamPublisher(Model, options) {
  const opts = options || {};
  const settings = {
    ...opts,
    publisher: opts.publisher || process.env.CHANGESTREAM_PUBLISHER_URL,
    token: opts.token || process.env.CHANGESTREAM_PUBLISHER_TOKEN,
    logger: opts.logger || console,
  };
  if (!settings.publisher) {
    throw new Error(`${Model.modelName}: the ChangeStreamPublisher mixin needs options.publisher (the publisher's base URL) or CHANGESTREAM_PUBLISHER_URL`);
  }
  const lookups = opts.lookups !== false;
  const log = settings.logger;
  const topic = opts.topic || topicOf(Model);
  if (!TOPIC.test(topic)) {
    throw new Error(`${Model.modelName}: "${topic}" is no topic name (letters, digits, _ - .); set options.topic`);
  }
  if (applied.has(Model)) {
    log.warn(`[changestream] ${Model.modelName}: the ChangeStreamPublisher mixin was applied twice; the second is ignored`);
    return;
  }
  applied.add(Model);
  const publisher = publisherFor(settings);

  const readOptions = (ctx) => ctx.options || {};
  const failed = (ctx, what, error) => {
    publisher.fail(topic, 1, `${what}: ${(error && error.message) || error}`);
  };

  /** The previous states read before a write, by id. */
  const remember = (ctx, records) => {
    const idName = ctx.Model.getIdName();
    const state = { previous: new Map(), ids: [] };
    for (const record of records) {
      if (!record) continue;
      const id = record[idName];
      state.ids.push(id);
      state.previous.set(idKey(id), typeof record.toJSON === 'function' ? record.toJSON() : { ...record });
    }
    ctx.hookState[STATE] = state;
  };

  /**
   * The observer of hook `name`: calls `next` once its handler (which may return a
   * promise) is done, whatever happened:
   * a failure of the mixin's own work is logged and counted, never passed to `next`, so
   * it never fails the app's write. `next` runs outside the promise chain, so an error
   * thrown further down the operation surfaces as it would from any hook callback.
   */
  const hook = (name) => (ctx, next) => {
    if (ctx.Model && ctx.Model !== Model) return next();
    let done;
    try {
      done = Promise.resolve(handlers[name](ctx));
    } catch (error) {
      done = Promise.reject(error);
    }
    done
      .catch((error) => failed(ctx, `${name}: the mixin failed`, error))
      .then(() => process.nextTick(next));
  };

  const handlers = {
    'before save'(ctx) {
      if (ctx.currentInstance) {
        remember(ctx, [ctx.currentInstance]);
        return undefined;
      }
      if (!lookups) return undefined;
      const idName = ctx.Model.getIdName();
      let read;
      if (ctx.instance) {
        const id = ctx.instance[idName];
        if (ctx.isNewInstance === true || id === undefined || id === null) return undefined;
        read = ctx.Model.findById(id, {}, readOptions(ctx)).then((found) => [found]);
      } else if (ctx.where) {
        // upsert (without currentInstance), upsertWithWhere, updateAll.
        read = ctx.Model.find({ where: ctx.where }, readOptions(ctx));
      } else {
        return undefined;
      }
      return read.then(
        (records) => remember(ctx, records),
        (error) => failed(ctx, 'reading the previous state failed', error),
      );
    },

    'after save'(ctx) {
      const idName = ctx.Model.getIdName();
      const state = ctx.hookState[STATE];
      if (ctx.instance) {
        const change = loopbackChange(ctx, 'save', idName);
        const last = change.type === 'update' && state ? state.previous.get(idKey(change.target)) : undefined;
        publisher.enqueue(topic, [{ change, last }]);
        return undefined;
      }
      // updateAll: LoopBack emits one change for the call (the where and the patch). One
      // `update` per record read before, in its state now, instead.
      if (state) {
        if (state.ids.length === 0) return undefined;
        const read = ctx.Model.find({ where: { [idName]: { inq: state.ids } } }, readOptions(ctx)).then((records) => {
          const now = new Map(records.map((record) => [idKey(record[idName]), record]));
          const items = [];
          for (const id of state.ids) {
            const record = now.get(idKey(id));
            if (record) items.push({ change: recordUpdate(wireId(id), record), last: state.previous.get(idKey(id)) });
          }
          return items;
        });
        // The slot in the topic's order is taken now; the write is answered once the
        // records are read, so a caller's next write cannot show in them. A failed read
        // is logged and counted by the publisher.
        publisher.enqueue(topic, read);
        return read.then(() => undefined, () => undefined);
      }
      const change = loopbackChange(ctx, 'save', idName);
      if (wireId(change.target) !== undefined) {
        publisher.enqueue(topic, [{ change }]);
      } else {
        failed(ctx, 'an updateAll without a single-record target cannot be published without lookups', JSON.stringify(change));
      }
      return undefined;
    },

    'before delete'(ctx) {
      if (ctx.instance) {
        remember(ctx, [ctx.instance]);
        return undefined;
      }
      if (!lookups || !ctx.where) return undefined;
      return ctx.Model.find({ where: ctx.where }, readOptions(ctx)).then(
        (records) => remember(ctx, records),
        (error) => failed(ctx, 'reading the records to delete failed', error),
      );
    },

    'after delete'(ctx) {
      const idName = ctx.Model.getIdName();
      const state = ctx.hookState[STATE];
      const change = loopbackChange(ctx, 'delete', idName);
      if (wireId(change.target) !== undefined) {
        // deleteById, destroy, destroyAll of one id: LoopBack's own change, even when
        // nothing was deleted (as LoopBack emits it).
        const last = state ? state.previous.get(idKey(change.target)) : undefined;
        publisher.enqueue(topic, [{ change, last }]);
      } else if (state) {
        publisher.enqueue(topic, state.ids.map((id) => ({
          change: recordRemove(idName, wireId(id)),
          last: state.previous.get(idKey(id)),
        })));
      } else {
        failed(ctx, 'a destroyAll without a single-record target cannot be published without lookups', JSON.stringify(change));
      }
      return undefined;
    },
  };

  for (const name of Object.keys(handlers)) Model.observe(name, hook(name));

  Object.defineProperty(Model, 'changeStreamPublisher', {
    configurable: true,
    enumerable: false,
    value: Object.freeze({
      topic,
      stats: () => publisher.stats(),
      flush: (timeoutMs) => publisher.flush(timeoutMs),
    }),
  });
  if (!lookups) log.warn(`[changestream] ${Model.modelName}: lookups off: no previous states for reads by id, and bulk operations without one target are not published`);
}

/** Counters summed over every publisher of this process (see Publisher#stats). */
changeStreamPublisher.stats = function stats() {
  const sum = { published: 0, replayed: 0, retried: 0, dropped: 0, failed: 0, queued: 0 };
  for (const publisher of all) {
    const s = publisher.stats();
    for (const key of Object.keys(sum)) sum[key] += s[key];
  }
  return sum;
};

/**
 * Waits until every publisher of this process has sent what it holds, or `timeoutMs`
 * (default 10 s) passed: `{drained, pending}`. Call it on shutdown, after the server
 * stopped taking requests.
 */
changeStreamPublisher.flush = async function flush(timeoutMs = 10000) {
  const results = await Promise.all([...all].map((publisher) => publisher.flush(timeoutMs)));
  return {
    drained: results.every((r) => r.drained),
    pending: results.reduce((n, r) => n + r.pending, 0),
  };
};

changeStreamPublisher.Publisher = Publisher;
changeStreamPublisher.DEFAULTS = DEFAULTS;
changeStreamPublisher.loopbackChange = loopbackChange;
changeStreamPublisher.topicOf = topicOf;

module.exports = changeStreamPublisher;
