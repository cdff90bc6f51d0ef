"""The Lua scripts: every change to shared state is one atomic script on the server.

Why Lua: a charge reads and writes several buckets (rpm and tpm together, all or nothing) and a
lease checks a count and adds to it; done as separate commands, two gateways interleave between
the read and the write and both admit. A script runs alone on the server, so the check and the
change are one step for the whole fleet.

Time is the server's (``TIME``), so gateways whose clocks differ still agree; a test passes its
own ``now`` as the first argument instead (an empty string means "the server's clock"). Times
are seconds since ``EPOCH`` (not 1970) so that a double keeps sub-microsecond resolution, and
numbers travel as ``%.17g`` strings (Redis truncates a Lua number reply to an integer).

The GCRA maths is ``gateway.tenancy.ratelimit`` line for line (``gcra``, ``window``, ``adjusted``), with
one difference: the slack on "exactly at the limit" is 1 us (the server clock's resolution)
rather than 1 ns; ``tests/gateway/test_state_limits.py`` checks both give the same verdicts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

EPOCH = 1_700_000_000  # subtracted from the server clock (2023-11-14)


@dataclass(frozen=True)
class Script:
    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


_NOW = f"""
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = (tonumber(t[1]) - {EPOCH}) + tonumber(t[2]) / 1000000
end
local EPS = 1e-6
local function num(x) return string.format('%.17g', x) end
"""

# KEYS: one bucket per charge. ARGV: now, then limit, cost, period per charge.
# Reply: allowed (1/0), now, then per charge: tat, remaining, reset_s, retry_after_s, too_large.
CHARGE = Script(
    "charge",
    _NOW
    + """
local n = #KEYS
local allowed = true
local results = {}
for i = 1, n do
  local limit = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local period = tonumber(ARGV[3 * i + 1])
  local v = redis.call('GET', KEYS[i])
  local tat = v and tonumber(v) or now
  local t_unit = period / limit
  local new = math.max(tat, now) + cost * t_unit
  local r = {limit = limit, period = period, t_unit = t_unit}
  if new - now <= period + EPS then
    r.tat = new; r.retry = 0; r.too_large = 0
  else
    allowed = false
    r.tat = tat
    if cost > limit then r.retry = 'inf'; r.too_large = 1
    else r.retry = new - period - now; r.too_large = 0 end
  end
  results[i] = r
end
local out = {allowed and 1 or 0, num(now)}
for i = 1, n do
  local r = results[i]
  local shown = r.tat  -- as ratelimit.MemoryStore: a charge allowed alone shows its window
  local used = math.max(0, shown - now)
  local remaining = math.floor((r.period - used) / r.t_unit + EPS)
  remaining = math.max(0, math.min(r.limit, remaining))
  local retry = r.retry
  if retry ~= 'inf' then retry = num(retry) end
  table.insert(out, num(shown))
  table.insert(out, remaining)
  table.insert(out, num(used))
  table.insert(out, retry)
  table.insert(out, r.too_large)
  if allowed then
    local ttl_ms = math.ceil((r.tat - now) * 1000) + 1000
    redis.call('SET', KEYS[i], num(r.tat), 'PX', ttl_ms)
  end
end
return out
""",
)

# KEYS: the bucket. ARGV: now, delta, limit, period. A refund never goes below "full".
ADJUST = Script(
    "adjust",
    _NOW
    + """
local delta = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local period = tonumber(ARGV[4])
local v = redis.call('GET', KEYS[1])
local tat = v and tonumber(v) or now
local step = delta * period / limit
local new
if delta < 0 then new = math.max(now, tat + step) else new = math.max(tat, now) + step end
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], num(new), 'PX', math.ceil((new - now) * 1000) + 1000)
end
return num(new)
""",
)

# KEYS: the key's lease set, the in-flight cap's lease set, the active keys (key -> last seen),
# the fleet's waiters (member -> order), their expiry (member -> when), the class's virtual time,
# the key's virtual finish in its class, the class's lease set.
# ARGV: now, ttl_s, member, key_limit (0: none), cap (0: none), track (1: the key's set counts
# its leases even without a limit), the reserve while other keys are active, the reserve while
# the key is alone, active_s, the key, the class (priority), the key's weight, the waiter's
# order from an earlier reply ('' : none yet), how long a waiter's place lasts unrenewed, the
# request's cost (its prompt tokens), the class's share of the cap in slots (0: the whole cap).
# Reply: {0: granted | 1: key at its limit | 2: cap full, or its free slots belong to waiters
# ahead | 3: the key is at its share of the cap (headroom: ``gateway.admission.headroom``,
# fleet-wide), or its class at the class's (``Sched.inflight_share``, fleet-wide), holders of the
# refusing set, now, the waiter's order (2 only)}.
#
# The order of waiters is the one ``gateway.admission.fairqueue`` keeps in one process: classes
# strictly by priority, start-time fair queuing between the keys of a class. A request that
# finds no free slot for it takes a place: its start tag is max(class virtual time, its key's
# finish), its key's finish becomes start + cost / weight, and its order is start - priority x P.
# A free slot goes to a request only if fewer waiters are ahead of it than slots are free; the
# one granted moves its class's virtual time to its start. A request granted without waiting is
# charged the same way (start tag, finish, virtual time): each gateway's own queue sends its
# keys to this door one at a time, and a key charged only when it waited here would be charged
# for almost nothing while another key's every request waits. The cost is in tokens (its
# prompt, settled at release to prompt + completion by ``gateway.state.leases``), and equal
# start tags go to the key whose own finish is lower: see ``gateway.admission.fairqueue`` for
# both. Places are renewed by each poll and lapse after the last ARGV but one (a dead
# gateway's waiters stop blocking); a request that polls again after its place lapsed takes it
# back with the order it was given.
ACQUIRE = Script(
    "acquire",
    _NOW
    + """
local ttl = tonumber(ARGV[2])
local member = ARGV[3]
local key_limit = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local track = key_limit > 0 or tonumber(ARGV[6]) == 1
local ttl_ms = math.ceil(ttl * 2000)
local held_key = 0
if track then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', num(now))
  held_key = redis.call('ZCARD', KEYS[1])
  if key_limit > 0 and held_key >= key_limit then return {1, held_key, num(now)} end
end
local reserve, alone = tonumber(ARGV[7]), tonumber(ARGV[8])
local headroom = cap > 0 and track and reserve > 0
if headroom then  -- this key is active, even if it waits for a full cap below
  local active_s = tonumber(ARGV[9])
  redis.call('ZADD', KEYS[3], num(now), ARGV[10])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', num(now - active_s))
  redis.call('PEXPIRE', KEYS[3], math.ceil(active_s * 2000))
end
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', num(now))
  local held = redis.call('ZCARD', KEYS[2])
  if headroom and held < cap then
    local blocked = held_key >= cap - alone
      or (held_key >= cap - reserve and redis.call('ZCARD', KEYS[3]) > 1)
    if blocked then  -- it waits for its key's share, and holds no place meanwhile
      redis.call('ZREM', KEYS[4], member)
      redis.call('ZREM', KEYS[5], member)
      return {3, held_key, num(now)}
    end
  end
  local class_cap = tonumber(ARGV[16])
  if class_cap > 0 then  -- a class held below the whole cap (batch): it waits for its share
    redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', num(now))
    local held_class = redis.call('ZCARD', KEYS[8])
    if held_class >= class_cap then
      redis.call('ZREM', KEYS[4], member)
      redis.call('ZREM', KEYS[5], member)
      return {3, held_class, num(now)}
    end
  end
  local lapsed = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', num(now))
  for _, gone in ipairs(lapsed) do
    redis.call('ZREM', KEYS[4], gone)
    redis.call('ZREM', KEYS[5], gone)
  end
  local rank = redis.call('ZRANK', KEYS[4], member)
  local ahead = rank or redis.call('ZCARD', KEYS[4])
  local wait_ttl = tonumber(ARGV[14])
  local prio, weight, cost = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[15])
  local function tag()  -- the start tag of this key's request (its finish moves past it), and
    -- a tie-break below 0.25 token: at an equal start the key whose finish is lower goes first
    local vt = tonumber(redis.call('GET', KEYS[6]) or '0')
    local fin = tonumber(redis.call('GET', KEYS[7]) or '0')
    local start = math.max(vt, fin)
    redis.call('SET', KEYS[7], num(start + cost / weight), 'EX', 3600)  -- an idle key's, forgotten
    local below = math.min(0, fin - vt)
    return start, 0.25 * below / (1 - below)
  end
  local function advance(start)  -- the class's virtual time: the latest start tag granted
    local vt = tonumber(redis.call('GET', KEYS[6]) or '0')
    redis.call('SET', KEYS[6], num(math.max(vt, start)), 'EX', 86400)
  end
  if cap - held <= ahead then
    local order = ARGV[13]
    if order == '' then
      local start, tie = tag()
      order = num(start + tie - prio * 1e12)  -- 1e12 apart: start tags stay exact to 0.01
    end
    redis.call('ZADD', KEYS[4], order, member)
    redis.call('ZADD', KEYS[5], num(now + wait_ttl), member)
    local keep = math.ceil(wait_ttl * 2000)
    redis.call('PEXPIRE', KEYS[4], keep)
    redis.call('PEXPIRE', KEYS[5], keep)
    return {2, held, num(now), order}
  end
  if rank then  -- its turn: out of the waiters (its key was charged when it took its place)
    advance(tonumber(redis.call('ZSCORE', KEYS[4], member)) + prio * 1e12)
    redis.call('ZREM', KEYS[4], member)
    redis.call('ZREM', KEYS[5], member)
  else
    advance(tag())
  end
end
if track then
  redis.call('ZADD', KEYS[1], num(now + ttl), member)
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
end
if cap > 0 then
  redis.call('ZADD', KEYS[2], num(now + ttl), member)
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
  if tonumber(ARGV[16]) > 0 then
    redis.call('ZADD', KEYS[8], num(now + ttl), member)
    redis.call('PEXPIRE', KEYS[8], ttl_ms)
  end
end
return {0, 0, num(now)}
""",
)

# KEYS: the members set, then one lease set per held lease. ARGV: now, ttl_s, gateway id, then
# the member in each lease set. Renews (or, after the store restarted empty, re-creates) this
# gateway's membership and leases; reply: the live gateways.
RENEW = Script(
    "renew",
    _NOW
    + """
local ttl = tonumber(ARGV[2])
local ttl_ms = math.ceil(ttl * 2000)
local exp = num(now + ttl)
redis.call('ZADD', KEYS[1], exp, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', num(now))
redis.call('PEXPIRE', KEYS[1], ttl_ms)
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], exp, ARGV[i + 2])
  redis.call('PEXPIRE', KEYS[i], ttl_ms)
end
return redis.call('ZCARD', KEYS[1])
""",
)

# KEYS: the ledger's leader key, the fleet's work list. ARGV: gateway id, lease in ms. Takes the
# chip-time ledger's leadership when nobody holds it, renews it when this gateway does; the
# leader takes (and empties) the work the others sent. Reply: {1, items} to the leader, {0}.
LEDGER = Script(
    "ledger",
    """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  cur = ARGV[1]
elseif cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if cur ~= ARGV[1] then
  return {0}
end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return {1, items}
""",
)

# KEYS: the prefix's placement key, the fleet's placement stream. ARGV: the replica this gateway
# placed the prefix on, the one it replaced ('' if none), ttl_s, the stream's length, the
# prefix's digest (hex). Compare-and-set: the placement is taken when the prefix has none or
# still has the replaced one; otherwise the fleet's placement stands. Either way the placement
# that holds is published on the stream when it is not what this gateway placed (the others, or
# this gateway, learn it at their next read). Reply: the placement that holds.
PLACE = Script(
    "place",
    """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'd', ARGV[5], 'r', ARGV[1])
  return ARGV[1]
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if cur ~= ARGV[1] then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'd', ARGV[5], 'r', cur)
end
return cur
""",
)

ALL = (CHARGE, ADJUST, ACQUIRE, RENEW, LEDGER, PLACE)
