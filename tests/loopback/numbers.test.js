// Numbers byte for byte against a real LoopBack 3 app. LoopBack answers and emits what
// `JSON.stringify` makes of a record, so a number comes out in JavaScript's bytes
// whatever the client wrote: `10.0` (as Python writes it) is `10`, `1e-06` is `0.000001`,
// `1.5e+20` is `150000000000000000000`, `-0.0` is `0`, and an integer beyond 2^53 is the
// double `JSON.parse` rounded it to. The same raw body text (not re-encoded by this test's
// own JSON.stringify) goes to LoopBack and to our embedded gateway; the bytes of the
// numbers must be the same in the create answer, findById, find, the change stream's
// `data:` line, and a PATCH's answer and change. routes.test.js and find.test.js compare
// parsed JSON, which would not see any of this.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STEP_MS, openEventStream, startGateway, startLoopBack } from './servers.js';

/** Number literals as clients write them (Python, Go, hand-written), in one array. */
const LITERALS = [
  '0', '-0', '-0.0', '1.0', '10.0', '-1.0', '1e6', '1E6', '123456.789e3', '2.5', '0.1', '4.35',
  '0.000001', '1e-06', '1.5e-6', '0.0000123', '1e-7', '1.5e-07', '123e-20', '5e-324',
  '1e16', '1e+16', '9007199254740991', '9007199254740993', '-9007199254740993',
  '12345678901234567890', '18446744073709551616', '1e20', '1.5e+20', '-1.5e20',
  '123456789012345678901', '999999999999999999999', '1e21', '1E+21', '1e300',
  '1.7976931348623157e308', '100', '-42',
];
const ARRAY = `[${LITERALS.join(',')}]`;

/** The text of `"key":[...]` in a JSON text (the arrays hold numbers only). */
function arrayText(text, key) {
  const found = new RegExp(`"${key}":\\[[^\\]]*\\]`).exec(text);
  assert.ok(found, `no "${key}" array in ${text}`);
  return found[0];
}

/** A request with a raw JSON body text; the answer's status and text. */
async function raw(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body,
    signal: AbortSignal.timeout(STEP_MS),
  });
  return { status: response.status, headers: response.headers, text: await response.text() };
}

/** What one side writes for the numbers, at every place a client reads them. */
async function numbers(side, base) {
  const api = `${base}/api/Nums`;
  // Ours says at which position the (empty) collection is; LoopBack's stream listens
  // from before it answers.
  const empty = await raw('GET', api);
  assert.equal(empty.status, 200, `${side}: find: ${empty.text}`);
  const position = empty.headers.get('last-event-id');
  const stream = await openEventStream(
    `${api}/change-stream?_format=event-stream`,
    position ? { 'last-event-id': position } : {},
  );
  try {
    const created = await raw('POST', api, `{"id":1,"v":${ARRAY}}`);
    assert.equal(created.status, 200, `${side}: create: ${created.text}`);
    const byId = await raw('GET', `${api}/1`);
    const all = await raw('GET', api);
    const patched = await raw('PATCH', `${api}/1`, `{"w":${ARRAY}}`);
    assert.equal(patched.status, 200, `${side}: patch: ${patched.text}`);
    const [create, update] = await stream.take(2, `${side}: the create and the update`);
    return {
      create: arrayText(created.text, 'v'),
      findById: arrayText(byId.text, 'v'),
      find: arrayText(all.text, 'v'),
      'change-stream create': arrayText(create, 'v'),
      patch: arrayText(patched.text, 'w'),
      'change-stream update': arrayText(update, 'w'),
    };
  } finally {
    stream.close();
  }
}

describe('numbers in JavaScript\'s bytes, as LoopBack 3 writes them', () => {
  let loopback;
  let gateway;

  before(async () => {
    loopback = await startLoopBack({ Num: ['id'] });
    gateway = await startGateway();
  });

  after(async () => {
    await Promise.all([loopback?.stop(), gateway?.stop()]);
  });

  test('create, findById, find, PATCH and the change stream', async () => {
    const [theirs, ours] = await Promise.all([
      numbers('LoopBack', loopback.base),
      numbers('ours', gateway.base),
    ]);
    // LoopBack's own bytes are JSON.stringify's, which is what a browser compares with.
    const javascript = `[${JSON.parse(ARRAY).map((n) => JSON.stringify(n)).join(',')}]`;
    assert.equal(theirs.create, `"v":${javascript}`);
    for (const [place, text] of Object.entries(theirs)) {
      assert.equal(ours[place], text, `${place}: sent ${ARRAY}`);
    }
  });
});
