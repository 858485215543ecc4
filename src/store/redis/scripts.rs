//! The Lua scripts that make each shared-store operation atomic on the Redis primary (each
//! says its KEYS and ARGV; `REPLID` is prepended to INSTALL, which stamps the primary's
//! epoch, and TAKE, which compares it), and how their answers are read.

use std::time::Duration;

use redis::Value;

/// The primary's replication id, as the scripts compare it (Sentinel only).
pub(super) const REPLID: &str = "local function replid()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
end
";

/// The upstream budget's GCRA, on Redis's clock (so every replica's requests count in one
/// bucket). KEYS: the host's theoretical arrival time (µs), its 429 hold. ARGV: the
/// interval and the tolerance, in µs. Answers `{'go'}`, or `{'wait', µs}`.
pub(super) const BUDGET: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local held = redis.call('PTTL', KEYS[2])
if held > 0 then return {'wait', held * 1000} end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local ahead = tat - now
if ahead > tonumber(ARGV[2]) then return {'wait', ahead - tonumber(ARGV[2])} end
local new = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.floor((new - now) / 1000) + 1000)
return {'go'}
";

/// KEYS: a host's 429 hold. ARGV: its length in ms. Lengthens the hold, never shortens it.
pub(super) const BUDGET_HOLD: &str = "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
";

/// KEYS: record, hold, lease. ARGV: the generation known, lease id, lease ms.
pub(super) const CLAIM: &str =
    "local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0') or 0
if gen > tonumber(ARGV[1]) then
  return {'newer', gen, redis.call('HGET', KEYS[1], 'rec')}
end
local hold = redis.call('GET', KEYS[2])
if hold then return {'held', hold, redis.call('PTTL', KEYS[2])} end
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'fly'} end
local ttl = redis.call('PTTL', KEYS[3])
if ttl < 0 then
  -- A lease with no time to live (not ours): give it one, so it cannot block for ever.
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  ttl = tonumber(ARGV[3])
end
return {'flying', ttl}
";

/// KEYS: record. ARGV: generation, record, refresh token ('' none), '1' to stamp the
/// epoch, channel, message, ttl ms. Writes only over an older generation (or none):
/// answers `{'ok'}`, or `{'newer', generation, record}` with what the store holds.
pub(super) const INSTALL: &str =
    "local cur = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0') or 0
if cur >= tonumber(ARGV[1]) then
  return {'newer', cur, redis.call('HGET', KEYS[1], 'rec')}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'rec', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'rt', ARGV[3]) end
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'epoch', replid()) end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'ok'}
";

/// KEYS: record. ARGV: generation, '1' to check the epoch, then the ids (4 bytes each) of
/// the keys this replica can open. The refresh token leaves the record here, or nowhere:
/// `{'taken', token}`; `{'none'}` when there is none at that generation; `{'foreign'}` when
/// it is sealed with a key this replica does not have (it stays, for a replica that has
/// it); one written under another primary is removed, not returned (`{'none'}`).
pub(super) const TAKE: &str =
    "if tonumber(redis.call('HGET', KEYS[1], 'gen') or '-1') ~= tonumber(ARGV[1]) then
  return {'none'}
end
local rt = redis.call('HGET', KEYS[1], 'rt')
if not rt then return {'none'} end
local id = string.sub(rt, 2, 5)
local known = false
for i = 3, #ARGV do
  if ARGV[i] == id then known = true end
end
if not known then return {'foreign'} end
redis.call('HDEL', KEYS[1], 'rt')
if ARGV[2] == '1' and redis.call('HGET', KEYS[1], 'epoch') ~= replid() then return {'none'} end
return {'taken', rt}
";

/// KEYS: lease. ARGV: lease id, lease ms.
pub(super) const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// KEYS: lease. ARGV: lease id, channel, message.
pub(super) const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

pub(super) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

pub(super) fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}
