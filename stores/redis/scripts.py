"""Every Lua script the Redis store runs, named, with its keys and arguments.

Each script touches keys of one hash slot only (Redis Cluster runs it on one node); the key
names are built in `stores/redis/keys.py`. Writes that a resend must not repeat carry a write
token and leave it behind: redis-py sends a command again when its reply is late, though the
first one may have run, and the second must then change nothing
(tests/reliability/test_redis_slow_reply.py).

script: KEYS / ARGV -> reply
- `WRITE_TURN`: history, meta, conversation usage, pending set, lock / write token, turns to
  keep, idle TTL s, usage token ('' none), prompt, completion, place ('' none), lock token
  ('' none), turn 1..n (JSON) -> 1 appended, 0 resent or no turns
- `RECORD`: counter hashes 1..n (one slot) / prompt, completion, total, each key's TTL s,
  token -> 1 added, 0 resent
- `TOKEN_BUCKET`: the user's bucket / capacity, refill per ms, cost, token
  -> {allowed 0/1, ms until allowed}
- `APPLY_SUMMARY`: history, meta, conversation usage / summary, TTL s, prompt, completion,
  token, n, turn 1..n -> 1 applied, 0 the history changed meanwhile
- `FIRST_SEEN`: the delivery's seen key / token, TTL s -> 1 first seen, 0 a duplicate
- `CLAIM_PLACE`: the conversation's seen key, its pending set / token, seen TTL s, place,
  pending TTL ms -> {first seen 0/1, the place just ahead or false}
- `TAKE`: the conversation's lock / the turn's token, TTL ms -> 1 taken (or ours), 0 held
- `RELEASE`: the conversation's lock / the turn's token -> 1 released, 0 not ours
- `ERASE_TURNS`: a history / a user id -> how many turns it removed (theirs and the answer
  after each)
- `APPEND`: a partition's stream, the delivery's seen key there / token, seen TTL s, the
  message (JSON) -> the entry id (also to a resend), false a duplicate
- `RETAKE`: the conversation's seen key, its pending set / `order:delivery:` -> 'new' never
  claimed, 'done' recorded, or the place of the worker that claimed it and did not record it
- `RESET`: the same keys / that place -> 1 (the delivery is unclaimed again)
- `JOURNAL_CLAIM`: a journal hash, the entry's claim key / entry id, the claim's token
  -> 1 claimed by us, 0 another claimant was first
"""

from __future__ import annotations

from redis.asyncio.lock import Lock

# Everything a turn writes in its conversation's slot, atomically, in one command: on a
# Cluster it needs no MULTI (redis-py's cluster transactions resolve each queued command's
# slot on a private event loop in a worker thread, blocking the bot's loop meanwhile).
WRITE_TURN = """
local appended = 0
if #ARGV >= 9 and redis.call('HGET', KEYS[2], 'written') ~= ARGV[1] then
  for first = 9, #ARGV, 4000 do  -- unpack() has a limit of about 8000 values
    redis.call('RPUSH', KEYS[1], unpack(ARGV, first, math.min(first + 3999, #ARGV)))
  end
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
  redis.call('HSET', KEYS[2], 'written', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  appended = 1
end
if ARGV[4] ~= '' then
  local written = redis.call('HGET', KEYS[3], 'written') or ''
  if not string.find(written, ARGV[4], 1, true) then
    redis.call('HSET', KEYS[3], 'written', string.sub(ARGV[4] .. ' ' .. written, 1, 16 * 17))
    redis.call('HINCRBY', KEYS[3], 'prompt', ARGV[5])
    redis.call('HINCRBY', KEYS[3], 'completion', ARGV[6])
    redis.call('HINCRBY', KEYS[3], 'total', tonumber(ARGV[5]) + tonumber(ARGV[6]))
    redis.call('EXPIRE', KEYS[3], ARGV[3])
  end
end
if ARGV[7] ~= '' then redis.call('ZREM', KEYS[4], ARGV[7]) end
if ARGV[8] ~= '' and redis.call('GET', KEYS[5]) == ARGV[8] then redis.call('DEL', KEYS[5]) end
return appended
"""

# Usage counters: a conversation's, or a user's day and month (one slot: the user's tag).
# The last key keeps its last 16 tokens in `written`, newest first: the user's other turns
# (in other conversations) may write between a command and its resend.
RECORD = """
local n = #KEYS
local token = ARGV[4 + n]
local written = redis.call('HGET', KEYS[n], 'written') or ''
if string.find(written, token, 1, true) then return 0 end
redis.call('HSET', KEYS[n], 'written', string.sub(token .. ' ' .. written, 1, 16 * 17))
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'prompt', ARGV[1])
  redis.call('HINCRBY', KEYS[i], 'completion', ARGV[2])
  redis.call('HINCRBY', KEYS[i], 'total', ARGV[3])
  if tonumber(ARGV[5 + n] or '0') > 0 then redis.call('HINCRBY', KEYS[i], 'images', ARGV[5 + n]) end
  redis.call('EXPIRE', KEYS[i], ARGV[3 + i])
end
return 1
"""

# Atomic, in Redis server time (the bot hosts' clocks do not matter). A take sent again after
# a late reply finds its token and takes nothing twice; `taken` keeps the last 16 tokens.
TOKEN_BUCKET = """
local taken = redis.call('HGET', KEYS[1], 'taken') or ''
if string.find(taken, ARGV[4], 1, true) then return {1, 0} end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
if allowed == 1 then
  redis.call('HSET', KEYS[1], 'taken', string.sub(ARGV[4] .. ' ' .. taken, 1, 16 * 17))
end
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) + 1000)
return {allowed, wait}
"""

# The token is also left in meta's `summarized` once the turns are folded: a retry then
# neither reports the summary as skipped nor folds turns that repeat the folded ones.
APPLY_SUMMARY = """
if redis.call('HGET', KEYS[2], 'summarized') == ARGV[5] then return 1 end
local n = tonumber(ARGV[6])
local total = tonumber(ARGV[3]) + tonumber(ARGV[4])
local written = redis.call('HGET', KEYS[3], 'written') or ''
if total > 0 and not string.find(written, ARGV[5], 1, true) then
  redis.call('HINCRBY', KEYS[3], 'prompt', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'completion', ARGV[4])
  redis.call('HINCRBY', KEYS[3], 'total', total)
  redis.call('HSET', KEYS[3], 'written', string.sub(ARGV[5] .. ' ' .. written, 1, 16 * 17))
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
local head = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #head ~= n then return 0 end
for i = 1, n do
  if head[i] ~= ARGV[6 + i] then return 0 end
end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('HSET', KEYS[2], 'summary', ARGV[1], 'summarized', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# A resent claim finds its own token and still sees the delivery as new, not as a duplicate.
FIRST_SEEN = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if held == ARGV[1] then return 1 end
return 0
"""

# The place is `order:delivery:owner`; the one returned sorts just before it. Resent: as
# FIRST_SEEN.
CLAIM_PLACE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return {0, false} end
if not held then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local ahead = redis.call('ZREVRANGEBYLEX', KEYS[2], '(' .. ARGV[3], '-', 'LIMIT', 0, 1)
return {1, ahead[1] or false}
"""

# Takes a free lock, or renews it when it already holds this turn's token: a take whose reply
# was lost and is retried must not wait for itself.
TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Deletes the lock only while it still holds this turn's token (redis-py's own).
RELEASE = Lock.LUA_RELEASE_SCRIPT

# HDEL is the atomic claim, so several replicas never take the same entry; the claim key
# (same slot: built from the journal key) remembers whose it was, for a resent claim.
JOURNAL_CLAIM = """
if redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', 3600)
return 1
"""

# A person's turns (`u`: their id) and the answer right after each leave a shared history;
# the rest stays in order, with the history's TTL.
ERASE_TURNS = """
local turns = redis.call('LRANGE', KEYS[1], 0, -1)
local kept, removed, answer_next = {}, 0, false
for i = 1, #turns do
  local ok, turn = pcall(cjson.decode, turns[i])
  if ok and turn['u'] == ARGV[1] then
    removed = removed + 1
    answer_next = true
  elseif answer_next and ok and turn['r'] == 'assistant' and turn['u'] == nil then
    removed = removed + 1
    answer_next = false
  else
    answer_next = false
    kept[#kept + 1] = turns[i]
  end
end
if removed > 0 then
  local ttl = redis.call('PTTL', KEYS[1])
  redis.call('DEL', KEYS[1])
  for first = 1, #kept, 4000 do
    redis.call('RPUSH', KEYS[1], unpack(kept, first, math.min(first + 3999, #kept)))
  end
  if ttl > 0 and #kept > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return removed
"""

# The ingress's dedupe and the append in one step: a message is in the stream exactly when its
# delivery is marked seen. The seen key keeps `token|entry id`, so a resend gets the same id.
APPEND = """
local held = redis.call('GET', KEYS[2])
if held then
  local token, id = string.match(held, '^([^|]*)|(.*)$')
  if token == ARGV[1] then return id end
  return false
end
local id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[3])
redis.call('SET', KEYS[2], ARGV[1] .. '|' .. id, 'EX', ARGV[2])
return id
"""

# A worker takes up an entry another worker read and never acknowledged. Its place (claimed
# with the delivery's seen key, removed in the turn's write) says how far that worker got:
# never claimed, recorded, or the place itself (whose owner may still be answering it).
RETAKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'new' end
local found = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. ARGV[1], '[' .. ARGV[1] .. '\\255')
if #found == 0 then return 'done' end
return found[1]
"""

# The place's owner is gone: reset, so the entry is claimed and answered anew.
RESET = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""
