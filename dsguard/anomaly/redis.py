"""``redis://``: callers' windows, baselines and sanctions shared by every replica.

Each store call is one round trip: :data:`RECORD` and :data:`LEARN` are Lua scripts (EVALSHA,
loaded again after a Redis restart) that update and read atomically, so replicas recording the
same caller at once count every call. Under ``dsguard:an:<caller>``:

- ``:w:<slot>`` a hash of the slot's sums, and ``:r|m|i:<slot>`` HyperLogLogs of its routes,
  models and addresses (distinct counts over the window are one ``PFCOUNT`` of the slots), all
  expiring a slot after the window has passed them;
- ``:k`` the caller's last arrival, gap statistics and own baseline (expires after ``retention``
  idle);
- ``:s`` the sanction, expiring when it ends.

The population baseline is the hash ``dsguard:an:population``. The baseline arithmetic mirrors
:mod:`dsguard.anomaly.baseline` step for step (IEEE doubles on both sides). Every failure, and every
call longer than the storage timeout, is a :class:`~dsguard.storage.StorageError`. A Redis
Cluster is not supported (a caller's keys are named inside the scripts).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from ..storage import StorageError
from ..storage.redis import FAILURES, PREFIX, RedisConnection
from .baseline import HOURS, MAD_SCALE, STEP, Baseline
from .features import FEATURE_NAMES, FLOORS, GAP_ALPHA, Event, WindowStats
from .store import Sanction, Snapshot, StoreSettings

NAMESPACE = PREFIX + "an:"
POPULATION = NAMESPACE + "population"

RECORD = """
local function num(x) return string.format('%.17g', x) end
local base, now, index = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local slots, slot_ttl, retention = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window, gap_alpha = tonumber(ARGV[7]), tonumber(ARGV[8])
local denied, tokens, prompt = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local asked, route, model, ip, population = tonumber(ARGV[12]), ARGV[13], ARGV[14], ARGV[15], ARGV[16]

local caller = base .. ':k'
local state = redis.call('HMGET', caller, 'last', 'since', 'gn', 'gm', 'gv')
local last, since = tonumber(state[1]), tonumber(state[2]) or now
local gaps, mean, var = tonumber(state[3]) or 0, tonumber(state[4]) or 0, tonumber(state[5]) or 0
if last == nil or now - last > window then since = now end
if last ~= nil then
  local gap = math.min(math.max(now - last, 0), window)
  if gaps == 0 then
    mean, var = gap, 0
  else
    local alpha = math.max(1 / (gaps + 1), gap_alpha)
    local delta = gap - mean
    mean = mean + alpha * delta
    var = (1 - alpha) * (var + alpha * delta * delta)
  end
  gaps = gaps + 1
end
redis.call('HSET', caller, 'last', num(now), 'since', num(since), 'gn', gaps, 'gm', num(mean), 'gv', num(var))
redis.call('PEXPIRE', caller, retention)

local slot = base .. ':w:' .. index
redis.call('HINCRBY', slot, 'n', 1)
redis.call('HINCRBY', slot, 'd', denied)
redis.call('HINCRBYFLOAT', slot, 't', tokens)
if prompt >= 0 then
  redis.call('HINCRBY', slot, 'p', 1)
  redis.call('HINCRBYFLOAT', slot, 'pt', prompt)
end
if asked >= 0 then
  redis.call('HINCRBY', slot, 'b', 1)
  redis.call('HINCRBYFLOAT', slot, 'a', asked)
end
redis.call('PEXPIRE', slot, slot_ttl)
for kind, value in pairs({r = route, m = model, i = ip}) do
  if value ~= '' then
    local key = base .. ':' .. kind .. ':' .. index
    redis.call('PFADD', key, value)
    redis.call('PEXPIRE', key, slot_ttl)
  end
end

local sums = {0, 0, 0, 0, 0, 0, 0}
local distinct = {r = {}, m = {}, i = {}}
for s = index - slots + 1, index do
  local row = redis.call('HMGET', base .. ':w:' .. s, 'n', 'd', 't', 'p', 'pt', 'b', 'a')
  for f = 1, 7 do sums[f] = sums[f] + (tonumber(row[f]) or 0) end
  for kind, keys in pairs(distinct) do table.insert(keys, base .. ':' .. kind .. ':' .. s) end
end
return {num(sums[1]), num(sums[2]), num(sums[3]), num(sums[4]), num(sums[5]), num(sums[6]), num(sums[7]),
        redis.call('PFCOUNT', unpack(distinct.r)), redis.call('PFCOUNT', unpack(distinct.m)),
        redis.call('PFCOUNT', unpack(distinct.i)), num(since), gaps, num(mean), num(var),
        redis.call('HGETALL', caller), redis.call('HGETALL', population)}
"""

LEARN = """
local function num(x) return string.format('%.17g', x) end
local function weight(count, span) return math.max(1 / (count + 1), 1 / span) end
local function sign(x) if x > 0 then return 1 elseif x < 0 then return -1 end return 0 end
local base, population, now, interval = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local population_span, identity_span, hour = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local retention, step_size, mad_scale = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local hours = tonumber(ARGV[11])
local caller = base .. ':k'
local learned = tonumber(redis.call('HGET', caller, 'learned'))
if learned ~= nil and now - learned < interval then return 0 end

local function learn(hash, span)
  local observations = tonumber(redis.call('HGET', hash, 'n')) or 0
  local alpha = weight(observations, span)
  local names = {}
  for h = 0, hours - 1 do names[h + 1] = 'h' .. h end
  local shares = redis.call('HMGET', hash, unpack(names))
  local fields = {'n', observations + 1}
  for h = 0, hours - 1 do
    local share = (tonumber(shares[h + 1]) or 0) * (1 - alpha)
    if h == hour then share = share + alpha end
    table.insert(fields, names[h + 1])
    table.insert(fields, num(share))
  end
  for i = 12, #ARGV, 3 do
    local name, value, floor = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    local stat = redis.call('HMGET', hash, name .. ':n', name .. ':c', name .. ':s')
    local count, center, scale = tonumber(stat[1]) or 0, tonumber(stat[2]) or 0, tonumber(stat[3]) or 0
    if count == 0 then
      center = value
    else
      local step = step_size * weight(count, span) * math.max(scale, floor)
      center = center + step * sign(value - center)
      scale = math.max(0, scale + step * sign(mad_scale * math.abs(value - center) - scale))
    end
    for _, item in ipairs({name .. ':n', count + 1, name .. ':c', num(center), name .. ':s', num(scale)}) do
      table.insert(fields, item)
    end
  end
  redis.call('HSET', hash, unpack(fields))
end

learn(population, population_span)
learn(caller, identity_span)
redis.call('HSET', caller, 'learned', num(now))
redis.call('PEXPIRE', caller, retention)
return 1
"""


def _sha1(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


def _fields(items: Sequence[Any]) -> dict[str, bytes]:
    return {items[i].decode(): items[i + 1] for i in range(0, len(items), 2)}


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisStore:
    """Callers under ``dsguard:an:`` in one Redis database."""

    def __init__(self, url: str, settings: StoreSettings) -> None:
        self.settings = settings
        self.connection = RedisConnection(url)
        self.location = self.connection.location
        self.timeout = self.connection.timeout
        self._shas = {RECORD: _sha1(RECORD), LEARN: _sha1(LEARN)}

    def _failure(self, exc: BaseException) -> StorageError:
        reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        return StorageError(f"redis at {self.location} did not answer: {reason}")

    async def _script(self, script: str, args: Sequence[str | int | float]) -> Any:
        client = self.connection.client()
        sha = self._shas[script]
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await client.evalsha(sha, 0, *args)
                except NoScriptError:
                    await client.script_load(script)
                    return await client.evalsha(sha, 0, *args)
        except (*FAILURES, TimeoutError) as exc:
            raise self._failure(exc) from None

    async def record(self, key: str, event: Event, now: float) -> Snapshot:
        settings = self.settings
        index = math.floor(now / settings.slot_seconds)
        reply = await self._script(RECORD, [
            NAMESPACE + key, repr(now), index, settings.slots,
            _milliseconds((settings.slots + 1) * settings.slot_seconds), _milliseconds(settings.retention),
            repr(settings.window), repr(GAP_ALPHA), int(event.denied), event.tokens,
            -1 if event.prompt_tokens is None else event.prompt_tokens,
            -1 if event.max_tokens is None else event.max_tokens,
            event.route, event.model or "", event.ip or "", POPULATION])
        stats = WindowStats(
            requests=int(float(reply[0])), denied=int(float(reply[1])), tokens=float(reply[2]),
            prompts=int(float(reply[3])), prompt_tokens=float(reply[4]), budgets=int(float(reply[5])),
            max_tokens=float(reply[6]), routes=int(reply[7]), models=int(reply[8]), ips=int(reply[9]),
            since=float(reply[10]), gaps=int(reply[11]), gap_mean=float(reply[12]), gap_var=float(reply[13]))
        return Snapshot(stats, Baseline.from_fields(_fields(reply[15]), FEATURE_NAMES),
                        Baseline.from_fields(_fields(reply[14]), FEATURE_NAMES))

    async def learn(self, key: str, values: Mapping[str, float | None], hour: int, now: float) -> bool:
        settings = self.settings
        args: list[str | int | float] = [
            NAMESPACE + key, POPULATION, repr(now), repr(settings.slot_seconds), settings.population_span,
            settings.identity_span, hour, _milliseconds(settings.retention), repr(STEP), repr(MAD_SCALE), HOURS]
        for name, value in values.items():
            if value is not None:
                args += [name, repr(value), repr(FLOORS[name])]
        return bool(await self._script(LEARN, args))

    async def sanction(self, key: str, sanction: Sanction, now: float) -> None:
        value = json.dumps({"score": sanction.score, "reasons": sanction.reasons, "until": sanction.until})
        try:
            async with asyncio.timeout(self.timeout):
                await self.connection.client().set(NAMESPACE + key + ":s", value,
                                                   px=_milliseconds(sanction.until - now))
        except (*FAILURES, TimeoutError) as exc:
            raise self._failure(exc) from None

    async def sanction_of(self, key: str, now: float) -> Sanction | None:
        try:
            async with asyncio.timeout(self.timeout):
                value = await self.connection.client().get(NAMESPACE + key + ":s")
        except (*FAILURES, TimeoutError) as exc:
            raise self._failure(exc) from None
        if value is None:
            return None
        try:
            data = json.loads(value)
            sanction = Sanction(float(data["score"]), tuple(str(r) for r in data["reasons"]), float(data["until"]))
        except (ValueError, KeyError, TypeError):
            return None
        return sanction if sanction.until > now else None

    async def close(self) -> None:
        await self.connection.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r})"
