-- Shared prelude of every bridge-queue script. ARGV[1] key prefix, ARGV[2] now (unix ms),
-- ARGV[3] max attempts, ARGV[4] retention of final commands (ms); script arguments follow.
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local MAX_ATTEMPTS = tonumber(ARGV[3])
local RETENTION = tonumber(ARGV[4])
local DEVICES = P .. ':devices'
local FIELDS = {'id', 'dev', 'type', 'payload', 'status', 'conf', 'attempts', 'created',
  'expires', 'lease', 'rk', 'rv', 'seq', 'dtype', 'timeout'}

local function ckey(id) return P .. ':c:' .. id end
local function dkey(dev) return P .. ':d:' .. dev end
local function record(id) return redis.call('HMGET', ckey(id), unpack(FIELDS)) end

-- A command that became final leaves its device's order and expires after the retention.
local function close(id, dev)
  redis.call('ZREM', dkey(dev), id)
  redis.call('PEXPIRE', ckey(id), RETENTION)
  if redis.call('ZCARD', dkey(dev)) == 0 then redis.call('SREM', DEVICES, dev) end
end

-- Ends expired commands and recovers lapsed leases of one device. Returns the counts and
-- the ids of the commands it ended as expired, in queue order.
local function housekeep(dev)
  local expired, recovered, failed = 0, 0, 0
  local expired_ids = {}
  for _, id in ipairs(redis.call('ZRANGE', dkey(dev), 0, -1)) do
    local k = ckey(id)
    local h = redis.call('HMGET', k, 'status', 'expires', 'lease', 'attempts')
    local status = h[1]
    if not status then
      redis.call('ZREM', dkey(dev), id)
    elseif (status == 'pending' or status == 'awaiting_confirmation')
        and tonumber(h[2]) <= NOW then
      redis.call('HSET', k, 'status', 'expired')
      close(id, dev)
      expired = expired + 1
      expired_ids[expired] = id
    elseif status == 'delivering' and h[3] ~= '' and tonumber(h[3]) <= NOW then
      local new = 'pending'
      if tonumber(h[2]) <= NOW then
        new = 'expired'
        expired = expired + 1
        expired_ids[expired] = id
      elseif tonumber(h[4]) >= MAX_ATTEMPTS then
        new = 'failed'
        failed = failed + 1
      else
        recovered = recovered + 1
      end
      redis.call('HSET', k, 'status', new, 'lease', '')
      if new ~= 'pending' then close(id, dev) end
    end
  end
  if redis.call('ZCARD', dkey(dev)) == 0 then redis.call('SREM', DEVICES, dev) end
  return expired, recovered, failed, expired_ids
end

