"""The Lua scripts behind every request of the Redis backend (CONFIG and connecting aside), each atomic on the server.

Every script gets the Discovery's namespace ``NS`` (``<prefix>//``) as ``ARGV[1]``; the keys it derives from it:

* ``NS session/<sid>``: a session (a string holding its ttl in ms) with a server-side expiry (``PX``);
* ``NS keys/<sid>``: the set of data keys bound to that session (expires with it; ``close`` deletes them);
* ``NS token/<key>``: the fencing-token counter of a key, never deleted;
* ``NS index``: a sorted set of every data key under the prefix (``list`` reads it by lexicographic range).

A data key (``<prefix>/<key>``) is a hash ``value``, ``token`` and, when bound to a session, ``session``. A data key
whose session key is gone is **absent** for every script: the one that finds it so deletes it on the way. So a key
vanishes the moment its session expires on the server, whether or not anyone has cleaned it up yet.

Fencing tokens: ``max(counter + 1, server time in microseconds)`` (Redis ``TIME``), stored back in the counter. On
one server that is strictly increasing whatever the clock does (the counter part); across a failover to a replica
that missed the last writes, the clock part keeps tokens ahead of the lost ones unless the new primary's clock is
behind the old one's by more than the failover took (see docs/guarantees.md). Integers below 2^53, exact in Lua.
"""

from __future__ import annotations

__all__ = ["CHECK", "CLOSE", "CREATE", "DELETE", "GET", "KEEPALIVE", "LIST", "OPEN", "PUT", "READ_MANY"]

_PRELUDE = """
local ns = ARGV[1]
local function alive(sid)
  return (not sid) or redis.call('EXISTS', ns .. 'session/' .. sid) == 1
end
-- {value, token, session or false} of a live data key; nil if absent (a key of a dead session is deleted)
local function load(k)
  local r = redis.call('HMGET', k, 'value', 'token', 'session')
  if not r[1] then return nil end
  if alive(r[3]) then return r end
  redis.call('DEL', k)
  redis.call('ZREM', ns .. 'index', k)
  return nil
end
local function pttl_of(sid)
  if not sid then return -1 end
  return redis.call('PTTL', ns .. 'session/' .. sid)
end
local function next_token(tk)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local n = math.max(tonumber(redis.call('GET', tk) or '0') + 1, now)
  local s = string.format('%.0f', n)
  redis.call('SET', tk, s)
  return s
end
local function bind(k, sid, pttl)
  local ks = ns .. 'keys/' .. sid
  redis.call('SADD', ks, k)
  if pttl > 0 then redis.call('PEXPIRE', ks, pttl) end
end
"""

#: KEYS: data. -> nil, or {value, token, session ('' if none), pttl of the session in ms (-1 if none),
#: the session's ttl in ms ('' if none)}
GET = (
    _PRELUDE
    + """
local r = load(KEYS[1])
if not r then return false end
local ttl = ''
if r[3] then ttl = redis.call('GET', ns .. 'session/' .. r[3]) or '' end
return {r[1], r[2], r[3] or '', pttl_of(r[3]), ttl}
"""
)

#: KEYS: data... -> for each key, as GET (an empty list for an absent one)
READ_MANY = (
    _PRELUDE
    + """
local out = {}
for i, k in ipairs(KEYS) do
  local r = load(k)
  if r then out[i] = {r[1], r[2], r[3] or '', pttl_of(r[3])} else out[i] = {} end
end
return out
"""
)

#: KEYS: data, token counter, index. ARGV: ns, sid, value, ttl in ms for a ticket ('' for a stored session).
#: -> {-1} session gone; {0} the key exists; {1, token} created (or already ours: a retried create).
#: A ticket's session key is written here, with its full ttl, only when the claim succeeds.
CREATE = (
    _PRELUDE
    + """
local sid = ARGV[2]
local sk = ns .. 'session/' .. sid
local ticket = ARGV[4] ~= ''
local pttl = redis.call('PTTL', sk)
if pttl == -2 and not ticket then return {-1} end
local r = load(KEYS[1])
if r then
  if r[3] == sid and r[1] == ARGV[3] then return {1, r[2]} end
  return {0}
end
if ticket and pttl == -2 then
  redis.call('SET', sk, ARGV[4], 'PX', ARGV[4])
  pttl = tonumber(ARGV[4])
end
local tok = next_token(KEYS[2])
redis.call('HSET', KEYS[1], 'value', ARGV[3], 'token', tok, 'session', sid)
redis.call('ZADD', KEYS[3], 0, KEYS[1])
bind(KEYS[1], sid, pttl)
return {1, tok}
"""
)

#: KEYS: data, token counter, index. ARGV: ns, value, sid ('' for none). -> {-1} session gone; {1, token}
PUT = (
    _PRELUDE
    + """
local sid = ARGV[3]
local pttl = -1
if sid ~= '' then
  pttl = redis.call('PTTL', ns .. 'session/' .. sid)
  if pttl == -2 then return {-1} end
end
local r = load(KEYS[1])
local tok
if r then
  tok = r[2]
  if r[3] and r[3] ~= sid then redis.call('SREM', ns .. 'keys/' .. r[3], KEYS[1]) end
else
  tok = next_token(KEYS[2])
end
if sid == '' then
  redis.call('HDEL', KEYS[1], 'session')
  redis.call('HSET', KEYS[1], 'value', ARGV[2], 'token', tok)
else
  redis.call('HSET', KEYS[1], 'value', ARGV[2], 'token', tok, 'session', sid)
  bind(KEYS[1], sid, pttl)
end
redis.call('ZADD', KEYS[3], 0, KEYS[1])
return {1, tok}
"""
)

#: KEYS: data, index. ARGV: ns, token. -> 1 if a live key with that token was deleted, else 0
DELETE = (
    _PRELUDE
    + """
local r = redis.call('HMGET', KEYS[1], 'token', 'session')
if r[1] ~= ARGV[2] then return 0 end
local live = alive(r[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
if r[2] then redis.call('SREM', ns .. 'keys/' .. r[2], KEYS[1]) end
if live then return 1 end
return 0
"""
)

#: ARGV: ns, sid, ttl in ms. A new session. -> 1
OPEN = (
    _PRELUDE
    + """
redis.call('SET', ns .. 'session/' .. ARGV[2], ARGV[3], 'PX', ARGV[3], 'NX')
return 1
"""
)

#: ARGV: ns, sid. -> {pttl in ms (-2: gone), the session's ttl in ms or false}
CHECK = (
    _PRELUDE
    + """
local sk = ns .. 'session/' .. ARGV[2]
return {redis.call('PTTL', sk), redis.call('GET', sk)}
"""
)

#: ARGV: ns, sid, ttl in ms. -> 1 renewed, 0 the session is gone
KEEPALIVE = (
    _PRELUDE
    + """
if redis.call('PEXPIRE', ns .. 'session/' .. ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('PEXPIRE', ns .. 'keys/' .. ARGV[2], ARGV[3])
return 1
"""
)

#: ARGV: ns, sid. Deletes the session and every data key still bound to it (a successor's key is not). -> count
CLOSE = (
    _PRELUDE
    + """
local sid = ARGV[2]
local ks = ns .. 'keys/' .. sid
local n = 0
for _, k in ipairs(redis.call('SMEMBERS', ks)) do
  if redis.call('HGET', k, 'session') == sid then
    redis.call('DEL', k)
    redis.call('ZREM', ns .. 'index', k)
    n = n + 1
  end
end
redis.call('DEL', ks, ns .. 'session/' .. sid)
return n
"""
)

#: KEYS: index. ARGV: ns, lowest key (inclusive), highest key (exclusive).
#: -> flat list: key, value, token, session ('' if none) for every live key in the range
LIST = (
    _PRELUDE
    + """
local out = {}
for _, k in ipairs(redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[2], '(' .. ARGV[3])) do
  local r = load(k)
  if r then
    out[#out + 1] = k
    out[#out + 1] = r[1]
    out[#out + 1] = r[2]
    out[#out + 1] = r[3] or ''
  else
    redis.call('ZREM', KEYS[1], k)
  end
end
return out
"""
)
