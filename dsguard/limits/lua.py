"""The Lua scripts behind ``redis://`` limits: each decision is one atomic script, timed by Redis.

Keys hold a bucket's theoretical arrival time in microseconds of the Redis server's clock
(``TIME``), so replicas with skewed clocks still share one timeline. A key expires when its
bucket would be full again, which is the same as its absence.
"""

from __future__ import annotations

# KEYS[i]: bucket i. ARGV[3i-2]: microseconds one unit takes to refill; ARGV[3i-1]: capacity in
# units; ARGV[3i]: units this call takes. All or none: nothing is written unless every bucket has
# room. Reply: {admitted (1/0), then per bucket: units remaining, ms until full, ms to wait}.
ACQUIRE = """
redis.replicate_commands()
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local n = #KEYS
local tats, arrivals = {}, {}
local admitted = 1
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local arrival = tat + tonumber(ARGV[3 * i]) * interval
  if arrival - now - tonumber(ARGV[3 * i - 1]) * interval > 0.001 then admitted = 0 end
  tats[i], arrivals[i] = tat, arrival
end
local reply = {admitted}
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local horizon = tonumber(ARGV[3 * i - 1]) * interval
  local tat, wait = tats[i], 0
  if admitted == 1 then
    tat = arrivals[i]
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
    end
  else
    wait = arrivals[i] - now - horizon
    if wait < 0 then wait = 0 end
  end
  local remaining = math.floor((horizon - (tat - now)) / interval + 0.000001)
  if remaining < 0 then remaining = 0 end
  reply[3 * i - 1] = remaining
  reply[3 * i] = math.ceil((tat - now) / 1000)
  reply[3 * i + 1] = math.ceil(wait / 1000)
end
return reply
"""

# KEYS[i]: bucket i. ARGV[2i-1]: microseconds one unit takes to refill; ARGV[2i]: units to charge,
# negative to refund. Unconditional: a refund never fills a bucket past full, a charge may overdraw it.
ADJUST = """
redis.replicate_commands()
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  tat = tat + tonumber(ARGV[2 * i]) * tonumber(ARGV[2 * i - 1])
  if tat > now then
    redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  else
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""
