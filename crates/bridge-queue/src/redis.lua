-- Shared prelude of every bridge-queue script. ARGV[1] key prefix, ARGV[2] now (unix ms),
-- ARGV[3] max attempts, ARGV[4] retention of final commands (ms); script arguments follow.
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local MAX_ATTEMPTS = tonumber(ARGV[3])
local RETENTION = tonumber(ARGV[4])
local DEVICES = P .. ':devices'
-- 'token' (the lease counter) and 'owner' (the lease holder) are missing from hashes
-- written before leases were fenced; they read as no token and no owner. 'by' (the party
-- that queued the command) is missing from hashes written before it was kept; it reads as
-- 'backend' (see `queued_by`). 'hops' (how far the latest attempt got, PROTOCOL.md 4.1,
-- 1.1) is missing until an attempt recorded it, and from hashes written before; it reads
-- as no stage.
local FIELDS = {'id', 'dev', 'type', 'payload', 'status', 'conf', 'attempts', 'created',
  'expires', 'lease', 'rk', 'rv', 'seq', 'dtype', 'timeout', 'token', 'owner', 'by', 'hops'}
-- The statuses of commands that are not final; each has a set of its commands' ids.
local OPEN = {awaiting_confirmation = true, pending = true, delivering = true}

local function ckey(id) return P .. ':c:' .. id end
local function dkey(dev) return P .. ':d:' .. dev end
local function skey(status) return P .. ':s:' .. status end
local function record(id) return redis.call('HMGET', ckey(id), unpack(FIELDS)) end
-- The party that queued a command: 'backend' or 'user:<id>'; a hash written before the
-- party was kept was the backend's (the only party that could queue then).
local function queued_by(by) return by or 'backend' end

-- Sets a command's status and moves its id between the per-status sets (open_counts).
local function set_status(id, old, new)
  redis.call('HSET', ckey(id), 'status', new)
  if old == new then return end
  if OPEN[old] then redis.call('SREM', skey(old), id) end
  if OPEN[new] then redis.call('SADD', skey(new), id) end
end

-- Forgets an id whose hash is gone, whatever its status was.
local function forget(id, dev)
  redis.call('ZREM', dkey(dev), id)
  for status in pairs(OPEN) do redis.call('SREM', skey(status), id) end
end

-- The final commands by TTL (`purge` deletes those whose retention is over).
local FINAL = P .. ':final'

-- A command that became final leaves its device's order, joins the final commands by TTL,
-- and its hash expires when its retention is over (its TTL plus the retention; at least a
-- minute from now, so that the script that ended it can still read it back). `purge`
-- deletes it at that time by the store's clock; the key's own expiry is the backstop.
local function close(id, dev)
  redis.call('ZREM', dkey(dev), id)
  local expires = tonumber(redis.call('HGET', ckey(id), 'expires') or NOW)
  redis.call('ZADD', FINAL, expires, id)
  redis.call('PEXPIREAT', ckey(id), math.max(expires + RETENTION, NOW + 60000))
  if redis.call('ZCARD', dkey(dev)) == 0 then redis.call('SREM', DEVICES, dev) end
end

-- The status a delivery that was cut off goes to, with its attempts counted.
local function after_cut(attempts, expires)
  if tonumber(expires) <= NOW then return 'expired' end
  if attempts >= MAX_ATTEMPTS then return 'failed' end
  return 'pending'
end

-- Ends a delivering command's lease as lapsed: one attempt is counted (whether the write
-- left is unknown, so it is assumed), and it goes back to pending, or ends failed or
-- expired. Returns the new status.
local function lapse(id, dev)
  local k = ckey(id)
  local h = redis.call('HMGET', k, 'attempts', 'expires')
  local attempts = tonumber(h[1]) + 1
  local new = after_cut(attempts, h[2])
  redis.call('HSET', k, 'attempts', attempts, 'lease', '', 'owner', '')
  set_status(id, 'delivering', new)
  if new ~= 'pending' then close(id, dev) end
  return new
end

-- Ends expired commands and recovers lapsed leases of one device. Returns the counts and
-- the ids of the commands it ended as expired, in queue order.
local function housekeep(dev)
  local expired, recovered, failed = 0, 0, 0
  local expired_ids = {}
  for _, id in ipairs(redis.call('ZRANGE', dkey(dev), 0, -1)) do
    local k = ckey(id)
    local h = redis.call('HMGET', k, 'status', 'expires', 'lease')
    local status = h[1]
    if not status then
      forget(id, dev)
    elseif (status == 'pending' or status == 'awaiting_confirmation')
        and tonumber(h[2]) <= NOW then
      set_status(id, status, 'expired')
      close(id, dev)
      expired = expired + 1
      expired_ids[expired] = id
    elseif status == 'delivering' and h[3] and h[3] ~= '' and tonumber(h[3]) <= NOW then
      local new = lapse(id, dev)
      if new == 'expired' then
        expired = expired + 1
        expired_ids[expired] = id
      elseif new == 'failed' then
        failed = failed + 1
      else
        recovered = recovered + 1
      end
    end
  end
  if redis.call('ZCARD', dkey(dev)) == 0 then redis.call('SREM', DEVICES, dev) end
  return expired, recovered, failed, expired_ids
end
