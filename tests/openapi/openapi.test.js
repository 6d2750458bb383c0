// GET /openapi.json of the publisher and of the embedded gateway, checked by a real
// validator: @seriousme/openapi-schema-validator holds the document to the OpenAPI 3.1
// schema; every `$ref` must resolve; every schema in it must compile under Ajv's JSON
// Schema 2020-12 (OpenAPI 3.1's dialect) in strict mode, so a misspelt keyword is an
// error, not a silently ignored one. Then real answers of both servers are held to the
// document: the status is one it documents for the operation, the content type one it
// documents for that status, and a JSON body matches the documented schema.
//
// Which routes exist, and that each answers, is tests/tests/openapi.rs (cargo test).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Validator } from '@seriousme/openapi-schema-validator';
import Ajv2020 from 'ajv/dist/2020.js';
import { request, startGateway, startPublisher, startRedis, within } from './servers.js';

/** Every `$ref` in `node`, with where it is. */
function* refs(node, at = '#') {
  if (Array.isArray(node)) {
    for (const [i, item] of node.entries()) yield* refs(item, `${at}/${i}`);
  } else if (node !== null && typeof node === 'object') {
    for (const [key, value] of Object.entries(node)) {
      if (key === '$ref' && typeof value === 'string') yield [at, value];
      else yield* refs(value, `${at}/${key}`);
    }
  }
}

/** What a local JSON pointer (`#/components/schemas/Record`) names in `document`. */
function resolve(document, pointer) {
  return pointer
    .slice(2)
    .split('/')
    .map((part) => part.replaceAll('~1', '/').replaceAll('~0', '~'))
    .reduce((node, part) => (node === undefined ? undefined : node[part]), document);
}

/** `schema` with its references to the document's schemas pointed at their Ajv ids. */
function linked(schema) {
  return JSON.parse(
    JSON.stringify(schema).replaceAll('"#/components/schemas/', '"urn:schema:'),
  );
}

/** An Ajv 2020-12 instance holding every schema of `document`, compiled strictly. */
function schemasOf(document) {
  // OpenAPI 3.1 allows `example` beside JSON Schema's `examples`; nothing else is added.
  const ajv = new Ajv2020({ strict: true, allowUnionTypes: true, allErrors: true });
  ajv.addKeyword('example');
  // The integer formats of the OpenAPI format registry that schemas here use.
  ajv.addFormat('int32', { type: 'number', validate: (n) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
  ajv.addFormat('int64', { type: 'number', validate: (n) => Number.isInteger(n) });
  const schemas = document.components?.schemas ?? {};
  for (const [name, schema] of Object.entries(schemas)) {
    ajv.addSchema({ $id: `urn:schema:${name}`, ...linked(schema) });
  }
  for (const name of Object.keys(schemas)) ajv.getSchema(`urn:schema:${name}`);
  return ajv;
}

/** The server's document, validated. */
async function validDocument(base) {
  const answer = await request('GET', `${base}/openapi.json`);
  assert.equal(answer.status, 200);
  assert.equal(answer.headers.get('content-type'), 'application/json');
  const document = answer.json;
  const validator = new Validator();
  const result = await within('validation', validator.validate(structuredClone(document)));
  assert.deepEqual(result.errors, undefined, 'the document is not valid OpenAPI');
  assert.equal(result.valid, true);
  assert.equal(validator.version, '3.1');
  for (const [at, ref] of refs(document)) {
    assert.ok(ref.startsWith('#/'), `${at}: ${ref} is not a local reference`);
    assert.notEqual(resolve(document, ref), undefined, `${at}: ${ref} resolves to nothing`);
  }
  return { document, ajv: schemasOf(document) };
}

/** The operation of `method` on the documented `path`. */
function operation(document, method, path) {
  const found = document.paths[path]?.[method.toLowerCase()];
  assert.ok(found, `${method} ${path} is not in the document`);
  return found;
}

/**
 * Calls `method url` (`path` is its documented template) and holds the answer to the
 * document: a documented status, a documented content type, a body of the documented
 * schema. Resolves with the answer.
 */
async function documented({ document, ajv }, base, method, path, url, options = {}) {
  const answer = await request(method, `${base}${url}`, options);
  const responses = operation(document, method, path).responses;
  let response = responses[String(answer.status)];
  assert.ok(response, `${method} ${url} answered ${answer.status}, not documented for ${path}`);
  if (response.$ref) response = resolve(document, response.$ref);
  if (method === 'HEAD' || !response.content) return answer;
  const essence = (type) => type.split(';')[0].trim();
  const got = essence(answer.headers.get('content-type') ?? '');
  const [type, media] =
    Object.entries(response.content).find(([t]) => essence(t) === got) ?? [];
  assert.ok(type, `${method} ${url} answered ${got}; documented: ${Object.keys(response.content)}`);
  if (got === 'application/json' && media.schema) {
    const validate = ajv.compile(linked(media.schema));
    assert.ok(
      validate(answer.json),
      `${method} ${url} ${answer.status}: ${answer.text}\n${JSON.stringify(validate.errors, null, 2)}`,
    );
  }
  return answer;
}

/** The REST API's answers, every operation and some refusals, held to `doc`. */
async function restAnswers(doc, base) {
  const call = (method, path, url, options) => documented(doc, base, method, path, url, options);
  const c = '/api/{collection}';
  const item = `${c}/{id}`;
  const created = await call('POST', c, '/api/Things', { body: { n: 1 } });
  assert.equal(created.status, 200);
  const id = created.json.id;
  assert.equal((await call('POST', c, '/api/Things', { body: [{ n: 2 }, { id: 'x', n: 3 }] })).json.length, 2);
  const found = await call('GET', c, '/api/Things');
  assert.equal(found.json.length, 3);
  assert.ok(found.headers.get('last-event-id'), 'find answers Last-Event-ID');
  const where = encodeURIComponent(JSON.stringify({ n: 1 }));
  await call('GET', c, `/api/Things?filter=${encodeURIComponent(JSON.stringify({ where: { n: 1 } }))}`);
  await call('GET', `${c}/findOne`, `/api/Things/findOne?filter[where][n]=2`);
  assert.deepEqual((await call('GET', `${c}/count`, `/api/Things/count?where=${where}`)).json, { count: 1 });
  await call('GET', item, `/api/Things/${id}?filter[fields][n]=true`);
  assert.deepEqual((await call('GET', `${item}/exists`, `/api/Things/${id}/exists`)).json, { exists: true });
  assert.equal((await call('HEAD', item, `/api/Things/${id}`)).status, 200);
  await call('PATCH', item, `/api/Things/${id}`, { body: { m: 2 } });
  await call('PUT', item, `/api/Things/${id}`, { body: { n: 5 } });
  await call('POST', `${item}/replace`, `/api/Things/${id}/replace`, { body: { n: 6 } });
  await call('PATCH', c, '/api/Things', { body: { id: 'y', n: 7 } });
  await call('PUT', c, '/api/Things', { body: { id: 'y', n: 8 } });
  await call('POST', `${c}/replaceOrCreate`, '/api/Things/replaceOrCreate', { body: { id: 'z', n: 9 } });
  await call('POST', `${c}/upsertWithWhere`, `/api/Things/upsertWithWhere?where=${where}`, { body: { n: 1, w: true } });
  const key = { 'idempotency-key': 'openapi-check-1' };
  const updated = await call('POST', `${c}/update`, '/api/Things/update?where={}', { body: { k: 1 }, headers: key });
  const replayed = await call('POST', `${c}/update`, '/api/Things/update?where={}', { body: { k: 1 }, headers: key });
  assert.deepEqual(replayed.json, updated.json);
  assert.equal(replayed.headers.get('idempotent-replayed'), 'true');
  assert.deepEqual((await call('DELETE', item, `/api/Things/${id}`)).json, { count: 1 });
  assert.equal((await call('GET', item, `/api/Things/${id}`)).json.error.code, 'MODEL_NOT_FOUND');
  assert.equal((await call('HEAD', item, `/api/Things/${id}`)).status, 404);
  assert.equal((await call('POST', c, '/api/Things', { body: '{nope' })).json.error.code, 'INVALID_JSON');
  const plain = { body: 'x', headers: { 'content-type': 'text/plain' } };
  assert.equal((await call('POST', c, '/api/Things', plain)).status, 415);
  assert.equal((await call('POST', c, '/api/Things', { body: { id: 'x' } })).status, 409);
  const reused = await call('POST', `${c}/update`, '/api/Things/update?where={}', { body: { k: 2 }, headers: key });
  assert.equal(reused.status, 422);
  const change = { target: 1, data: { id: 1, n: 1 }, type: 'create' };
  await call('POST', '/publish', '/publish', { body: { topic: 'Feed', change } });
  assert.equal((await call('POST', '/publish', '/publish', { body: [{ topic: 'Feed', change }] })).json.length, 1);
  assert.equal((await call('GET', c, '/api/Feed')).json.error.code, 'RECORDS_NOT_KEPT');
  await call('GET', '/healthz', '/healthz');
  await call('GET', '/readyz', '/readyz');
  await call('GET', '/openapi.json', '/openapi.json');
  await call('GET', '/metrics', '/metrics');
}

describe('the publisher', () => {
  let redis;
  let publisher;
  before(async () => {
    redis = await startRedis();
    publisher = await startPublisher(redis.url);
  });
  after(async () => {
    await publisher?.stop();
    await redis?.stop();
  });

  test('serves a valid OpenAPI 3.1 document, and answers as it says', async () => {
    const doc = await validDocument(publisher.base);
    assert.equal(doc.document.info.title, 'publisher');
    await restAnswers(doc, publisher.base);
  });
});

describe('the embedded gateway', () => {
  let gateway;
  before(async () => {
    gateway = await startGateway();
  });
  after(async () => {
    await gateway?.stop();
  });

  test('serves a valid OpenAPI 3.1 document, and answers as it says', async () => {
    const doc = await validDocument(gateway.base);
    assert.equal(doc.document.info.title, 'gateway');
    await restAnswers(doc, gateway.base);
    const call = (method, path, url, options) => documented(doc, gateway.base, method, path, url, options);
    const stream = '/api/{collection}/change-stream';
    const opened = await call('GET', stream, '/api/Things/change-stream?_format=event-stream');
    assert.equal(opened.headers.get('content-type'), 'text/event-stream');
    await call('POST', stream, '/api/Things/change-stream', { body: { options: { where: { n: 1 } } } });
    await call('GET', '/events', '/events?topic=Things&topic=Others');
    assert.equal((await call('GET', stream, '/api/Things/change-stream?_format=json')).status, 406);
    assert.equal((await call('GET', '/events', '/events')).status, 400);
    await call('GET', '/readyz/redis', '/readyz/redis');
    await call('GET', '/client/live-set.js', '/client/live-set.js');
    const page = await call('GET', '/demo', '/demo');
    const again = await call('GET', '/demo', '/demo', { headers: { 'if-none-match': page.headers.get('etag') } });
    assert.equal(again.status, 304);
  });
});
