"""The engine's Lua scripts: each relay step is one atomic script on one shard.

A script runs on one Redis/Valkey primary (a *shard*) and sees nothing else
run while it does, so each step below is all or nothing. The Python side
(:mod:`msgrlib.relay.engine.backend`) loads them once with ``SCRIPT LOAD``,
calls them with ``EVALSHA`` and loads them again after ``NOSCRIPT`` (the
engine restarted or someone ran ``SCRIPT FLUSH``).

Calling convention (every script but ``init``)::

    ARGV[1] prefix   every key starts with it (default "msgr")
    ARGV[2] epoch    what the caller believes the shard's epoch is; on a
                     mismatch the script changes nothing and fails with
                     "EPOCH <current epoch or empty>": the engine was wiped
    ARGV[3] now      milliseconds; empty means the engine's own clock (TIME),
                     so every relay of a deployment shares one clock. Tests
                     pass a fake clock here.
    ARGV[4...]       the script's own arguments, listed above each script

Out of memory (``maxmemory`` with ``noeviction``), a script is refused at
its first write that could grow memory, before it changed anything; a
deletion (ack, expire, release) goes through. ``lease`` and ``claim`` may
write regardless (``allow-oom``; a few hundred bytes each, bounded by the
nodes and by ``max_names``): a full engine must not make every node look
dead, nor keep out the people whose reading would free it.

Numbers are written into keys and replies through ``string.format('%.0f')``:
Lua 5.1 numbers are doubles and ``tostring`` (which ``redis.call`` uses for
number arguments) keeps 14 significant digits, which would round message ids
(up to 2**53) silently.

Keys (``P`` is the prefix; names are ``[a-z0-9._-]``, so never contain braces)::

    per name, hash tag {name}
    P:{name}:q          ZSET  mailbox: score = message id, member = record
    P:{name}:b          STR   ciphertext bytes waiting (with per-message overhead)
    P:{name}:c          HASH  claim: key, since, node, conn, released, bye
    P:{name}:w          SET   nodes with a connection watching the name
    P:{name}:x          LIST  expiry reports for the name as a sender ("id\nrecipient"),
                              until its connection fetches them (at most claim_ttl)
    P:{a}:hs:{b}        HASH  handshake bucket of the pair a < b (tokens, stamp)
    per shard
    P:epoch             STR   random; set once, gone when the engine is wiped
    P:ids               STR   the message id counter, seeded at random
    P:bytes             STR   ciphertext bytes held on this shard (the budget)
    P:exp               ZSET  expiry index: score = expiry ms, member = "%016d id:recipient"
    P:lapse             ZSET  released claims: score = when they may lapse, member = name
    P:claims            SET   names claimed on this shard (max_names)
    P:nodes             ZSET  node leases: score = lease end ms, member = node id
    P:node:<id>:names   SET   names claimed through that node's connections
    P:node:<id>:watch   SET   names that node watches
    P:share:<share>     STR   bytes held under one store share (sender address, name...)
    on shard 0 only: invite nameplates (PROTOCOL.md 3.6), as the in-memory table
    P:np:<number>       HASH  a waiting invite: owner (name), node, conn, exp (ms)
    P:npexp             ZSET  nameplate expiry: score = exp ms, member = number
    P:npfree            ZSET  numbers freed below P:npnext (smallest taken first)
    P:npnext            STR   the next never-used number (gone: start from 1)
    P:npo:<owner>       SET   the numbers one name holds (max_per_owner)
    P:npjr:<address>    HASH  an address's join budget: tokens, stamp (ms)
    P:node:<id>:np      SET   the numbers held by that node's connections
    channels
    P:n:<node id>       one per relay node on every shard; payloads below

A message record (the member of ``P:{name}:q``), fields separated by newlines,
the body last (it may itself hold newlines)::

    id, sender, kind, ttl (s), expires (ms), size, shares ("a|b", may be empty),
    origin (the sender's address key, may be empty), body

Published payloads (newline-separated; the node routes them to its connections)::

    d <conn> <recipient> <record>  deliver a new message to connection conn
    x <conn> <id> <recipient>   message id to recipient expired unread (to its sender)
    r <conn>                    conn was replaced by a newer connection with the same key
    p <name> <0|1>              presence of name changed (to every watching node)
    j <conn> <number> <joiner>  conn's invite number was joined by joiner
    g <conn> <number>           conn's invite number lapsed unused

Pub/sub only wakes a node; the keys hold the truth. A node re-reads the
mailboxes of its connected names after every (re)subscribe.

Redis Cluster: per-name keys carry the ``{name}`` hash tag, but a send
touches the recipient's keys and the shard's budget and expiry index
together, and a reap walks names that are not declared in ``KEYS``; so the
scripts run on standalone primaries only (several of them make several
shards). A Cluster port would tag the per-shard keys with a per-slot shard.
"""

from __future__ import annotations

# Helpers shared by the scripts. ``chk`` is the epoch guard every script runs
# first, before it changes anything.
PRELUDE = r"""
local P = ARGV[1]
local function S(n) return string.format('%.0f', n) end
local function now_ms()
  if ARGV[3] ~= '' then return tonumber(ARGV[3]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local current = redis.call('GET', P .. ':epoch')
if current ~= ARGV[2] then
  return redis.error_reply('EPOCH ' .. (current or ''))
end
local NOW = now_ms()
local function K(name, what) return P .. ':{' .. name .. '}:' .. what end
-- Take one token from the bucket at key (the relay's TokenBucket, kept in the
-- engine so every node shares it): ok, and the tokens left.
local function take(key, rate, burst)
  local h = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens = burst
  if h[1] then
    tokens = tonumber(h[1]) + (NOW - tonumber(h[2])) / 1000 * rate
    if tokens > burst then tokens = burst end
  end
  local ok = tokens >= 1
  if ok then tokens = tokens - 1 end
  redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'stamp', S(NOW))
  -- A full bucket is the same as no bucket: let the key go once it would be full.
  redis.call('PEXPIRE', key, S(math.ceil((burst - tokens) / rate * 1000) + 1000))
  return ok, tokens
end
local function parse(rec)
  local id, sender, kind, ttl, exp, size, shares, origin, body = string.match(rec,
    '^(%d+)\n([^\n]*)\n([^\n]*)\n(%d+)\n(%d+)\n(%d+)\n([^\n]*)\n([^\n]*)\n(.*)$')
  return {id = id, sender = sender, kind = kind, ttl = ttl, exp = tonumber(exp),
          size = tonumber(size), shares = shares, origin = origin, body = body}
end
local function exp_member(id, to)
  return string.format('%016.0f', tonumber(id)) .. ':' .. to
end
local function publish(node, payload)
  if node and node ~= '' then redis.call('PUBLISH', P .. ':n:' .. node, payload) end
end
local function presence(name, online)
  local nodes = redis.call('SMEMBERS', K(name, 'w'))
  for _, node in ipairs(nodes) do
    publish(node, 'p\n' .. name .. '\n' .. online)
  end
end
-- Messages waiting for a name and not expired (one due but not yet popped by
-- an expirer does not count, as with the in-memory relay's exact timer).
local function live_count(name)
  local n = 0
  for _, rec in ipairs(redis.call('ZRANGE', K(name, 'q'), 0, -1)) do
    if parse(rec).exp > NOW then n = n + 1 end
  end
  return n
end
-- Forget one stored message (its record is rec): mailbox, bytes, shares, index.
local function forget(to, rec)
  local m = parse(rec)
  local q = K(to, 'q')
  redis.call('ZREMRANGEBYSCORE', q, m.id, m.id)
  if redis.call('ZCARD', q) == 0 then
    redis.call('DEL', K(to, 'b'))
  else
    redis.call('DECRBY', K(to, 'b'), S(m.size))
  end
  if redis.call('DECRBY', P .. ':bytes', S(m.size)) <= 0 then
    redis.call('DEL', P .. ':bytes')
  end
  if m.shares ~= '' then
    for share in string.gmatch(m.shares, '[^|]+') do
      local key = P .. ':share:' .. share
      if redis.call('DECRBY', key, S(m.size)) <= 0 then redis.call('DEL', key) end
    end
  end
  redis.call('ZREM', P .. ':exp', exp_member(m.id, to))
  return m
end
-- Keep an expiry report for the sender (whose claim is on this shard, as c:
-- {node, conn}) until its connection fetches, and publish it to its node now if
-- it is connected. Kept for keep ms: pub/sub may miss it, and a sender between
-- two connections would never hear of it otherwise.
local function report(sender, id, to, c, keep)
  local key = K(sender, 'x')
  redis.call('RPUSH', key, id .. '\n' .. to)
  redis.call('LTRIM', key, -10000, -1)
  redis.call('PEXPIRE', key, S(keep))
  if c[2] and c[2] ~= '' then publish(c[1], 'x\n' .. c[2] .. '\n' .. id .. '\n' .. to) end
end
-- Mark a claim released at NOW (no connection); it may lapse claim_ttl later.
local function release(name, bye, claim_ttl)
  redis.call('HSET', K(name, 'c'), 'node', '', 'conn', '', 'released', S(NOW), 'bye', bye)
  redis.call('ZADD', P .. ':lapse', S(NOW + claim_ttl), name)
  presence(name, '0')
end
-- Forget invite nameplate n (a string); its number becomes free. Returns its hash
-- fields {owner, node, conn, exp}, or nil if there is none.
local function forget_plate(n)
  local key = P .. ':np:' .. n
  local h = redis.call('HMGET', key, 'owner', 'node', 'conn', 'exp')
  if not h[1] then return nil end
  redis.call('DEL', key)
  redis.call('ZREM', P .. ':npexp', n)
  redis.call('SREM', P .. ':npo:' .. h[1], n)
  redis.call('SREM', P .. ':node:' .. h[2] .. ':np', n)
  if redis.call('ZCARD', P .. ':npexp') == 0 then
    redis.call('DEL', P .. ':npfree', P .. ':npnext')  -- nothing open: start again from 1
  else
    redis.call('ZADD', P .. ':npfree', n, n)
  end
  return h
end
-- Forget the nameplates due by NOW (at most limit); tell each owner's node "g".
local function expire_plates(limit)
  local due = redis.call('ZRANGEBYSCORE', P .. ':npexp', '-inf', S(NOW), 'LIMIT', 0, limit)
  for _, n in ipairs(due) do
    local h = forget_plate(n)
    if h then publish(h[2], 'g\n' .. h[3] .. '\n' .. n) end
  end
  return #due
end
-- Release every name a node holds and forget what it watches (lease lapsed or node left).
local function drop_node(node, claim_ttl)
  for _, n in ipairs(redis.call('SMEMBERS', P .. ':node:' .. node .. ':np')) do
    forget_plate(n)
  end
  local names_key = P .. ':node:' .. node .. ':names'
  local released = {}
  for _, name in ipairs(redis.call('SMEMBERS', names_key)) do
    if redis.call('HGET', K(name, 'c'), 'node') == node then
      release(name, '0', claim_ttl)
      released[#released + 1] = name
    end
  end
  redis.call('DEL', names_key)
  local watch_key = P .. ':node:' .. node .. ':watch'
  for _, name in ipairs(redis.call('SMEMBERS', watch_key)) do
    redis.call('SREM', K(name, 'w'), node)
  end
  redis.call('DEL', watch_key)
  redis.call('ZREM', P .. ':nodes', node)
  return released
end
"""

#: Create the shard's epoch and id counter unless they exist; reply the epoch.
#: ARGV: prefix, new epoch, first id. No epoch guard: this is how a relay
#: learns the epoch, and how a wiped engine gets a new one.
INIT = r"""
local P = ARGV[1]
redis.call('SET', P .. ':epoch', ARGV[2], 'NX')
redis.call('SET', P .. ':ids', ARGV[3], 'NX')
return redis.call('GET', P .. ':epoch')
"""

#: Claim a name for a connection whose key signature the relay has checked.
#: ARGV[4..]: name, key (base64), node, conn, claim_ttl ms, max_names.
#: Replies:
#:   {'ok', since, old_node, old_conn}   claimed; old_* is the connection with
#:                                      the same key it replaced ('' if none);
#:                                      that node got "r old_conn" already
#:   {'owned', connected 0/1, since, released, bye 0/1, waiting, now}
#:                                      another key holds it
#:   {'full'}                           max_names claims on this shard
CLAIM = "#!lua flags=allow-oom\n" + PRELUDE + r"""
local name, key, node, conn = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local claim_ttl, max_names = tonumber(ARGV[8]), tonumber(ARGV[9])
local ck = K(name, 'c')
local c = redis.call('HMGET', ck, 'key', 'since', 'node', 'conn', 'released', 'bye')
local exists = c[1] ~= false
if exists and c[1] ~= key then
  local waiting = live_count(name)
  if c[4] == '' and NOW - tonumber(c[5]) >= claim_ttl and waiting == 0 then
    redis.call('DEL', ck)
    redis.call('SREM', P .. ':claims', name)
    redis.call('ZREM', P .. ':lapse', name)
    exists = false
  else
    return {'owned', c[4] ~= '' and 1 or 0, c[2], c[5], c[6], waiting, S(NOW)}
  end
end
local since, old_node, old_conn = S(NOW), '', ''
if not exists then
  if redis.call('SCARD', P .. ':claims') >= max_names then return {'full'} end
  redis.call('SADD', P .. ':claims', name)
  redis.call('DEL', K(name, 'x'))  -- a previous key's reports are not this key's business
else
  since = c[2]
  if c[4] ~= '' then
    old_node, old_conn = c[3], c[4]
    redis.call('SREM', P .. ':node:' .. old_node .. ':names', name)
    if old_node ~= node then publish(old_node, 'r\n' .. old_conn) end
    -- As the in-memory relay: the old connection leaves, the new one comes.
    presence(name, '0')
  end
  redis.call('ZREM', P .. ':lapse', name)
end
redis.call('HSET', ck, 'key', key, 'since', since, 'node', node, 'conn', conn,
           'released', '0', 'bye', '0')
redis.call('SADD', P .. ':node:' .. node .. ':names', name)
presence(name, '1')
return {'ok', since, old_node, old_conn}
"""

#: A connection ended: release its name, only if it still holds it.
#: ARGV[4..]: name, node, conn, bye (0/1), claim_ttl ms. Reply 1 if released.
RELEASE = "#!lua flags=allow-oom\n" + PRELUDE + r"""
local name, node, conn = ARGV[4], ARGV[5], ARGV[6]
local c = redis.call('HMGET', K(name, 'c'), 'node', 'conn')
if c[1] ~= node or c[2] ~= conn or conn == '' then return 0 end
redis.call('SREM', P .. ':node:' .. node .. ':names', name)
release(name, ARGV[7], tonumber(ARGV[8]))
return 1
"""

#: Store a message, or refuse it with nothing changed.
#: ARGV[4..]: sender, recipient, kind, ttl s, size, body, origin,
#: mailbox_messages, mailbox_bytes, store limit (for this kind: handshakes may
#: use the reserve), then pairs (share, limit) for each store share.
#: Checked in MemoryStore's order: mailbox count, mailbox bytes, each share,
#: the store. Replies {1, id, expires ms} or {0, why, have, limit[, share]}
#: where why is 'mailbox_messages', 'mailbox_bytes', 'share' or 'store_bytes'.
#: The recipient's node gets "d conn recipient record" when it is connected.
SEND = PRELUDE + r"""
local sender, to, kind = ARGV[4], ARGV[5], ARGV[6]
local ttl, size, body, origin = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], ARGV[10]
local q, b = K(to, 'q'), K(to, 'b')
local count = redis.call('ZCARD', q)
if count >= tonumber(ARGV[11]) then return {0, 'mailbox_messages', count, ARGV[11]} end
local waiting = tonumber(redis.call('GET', b) or '0')
if waiting + size > tonumber(ARGV[12]) then return {0, 'mailbox_bytes', waiting, ARGV[12]} end
local shares = {}
for i = 14, #ARGV - 1, 2 do
  local held = tonumber(redis.call('GET', P .. ':share:' .. ARGV[i]) or '0')
  if held + size > tonumber(ARGV[i + 1]) then
    return {0, 'share', held, ARGV[i + 1], ARGV[i]}
  end
  shares[#shares + 1] = ARGV[i]
end
local total = tonumber(redis.call('GET', P .. ':bytes') or '0')
if total + size > tonumber(ARGV[13]) then return {0, 'store_bytes', total, ARGV[13]} end
local id = redis.call('INCR', P .. ':ids')
local exp = NOW + ttl * 1000
local rec = S(id) .. '\n' .. sender .. '\n' .. kind .. '\n' .. S(ttl) .. '\n' .. S(exp) ..
  '\n' .. S(size) .. '\n' .. table.concat(shares, '|') .. '\n' .. origin .. '\n' .. body
redis.call('ZADD', q, S(id), rec)
redis.call('INCRBY', b, S(size))
redis.call('INCRBY', P .. ':bytes', S(size))
for _, share in ipairs(shares) do redis.call('INCRBY', P .. ':share:' .. share, S(size)) end
redis.call('ZADD', P .. ':exp', S(exp), exp_member(id, to))
local c = redis.call('HMGET', K(to, 'c'), 'node', 'conn')
if c[2] and c[2] ~= '' then publish(c[1], 'd\n' .. c[2] .. '\n' .. to .. '\n' .. rec) end
return {1, id, exp}
"""

#: Acknowledge delivered messages: delete them and release their bytes.
#: Idempotent: unknown ids, ids of others and expired ones are skipped (an
#: expired message is the expirer's, which tells its sender).
#: ARGV[4..]: name, node, conn, ids... Reply: how many were deleted, or -1 if
#: that connection no longer holds the name (nothing changed).
ACK = PRELUDE + r"""
local name = ARGV[4]
local c = redis.call('HMGET', K(name, 'c'), 'node', 'conn')
if c[1] ~= ARGV[5] or c[2] ~= ARGV[6] or ARGV[6] == '' then return -1 end
local q, n = K(name, 'q'), 0
for i = 7, #ARGV do
  local recs = redis.call('ZRANGE', q, ARGV[i], ARGV[i], 'BYSCORE')
  if recs[1] then
    local m = parse(recs[1])
    if m.exp > NOW then
      forget(name, recs[1])
      n = n + 1
    end
  end
end
return n
"""

#: The messages waiting for a name and not yet expired, oldest first, and the
#: expiry reports kept for it (taken: deleted): what a connection is handed
#: when it signs in, resumes, or its node resubscribes.
#: ARGV[4..]: name, node, conn. Reply: {records, reports ("id\nrecipient")},
#: or -1 if that connection does not hold the name.
FETCH = PRELUDE + r"""
local name = ARGV[4]
local c = redis.call('HMGET', K(name, 'c'), 'node', 'conn')
if c[1] ~= ARGV[5] or c[2] ~= ARGV[6] or ARGV[6] == '' then return -1 end
local out = {}
for _, rec in ipairs(redis.call('ZRANGE', K(name, 'q'), 0, -1)) do
  if parse(rec).exp > NOW then out[#out + 1] = rec end
end
local reports = redis.call('LRANGE', K(name, 'x'), 0, -1)
redis.call('DEL', K(name, 'x'))
return {out, reports}
"""

#: Messages waiting for a name, not expired: for name_owned explanations.
#: ARGV[4]: name.
COUNT = PRELUDE + r"""
return live_count(ARGV[4])
"""

#: Pop what is due, at most ``limit`` messages, ``limit`` claims and ``limit``
#: nameplates per call (a lapsed nameplate's owner node gets "g conn number").
#: Expired messages are deleted; when the sender's claim lives on this shard,
#: a report is kept for it (see ``report``) and its node is told "x conn id
#: recipient" if it is connected.
#: Released claims whose claim_ttl has passed are deleted, unless messages
#: still wait for them (then they are looked at again ttl_max later).
#: ARGV[4..]: limit, ttl_max ms, claim_ttl ms.
#: Reply: {now, next deadline ms or -1, n, id1, sender1, recipient1,
#: told1, ...} where told is 1 if the sender's claim is on this shard (else
#: the caller forwards the report with ``notify`` to the sender's shard).
EXPIRE = PRELUDE + r"""
local limit, ttl_max, claim_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}
local due = redis.call('ZRANGEBYSCORE', P .. ':exp', '-inf', S(NOW), 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  local id, to = string.match(member, '^(%d+):(.*)$')
  local recs = redis.call('ZRANGE', K(to, 'q'), id, id, 'BYSCORE')
  redis.call('ZREM', P .. ':exp', member)
  if recs[1] then
    local m = forget(to, recs[1])
    local s = redis.call('HMGET', K(m.sender, 'c'), 'node', 'conn')
    local told = 0
    if s[1] then  -- the sender's claim lives on this shard
      report(m.sender, m.id, to, s, claim_ttl)
      told = 1
    end
    out[#out + 1] = m.id
    out[#out + 1] = m.sender
    out[#out + 1] = to
    out[#out + 1] = told
  end
end
local lapsed = redis.call('ZRANGEBYSCORE', P .. ':lapse', '-inf', S(NOW), 'LIMIT', 0, limit)
for _, name in ipairs(lapsed) do
  local c = redis.call('HMGET', K(name, 'c'), 'conn', 'released')
  if c[1] == false or c[1] ~= '' then
    redis.call('ZREM', P .. ':lapse', name)
  elseif NOW - tonumber(c[2]) < claim_ttl then
    redis.call('ZADD', P .. ':lapse', S(tonumber(c[2]) + claim_ttl), name)
  elseif redis.call('ZCARD', K(name, 'q')) > 0 then
    redis.call('ZADD', P .. ':lapse', S(NOW + ttl_max), name)
  else
    redis.call('DEL', K(name, 'c'))
    redis.call('SREM', P .. ':claims', name)
    redis.call('ZREM', P .. ':lapse', name)
  end
end
expire_plates(limit)
local nxt = -1
local e = redis.call('ZRANGE', P .. ':exp', 0, 0, 'WITHSCORES')
if e[2] then nxt = tonumber(e[2]) end
local np = redis.call('ZRANGE', P .. ':npexp', 0, 0, 'WITHSCORES')
if np[2] and (nxt < 0 or tonumber(np[2]) < nxt) then nxt = tonumber(np[2]) end
local l = redis.call('ZRANGE', P .. ':lapse', 0, 0, 'WITHSCORES')
if l[2] and (nxt < 0 or tonumber(l[2]) < nxt) then nxt = tonumber(l[2]) end
local reply = {NOW, nxt, #out / 4}
for _, v in ipairs(out) do reply[#reply + 1] = v end
return reply
"""

#: Report to a sender whose claim lives on this shard that its message
#: expired (the expirer of another shard forwards here). ARGV[4..]: sender,
#: id, recipient, claim_ttl ms. Reply 1 if the sender has a claim here.
NOTIFY = PRELUDE + r"""
local s = redis.call('HMGET', K(ARGV[4], 'c'), 'node', 'conn')
if s[1] then
  report(ARGV[4], ARGV[5], ARGV[6], s, tonumber(ARGV[7]))
  return 1
end
return 0
"""

#: Start or stop watching a name's presence from a node, or only ask.
#: ARGV[4..]: name, node, '1' to watch, '0' to stop, '?' to ask. Reply: 1 if
#: the name is connected now.
WATCH = PRELUDE + r"""
local name, node = ARGV[4], ARGV[5]
if ARGV[6] == '1' then
  redis.call('SADD', K(name, 'w'), node)
  redis.call('SADD', P .. ':node:' .. node .. ':watch', name)
elseif ARGV[6] == '0' then
  redis.call('SREM', K(name, 'w'), node)
  redis.call('SREM', P .. ':node:' .. node .. ':watch', name)
end
local conn = redis.call('HGET', K(name, 'c'), 'conn')
return (conn and conn ~= '') and 1 or 0
"""

#: Take one token from the handshake bucket of a pair of names (a < b): the
#: same token bucket as the relay's TokenBucket, kept in the engine so every
#: node shares it. ARGV[4..]: a, b, rate per s, burst, and optionally the
#: tokens a whole attempt needs. Reply 1 (taken), or when refused minus the
#: milliseconds until the bucket holds that many (at most the burst), or 0
#: if it never refills or no attempt size was given.
HANDSHAKE = PRELUDE + r"""
local rate, burst = tonumber(ARGV[6]), tonumber(ARGV[7])
local ok, tokens = take(K(ARGV[4], 'hs:' .. ARGV[5]), rate, burst)
if ok then return 1 end
local need = tonumber(ARGV[8])
if not need or not (rate > 0) then return 0 end
if need > burst then need = burst end
return -math.max(1, math.ceil((need - tokens) / rate * 1000))
"""

#: Renew this node's lease, then release the names of nodes whose lease lapsed.
#: Allowed when the engine is out of memory (a lease is a few bytes): a full
#: engine must not make every node look dead.
#: ARGV[4..]: node, lease ms, mode, reap limit, claim_ttl ms. Mode 'join'
#: registers the node, 'renew' fails with {-1} if the node is not registered
#: (its lease lapsed and another node released its names), 'leave' drops the
#: node now (clean shutdown). Reply {1, reaped node, n names, names..., ...}.
LEASE = "#!lua flags=allow-oom\n" + PRELUDE + r"""
local node, lease, mode = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local limit, claim_ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
if mode == 'leave' then
  local names = drop_node(node, claim_ttl)
  local reply = {1, node, #names}
  for _, name in ipairs(names) do reply[#reply + 1] = name end
  return reply
end
if mode == 'renew' and not redis.call('ZSCORE', P .. ':nodes', node) then return {-1} end
redis.call('ZADD', P .. ':nodes', S(NOW + lease), node)
local reply = {1}
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', '(' .. S(NOW),
                                 'LIMIT', 0, limit)) do
  local names = drop_node(dead, claim_ttl)
  reply[#reply + 1] = dead
  reply[#reply + 1] = #names
  for _, name in ipairs(names) do reply[#reply + 1] = name end
end
return reply
"""

#: A new invite nameplate for a connection (on shard 0), the smallest free
#: number as the in-memory table gives. ARGV[4..]: owner, node, conn, ttl ms,
#: max_per_owner, max_nameplates. Reply {number, exp ms}, {'too_many'} or {'full'}.
NP_ALLOCATE = PRELUDE + r"""
local owner, node, conn = ARGV[4], ARGV[5], ARGV[6]
expire_plates(1000)
if redis.call('SCARD', P .. ':npo:' .. owner) >= tonumber(ARGV[8]) then return {'too_many'} end
if redis.call('ZCARD', P .. ':npexp') >= tonumber(ARGV[9]) then return {'full'} end
local n
local free = redis.call('ZPOPMIN', P .. ':npfree')
if free[1] then n = free[1] else n = S(redis.call('INCR', P .. ':npnext')) end
local exp = NOW + tonumber(ARGV[7])
redis.call('HSET', P .. ':np:' .. n, 'owner', owner, 'node', node, 'conn', conn, 'exp', S(exp))
redis.call('ZADD', P .. ':npexp', S(exp), n)
redis.call('SADD', P .. ':npo:' .. owner, n)
redis.call('SADD', P .. ':node:' .. node .. ':np', n)
return {tonumber(n), exp}
"""

#: The second side joins nameplate number: it is freed, and its owner's node
#: gets "j conn number joiner". ARGV[4..]: number, joiner, then (optional)
#: origin, rate /s, burst: the joiner's address's join budget, shared by every
#: node (each join uses an invite up, right code or not).
#: Reply {'ok', owner}, {'none'} (unknown, used or lapsed), {'own'} or
#: {'rate'} (the address's budget is spent; nothing else changed).
NP_JOIN = PRELUDE + r"""
local n, joiner = ARGV[4], ARGV[5]
if ARGV[6] and not take(P .. ':npjr:' .. ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])) then
  return {'rate'}
end
expire_plates(1000)
local owner = redis.call('HGET', P .. ':np:' .. n, 'owner')
if not owner then return {'none'} end
if owner == joiner then return {'own'} end
local h = forget_plate(n)
publish(h[2], 'j\n' .. h[3] .. '\n' .. n .. '\n' .. joiner)
return {'ok', owner}
"""

#: The inviter cancels: ARGV[4..]: number, owner. Reply 1, or 0 if owner holds
#: no such number. With number '*' and ARGV[6..] node, conn: every nameplate
#: that connection holds (it ended); reply how many.
NP_CANCEL = PRELUDE + r"""
local n, owner = ARGV[4], ARGV[5]
if n ~= '*' then
  expire_plates(1000)  -- a lapsed one is not cancelled: its owner hears "g" (as in memory)
  if redis.call('HGET', P .. ':np:' .. n, 'owner') ~= owner then return 0 end
  forget_plate(n)
  return 1
end
local count = 0
for _, m in ipairs(redis.call('SMEMBERS', P .. ':npo:' .. owner)) do
  local h = redis.call('HMGET', P .. ':np:' .. m, 'node', 'conn')
  if h[1] == ARGV[6] and h[2] == ARGV[7] then
    forget_plate(m)
    count = count + 1
  end
end
return count
"""

#: Every script by name, as the backend loads them.
SCRIPTS: dict[str, str] = {
    "init": INIT, "claim": CLAIM, "release": RELEASE, "send": SEND, "ack": ACK,
    "fetch": FETCH, "count": COUNT, "expire": EXPIRE, "notify": NOTIFY, "watch": WATCH,
    "handshake": HANDSHAKE, "lease": LEASE, "np_allocate": NP_ALLOCATE, "np_join": NP_JOIN,
    "np_cancel": NP_CANCEL,
}
