//! The Lua text of the one atomic publish script, and the names of its operations.
//!
//! Every mutation is one `EVALSHA` of [`PUBLISH_SCRIPT`]: the record write, the `XADD` of
//! the change to the topic's stream and the `PUBLISH` of the same event with its stream
//! id happen together or not at all (Redis runs a script to completion, and a script
//! that errors before its first write writes nothing). So there is no event without its
//! mutation, no mutation without its event, and stream order is pub/sub order.
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
//! | `KEYS[4]` | raw marker ([`crate::Topic::raw_key`]), set by [`OP_PUBLISH`] |
//! | `ARGV[1]` | operation, one of the `OP_*` constants |
//! | `ARGV[2]` | channel ([`crate::Topic::redis_channel`]) |
//! | `ARGV[3]` | `PUBLISH`, or `SPUBLISH` in cluster mode |
//! | `ARGV[4]` | stream length limit, `0` for none (approximate: `MAXLEN ~`) |
//! | `ARGV[5]` | stream age limit in ms, `0` for none (approximate: `MINID ~`) |
//! | `ARGV[6..]` | operation arguments, below |
//!
//! Replies: `{"ok", stream_id}` (create_auto: `{"ok", stream_id, id, record}`), or one of
//! `{"exists"}`, `{"missing"}`, `{"conflict"}`, `{"exhausted"}` with nothing written.

/// `ARGV[6]` = record JSON without `id` (a compact object). Assigns the next integer id
/// (the counter + 1, past ids already taken), appends `"id":N` as the record's last key.
/// Answers `exhausted` when that id would pass [`crate::MAX_SAFE_INTEGER`]: the counter
/// is read and compared before anything is written, so the refusal changes nothing and
/// creates with an explicit id still work.
pub const OP_CREATE_AUTO: &str = "create_auto";
/// `ARGV[6..9]` = key, record, change, integer id or empty. Refuses an existing key.
pub const OP_CREATE: &str = "create";
/// `ARGV[6..8]` = key, record, change. Refuses a missing key. Stores the record's previous
/// state as the stream entry's `last` field (a filtered view moves the record out when the
/// new state no longer matches).
pub const OP_REPLACE: &str = "replace";
/// `ARGV[6..9]` = key, expected current record, new record, change. Refuses a missing
/// key, and answers `conflict` if the record changed since it was read (compare-and-set:
/// the caller merges in Rust to keep key order, then retries). Stores the previous state as
/// `last`, as [`OP_REPLACE`] does.
pub const OP_PATCH: &str = "patch";
/// `ARGV[6..7]` = key, change. Answers `missing` for an absent key. Stores the removed
/// record as the stream entry's `last` field.
pub const OP_DELETE: &str = "delete";
/// `ARGV[6..7]` = change, last state or empty. No record is touched (backends that keep
/// their own database); the topic is marked raw (`KEYS[4]`), so no snapshot of its
/// (absent) records is ever given.
pub const OP_PUBLISH: &str = "publish";

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
pub const PUBLISH_SCRIPT: &str = r#"
local records, seq, stream, raw = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, channel, pubcmd, maxlen, maxage = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if pubcmd ~= 'PUBLISH' and pubcmd ~= 'SPUBLISH' then
  return redis.error_reply('bad publish command')
end

-- Append the change to the stream and publish it with its id and the previous id.
local function emit(change, last)
  local prev = '0-0'
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if top[1] then prev = top[1][1] end
  local fields = {'v', '1', 'prev', prev, 'change', change}
  if last then
    fields[7] = 'last'
    fields[8] = last
  end
  local id
  if maxlen ~= '0' then
    id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
  else
    id = redis.call('XADD', stream, '*', unpack(fields))
  end
  if maxage > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('XTRIM', stream, 'MINID', '~', string.format('%.0f', now - maxage) .. '-0')
  end
  redis.call(pubcmd, channel, '1\n' .. id .. '\n' .. prev .. '\n' .. change .. '\n' .. (last or ''))
  return id
end

if op == 'create_auto' then
  -- Lua numbers are doubles, exact up to 2^53: the counter never goes past max_id, and
  -- every key is formatted with %d (a number argument to redis.call would be printed
  -- with %.17g). A counter already past it (written before this limit) is refused too.
  local max_id = 9007199254740991
  local n = tonumber(redis.call('GET', seq) or '0') + 1
  while n <= max_id and redis.call('HEXISTS', records, string.format('%d', n)) == 1 do
    n = n + 1
  end
  if n > max_id then return {'exhausted'} end
  local key = string.format('%d', n)
  redis.call('SET', seq, key)
  local body = ARGV[6]
  local record
  if body == '{}' then
    record = '{"id":' .. key .. '}'
  else
    record = string.sub(body, 1, -2) .. ',"id":' .. key .. '}'
  end
  redis.call('HSET', records, key, record)
  local id = emit('{"target":' .. key .. ',"data":' .. record .. ',"type":"create"}', nil)
  return {'ok', id, key, record}
elseif op == 'create' then
  if redis.call('HSETNX', records, ARGV[6], ARGV[7]) == 0 then return {'exists'} end
  if ARGV[9] ~= '' then
    local cur = tonumber(redis.call('GET', seq) or '0')
    if tonumber(ARGV[9]) > cur then redis.call('SET', seq, ARGV[9]) end
  end
  return {'ok', emit(ARGV[8], nil)}
elseif op == 'replace' then
  local cur = redis.call('HGET', records, ARGV[6])
  if not cur then return {'missing'} end
  redis.call('HSET', records, ARGV[6], ARGV[7])
  return {'ok', emit(ARGV[8], cur)}
elseif op == 'patch' then
  local cur = redis.call('HGET', records, ARGV[6])
  if not cur then return {'missing'} end
  if cur ~= ARGV[7] then return {'conflict'} end
  redis.call('HSET', records, ARGV[6], ARGV[8])
  return {'ok', emit(ARGV[9], cur)}
elseif op == 'delete' then
  local cur = redis.call('HGET', records, ARGV[6])
  if not cur then return {'missing'} end
  redis.call('HDEL', records, ARGV[6])
  return {'ok', emit(ARGV[7], cur)}
elseif op == 'publish' then
  local last = ARGV[7]
  if last == '' then last = nil end
  redis.call('SET', raw, '1')
  return {'ok', emit(ARGV[6], last)}
end
return redis.error_reply('unknown operation ' .. tostring(op))
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
            assert!(PUBLISH_SCRIPT.contains(&format!("'{field}', ")), "{field}");
        }
        assert!(PUBLISH_SCRIPT.contains(&format!("fields[7] = '{FIELD_LAST}'")));
        for op in [
            OP_CREATE_AUTO,
            OP_CREATE,
            OP_REPLACE,
            OP_PATCH,
            OP_DELETE,
            OP_PUBLISH,
        ] {
            assert!(PUBLISH_SCRIPT.contains(&format!("op == '{op}'")), "{op}");
        }
        assert!(PUBLISH_SCRIPT.contains(r"'1\n' .. id .. '\n' .. prev .. '\n' .. change .. '\n'"));
        // The counter's limit is the id range RecordId accepts.
        assert!(PUBLISH_SCRIPT.contains(&format!("local max_id = {}\n", crate::MAX_SAFE_INTEGER)));
        assert!(PUBLISH_SCRIPT.contains("return {'exhausted'}"));
    }
}
