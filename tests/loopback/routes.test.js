// Differential test of every PersistedModel route but `find` (find.test.js has that):
// the same request goes to a real LoopBack 3 app (memory connector) and to our embedded
// gateway, each case on its own fresh collection holding the same three records, written
// the same way (POSTed in id order, so both id counters stand at 4). Compared:
// - the status code;
// - the body, JSON-equal (key order is not compared: ours is the body's order with an
//   assigned id last, LoopBack's puts the declared id first; README, "Choices");
// - the change objects each side's change stream emitted (LoopBack's REST
//   `GET /api/{c}/change-stream?_format=event-stream`, ours the same path on the
//   gateway), JSON-equal and with the same top-level key order (target, where, data, type:
//   DESIGN.md fixes it, and LoopBack's is the same). `data` key order is not compared, as
//   for bodies. To know that "no change" means none, each case is followed by a marker
//   create; every change before the marker's belongs to the case;
// - the collection afterwards (a find, before the marker).
//
// Errors are compared as their status and `statusCode` and, where LoopBack gives one, the
// `code` (MODEL_NOT_FOUND). Their `name` and `message` are not compared: LoopBack names
// every error "Error" (none for a 500) with messages of its own, ours name the status
// (BadRequestError, NotFoundError, ...) and say what was wrong (README, "Choices"); each
// side is checked to answer in its own shape.
//
// Where we differ on purpose, the case is in KNOWN_DIFFERENCES with the reason (a line of
// the README's "Choices" list) and both answers as recorded; the test checks that both
// sides still answer exactly so. A difference no doc states is in UNEXPECTED_DIFFERENCES
// and runs as a todo. Any other difference fails.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { openEventStream, request, startGateway, startLoopBack } from './servers.js';

/** Every collection starts with these, POSTed in this order. */
const SEED = [
  { id: 1, name: 'a', n: 1, tag: 'x' },
  { id: 2, name: 'b', n: 2, tag: 'x' },
  { id: 3, name: 'c', n: 3, tag: 'y' },
];
/**
 * The properties LoopBack declares (type `any`, so `fields` exclusion knows them; no seed
 * or case value is a string that parses as JSON, which `any` would parse).
 */
const DECLARED = ['id', 'name', 'n', 'tag'];
/** The record written after each case; its change ends the case's changes. */
const MARKER = { id: 'marker' };

const q = (value) => encodeURIComponent(JSON.stringify(value));

/**
 * The table: [route, case, method, path after /api/{c}, body]. A body of `undefined`
 * sends no body (and no Content-Type).
 */
const CASES = [
  ['findById', 'present', 'GET', '/1'],
  ['findById', 'missing', 'GET', '/99'],
  ['findById', 'missing string id', 'GET', '/abc'],
  ['findById', 'fields name true [json]', 'GET', `/1?filter=${q({ fields: { name: true } })}`],
  ['findById', 'fields name true [bracket]', 'GET', '/1?filter[fields][name]=true'],
  ['findById', 'fields array', 'GET', `/2?filter=${q({ fields: ['name', 'n'] })}`],
  ['findById', 'fields name false', 'GET', `/1?filter=${q({ fields: { name: false } })}`],
  ['findById', 'fields id false, name true', 'GET', `/1?filter=${q({ fields: { id: false, name: true } })}`],
  ['findById', 'fields on a missing id', 'GET', `/99?filter=${q({ fields: { name: true } })}`],
  ['findById', 'filter where is ignored', 'GET', `/1?filter=${q({ where: { tag: 'y' } })}`],
  ['findById', 'filter bad JSON', 'GET', '/1?filter={bad'],
  ['findById', 'id 1.0', 'GET', '/1.0'],
  ['findById', 'id 01', 'GET', '/01'],

  ['findOne', 'found', 'GET', `/findOne?filter=${q({ where: { tag: 'x' }, order: 'id DESC' })}`],
  ['findOne', 'not found', 'GET', `/findOne?filter=${q({ where: { tag: 'none' } })}`],
  ['findOne', 'no filter', 'GET', '/findOne'],
  ['findOne', 'fields', 'GET', `/findOne?filter=${q({ where: { id: 2 }, fields: { n: true } })}`],
  ['findOne', 'bracket where', 'GET', '/findOne?filter[where][tag]=y'],
  ['findOne', 'filter bad JSON', 'GET', '/findOne?filter={x'],

  ['count', 'where tag x', 'GET', `/count?where=${q({ tag: 'x' })}`],
  ['count', 'no where', 'GET', '/count'],
  ['count', 'where bracket', 'GET', '/count?where[tag]=x'],
  ['count', 'where operator', 'GET', `/count?where=${q({ n: { gte: 2 } })}`],
  ['count', 'no match', 'GET', `/count?where=${q({ tag: 'none' })}`],
  ['count', 'where bad JSON', 'GET', '/count?where={x'],

  ['exists', 'GET present', 'GET', '/1/exists'],
  ['exists', 'GET missing', 'GET', '/99/exists'],
  ['exists', 'GET missing string id', 'GET', '/abc/exists'],
  ['exists', 'HEAD present', 'HEAD', '/1'],
  ['exists', 'HEAD missing', 'HEAD', '/99'],

  ['create', 'with id', 'POST', '', { id: 10, name: 'new', n: 10 }],
  ['create', 'with id, keys after it', 'POST', '', { name: 'z', id: 12, a: 1, b: { c: [1, 2] } }],
  ['create', 'without id', 'POST', '', { name: 'noid' }],
  ['create', 'with string id', 'POST', '', { id: 'abc', name: 's' }],
  ['create', 'with id null', 'POST', '', { id: null, name: 'nullid' }],
  ['create', 'with id 0', 'POST', '', { id: 0, name: 'zero' }],
  ['create', 'with numeric string id', 'POST', '', { id: '7', name: 's' }],
  ['create', 'empty object', 'POST', '', {}],
  ['create', 'no body', 'POST', ''],
  ['create', 'duplicate id', 'POST', '', { id: 1, name: 'dup' }],
  ['create', 'array', 'POST', '', [{ id: 10, name: 'p' }, { id: 11, name: 'q' }]],
  ['create', 'array without ids', 'POST', '', [{ name: 'p' }, { name: 'q' }]],
  ['create', 'array with and without ids', 'POST', '', [{ id: 10, name: 'p' }, { name: 'noid' }]],
  ['create', 'array, an item without id before one naming the next id', 'POST', '', [{ name: 'noid' }, { id: 4, name: 'four' }]],
  ['create', 'array, a duplicate in the middle', 'POST', '', [{ id: 10, name: 'p' }, { id: 1, name: 'dup' }, { id: 11, name: 'q' }]],
  ['create', 'array, a duplicate first', 'POST', '', [{ id: 1, name: 'dup' }, { id: 10, name: 'p' }]],
  ['create', 'array, an id twice', 'POST', '', [{ id: 20, name: 'p' }, { id: 20, name: 'p2' }]],
  ['create', 'array with non-objects', 'POST', '', [{ id: 10 }, 5, 'x', null, [1], { id: 11 }]],
  ['create', 'empty array', 'POST', '', []],

  ['upsert', 'existing id', 'PATCH', '', { id: 1, name: 'A2' }],
  ['upsert', 'existing id, new property', 'PATCH', '', { id: 1, extra: true }],
  ['upsert', 'existing id, keys in another order', 'PATCH', '', { tag: 'z', id: 1, name: 'A2' }],
  ['upsert', 'missing id', 'PATCH', '', { id: 50, name: 'new50' }],
  ['upsert', 'without id', 'PATCH', '', { name: 'noid' }],
  ['upsert', 'id null', 'PATCH', '', { id: null, name: 'nullid' }],
  ['upsert', 'empty object', 'PATCH', '', {}],
  ['upsert', 'array body', 'PATCH', '', [{ id: 1, name: 'A' }]],

  ['replaceOrCreate', 'PUT existing id', 'PUT', '', { id: 1, name: 'R' }],
  ['replaceOrCreate', 'PUT new id', 'PUT', '', { id: 50, name: 'R50' }],
  ['replaceOrCreate', 'PUT without id', 'PUT', '', { name: 'noid' }],
  ['replaceOrCreate', 'PUT array body', 'PUT', '', [{ id: 1 }]],
  ['replaceOrCreate', 'POST existing id', 'POST', '/replaceOrCreate', { id: 1, name: 'R' }],
  ['replaceOrCreate', 'POST new id', 'POST', '/replaceOrCreate', { id: 50, name: 'R50' }],
  ['replaceOrCreate', 'POST without id', 'POST', '/replaceOrCreate', { name: 'noid' }],
  ['replaceOrCreate', 'POST array body', 'POST', '/replaceOrCreate', [{ id: 1 }]],

  ['upsertWithWhere', 'no match, body without id', 'POST', `/upsertWithWhere?where=${q({ name: 'zzz' })}`, { name: 'zzz', n: 9 }],
  ['upsertWithWhere', 'no match, body with new id', 'POST', `/upsertWithWhere?where=${q({ name: 'zzz' })}`, { id: 40, name: 'zzz' }],
  ['upsertWithWhere', 'no match, body with existing id', 'POST', `/upsertWithWhere?where=${q({ name: 'zzz' })}`, { id: 1, name: 'zzz' }],
  ['upsertWithWhere', 'one match', 'POST', `/upsertWithWhere?where=${q({ name: 'a' })}`, { n: 100 }],
  ['upsertWithWhere', 'one match, body with its id', 'POST', `/upsertWithWhere?where=${q({ name: 'a' })}`, { id: 1, n: 100 }],
  ['upsertWithWhere', 'one match, body with another id', 'POST', `/upsertWithWhere?where=${q({ name: 'a' })}`, { id: 2, n: 100 }],
  ['upsertWithWhere', 'one match [bracket]', 'POST', '/upsertWithWhere?where[name]=b', { n: 200 }],
  ['upsertWithWhere', 'two matches', 'POST', `/upsertWithWhere?where=${q({ tag: 'x' })}`, { n: 100 }],
  ['upsertWithWhere', 'no where', 'POST', '/upsertWithWhere', { n: 100 }],
  ['upsertWithWhere', 'where bad JSON', 'POST', '/upsertWithWhere?where={x', { n: 1 }],
  ['upsertWithWhere', 'array body', 'POST', `/upsertWithWhere?where=${q({ name: 'a' })}`, [{ n: 1 }]],

  ['replaceById', 'PUT existing', 'PUT', '/1', { name: 'R' }],
  ['replaceById', 'PUT body with its id', 'PUT', '/1', { id: 1, name: 'R' }],
  ['replaceById', 'PUT body with another id', 'PUT', '/1', { id: 2, name: 'R' }],
  ['replaceById', 'PUT missing', 'PUT', '/99', { name: 'R' }],
  ['replaceById', 'PUT empty object', 'PUT', '/1', {}],
  ['replaceById', 'PUT array body', 'PUT', '/1', [{ name: 'R' }]],
  ['replaceById', 'POST replace existing', 'POST', '/1/replace', { name: 'R' }],
  ['replaceById', 'POST replace missing', 'POST', '/99/replace', { name: 'R' }],
  ['replaceById', 'POST replace body with another id', 'POST', '/1/replace', { id: 2, name: 'R' }],

  ['patchAttributes', 'existing', 'PATCH', '/1', { name: 'P' }],
  ['patchAttributes', 'new property and a null', 'PATCH', '/1', { extra: 1, tag: null }],
  ['patchAttributes', 'keys in another order', 'PATCH', '/1', { tag: 'z', name: 'P' }],
  ['patchAttributes', 'body with its id', 'PATCH', '/1', { id: 1, name: 'P' }],
  ['patchAttributes', 'body with another id', 'PATCH', '/1', { id: 2, name: 'P' }],
  ['patchAttributes', 'body with its id as a string', 'PATCH', '/1', { id: '1', name: 'P' }],
  ['patchAttributes', 'missing', 'PATCH', '/99', { name: 'P' }],
  ['patchAttributes', 'empty object', 'PATCH', '/1', {}],
  ['patchAttributes', 'no body', 'PATCH', '/1'],
  ['patchAttributes', 'array body', 'PATCH', '/1', [{ name: 'P' }]],

  ['updateAll', 'no match', 'POST', `/update?where=${q({ tag: 'none' })}`, { n: 0 }],
  ['updateAll', 'one match', 'POST', `/update?where=${q({ name: 'a' })}`, { n: 0 }],
  ['updateAll', 'three matches', 'POST', `/update?where=${q({ n: { gte: 1 } })}`, { n: 0, z: 'new' }],
  ['updateAll', 'where {}', 'POST', `/update?where=${q({})}`, { n: 0 }],
  ['updateAll', 'where [bracket]', 'POST', '/update?where[tag]=x', { n: 0 }],
  ['updateAll', 'where on id', 'POST', `/update?where=${q({ id: 2 })}`, { n: 0 }],
  ['updateAll', 'body with an id', 'POST', `/update?where=${q({ name: 'a' })}`, { id: 5, n: 0 }],
  ['updateAll', 'no where', 'POST', '/update', { n: 0 }],
  ['updateAll', 'where bad JSON', 'POST', '/update?where={x', { n: 0 }],
  ['updateAll', 'array body', 'POST', `/update?where=${q({ name: 'a' })}`, [{ n: 0 }]],

  ['deleteById', 'existing', 'DELETE', '/1'],
  ['deleteById', 'missing', 'DELETE', '/99'],
  ['deleteById', 'missing string id', 'DELETE', '/abc'],
  ['deleteById', 'id findOne', 'DELETE', '/findOne'],
];

const URL_ID = 'a URL id is the integer only when written as one, in its shortest form (1, not 01 or 1.0); any other spelling names that string id, here missing (README, Choices: ids); LoopBack turns the path into a number';
const ID_ZERO = 'a body\'s id is kept, 0 too (DESIGN.md: the counter\'s id "unless the body carries an id"; README, Choices: ids); LoopBack takes 0, being falsy, for no id and assigns 4';
const NUMERIC_STRING = 'a string id that reads as an integer ("7", "1") is a 400 here, so that /api/X/7 always means the integer 7 (README, Choices: ids); LoopBack\'s id of type any stores "7" as 7, and a patch with id "1" answers and emits the string "1" while it stores 1';
const NO_BODY = 'a write takes a JSON body with Content-Type application/json, and one without is a 415 that writes nothing (README, Choices: 415); LoopBack reads no body as {}: it creates an empty record, and emits an update of the unchanged one on a patch';
const ARRAY = 'an array create is all or none here, so an item refused (a duplicate id, an id twice) is a 409 that writes and emits nothing (README, Choices: array create); LoopBack writes and emits the items that succeed and answers a 500 listing the failures';
const ARRAY_AUTO = 'an array create is one step here, and an item without id takes the next integer that neither the collection nor the array holds, so the array is written (README, Choices: array create); LoopBack creates the items in turn, gives the first 4 and then refuses {id: 4}: a 500 after a partial write';
const NO_WHERE = 'updateAll and upsertWithWhere without ?where= are a 400 that says so (README, Choices: updateAll); LoopBack fails an assertion, a 500';
const UPDATE_ALL = 'updateAll emits one update (the whole record) per record it changed, in find order, none when none matched (DESIGN.md, Batches; README, Choices: updateAll); LoopBack emits one change for the call: the where and the patch as given, type create, with a target only when the where or the patch has an id (even a wrong one)';
const DELETE_MISSING = 'a delete that deleted nothing is no change, so nothing is emitted (README, Choices: DELETE); LoopBack emits a remove anyway';
const ROUTE_NAMES = 'the routes findOne, count, update, upsertWithWhere, replaceOrCreate and change-stream are no ids for other methods here: DELETE of one is a 405 (README, Choices: route names); LoopBack takes the segment for an id, deletes nothing and emits a remove of "findOne"';

/**
 * Deliberate differences: [test title, reason, LoopBack's answer, ours], each answer as
 * `summary` writes it (a seed record left as written is its id).
 */
const KNOWN_DIFFERENCES = [
  ['findById: id 1.0', URL_ID,
    {status: 200, body: {id: 1, name: 'a', n: 1, tag: 'x'}, changes: [], store: [1, 2, 3]},
    {status: 404, body: {statusCode: 404, code: 'MODEL_NOT_FOUND'}, changes: [], store: [1, 2, 3]}],
  ['findById: id 01', URL_ID,
    {status: 200, body: {id: 1, name: 'a', n: 1, tag: 'x'}, changes: [], store: [1, 2, 3]},
    {status: 404, body: {statusCode: 404, code: 'MODEL_NOT_FOUND'}, changes: [], store: [1, 2, 3]}],
  ['create: with id 0', ID_ZERO,
    {status: 200, body: {id: 4, name: 'zero'}, changes: [{target: 4, data: {id: 4, name: 'zero'}, type: 'create'}], store: [1, 2, 3, {id: 4, name: 'zero'}]},
    {status: 200, body: {id: 0, name: 'zero'}, changes: [{target: 0, data: {id: 0, name: 'zero'}, type: 'create'}], store: [{id: 0, name: 'zero'}, 1, 2, 3]}],
  ['create: with numeric string id', NUMERIC_STRING,
    {status: 200, body: {id: 7, name: 's'}, changes: [{target: 7, data: {id: 7, name: 's'}, type: 'create'}], store: [1, 2, 3, {id: 7, name: 's'}]},
    {status: 400, body: {statusCode: 400, code: 'BAD_REQUEST'}, changes: [], store: [1, 2, 3]}],
  ['create: no body', NO_BODY,
    {status: 200, body: {id: 4}, changes: [{target: 4, data: {id: 4}, type: 'create'}], store: [1, 2, 3, {id: 4}]},
    {status: 415, body: {statusCode: 415, code: 'UNSUPPORTED_MEDIA_TYPE'}, changes: [], store: [1, 2, 3]}],
  ['create: array, an item without id before one naming the next id', ARRAY_AUTO,
    {status: 500, body: {statusCode: 500}, changes: [{target: 4, data: {id: 4, name: 'noid'}, type: 'create'}], store: [1, 2, 3, {id: 4, name: 'noid'}]},
    {status: 200, body: [{name: 'noid', id: 5}, {id: 4, name: 'four'}], changes: [{target: 5, data: {name: 'noid', id: 5}, type: 'create'}, {target: 4, data: {id: 4, name: 'four'}, type: 'create'}], store: [1, 2, 3, {id: 4, name: 'four'}, {name: 'noid', id: 5}]}],
  ['create: array, a duplicate in the middle', ARRAY,
    {status: 500, body: {statusCode: 500}, changes: [{target: 10, data: {id: 10, name: 'p'}, type: 'create'}, {target: 11, data: {id: 11, name: 'q'}, type: 'create'}], store: [1, 2, 3, {id: 10, name: 'p'}, {id: 11, name: 'q'}]},
    {status: 409, body: {statusCode: 409, code: 'DUPLICATE_ID'}, changes: [], store: [1, 2, 3]}],
  ['create: array, a duplicate first', ARRAY,
    {status: 500, body: {statusCode: 500}, changes: [{target: 10, data: {id: 10, name: 'p'}, type: 'create'}], store: [1, 2, 3, {id: 10, name: 'p'}]},
    {status: 409, body: {statusCode: 409, code: 'DUPLICATE_ID'}, changes: [], store: [1, 2, 3]}],
  ['create: array, an id twice', ARRAY,
    {status: 500, body: {statusCode: 500}, changes: [{target: 20, data: {id: 20, name: 'p'}, type: 'create'}], store: [1, 2, 3, {id: 20, name: 'p'}]},
    {status: 409, body: {statusCode: 409, code: 'DUPLICATE_ID'}, changes: [], store: [1, 2, 3]}],
  ['upsertWithWhere: no where', NO_WHERE,
    {status: 500, body: {statusCode: 500}, changes: [], store: [1, 2, 3]},
    {status: 400, body: {statusCode: 400, code: 'BAD_REQUEST'}, changes: [], store: [1, 2, 3]}],
  ['patchAttributes: body with its id as a string', NUMERIC_STRING,
    {status: 200, body: {id: '1', name: 'P', n: 1, tag: 'x'}, changes: [{target: '1', data: {id: '1', name: 'P', n: 1, tag: 'x'}, type: 'update'}], store: [{id: 1, name: 'P', n: 1, tag: 'x'}, 2, 3]},
    {status: 400, body: {statusCode: 400, code: 'BAD_REQUEST'}, changes: [], store: [1, 2, 3]}],
  ['patchAttributes: no body', NO_BODY,
    {status: 200, body: {id: 1, name: 'a', n: 1, tag: 'x'}, changes: [{target: 1, data: {id: 1, name: 'a', n: 1, tag: 'x'}, type: 'update'}], store: [1, 2, 3]},
    {status: 415, body: {statusCode: 415, code: 'UNSUPPORTED_MEDIA_TYPE'}, changes: [], store: [1, 2, 3]}],
  ['updateAll: no match', UPDATE_ALL,
    {status: 200, body: {count: 0}, changes: [{where: {tag: 'none'}, data: {n: 0}, type: 'create'}], store: [1, 2, 3]},
    {status: 200, body: {count: 0}, changes: [], store: [1, 2, 3]}],
  ['updateAll: one match', UPDATE_ALL,
    {status: 200, body: {count: 1}, changes: [{where: {name: 'a'}, data: {n: 0}, type: 'create'}], store: [{id: 1, name: 'a', n: 0, tag: 'x'}, 2, 3]},
    {status: 200, body: {count: 1}, changes: [{target: 1, data: {id: 1, name: 'a', n: 0, tag: 'x'}, type: 'update'}], store: [{id: 1, name: 'a', n: 0, tag: 'x'}, 2, 3]}],
  ['updateAll: three matches', UPDATE_ALL,
    {status: 200, body: {count: 3}, changes: [{where: {n: {gte: 1}}, data: {n: 0, z: 'new'}, type: 'create'}], store: [{id: 1, name: 'a', n: 0, tag: 'x', z: 'new'}, {id: 2, name: 'b', n: 0, tag: 'x', z: 'new'}, {id: 3, name: 'c', n: 0, tag: 'y', z: 'new'}]},
    {status: 200, body: {count: 3}, changes: [{target: 1, data: {id: 1, name: 'a', n: 0, tag: 'x', z: 'new'}, type: 'update'}, {target: 2, data: {id: 2, name: 'b', n: 0, tag: 'x', z: 'new'}, type: 'update'}, {target: 3, data: {id: 3, name: 'c', n: 0, tag: 'y', z: 'new'}, type: 'update'}], store: [{id: 1, name: 'a', n: 0, tag: 'x', z: 'new'}, {id: 2, name: 'b', n: 0, tag: 'x', z: 'new'}, {id: 3, name: 'c', n: 0, tag: 'y', z: 'new'}]}],
  ['updateAll: where {}', UPDATE_ALL,
    {status: 200, body: {count: 3}, changes: [{where: {}, data: {n: 0}, type: 'create'}], store: [{id: 1, name: 'a', n: 0, tag: 'x'}, {id: 2, name: 'b', n: 0, tag: 'x'}, {id: 3, name: 'c', n: 0, tag: 'y'}]},
    {status: 200, body: {count: 3}, changes: [{target: 1, data: {id: 1, name: 'a', n: 0, tag: 'x'}, type: 'update'}, {target: 2, data: {id: 2, name: 'b', n: 0, tag: 'x'}, type: 'update'}, {target: 3, data: {id: 3, name: 'c', n: 0, tag: 'y'}, type: 'update'}], store: [{id: 1, name: 'a', n: 0, tag: 'x'}, {id: 2, name: 'b', n: 0, tag: 'x'}, {id: 3, name: 'c', n: 0, tag: 'y'}]}],
  ['updateAll: where [bracket]', UPDATE_ALL,
    {status: 200, body: {count: 2}, changes: [{where: {tag: 'x'}, data: {n: 0}, type: 'create'}], store: [{id: 1, name: 'a', n: 0, tag: 'x'}, {id: 2, name: 'b', n: 0, tag: 'x'}, 3]},
    {status: 200, body: {count: 2}, changes: [{target: 1, data: {id: 1, name: 'a', n: 0, tag: 'x'}, type: 'update'}, {target: 2, data: {id: 2, name: 'b', n: 0, tag: 'x'}, type: 'update'}], store: [{id: 1, name: 'a', n: 0, tag: 'x'}, {id: 2, name: 'b', n: 0, tag: 'x'}, 3]}],
  ['updateAll: where on id', UPDATE_ALL,
    {status: 200, body: {count: 1}, changes: [{target: 2, where: {id: 2}, data: {n: 0}, type: 'update'}], store: [1, {id: 2, name: 'b', n: 0, tag: 'x'}, 3]},
    {status: 200, body: {count: 1}, changes: [{target: 2, data: {id: 2, name: 'b', n: 0, tag: 'x'}, type: 'update'}], store: [1, {id: 2, name: 'b', n: 0, tag: 'x'}, 3]}],
  ['updateAll: body with an id', UPDATE_ALL,
    {status: 200, body: {count: 1}, changes: [{target: 5, where: {name: 'a'}, data: {id: 5, n: 0}, type: 'update'}], store: [{id: 1, name: 'a', n: 0, tag: 'x'}, 2, 3]},
    {status: 200, body: {count: 1}, changes: [{target: 1, data: {id: 1, name: 'a', n: 0, tag: 'x'}, type: 'update'}], store: [{id: 1, name: 'a', n: 0, tag: 'x'}, 2, 3]}],
  ['updateAll: no where', NO_WHERE,
    {status: 500, body: {statusCode: 500}, changes: [], store: [1, 2, 3]},
    {status: 400, body: {statusCode: 400, code: 'BAD_REQUEST'}, changes: [], store: [1, 2, 3]}],
  ['deleteById: missing', DELETE_MISSING,
    {status: 200, body: {count: 0}, changes: [{target: 99, where: {id: 99}, type: 'remove'}], store: [1, 2, 3]},
    {status: 200, body: {count: 0}, changes: [], store: [1, 2, 3]}],
  ['deleteById: missing string id', DELETE_MISSING,
    {status: 200, body: {count: 0}, changes: [{target: 'abc', where: {id: 'abc'}, type: 'remove'}], store: [1, 2, 3]},
    {status: 200, body: {count: 0}, changes: [], store: [1, 2, 3]}],
  ['deleteById: id findOne', ROUTE_NAMES,
    {status: 200, body: {count: 0}, changes: [{target: 'findOne', where: {id: 'findOne'}, type: 'remove'}], store: [1, 2, 3]},
    {status: 405, body: {statusCode: 405, code: 'METHOD_NOT_ALLOWED'}, changes: [], store: [1, 2, 3]}],
];

/**
 * Differences no doc states yet: [test title, reason, LoopBack's answer, ours]. Each runs
 * as a todo; once a doc states the choice, the entry moves to KNOWN_DIFFERENCES. Empty
 * now: the one found was fixed (an array create gave an item without an id the counter's
 * next id even after an earlier item named a larger one, [{id: 10}, {}] → 10, 4; now 10,
 * 11 as in LoopBack) and the others documented.
 */
const UNEXPECTED_DIFFERENCES = [];

const title = ([route, name]) => `${route}: ${name}`;
/** A case's request, as the failure message shows it. */
const requestLine = ([, , method, path, body]) =>
  `${method} /api/{c}${decodeURIComponent(path)}${body === undefined ? '' : ` ${JSON.stringify(body)}`}`;

/** Whether `record` is, exactly, the seed record of its id. */
function isSeed(record) {
  const seed = SEED.find((r) => r.id === record?.id);
  if (seed === undefined) return false;
  try {
    assert.deepStrictEqual(record, seed);
    return true;
  } catch {
    return false;
  }
}

/**
 * An error body as compared: its `statusCode`, and its `code` when there is one. Each
 * side's own shape is checked on the way: LoopBack's `name` is "Error" (none on a 500),
 * ours names the status; both have a message.
 */
function errorSummary(side, status, body) {
  const error = body?.error;
  assert.ok(error && typeof error === 'object', `${side}: a ${status} without an error object: ${JSON.stringify(body)}`);
  assert.equal(error.statusCode, status, `${side}: statusCode`);
  assert.equal(typeof error.message, 'string', `${side}: message`);
  if (side === 'ours') {
    assert.match(error.name, /^[A-Z][A-Za-z]+Error$/, 'ours: name');
    assert.notEqual(error.name, 'Error', 'ours: name');
    assert.equal(typeof error.code, 'string', 'ours: code');
  } else {
    assert.ok(error.name === 'Error' || (status === 500 && error.name === undefined), `LoopBack: name ${error.name}`);
  }
  return error.code === undefined ? { statusCode: status } : { statusCode: status, code: error.code };
}

/**
 * One side's answer, short: the status; the body (an error as `errorSummary` gives it);
 * the changes; the collection afterwards, each seed record as it was written as its id.
 */
function summary(side, method, { status, body, changes, store }) {
  return {
    status,
    // A HEAD answer has no body to look at.
    body: status >= 400 && method !== 'HEAD' ? errorSummary(side, status, body) : body,
    changes,
    store: store.map((record) => (isSeed(record) ? record.id : record)),
  };
}

/** The change stream's next change, parsed; anything but `event: data` fails. */
async function nextChange(stream, what) {
  const event = await stream.next(what);
  assert.equal(event.event, 'data', `${what}: an event ${event.event}: ${event.data}`);
  return JSON.parse(event.data);
}

/**
 * One side's answer to a case (`[route, name, method, path, body]`) on the fresh
 * collection `collection` of the server at `base`.
 */
async function run(side, base, collection, [, , method, path, body]) {
  const api = `${base}/api/${collection}`;
  for (const record of SEED) {
    const created = await request('POST', api, record);
    assert.equal(created.status, 200, `${side}: seed ${JSON.stringify(record)}: ${JSON.stringify(created.body)}`);
  }
  // Ours says at which stream position its records are, and the change stream sends
  // exactly what follows it. LoopBack has no position: its change stream observes the
  // model from before it answers, so its headers mean it is listening.
  const seeded = await request('GET', api);
  const position = seeded.headers.get('last-event-id');
  const stream = await openEventStream(
    `${api}/change-stream?_format=event-stream`,
    position ? { 'last-event-id': position } : {},
  );
  try {
    const answer = await request(method, api + path, body);
    const found = await request('GET', api);
    assert.equal(found.status, 200, `${side}: find after: ${JSON.stringify(found.body)}`);
    const marker = await request('POST', api, MARKER);
    assert.equal(marker.status, 200, `${side}: marker: ${JSON.stringify(marker.body)}`);
    const changes = [];
    for (;;) {
      const change = await nextChange(stream, `${side}: changes up to the marker's`);
      if (change.target === MARKER.id) break;
      changes.push(change);
    }
    return { status: answer.status, body: answer.body, changes, store: found.body };
  } finally {
    stream.close();
  }
}

const byTitle = (list) => new Map(list.map(([t, reason, loopback, ours]) => [t, { reason, loopback, ours }]));
const KNOWN = byTitle(KNOWN_DIFFERENCES);
const UNEXPECTED = byTitle(UNEXPECTED_DIFFERENCES);

test('every listed difference names a case of the table, once', () => {
  const titles = new Set(CASES.map(title));
  assert.equal(titles.size, CASES.length, 'two cases share a title');
  const listed = [...KNOWN_DIFFERENCES, ...UNEXPECTED_DIFFERENCES].map(([t]) => t);
  for (const t of listed) assert.ok(titles.has(t), `no case ${t}`);
  assert.equal(new Set(listed).size, listed.length, 'a case is listed twice');
});

describe('PersistedModel routes against LoopBack 3', () => {
  let loopback;
  let gateway;
  const collection = (n) => `C${n}Things`;

  before(async () => {
    // One after the other, so that `after` stops whichever started if the other fails.
    loopback = await startLoopBack(Object.fromEntries(CASES.map((_, n) => [`C${n}Thing`, DECLARED])));
    gateway = await startGateway();
  });

  after(async () => {
    await Promise.all([loopback?.stop(), gateway?.stop()]);
  });

  CASES.forEach((kase, n) => {
    const name = title(kase);
    const known = KNOWN.get(name);
    const unexpected = UNEXPECTED.get(name);
    const options = unexpected ? { todo: `${unexpected.reason}: LoopBack ${JSON.stringify(unexpected.loopback)}, ours ${JSON.stringify(unexpected.ours)}` } : {};
    test(name, options, async () => {
      const [theirs, ours] = await Promise.all([
        run('LoopBack', loopback.base, collection(n), kase),
        run('ours', gateway.base, collection(n), kase),
      ]);
      const [a, b] = [summary('LoopBack', kase[2], theirs), summary('ours', kase[2], ours)];
      const detail = `\n  ${requestLine(kase)}\n  LoopBack: ${JSON.stringify(a)}\n  ours:     ${JSON.stringify(b)}`;
      if (known) {
        assert.deepStrictEqual(a, known.loopback, `LoopBack's answer changed (known difference: ${known.reason}):${detail}`);
        assert.deepStrictEqual(b, known.ours, `our answer changed (known difference: ${known.reason}):${detail}`);
        return;
      }
      assert.equal(b.status, a.status, `status differs:${detail}`);
      if (a.status >= 400) {
        // LoopBack's code, when it gives one, is ours too; ours always has one.
        if (a.body.code !== undefined) assert.deepStrictEqual(b.body, a.body, `error differs:${detail}`);
      } else {
        assert.deepStrictEqual(b.body, a.body, `body differs:${detail}`);
      }
      assert.deepStrictEqual(b.changes, a.changes, `changes differ:${detail}`);
      assert.deepStrictEqual(
        ours.changes.map((c) => Object.keys(c)),
        theirs.changes.map((c) => Object.keys(c)),
        `change key order differs:${detail}`,
      );
      assert.deepStrictEqual(b.store, a.store, `collection afterwards differs:${detail}`);
    });
  });
});
