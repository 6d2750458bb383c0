//! The Lua text of the one atomic write script, and the names of its item kinds.
//!
//! Every write is one `EVALSHA` of [`WRITE_SCRIPT`] with a batch of items (one item for a
//! single create, update, delete or publish): the record writes, the `XADD` of each change
//! to the topic's stream, the `PUBLISH` of each event with its stream id and, with an
//! idempotency key, the remembered outcome, happen together or not at all. The script
//! checks every item before it writes anything (Redis runs a script to completion, and a
//! script that stops before its first write writes nothing). So there is no event without
//! its mutation, no mutation without its event, stream order is pub/sub order, a batch's
//! events are adjacent in the stream, and a key is never recorded without its write.
//!
//! The JSON of records and changes is built by the caller (Rust keeps key order; Lua's
//! cjson does not). The script only splices an auto-assigned id into a record, which it
//! must do itself so the counter increment is part of the same atomic step.
//!
//! Calling convention:
//!
//! | | |
//! |---|---|
//! | `KEYS[1]` | records hash ([`crate::Topic::records_key`]) |
//! | `KEYS[2]` | id counter ([`crate::Topic::seq_key`]) |
//! | `KEYS[3]` | change stream ([`crate::Topic::stream_key`]) |
//! | `KEYS[4]` | raw marker ([`crate::Topic::raw_key`]), set by a [`ITEM_PUBLISH`] |
//! | `KEYS[5]` | idempotency record ([`crate::Topic::idempotency_key`]); any key of the topic without one |
//! | `ARGV[1]` | channel ([`crate::Topic::redis_channel`]) |
//! | `ARGV[2]` | `PUBLISH`, or `SPUBLISH` in cluster mode |
//! | `ARGV[3]` | stream length limit, `0` for none (approximate: `MAXLEN ~`) |
//! | `ARGV[4]` | stream age limit in ms, `0` for none (approximate: `MINID ~`) |
//! | `ARGV[5]` | the request's fingerprint under the idempotency key, or empty for no key |
//! | `ARGV[6]` | how long the key is remembered, in ms |
//! | `ARGV[7]` | the stream position the caller read at, which must still be the newest (`updateAll` reads, then writes), or empty |
//! | `ARGV[8]` | the number of items, then [`ITEM_ARGS`] arguments per item: kind, key, a, b, c |
//!
//! | kind | key | a | b | c |
//! |---|---|---|---|---|
//! | [`ITEM_AUTO`] | empty | record JSON without `id` | | |
//! | [`ITEM_CREATE`] | record key | record | change | integer id, or empty |
//! | [`ITEM_UPDATE`] | record key | the state it must still have, or empty for any | record | change |
//! | [`ITEM_DELETE`] | record key | change | | |
//! | [`ITEM_PUBLISH`] | | change | last state, or empty | |
//!
//! The items of one batch name distinct records.
//!
//! Replies, with nothing written unless `ok`:
//! - `{"ok", event, key, record, ...}`: three strings per item, its stream id (empty for a
//!   delete of a missing record), its record key and the record written (empty for a
//!   delete or a publish);
//! - `{"replay", fingerprint, outcome}`: the key was used; `outcome` is the first `ok`
//!   reply as a JSON array of strings, and nothing was written now;
//! - `{"exists", i}`, `{"missing", i}`, `{"conflict", i}`: item `i` (from 1) names a record
//!   that exists / does not / is no longer the expected state;
//! - `{"moved", position}`: the stream moved past `ARGV[7]`;
//! - `{"exhausted"}`: an auto id would pass [`crate::MAX_SAFE_INTEGER`].

/// A create without an id: the next integer (one past the counter or past an integer id an
/// earlier item of the batch names, whichever is larger; past ids already taken and ids
/// the batch names), appended as the record's last key `"id":N`.
pub const ITEM_AUTO: &str = "auto";
/// A create with the record's own id. Refuses a key that exists.
pub const ITEM_CREATE: &str = "create";
/// A new state for an existing record. Refuses a missing key, and one whose state is not
/// the expected one (compare-and-set: the caller merges in Rust to keep key order, then
/// retries). Stores the previous state as the stream entry's `last` field (a filtered view
/// moves the record out when the new state no longer matches).
pub const ITEM_UPDATE: &str = "update";
/// Deletes a record, storing it as the entry's `last`; a missing record is no event.
pub const ITEM_DELETE: &str = "delete";
/// A change without a record write (backends that keep their own database); the topic is
/// marked raw (`KEYS[4]`), so no snapshot of its (absent) records is ever given.
pub const ITEM_PUBLISH: &str = "publish";
/// Arguments per item.
pub const ITEM_ARGS: usize = 5;

/// One page of a collection read together with the topic's stream position, for a
/// snapshot whose records are exactly the state at a position (the publisher's
/// `RedisStore::snapshot`). Read-only, bounded by the page size.
///
/// `KEYS[1]` records hash, `KEYS[2]` change stream, `KEYS[3]` raw marker; `ARGV[1]` the
/// `HSCAN` cursor (`0` to start), `ARGV[2]` the `COUNT` hint. Replies `{next_cursor,
/// position, {key, record, ...}, raw}` where `position` is the stream's newest id (`0-0`
/// if none) and `raw` is `1` for a topic whose records a backend keeps (no snapshot).
pub const SNAPSHOT_PAGE_SCRIPT: &str = r#"
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local position = '0-0'
if top[1] then position = top[1][1] end
return {page[1], position, page[2], redis.call('EXISTS', KEYS[3])}
"#;

/// The script. See the module docs for its calling convention.
pub const WRITE_SCRIPT: &str = r#"
local records, seq, stream, raw, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel, pubcmd, maxlen, maxage = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local fp, ttl, at, n = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
if pubcmd ~= 'PUBLISH' and pubcmd ~= 'SPUBLISH' then
  return redis.error_reply('bad publish command')
end

-- A request already answered under this key: its first outcome, and nothing written.
if fp ~= '' then
  local seen = redis.call('HMGET', idem, 'fp', 'outcome')
  if seen[1] then return {'replay', seen[1], seen[2]} end
end

local prev = '0-0'
local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
if top[1] then prev = top[1][1] end
if at ~= '' and at ~= prev then return {'moved', prev} end

-- Check every item before writing any.
local given, current = {}, {}
for i = 1, n do
  local b = 8 + (i - 1) * 5
  local kind, key = ARGV[b + 1], ARGV[b + 2]
  if kind == 'auto' then
    -- its id is chosen below, once every given id is known
  elseif kind == 'create' then
    if given[key] or redis.call('HEXISTS', records, key) == 1 then
      return {'exists', tostring(i)}
    end
    given[key] = true
  elseif kind == 'update' then
    local cur = redis.call('HGET', records, key)
    if not cur then return {'missing', tostring(i)} end
    if ARGV[b + 3] ~= '' and ARGV[b + 3] ~= cur then return {'conflict', tostring(i)} end
    current[i] = cur
  elseif kind == 'delete' then
    current[i] = redis.call('HGET', records, key)
  elseif kind ~= 'publish' then
    return redis.error_reply('unknown item kind ' .. tostring(kind))
  end
end

-- Lua numbers are doubles, exact up to 2^53: the counter never goes past max_id, and
-- every key is formatted with %d (a number argument to redis.call would be printed with
-- %.17g). A counter already past it (written before this limit) is refused too.
local max_id = 9007199254740991
local counter = tonumber(redis.call('GET', seq) or '0')
local raised = counter
-- In item order, as if each create ran in turn: an integer id an earlier item names
-- moves the counter past it for the creates after it.
local ids = {}
for i = 1, n do
  local b = 8 + (i - 1) * 5
  local kind = ARGV[b + 1]
  if kind == 'create' and ARGV[b + 5] ~= '' and tonumber(ARGV[b + 5]) > raised then
    raised = tonumber(ARGV[b + 5])
  elseif kind == 'auto' then
    raised = raised + 1
    while raised <= max_id and (given[string.format('%d', raised)]
        or redis.call('HEXISTS', records, string.format('%d', raised)) == 1) do
      raised = raised + 1
    end
    if raised > max_id then return {'exhausted'} end
    ids[#ids + 1] = string.format('%d', raised)
  end
end

-- Append a change to the stream and publish it with its id and the previous id. The
-- first change of a run takes the next id Redis gives (`*`); the later ones take the ids
-- right after it (same milliseconds, sequence + 1), so a batch's ids are consecutive.
local first_ms, first_seq, emitted = nil, 0, 0
local function emit(change, last)
  local fields = {'v', '1', 'prev', prev, 'change', change}
  if last then
    fields[7] = 'last'
    fields[8] = last
  end
  local wanted = '*'
  if first_ms then wanted = first_ms .. '-' .. string.format('%d', first_seq + emitted) end
  local id
  if maxlen ~= '0' then
    id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, wanted, unpack(fields))
  else
    id = redis.call('XADD', stream, wanted, unpack(fields))
  end
  if not first_ms then
    local dash = string.find(id, '-', 1, true)
    first_ms, first_seq = string.sub(id, 1, dash - 1), tonumber(string.sub(id, dash + 1))
  end
  emitted = emitted + 1
  redis.call(pubcmd, channel, '1\n' .. id .. '\n' .. prev .. '\n' .. change .. '\n' .. (last or ''))
  prev = id
  return id
end

local reply, j, published = {'ok'}, 0, false
for i = 1, n do
  local b = 8 + (i - 1) * 5
  local kind, key, a = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local event, record = '', ''
  if kind == 'auto' then
    j = j + 1
    key = ids[j]
    if a == '{}' then
      record = '{"id":' .. key .. '}'
    else
      record = string.sub(a, 1, -2) .. ',"id":' .. key .. '}'
    end
    redis.call('HSET', records, key, record)
    event = emit('{"target":' .. key .. ',"data":' .. record .. ',"type":"create"}', nil)
  elseif kind == 'create' then
    record = a
    redis.call('HSET', records, key, record)
    event = emit(ARGV[b + 4], nil)
  elseif kind == 'update' then
    record = ARGV[b + 4]
    redis.call('HSET', records, key, record)
    event = emit(ARGV[b + 5], current[i])
  elseif kind == 'delete' then
    if current[i] then
      redis.call('HDEL', records, key)
      event = emit(a, current[i])
    end
  else
    local last = ARGV[b + 4]
    if last == '' then last = nil end
    published = true
    event = emit(a, last)
  end
  reply[#reply + 1] = event
  reply[#reply + 1] = key
  reply[#reply + 1] = record
end
if raised > counter then redis.call('SET', seq, string.format('%d', raised)) end
if published then redis.call('SET', raw, '1') end
if maxage > 0 and n > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XTRIM', stream, 'MINID', '~', string.format('%.0f', now - maxage) .. '-0')
end
if fp ~= '' then
  redis.call('HSET', idem, 'fp', fp, 'outcome', cjson.encode(reply))
  redis.call('PEXPIRE', idem, ttl)
end
return reply
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{FIELD_CHANGE, FIELD_LAST, FIELD_PREV, FIELD_VERSION, FORMAT_VERSION};

    #[test]
    fn script_writes_the_format_this_crate_reads() {
        // The Lua text cannot import the Rust constants; pin them together here.
        assert_eq!(FORMAT_VERSION, "1");
        for field in [FIELD_VERSION, FIELD_PREV, FIELD_CHANGE] {
            assert!(WRITE_SCRIPT.contains(&format!("'{field}', ")), "{field}");
        }
        assert!(WRITE_SCRIPT.contains(&format!("fields[7] = '{FIELD_LAST}'")));
        for kind in [ITEM_AUTO, ITEM_CREATE, ITEM_UPDATE, ITEM_DELETE] {
            assert!(
                WRITE_SCRIPT.contains(&format!("kind == '{kind}'")),
                "{kind}"
            );
        }
        assert!(WRITE_SCRIPT.contains(&format!("kind ~= '{ITEM_PUBLISH}'")));
        assert!(WRITE_SCRIPT.contains(&format!("local b = 8 + (i - 1) * {ITEM_ARGS}\n")));
        assert!(WRITE_SCRIPT.contains(r"'1\n' .. id .. '\n' .. prev .. '\n' .. change .. '\n'"));
        // The counter's limit is the id range RecordId accepts.
        assert!(WRITE_SCRIPT.contains(&format!("local max_id = {}\n", crate::MAX_SAFE_INTEGER)));
        assert!(WRITE_SCRIPT.contains("return {'exhausted'}"));
    }
}
