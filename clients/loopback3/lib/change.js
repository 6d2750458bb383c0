'use strict';
// LoopBack 3's change objects, built from an operation hook's context the way
// `PersistedModel.createChangeStream` builds them (loopback 3.28,
// lib/persisted-model.js, `createChangeObject`), and the per-record changes this package
// publishes for bulk operations instead of LoopBack's one change per call.
//
// Owns the shapes only: no I/O, no lookups, no queue.

/**
 * The change LoopBack's own change stream emits for this hook call, as an object whose
 * `JSON.stringify` is LoopBack's bytes: keys `target`, `where`, `data`, `type`, and
 * undefined ones left out by JSON. `data` is the model instance itself (its `toJSON()`
 * order: declared properties first), or the patch of an `updateAll`.
 *
 * `options` filtering (what LoopBack applies per subscriber) is left to the gateways.
 *
 * @param {object} ctx the `after save` / `after delete` context
 * @param {'save'|'delete'} kind which hook
 * @param {string} idName the model's id property (`Model.getIdName()`)
 */
function loopbackChange(ctx, kind, idName) {
  const where = ctx.where;
  const data = ctx.instance || ctx.data;
  // The data includes the id, or the where does (LoopBack's order of preference; 0 is an
  // id, other falsy values are not).
  let target;
  if (data && (data[idName] || data[idName] === 0)) {
    target = data[idName];
  } else if (where && (where[idName] || where[idName] === 0)) {
    target = where[idName];
  }
  const hasTarget = target === 0 || !!target;
  const change = { target, where, data };
  if (kind === 'save') {
    if (ctx.isNewInstance === undefined) {
      change.type = hasTarget ? 'update' : 'create';
    } else {
      change.type = ctx.isNewInstance ? 'create' : 'update';
    }
  } else {
    change.type = 'remove';
  }
  return change;
}

/**
 * An id as it goes over the wire (an ObjectID becomes its string), or undefined when it is
 * no single record's id: missing, or an operator object such as `{"inq": [1, 2]}`, which
 * LoopBack puts in `target` when a bulk operation's `where` names ids that way.
 */
function wireId(id) {
  if (id === undefined || id === null) return undefined;
  const json = JSON.stringify(id);
  if (json === undefined) return undefined;
  const value = JSON.parse(json);
  return typeof value === 'number' || typeof value === 'string' ? value : undefined;
}

/** The key a record's previous state is kept under, per id. */
function idKey(id) {
  return JSON.stringify(wireId(id));
}

/** One record of a bulk update: LoopBack's instance-update shape, the whole record. */
function recordUpdate(id, record) {
  return { target: id, data: record, type: 'update' };
}

/** One record of a bulk delete: the shape LoopBack's `deleteById` emits. */
function recordRemove(idName, id) {
  return { target: id, where: { [idName]: id }, type: 'remove' };
}

module.exports = { loopbackChange, wireId, idKey, recordUpdate, recordRemove };
