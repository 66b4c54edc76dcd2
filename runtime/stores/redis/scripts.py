"""The Lua scripts: every multi-key change stint makes to Redis is one of these.

Each script is one atomic step on the server, so a compare-and-set never spans
two round trips, and each takes many items per call so a batch costs one round
trip. Every script gets the key prefix (``"<prefix>:"``) as ``ARGV[1]`` and builds
key names from it the way ``keys.py`` does; docs/cluster.md describes the data.

A record is a hash ``P t:<id>`` with fields ``rec`` (the record blob, opaque
here), ``status``, ``fn``, ``created``, ``owner`` (node id, or "" when no node
holds it), ``epoch`` (the fencing token: +1 on every change of owner), ``sid``
(the id of its entry in the function's stream, or "") and ``wtok`` (the token of
the last write, so a write resent after a lost reply is recognised).

Scripts touch keys they build from their arguments rather than declaring them
in KEYS: that is fine on a single Redis server (or a primary with replicas), and
is why Redis Cluster is not supported.
"""

from __future__ import annotations

import dataclasses
import hashlib

# Flags of one transition (transition_batch): what else happens with the status change.
ACK = 1  #: the attempt is over: acknowledge and delete the task's stream entry
RELEASE = 2  #: give the task up (owner "", epoch + 1) and queue it again, now or when due
FINAL = 4  #: terminal: the record expires after max_age, its index entries later
UNQUEUE = 8  #: take a queued task out of the stream and the due set (stopped while queued)
NOTIFY = 16  #: tell the owner on its control stream (a stop requested from another node)
WATCHED = 32  #: someone on the writing node waits on the task it gives up: see WATCH_TTL_MS

#: How long an interest in a task's changes lasts (``P w:<task>``). A change is published
#: on ``P changed`` only for a task someone off its owner waits on (or while a join runs,
#: ``P joining``): every node reads every message. Waiters read again, and renew it, at
#: least every second, so a few seconds outlive them.
WATCH_TTL_MS = 5000

# The helpers the scripts share, as pieces: each script's source is its own body after
# only the pieces it uses (and what those use), since a script runs all of its source on
# every call (each ``local function`` is a closure built per call). _BASE comes first
# in every script.
_BASE = r"""
local P = ARGV[1]
local GROUP = 'workers'
local SEP = '\0'
local function tkey(id) return P .. 't:' .. id end
local function qkey(fn) return P .. 'q:' .. fn end
"""

_PIECES: dict[str, tuple[tuple[str, ...], str]] = {}  # name: (pieces it uses, source)


def _piece(name: str, uses: tuple[str, ...], source: str) -> None:
    _PIECES[name] = (uses, source)


_piece(
    "terminal",
    (),
    r"""
local TERMINAL = {Expired = true, Invalid = true, Failed = true, Succeeded = true, Stopped = true}
""",
)

_piece(
    "now",
    (),
    r"""
-- Redis' clock: one clock for every node's due times. A runtime built with a test's
-- ManualClock pins it (P clock, in ms) so that due times follow that clock instead; such
-- a runtime passes pinned = '1' (any other runtime: '', and the key is not read).
local function now_ms(pinned)
  if pinned == '1' then
    local v = redis.call('GET', P .. 'clock')
    if v then return tonumber(v) end
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
""",
)

_piece(
    "later",
    (),
    r"""
local function later(book, key, a, b)  -- append a (and b) to book[key]
  local list = book[key]
  if not list then list = {}; book[key] = list end
  list[#list + 1] = a
  if b ~= nil then list[#list + 1] = b end
end
-- cmd key [arg] <list...>, in calls of at most step list items (unpack has a limit).
local function each_chunk(cmd, key, arg, list, step)
  for i = 1, #list, step do
    local last = math.min(i + step - 1, #list)
    if arg then redis.call(cmd, key, arg, unpack(list, i, last))
    else redis.call(cmd, key, unpack(list, i, last)) end
  end
end
""",
)

_piece(
    "index",
    ("later",),
    r"""
-- Index changes are collected over a script and applied as one ZREM or ZADD per key
-- (both take many members): a script's cost is mostly per call, not per member. The
-- removals go before the additions, which is right while each task moves once per
-- flush: a task moved a second time flushes what is pending first.
local zadds, zrems, moved = {}, {}, {}
local function flush_index()
  for key, ids in pairs(zrems) do each_chunk('ZREM', key, nil, ids, 2000) end
  for key, pairs_ in pairs(zadds) do each_chunk('ZADD', key, nil, pairs_, 2000) end
  zadds, zrems, moved = {}, {}, {}
end
local function index_add(key, score, id) later(zadds, key, score, id) end

-- The status index keys (P i:st:<status>, P i:fs:<fn>:<status>), built once per call.
local st_keys, fs_keys = {}, {}
local function status_keys(fn, status)
  local st = st_keys[status]
  if not st then st = P .. 'i:st:' .. status; st_keys[status] = st end
  local by_fn = fs_keys[fn]
  if not by_fn then by_fn = {}; fs_keys[fn] = by_fn end
  local fs = by_fn[status]
  if not fs then fs = P .. 'i:fs:' .. fn .. ':' .. status; by_fn[status] = fs end
  return st, fs
end

-- Move a task between the status indexes (all and by-function stay as they are).
local function move_status(id, fn, created, old, new)
  if old == new then return end
  if moved[id] then flush_index() end
  moved[id] = true
  if old then
    local st, fs = status_keys(fn, old)
    later(zrems, st, id)
    later(zrems, fs, id)
  end
  local st, fs = status_keys(fn, new)
  later(zadds, st, created, id)
  later(zadds, fs, created, id)
end
""",
)

_piece(
    "group",
    (),
    r"""
-- The workers group of stream q as a table of XINFO GROUPS fields, or nil (no stream,
-- no group).
local function group_of(q)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', q)
  for _, g in ipairs(ok and groups or {}) do
    local info = {}
    for k = 1, #g, 2 do info[g[k]] = g[k + 1] end
    if info['name'] == GROUP then return info end
  end
  return nil
end
""",
)

_piece(
    "ack",
    ("later", "group"),
    r"""
-- Acknowledge an entry. Acknowledgements are collected and sent as one XACK per stream
-- at the end of the script (trim_acked), where acknowledged entries are also trimmed,
-- which costs far less than an XDEL per entry.
local acked = {}
local function ack(q, eid) later(acked, q, eid) end

local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

-- Send the acknowledgements and trim every stream they were in: entries below both the
-- oldest pending one and the group's last delivered one are all acknowledged (whole
-- nodes go: '~').
local function trim_acked()
  for q, ids in pairs(acked) do
    each_chunk('XACK', q, GROUP, ids, 2000)
    local ok, summary = pcall(redis.call, 'XPENDING', q, GROUP)
    local info = ok and group_of(q) or nil
    if info then
      local ms, seq = id_parts(info['last-delivered-id'])
      local keep = ms .. '-' .. (seq + 1)
      if summary[1] > 0 then
        local pms, pseq = id_parts(summary[2])
        if pms < ms or (pms == ms and pseq <= seq) then keep = summary[2] end
      end
      redis.call('XTRIM', q, 'MINID', '~', keep)
    end
  end
end
""",
)

_piece(
    "push",
    (),
    r"""
-- Append a task to its function's stream, creating stream and group on first use (XADD
-- NOMKSTREAM answers nil when there is no stream). A stream that exists without its
-- group (lost data) gets the group back where it is read (take_new). pushed[q] is the
-- id of the last entry this call appended to q: the stream's last entry (the script is
-- atomic).
local pushed, queued = {}, {}
local function push(fn, id)
  local q = qkey(fn)
  local eid = redis.call('XADD', q, 'NOMKSTREAM', '*', 't', id)
  if not eid then
    redis.call('XGROUP', 'CREATE', q, GROUP, '0', 'MKSTREAM')
    redis.call('SADD', P .. 'qs', fn)
    eid = redis.call('XADD', q, '*', 't', id)
  end
  pushed[q] = eid
  queued[fn] = true
  return eid
end

-- A function's bell (P b:<fn>, a capped stream) rings when a call queued entries for it
-- that the call's own take did not empty again: nodes waiting for work block on the
-- bells (XREAD), not on the streams, so a node that runs what it invokes wakes nobody,
-- itself included. Each call that pushes ends with ring_queued().
local settled = {}  -- functions rung by this call, or emptied again by its own take
local function ring(fn)
  settled[fn] = true
  return redis.call('XADD', P .. 'b:' .. fn, 'MAXLEN', '~', 100, '*', 'r', '1')
end
local function ring_queued()
  for fn in pairs(queued) do
    if not settled[fn] then ring(fn) end
  end
end
-- The id of the bell's last ring ("0-0" if none): a node waits for rings after it.
local function last_ring(fn)
  local last = redis.call('XREVRANGE', P .. 'b:' .. fn, '+', '-', 'COUNT', 1)
  return last[1] and last[1][1] or '0-0'
end
""",
)

_piece(
    "undelivered",
    (),
    r"""
-- Entries of stream q not yet delivered to any node, given its group (counting stops at
-- cap + 1 when deletions hide the group's lag). Without its group (lost with Redis'
-- data, given back at the next read) none was delivered: all of them.
local function undelivered(q, info, cap)
  if not info then return redis.call('XLEN', q) end
  if info['lag'] then return info['lag'] end
  return #redis.call('XRANGE', q, '(' .. info['last-delivered-id'], '+', 'COUNT', cap + 1)
end
""",
)

_piece(
    "claim",
    ("terminal", "ack"),
    r"""
-- The stream entry eid (of task id) was delivered to node: take the task if it may.
-- Returns {id, eid, epoch, status, rec, previous owner} or nil. Rules:
--   record gone, entry stale (not the record's current one) or task finished: drop the entry;
--   no owner (queued), or an owner whose heartbeat is gone (dead node): take it, epoch + 1;
--   owned by node itself: take it only when adopting (node lost the reply that gave it);
--   owned by another live node (a duplicate delivery): hand the entry back to that node.
-- fresh: the records the calling script stores (INVOKE_BATCH), by id, not written yet:
-- one of them is claimed in that table (it is written after) and comes without its blob
-- (the invoking node has the record).
local function claim(q, eid, id, node, adopt, fresh)
  local new = fresh and fresh[id]
  if new and new.sid == eid then
    new.owner, new.epoch = node, 1
    return {id, eid, 1, 'Enqueued', '', ''}
  end
  local key = tkey(id)
  local h = redis.call('HMGET', key, 'status', 'owner', 'sid', 'rec', 'epoch')
  local status, owner = h[1], h[2]
  if not status or h[3] ~= eid or TERMINAL[status] then
    ack(q, eid)
    return nil
  end
  if owner == node then
    if not adopt then return nil end
  elseif owner ~= '' and redis.call('EXISTS', P .. 'node:' .. owner) == 1 then
    redis.call('XCLAIM', q, GROUP, owner, 0, eid, 'JUSTID')
    return nil
  end
  local epoch = (tonumber(h[5]) or 0) + 1
  redis.call('HSET', key, 'owner', node, 'epoch', epoch)
  return {id, eid, epoch, status, h[4], owner}
end

local function append(out, item)
  for _, v in ipairs(item) do out[#out + 1] = v end
end
""",
)

_piece(
    "take_new",
    ("claim", "push"),
    r"""
-- For node, read at most count new entries of each function's stream (fn, count pairs
-- from args[first] on) and claim their tasks (see claim for fresh). A stream the calling
-- script appended to (push) is not looked up again: pushed has its last entry.
-- Returns {-1} when node's heartbeat is gone (a lapsed node takes no work), else {1,
-- then per function: fn, last entry id ("0-0" if none), its bell's last ring, n, then n
-- claimed items}. A function this call queued entries for is rung here unless the take
-- read them all (settled either way). The caller calls trim_acked() after.
local function take_new(node, args, first, fresh)
  if redis.call('EXISTS', P .. 'node:' .. node) == 0 then return {-1} end
  local out = {1}
  for i = first, #args, 2 do
    local fn, count = args[i], args[i + 1]
    local q = qkey(fn)
    local got = {}
    local wanted = tonumber(count)
    local top = pushed and pushed[q]  -- the stream exists and this is its last entry
    local more = top ~= nil or redis.call('EXISTS', q) == 1
    local last_read = nil
    while more and #got < 6 * wanted do  -- skipped entries do not count: read on
      local ask = wanted - #got / 6
      local ok, res = pcall(redis.call, 'XREADGROUP', 'GROUP', GROUP, node, 'COUNT', ask,
        'STREAMS', q, '>')
      if not ok then
        if not string.find(tostring(res.err or res), 'NOGROUP', 1, true) then error(res) end
        redis.call('XGROUP', 'CREATE', q, GROUP, '0')  -- the group was lost: deliver all again
        res = redis.call('XREADGROUP', 'GROUP', GROUP, node, 'COUNT', ask, 'STREAMS', q, '>')
      end
      local entries = res and res[1][2] or {}
      for _, e in ipairs(entries) do
        last_read = e[1]
        local item = e[2] and claim(q, e[1], e[2][2], node, false, fresh)
        if item then append(got, item) end
      end
      more = #entries == ask
    end
    if not top then
      local last = redis.call('XREVRANGE', q, '+', '-', 'COUNT', 1)
      top = last[1] and last[1][1] or '0-0'
    end
    local bell
    if queued[fn] and more and last_read ~= top then
      bell = ring(fn)  -- entries this call queued are left for other nodes
    else
      if queued[fn] then settled[fn] = true end  -- its own take emptied the stream again
      bell = last_ring(fn)
    end
    out[#out + 1] = fn
    out[#out + 1] = top
    out[#out + 1] = bell
    out[#out + 1] = #got / 6
    append(out, got)
  end
  return out
end
""",
)


def _prelude(uses: tuple[str, ...]) -> str:
    """_BASE, then the pieces named (and the ones they use), each once, used ones first."""
    order: list[str] = []

    def add(name: str) -> None:
        if name in order:
            return
        needs, _ = _PIECES[name]
        for need in needs:
            add(need)
        order.append(name)

    for name in uses:
        add(name)
    return _BASE + "".join(_PIECES[name][1] for name in order)


# ARGV: P, items: a msgpack array of [id, fn, created, blob, delay_ms ("" = queue now),
# max_queued (0 = no limit)], pinned ('1' if the caller's clock is pinned in Redis, see
# now_ms), then optionally node and fn, count pairs: once the items are queued, node
# (the invoking one, with free slots) takes up to count new entries of each fn as FETCH
# would, in the same call.
# Returns {codes, taken}: one code per item (1 stored, 2 the id exists, 3 the function
# is not registered, 4 the function's queue already holds max_queued entries not yet
# delivered), and what FETCH would return for the taking ({} if nothing was asked).
INVOKE_BATCH = r"""
local out, changed = {}, {}
local fns = P .. 'fns'
local now = nil
local depths = {}  -- per function, read once per call and counted up as tasks are queued
local known = {}  -- per function: is it registered (looked up once per call)
-- The records this call stores, written once the taking below is done: one HSET each,
-- with the owner and epoch a take gives them.
local stored = {}
local all_key, fn_keys = P .. 'i:all', {}
for _, item in ipairs(cmsgpack.unpack(ARGV[2])) do
  local id, fn, created, blob, due, cap = item[1], item[2], item[3], item[4], item[5], item[6]
  local key = tkey(id)
  if cap > 0 and due == '' and depths[fn] == nil then
    depths[fn] = undelivered(qkey(fn), group_of(qkey(fn)), cap)
  end
  if known[fn] == nil then known[fn] = redis.call('SISMEMBER', fns, fn) == 1 end
  if stored[id] or redis.call('EXISTS', key) == 1 then
    out[#out + 1] = 2
  elseif not known[fn] then
    out[#out + 1] = 3
  elseif cap > 0 and due == '' and depths[fn] >= cap then
    out[#out + 1] = 4
  else
    local sid = ''
    if due == '' then
      sid = push(fn, id)
      if depths[fn] then depths[fn] = depths[fn] + 1 end
    else
      now = now or now_ms(ARGV[3])
      redis.call('ZADD', P .. 'due', now + tonumber(due), fn .. SEP .. id)
    end
    stored[id] = {blob = blob, fn = fn, created = created, sid = sid, owner = '', epoch = 0}
    local fn_key = fn_keys[fn]
    if not fn_key then fn_key = P .. 'i:fn:' .. fn; fn_keys[fn] = fn_key end
    index_add(all_key, created, id)
    index_add(fn_key, created, id)
    move_status(id, fn, created, nil, 'Enqueued')
    out[#out + 1] = 1
    changed[#changed + 1] = id
  end
end
flush_index()
-- (no PUBLISH on the change feed: nothing waits on a task before it exists, and every
-- node would parse the message of every invoke call)
local taken = {}
if ARGV[4] then  -- the invoking node has the records it stored: no blob comes back
  taken = take_new(ARGV[4], ARGV, 5, stored)
  trim_acked()
end
ring_queued()
for _, id in ipairs(changed) do
  local r = stored[id]
  redis.call('HSET', tkey(id), 'rec', r.blob, 'status', 'Enqueued', 'fn', r.fn,
    'created', r.created, 'owner', r.owner, 'epoch', r.epoch, 'sid', r.sid, 'wtok', '')
end
return {out, taken}
"""

# ARGV: P, node (the writer), max_age_ms, items: a msgpack array of [id, expected status,
# expected owner, expected epoch, new status, blob, flags, delay_ms ("" = now), write token],
# pinned (see INVOKE_BATCH).
# Returns two values per item: code, detail. Codes: 1 written; 2 already written (the
# token matched: a resend after a lost reply); 0 missing; -1 fenced (detail: current
# "owner epoch"); -2 conflict (detail: current status).
# Publishes the ids written that someone waits on (P w:<id>), or all of them while a join
# runs somewhere (P joining).
TRANSITION_BATCH = r"""
local node, max_age = ARGV[2], tonumber(ARGV[3])
local out, changed = {}, {}
local now = nil
local everyone = redis.call('EXISTS', P .. 'joining') == 1
for _, item in ipairs(cmsgpack.unpack(ARGV[4])) do
  local id = item[1]
  local key = tkey(id)
  local h = redis.call('HMGET', key, 'status', 'owner', 'epoch', 'fn', 'created', 'sid', 'wtok')
  local status, owner, epoch, token = h[1], h[2], h[3], item[9]
  if not status then
    out[#out + 1] = 0; out[#out + 1] = ''
  elseif token ~= '' and h[7] == token then
    out[#out + 1] = 2; out[#out + 1] = status
  elseif owner ~= item[3] or epoch ~= item[4] then
    out[#out + 1] = -1; out[#out + 1] = owner .. ' ' .. epoch
  elseif status ~= item[2] then
    out[#out + 1] = -2; out[#out + 1] = status
  else
    local fn, created, sid = h[4], h[5], h[6]
    local new, flags, due = item[5], item[7], item[8]
    if TERMINAL[new] then flags = bit.bor(flags, 4) end  -- a terminal status is always FINAL
    local fields = {'rec', item[6], 'status', new, 'wtok', token}
    move_status(id, fn, created, status, new)
    if sid ~= '' and bit.band(flags, 15) ~= 0 then  -- ACK, RELEASE, FINAL or UNQUEUE
      ack(qkey(fn), sid)
      if bit.band(flags, 8) ~= 0 then  -- UNQUEUE: an entry not yet delivered goes at once
        redis.call('XDEL', qkey(fn), sid)
      end
      sid = ''
    end
    if bit.band(flags, 8) ~= 0 or (owner == '' and bit.band(flags, 4) ~= 0) then
      redis.call('ZREM', P .. 'due', fn .. SEP .. id)  -- (only an unowned task can be due)
    end
    if bit.band(flags, 2) ~= 0 then  -- RELEASE
      fields[#fields + 1] = 'owner'; fields[#fields + 1] = ''
      fields[#fields + 1] = 'epoch'; fields[#fields + 1] = (tonumber(epoch) or 0) + 1
      if due == '' then
        sid = push(fn, id)
      else
        now = now or now_ms(ARGV[5])
        redis.call('ZADD', P .. 'due', now + tonumber(due), fn .. SEP .. id)
      end
    end
    fields[#fields + 1] = 'sid'; fields[#fields + 1] = sid
    redis.call('HSET', key, unpack(fields))
    if bit.band(flags, 4) ~= 0 then  -- FINAL
      now = now or now_ms(ARGV[5])
      redis.call('PEXPIRE', key, max_age)
      index_add(P .. 'ended', now + max_age, fn .. SEP .. new .. SEP .. id)
    end
    if bit.band(flags, 16) ~= 0 and owner ~= '' then  -- NOTIFY
      redis.call('XADD', P .. 'ctl:' .. owner, 'MAXLEN', '~', 100000, '*', 't', id, 'by', node)
    end
    out[#out + 1] = 1; out[#out + 1] = ''
    local watch = P .. 'w:' .. id
    if bit.band(flags, 32) ~= 0 then  -- WATCHED
      redis.call('SET', watch, '1', 'PX', WATCH_TTL_MS)
      changed[#changed + 1] = id
    elseif everyone or redis.call('EXISTS', watch) == 1 then
      changed[#changed + 1] = id
    end
  end
end
flush_index()
trim_acked()
ring_queued()
if #changed > 0 then redis.call('PUBLISH', P .. 'changed', table.concat(changed, ' ')) end
return out
"""

# ARGV: P, node, then per function: fn, count. Reads at most count new entries of each
# function's stream for node and claims their tasks (``take_new`` above).
# Returns {-1} when node's heartbeat is gone (a lapsed node takes no work), else
# {1, then per function: fn, last entry id ("0-0" if none), the id of its bell's last ring
# ("0-0" if none: wait for rings after it), n, then n claimed items}.
FETCH = r"""
local out = take_new(ARGV[2], ARGV, 3)
trim_acked()
return out
"""

# ARGV: P, node, entries: a msgpack array of [fn, entry id, task id] (entries of node's
# own pending list that node does not hold: it lost the reply that gave them). Claims
# each as FETCH would, taking the ones node already owns too. Returns the claimed items.
ADOPT = r"""
local node = ARGV[2]
local out = {}
for _, e in ipairs(cmsgpack.unpack(ARGV[3])) do
  local item = claim(qkey(e[1]), e[2], e[3], node, true)
  if item then append(out, item) end
end
trim_acked()
return out
"""

# ARGV: P, limit, pinned (see INVOKE_BATCH). Moves every due member (due time <= the
# server's now), up to limit, into its function's stream: the ZREM and the XADD happen
# together, so exactly once.
# Returns {moved, ms until the next one is due (0 if due already) or ""}.
MOVE_DUE = r"""
local due = P .. 'due'
local now = now_ms(ARGV[3])
local members = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, ARGV[2])
local moved = 0
for _, m in ipairs(members) do
  redis.call('ZREM', due, m)
  local cut = string.find(m, SEP, 1, true)
  if cut then
    local fn, id = string.sub(m, 1, cut - 1), string.sub(m, cut + 1)
    local key = tkey(id)
    local h = redis.call('HMGET', key, 'status', 'owner')
    if h[1] and not TERMINAL[h[1]] and h[2] == '' then
      redis.call('HSET', key, 'sid', push(fn, id))
      moved = moved + 1
    end
  end
end
ring_queued()
local nxt = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
if not nxt[2] then return {moved, ''} end
return {moved, tostring(math.max(0, tonumber(nxt[2]) - now))}
"""

# ARGV: P, dead, live, ttl_ms. Returns 1 (live now holds the reclaim lock), 0 (another
# node holds it), -1 (dead is alive again), -2 (dead was reclaimed already).
RECLAIM_LOCK = r"""
local dead, live = ARGV[2], ARGV[3]
if redis.call('EXISTS', P .. 'node:' .. dead) == 1 then return -1 end
if redis.call('SISMEMBER', P .. 'nodes', dead) == 0 then return -2 end
if redis.call('SET', P .. 'reclaim:' .. dead, live, 'NX', 'PX', ARGV[4]) then return 1 end
return 0
"""

# ARGV: P, dead, live, fn, start ("-" or "(<entry id>"), count, ttl_ms. Moves up to count
# of dead's pending entries of fn's stream to live and claims their tasks.
# Returns {-2} lock lost, {-3} dead is alive again, else {1, next start or "", items...}.
RECLAIM_PAGE = r"""
local dead, live, fn, count = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[6])
local lock = P .. 'reclaim:' .. dead
if redis.call('GET', lock) ~= live then return {-2} end
if redis.call('EXISTS', P .. 'node:' .. dead) == 1 then return {-3} end
redis.call('PEXPIRE', lock, ARGV[7])
local q = qkey(fn)
if redis.call('EXISTS', q) == 0 then return {1, ''} end
local ok, pending = pcall(redis.call, 'XPENDING', q, GROUP, ARGV[5], '+', count, dead)
if not ok then return {1, ''} end  -- no group: nothing is pending
local out = {1, ''}
local last = nil
for _, p in ipairs(pending) do
  last = p[1]
  local got = redis.call('XCLAIM', q, GROUP, live, 0, last)
  local e = got[1]
  if e and e[2] then  -- (an entry deleted meanwhile: XCLAIM dropped it from the list)
    local item = claim(q, last, e[2][2], live, false)
    if item then append(out, item) end
  end
end
if #pending >= count then out[2] = '(' .. last end
trim_acked()
return out
"""

# ARGV: P, dead, live. After every page: if nothing of dead is pending anywhere, forget
# dead (consumer, node set, control stream, lock) and return 1; 0 = entries are left
# (run another pass); -2 lock lost; -3 dead is alive again.
RECLAIM_FINISH = r"""
local dead, live = ARGV[2], ARGV[3]
local lock = P .. 'reclaim:' .. dead
if redis.call('GET', lock) ~= live then return -2 end
if redis.call('EXISTS', P .. 'node:' .. dead) == 1 then return -3 end
local fns = redis.call('SMEMBERS', P .. 'qs')
for _, fn in ipairs(fns) do
  local ok, pending = pcall(redis.call, 'XPENDING', qkey(fn), GROUP, '-', '+', 1, dead)
  if ok and #pending > 0 then return 0 end
end
for _, fn in ipairs(fns) do
  pcall(redis.call, 'XGROUP', 'DELCONSUMER', qkey(fn), GROUP, dead)
end
redis.call('SREM', P .. 'nodes', dead)
redis.call('DEL', P .. 'ctl:' .. dead, lock)
return 1
"""

# ARGV: P, index key suffix, order ("desc"|"asc"), after, before ("" = unbounded; both
# exclusive), id prefix (""), limit, scan budget, cursor score, cursor member ("" = start).
# Walks the index in order from the cursor, returns {next score, next member ("" when
# the index is exhausted), blobs...}; index members whose record is gone are removed.
LIST_PAGE = r"""
local function byte_cmp(a, b)  -- as Redis orders members (memcmp), whatever the locale
  for k = 1, math.min(#a, #b) do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y and -1 or 1 end
  end
  if #a == #b then return 0 end
  return #a < #b and -1 or 1
end
local idx = P .. ARGV[2]
local desc = ARGV[3] == 'desc'
local after, before = tonumber(ARGV[4]), tonumber(ARGV[5])
local prefix, limit, budget = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local cs, cm = tonumber(ARGV[9]), ARGV[10]
local rank, skip_from = 0, nil
if cm ~= '' then
  local r
  if desc then r = redis.call('ZREVRANK', idx, cm) else r = redis.call('ZRANK', idx, cm) end
  if r then
    rank = r + 1
  else  -- the cursor's member went: start at its score and skip what was seen
    if desc then rank = redis.call('ZCOUNT', idx, '(' .. ARGV[9], '+inf')
    else rank = redis.call('ZCOUNT', idx, '-inf', '(' .. ARGV[9]) end
    skip_from = cm
  end
elseif desc and before then
  rank = redis.call('ZCOUNT', idx, ARGV[5], '+inf')
elseif not desc and after then
  rank = redis.call('ZCOUNT', idx, '-inf', ARGV[4])
end
local out = {'', ''}
local gone = {}
local scanned = 0
local chunk = math.min(math.max(limit, 16), 256)
local done = false
while not done do
  local page
  if desc then page = redis.call('ZREVRANGE', idx, rank, rank + chunk - 1, 'WITHSCORES')
  else page = redis.call('ZRANGE', idx, rank, rank + chunk - 1, 'WITHSCORES') end
  if #page == 0 then out[1], out[2] = '', ''; break end
  for j = 1, #page, 2 do
    local m, s = page[j], page[j + 1]
    local score = tonumber(s)
    if (desc and after and score <= after) or (not desc and before and score >= before) then
      out[1], out[2] = '', ''; done = true; break
    end
    local seen = false
    if skip_from and score == cs then  -- equal scores are in byte order of their members
      local c = byte_cmp(m, skip_from)
      seen = (desc and c >= 0) or (not desc and c <= 0)
    end
    if not seen and (prefix == '' or string.sub(m, 1, #prefix) == prefix) then
      local blob = redis.call('HGET', tkey(m), 'rec')
      if blob then out[#out + 1] = blob else gone[#gone + 1] = m end
    end
    scanned = scanned + 1
    out[1], out[2] = s, m
    if #out - 2 >= limit or scanned >= budget then done = true; break end
  end
  rank = rank + chunk
end
for _, m in ipairs(gone) do redis.call('ZREM', idx, m) end
return out
"""

# ARGV: P, limit, pinned (see INVOKE_BATCH). Forgets up to limit finished records whose
# retention ran out: their index entries go once the record itself has expired. Returns
# how many went.
SWEEP_ENDED = r"""
local ended = P .. 'ended'
local members = redis.call('ZRANGEBYSCORE', ended, '-inf', now_ms(ARGV[3]), 'LIMIT', 0,
  ARGV[2])
local removed = 0
for _, m in ipairs(members) do
  local a = string.find(m, SEP, 1, true)
  local b = a and string.find(m, SEP, a + 1, true)
  if not b then
    redis.call('ZREM', ended, m)
  else
    local fn, status = string.sub(m, 1, a - 1), string.sub(m, a + 1, b - 1)
    local id = string.sub(m, b + 1)
    local ttl = redis.call('PTTL', tkey(id))
    if ttl == -2 then  -- expired: its index entries go too
      redis.call('ZREM', P .. 'i:all', id)
      redis.call('ZREM', P .. 'i:fn:' .. fn, id)
      redis.call('ZREM', P .. 'i:st:' .. status, id)
      redis.call('ZREM', P .. 'i:fs:' .. fn .. ':' .. status, id)
      redis.call('ZREM', ended, m)
      removed = removed + 1
    elseif ttl == -1 then  -- the id was taken again by a new record: not this entry's
      redis.call('ZREM', ended, m)
    end
  end
end
return removed
"""

# ARGV: P, node, lease_ms, mode ("join"|"beat"), then field, value pairs of the node hash.
# Returns 1 ok, 2 came back after its lease lapsed (tasks reclaimed meanwhile are no
# longer its own), -1 lapsed and being reclaimed now (try again), -2 id taken (join).
NODE_BEAT = r"""
local node, lease, mode = ARGV[2], ARGV[3], ARGV[4]
local key = P .. 'node:' .. node
local code = 1
if redis.call('EXISTS', key) == 1 then
  if mode == 'join' then return -2 end
else
  if redis.call('EXISTS', P .. 'reclaim:' .. node) == 1 then return -1 end
  if mode == 'beat' then code = 2 end
end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
redis.call('PEXPIRE', key, lease)
redis.call('SADD', P .. 'nodes', node)
return code
"""

# ARGV: P, name, kind, config, now, node. Records a function cluster-wide (the last
# registration's kind and config win) and makes sure its stream and group exist.
REGISTER_FUNCTION = r"""
local name = ARGV[2]
local key = P .. 'fn:' .. name
local new = redis.call('HSETNX', key, 'registered_at', ARGV[5])
redis.call('HSET', key, 'kind', ARGV[3], 'config', ARGV[4], 'updated_at', ARGV[5],
  'updated_by', ARGV[6])
redis.call('SADD', P .. 'fns', name)
local q = qkey(name)
if redis.call('EXISTS', q) == 0 then
  redis.call('XGROUP', 'CREATE', q, GROUP, '0', 'MKSTREAM')
end
redis.call('SADD', P .. 'qs', name)
return new
"""

# ARGV: P, name. Returns 1 if it was registered. Its stream stays (attempts under way
# acknowledge into it, a reclaim follows it); its queued tasks are the caller's to end.
DELETE_FUNCTION = r"""
local existed = redis.call('SREM', P .. 'fns', ARGV[2])
redis.call('DEL', P .. 'fn:' .. ARGV[2], P .. 'b:' .. ARGV[2])
return existed
"""

# ARGV: P, then function names. Returns per function: entries not yet delivered (the
# group's lag, counted up to 100000 when Redis cannot tell), entries pending.
QUEUE_STATS = r"""
local out = {}
for i = 2, #ARGV do
  local q = qkey(ARGV[i])
  local info = group_of(q)
  out[#out + 1] = undelivered(q, info, 99999)
  out[#out + 1] = info and info['pending'] or 0
end
return out
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Script:
    """One Lua script: its name (for errors), full source and SHA1 (for EVALSHA)."""

    name: str
    source: str
    sha: str


def _script(name: str, body: str, *uses: str) -> Script:
    """The script ``body`` after the prelude of the pieces it uses (see _prelude)."""
    source = _prelude(uses) + body
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


invoke_batch = _script(
    "invoke_batch", INVOKE_BATCH, "now", "index", "push", "undelivered", "group", "take_new", "ack"
)
transition_batch = _script(
    "transition_batch",
    TRANSITION_BATCH.replace("WATCH_TTL_MS", str(WATCH_TTL_MS)),
    "terminal",
    "now",
    "index",
    "ack",
    "push",
)
fetch = _script("fetch", FETCH, "take_new", "ack")
adopt = _script("adopt", ADOPT, "claim", "ack")
move_due = _script("move_due", MOVE_DUE, "terminal", "now", "push")
reclaim_lock = _script("reclaim_lock", RECLAIM_LOCK)
reclaim_page = _script("reclaim_page", RECLAIM_PAGE, "claim", "ack")
reclaim_finish = _script("reclaim_finish", RECLAIM_FINISH)
list_page = _script("list_page", LIST_PAGE)
sweep_ended = _script("sweep_ended", SWEEP_ENDED, "now")
node_beat = _script("node_beat", NODE_BEAT)
register_function = _script("register_function", REGISTER_FUNCTION)
delete_function = _script("delete_function", DELETE_FUNCTION)
queue_stats = _script("queue_stats", QUEUE_STATS, "group", "undelivered")

ALL = (
    invoke_batch,
    transition_batch,
    fetch,
    adopt,
    move_due,
    reclaim_lock,
    reclaim_page,
    reclaim_finish,
    list_page,
    sweep_ended,
    node_beat,
    register_function,
    delete_function,
    queue_stats,
)
