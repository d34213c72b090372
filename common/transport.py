"""Redis Streams transport: at-least-once delivery, exactly-once effect by id.

Parts and who owns what:
- ``Keys``: every Redis key of a run, under the hash tag ``luffy:{run}:`` (one cluster slot).
- ``Resilient``: wraps a redis client; retries calls forever with capped exponential back-off
  when Redis goes away and reports ``connected`` (services use it for /readyz).
- ``StreamPublisher``: XADDs entries ``{k: id, d: payload}``; creates the stream's consumer
  group first so nothing published is ever trimmed before that group acked it.
- ``StreamConsumer``: owns one consumer name in one group. ``fetch`` returns new entries plus
  entries reclaimed (XAUTOCLAIM) from consumers idle longer than ``claim_idle_ms``; entries
  that are malformed, oversized, undecodable or delivered more than ``max_deliveries`` times go
  to ``deadletter`` with the reason. ``commit`` writes a batch's outputs, acks the inputs and
  records their ids in one Lua script (atomic), so a re-delivered or re-published id is acked
  without producing output twice.
- ``trim_acked``: XTRIM MINID below the oldest entry any group still needs.

State: all durable state lives in Redis (streams, pending lists, the ``done:<group>`` sorted
sets of processed ids). Consumers keep only counters.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import redis

from common.config import RedisConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# stream name -> the consumer group that reads it (DESIGN.md wire protocol)
STREAM_GROUPS = {"prompts": "generators", "rollouts": "verifiers", "scored": "learner"}
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
_ERROR_TTL_S = 24 * 3600
_COMMIT_CHUNK = 500
_FORGET_EVERY_MS = 10_000
_MAX_KEY = 256
# Above this mean payload size, copying entries through Lua costs more than parsing nested
# replies: publish and read switch to plain pipelined XADD / XREADGROUP (measured crossover).
_FLAT_MAX_BYTES = 4096


# (entry id, key or None, payload or None, times delivered)
_Entry = tuple[str, "bytes | None", "bytes | None", int]


def _entries(rows: list) -> list[_Entry]:
    """Nested XREADGROUP/XAUTOCLAIM rows -> flat entries (deleted entries have no fields)."""
    out: list[_Entry] = []
    for eid, fields in rows:
        if fields is not None:
            out.append((eid.decode(), fields.get(b"k"), fields.get(b"d"), 1))
    return out


def _valid_key(key: bytes) -> bool:
    """Ids travel newline-joined inside the commit script's arguments."""
    return 0 < len(key) <= _MAX_KEY and b"\n" not in key


class Stopped(RuntimeError):
    """Raised out of a retry loop when the owning service is stopping."""


@dataclass(frozen=True)
class Keys:
    """All keys of one run. The braces make ``{run}`` a Redis Cluster hash tag."""

    run: str

    @property
    def prefix(self) -> str:
        return f"luffy:{{{self.run}}}:"

    def stream(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def deadletter(self) -> str:
        return self.stream("deadletter")

    def done(self, group: str) -> str:
        return f"{self.prefix}done:{group}"

    def errors(self, group: str) -> str:
        return f"{self.prefix}errors:{group}"

    def member(self, role: str, member_id: str) -> str:
        return f"{self.prefix}members:{role}:{member_id}"

    def members_pattern(self, role: str) -> str:
        return f"{self.prefix}members:{role}:*"

    @property
    def policy_version(self) -> str:
        return f"{self.prefix}policy_version"

    @property
    def sync(self) -> str:
        return f"{self.prefix}sync"


def connect(cfg: RedisConfig, url: str | None = None) -> redis.Redis:
    """A client whose socket timeout always outlasts a blocking read."""
    timeout = cfg.socket_timeout_s + cfg.block_ms / 1000.0
    return redis.Redis.from_url(
        url or cfg.url,
        socket_timeout=timeout,
        socket_connect_timeout=min(5.0, timeout),
        health_check_interval=30,
    )


class Resilient:
    """Retries a Redis call forever on connection loss, backing off up to ``max_s``."""

    def __init__(
        self,
        client: redis.Redis,
        initial_s: float = 0.1,
        max_s: float = 5.0,
        stop: threading.Event | None = None,
    ):
        self.client = client
        self.initial_s = initial_s
        self.max_s = max_s
        self.stop = stop or threading.Event()
        self.connected = True
        self.outages = 0
        self.last_error = ""

    @classmethod
    def from_config(cls, cfg: RedisConfig, stop: threading.Event | None = None) -> Resilient:
        return cls(connect(cfg), cfg.reconnect_initial_s, cfg.reconnect_max_s, stop)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        delay = self.initial_s
        while True:
            try:
                result = fn(*args, **kwargs)
            except TRANSIENT_ERRORS as exc:
                if self.connected:
                    self.outages += 1
                    log.warning("redis unavailable (%s); retrying with back-off", exc)
                self.connected = False
                self.last_error = str(exc)
                # jitter keeps many services from reconnecting in lock-step
                if self.stop.wait(delay * (0.5 + random.random() / 2)):
                    raise Stopped("stopping while waiting for redis") from exc
                delay = min(delay * 2, self.max_s)
                continue
            if not self.connected:
                log.info("redis reachable again")
                self.connected = True
            return result

    def ping(self) -> bool:
        """One attempt, no retry: for readiness probes."""
        try:
            self.client.ping()
        except TRANSIENT_ERRORS as exc:
            self.connected, self.last_error = False, str(exc)
            return False
        self.connected = True
        return True


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (and the stream) reading from the beginning."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


# --------------------------------------------------------------------------- publisher


class Publisher(Protocol):
    def publish(self, items: Sequence[tuple[str, bytes]]) -> int: ...


# One call appends a whole batch: one command to pack and one integer to parse instead of a
# pipeline of XADDs and their ids (the client-side cost dominates on small entries).
_XADD_MANY_LUA = """
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'k', ARGV[i], 'd', ARGV[i + 1])
end
return #ARGV / 2
"""


class StreamPublisher:
    """Appends ``(id, payload)`` entries to one stream."""

    def __init__(self, redis_: Resilient, keys: Keys, name: str):
        self.redis = redis_
        self.stream = keys.stream(name)
        self.group = STREAM_GROUPS.get(name)
        self.published = 0
        self._group_ready = False
        self._xadd_many = redis_.client.register_script(_XADD_MANY_LUA)

    def _ensure(self) -> None:
        if self.group and not self._group_ready:
            self.redis.call(ensure_group, self.redis.client, self.stream, self.group)
            self._group_ready = True

    def publish(self, items: Sequence[tuple[str, bytes]]) -> int:
        """Append entries (atomically per chunk of 1000); returns how many were appended."""
        if not items:
            return 0
        bad = [key for key, _ in items if not _valid_key(key.encode())]
        if bad:
            raise ValueError(f"ids must be 1-{_MAX_KEY} bytes without newlines: {bad[0][:80]!r}")
        self._ensure()
        if sum(len(payload) for _, payload in items) > _FLAT_MAX_BYTES * len(items):
            added = self._pipelined(items)
        else:
            added = 0
            for start in range(0, len(items), 1000):
                args = [part for item in items[start : start + 1000] for part in item]
                added += int(self.redis.call(self._xadd_many, keys=[self.stream], args=args))
        self.published += added
        return added

    def _pipelined(self, items: Sequence[tuple[str, bytes]]) -> int:
        def send() -> int:
            pipe = self.redis.client.pipeline(transaction=False)
            for key, payload in items:
                pipe.xadd(self.stream, {"k": key, "d": payload})
            return len(pipe.execute())

        return self.redis.call(send)


# --------------------------------------------------------------------------- consumer


@dataclass
class Delivery(Generic[T]):
    """One stream entry handed to a consumer's work loop."""

    entry_id: str
    key: str
    payload: bytes
    value: T | None = None
    deliveries: int = 1


@dataclass(frozen=True)
class Output:
    """An entry a commit appends: ``stream`` is a short stream name (``rollouts``)."""

    stream: str
    key: str
    payload: bytes


@dataclass
class ConsumerStats:
    delivered: int = 0
    reclaimed: int = 0
    committed: int = 0
    duplicates: int = 0
    deadlettered: int = 0
    failed: int = 0
    deadletter_reasons: dict[str, int] = field(default_factory=dict)


# KEYS: input stream, done zset, output streams...
# ARGV: group, now_ms, forget_before_ms, entry ids, keys, output counts (each "\n"-joined,
#       one per input), then (stream index, key, payload) per output in input order.
# Joined lists and batched commands (one ZMSCORE / ZADD / XACK per call) keep both the
# client's packing and the server's time per entry small. Returns one '1'/'0' per input.
_COMMIT_LUA = """
local function split(text)
  local out = {}
  for item in string.gmatch(text, '([^\\n]*)\\n') do out[#out + 1] = item end
  return out
end
local group, now = ARGV[1], ARGV[2]
local ids, keys, counts = split(ARGV[4]), split(ARGV[5]), split(ARGV[6])
local n = #ids
local scores = redis.call('ZMSCORE', KEYS[2], unpack(keys))
local result, fresh = {}, {}
local i = 7
for j = 1, n do
  local c = tonumber(counts[j])
  if scores[j] and keys[j] ~= '' then
    result[j] = '0'
    i = i + 3 * c
  else
    for _ = 1, c do
      redis.call('XADD', KEYS[2 + tonumber(ARGV[i])], '*', 'k', ARGV[i + 1], 'd', ARGV[i + 2])
      i = i + 3
    end
    result[j] = '1'
    if keys[j] ~= '' then
      fresh[#fresh + 1] = now
      fresh[#fresh + 1] = keys[j]
    end
  end
end
if #fresh > 0 then redis.call('ZADD', KEYS[2], unpack(fresh)) end
redis.call('XACK', KEYS[1], group, unpack(ids))
if ARGV[3] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3]) end
return table.concat(result)
"""

# A non-blocking XREADGROUP whose reply is flat (id, k, d, id, k, d, ...): far cheaper for the
# client to parse than nested entries with field names. Missing fields come back as ''.
_READ_FLAT_LUA = """
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>')
if not reply then return {} end
local out = {}
for _, entry in ipairs(reply[1][2]) do
  local fields, k, d = entry[2], '', ''
  for j = 1, #fields, 2 do
    if fields[j] == 'k' then k = fields[j + 1] elseif fields[j] == 'd' then d = fields[j + 1] end
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = k
  out[#out + 1] = d
end
return out
"""

# KEYS: stream. Returns the MINID that keeps everything some group still needs (or false).
_SAFE_TRIM_LUA = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return false end
local floor = nil
for _, g in ipairs(groups) do
  local info = {}
  for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
  local pend = redis.call('XPENDING', KEYS[1], info['name'])
  local cand
  if tonumber(pend[1]) > 0 then
    cand = pend[2]
  else
    local ms, seq = parse(info['last-delivered-id'])
    cand = string.format('%d-%d', ms, seq + 1)
  end
  if floor == nil or less(cand, floor) then floor = cand end
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', floor)
return {floor, removed}
"""


class StreamConsumer(Generic[T]):
    """One consumer of one group; see the module docstring for the delivery contract."""

    def __init__(
        self,
        redis_: Resilient,
        keys: Keys,
        name: str,
        consumer: str,
        cfg: RedisConfig,
        decode: Callable[[bytes], T] | None = None,
        group: str | None = None,
        precheck_seen: bool = False,
        reclaim: bool = True,
    ):
        self.redis = redis_
        self.keys = keys
        self.stream = keys.stream(name)
        self.group = group or STREAM_GROUPS[name]
        self.consumer = consumer
        self.cfg = cfg
        self.decode = decode
        # Look ids up before handing entries out: worth a round trip only when processing is
        # expensive (generation); commit dedupes atomically either way.
        self.precheck_seen = precheck_seen
        # A sole consumer that holds entries across many fetches (the learner) must not
        # reclaim its own idle entries; it reads them back with ``fetch_own_pending``.
        self.reclaim = reclaim
        self.stats = ConsumerStats()
        self._done = keys.done(self.group)
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._commit = redis_.client.register_script(_COMMIT_LUA)
        self._read_flat = redis_.client.register_script(_READ_FLAT_LUA)
        self._large = False  # recent entries too large for the flat Lua read
        self._next_forget_ms = 0
        self.redis.call(ensure_group, redis_.client, self.stream, self.group)

    # ---------------------------------------------------------------- reading

    def fetch(self, count: int | None = None, block_ms: int | None = None) -> list[Delivery[T]]:
        """Reclaimed entries first, then new ones; poison is dead-lettered, not returned."""
        count = count or self.cfg.read_count
        raw = self._reclaim(count)
        if len(raw) < count:
            block = self.cfg.block_ms if block_ms is None else block_ms
            raw += self._read_new(count - len(raw), block)
        if not raw:
            return []
        self.stats.delivered += len(raw)
        return self._screen(raw)

    def _read_new(self, count: int, block_ms: int) -> list[_Entry]:
        """Non-blocking flat read through Lua; only when nothing is there, a blocking read."""

        def read() -> list[_Entry]:
            try:
                if not self._large:
                    flat = self._read_flat(
                        keys=[self.stream], args=[self.group, self.consumer, count]
                    )
                    if flat or not block_ms:
                        return [
                            (flat[i].decode(), flat[i + 1], flat[i + 2], 1)
                            for i in range(0, len(flat), 3)
                        ]
                reply = self.redis.client.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=count,
                    block=block_ms or None,
                )
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                # The stream or group vanished (Redis restarted without persistence, or the
                # stream was deleted while we blocked on it): recreate and go on.
                ensure_group(self.redis.client, self.stream, self.group)
                return []
            return _entries(reply[0][1] if reply else [])

        entries = self.redis.call(read)
        if entries:  # large payloads are cheaper nested than copied through Lua
            size = sum(len(e[2] or b"") for e in entries) / len(entries)
            self._large = size > _FLAT_MAX_BYTES
        return entries

    def fetch_own_pending(self, count: int = 1000) -> list[Delivery[T]]:
        """Entries delivered to this consumer name and never acked (e.g. before a restart)."""
        out: list[Delivery[T]] = []
        cursor = "0"
        while True:
            reply = self.redis.call(
                self.redis.client.xreadgroup,
                self.group,
                self.consumer,
                {self.stream: cursor},
                count=count,
            )
            rows = reply[0][1] if reply else []
            if not rows:
                return out
            cursor = rows[-1][0].decode()
            raw = _entries(rows)
            counts = self._delivery_counts([e[0] for e in raw])
            raw = [(eid, k, d, counts.get(eid, 1)) for eid, k, d, _ in raw]
            self.stats.delivered += len(raw)
            out += self._screen(raw)

    def _reclaim(self, count: int) -> list[_Entry]:
        if not self.reclaim:
            return []
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + min(self.cfg.claim_idle_ms / 2000.0, 5.0)

        def claim() -> Any:
            return self.redis.client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                self.cfg.claim_idle_ms,
                start_id=self._claim_cursor,
                count=count,
            )

        try:
            reply = self.redis.call(claim)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                self.redis.call(ensure_group, self.redis.client, self.stream, self.group)
                return []
            raise
        cursor, entries = reply[0], _entries(reply[1])
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else cursor
        if not entries:
            return []
        counts = self._delivery_counts([e[0] for e in entries])
        self.stats.reclaimed += len(entries)
        log.info("reclaimed %d idle entries from %s", len(entries), self.stream)
        return [(eid, key, payload, counts.get(eid, 1)) for eid, key, payload, _ in entries]

    def _delivery_counts(self, entry_ids: list[str]) -> dict[str, int]:
        def query() -> list:
            pipe = self.redis.client.pipeline(transaction=False)
            for eid in entry_ids:
                pipe.xpending_range(self.stream, self.group, min=eid, max=eid, count=1)
            return pipe.execute()

        out: dict[str, int] = {}
        for rows in self.redis.call(query):
            for row in rows:
                eid = row["message_id"]
                out[eid.decode() if isinstance(eid, bytes) else eid] = row["times_delivered"]
        return out

    def _screen(self, raw: list[_Entry]) -> list[Delivery[T]]:
        """Dead-letter poison, (optionally) ack already-processed ids, decode the rest."""
        good: list[Delivery[T]] = []
        limit, max_deliveries = self.cfg.max_entry_bytes, self.cfg.max_deliveries
        for eid, key, payload, deliveries in raw:
            if not payload or not key:
                reason = "malformed entry: fields 'k' and 'd' are required"
            elif not _valid_key(key):
                reason = f"malformed entry: bad id {key[:80]!r}"
            elif len(payload) > limit:
                reason = f"payload of {len(payload)} bytes exceeds {limit}"
            elif deliveries > max_deliveries:
                last = self._last_error(eid)
                reason = f"delivered {deliveries} times without ack (max {max_deliveries})"
                reason += f"; last error: {last}" if last else ""
            else:
                good.append(
                    Delivery(eid, key.decode("utf-8", "replace"), payload, None, deliveries)
                )
                continue
            self.deadletter(eid, self._original_fields(eid), reason)
        if self.precheck_seen:
            good = self._drop_seen(good)
        return self._decode_all(good) if self.decode else good

    def _original_fields(self, entry_id: str) -> dict:
        rows = self.redis.call(self.redis.client.xrange, self.stream, entry_id, entry_id)
        return rows[0][1] if rows else {}

    def _drop_seen(self, items: list[Delivery[T]]) -> list[Delivery[T]]:
        if not items:
            return items
        scores = self.redis.call(self.redis.client.zmscore, self._done, [d.key for d in items])
        seen = [d for d, s in zip(items, scores, strict=True) if s is not None]
        if seen:
            self.commit([(d, []) for d in seen])
        return [d for d, s in zip(items, scores, strict=True) if s is None]

    def _decode_all(self, items: list[Delivery[T]]) -> list[Delivery[T]]:
        out = []
        for d in items:
            try:
                d.value = self.decode(d.payload)
            except Exception as exc:  # any decode failure is poison, never a crash
                self.deadletter(d.entry_id, {b"k": d.key.encode(), b"d": d.payload}, str(exc))
                continue
            out.append(d)
        return out

    # ---------------------------------------------------------------- writing

    def commit(self, batch: Sequence[tuple[Delivery[T], Sequence[Output]]]) -> list[bool]:
        """Atomically append outputs, ack inputs and remember their ids.

        Returns, per input, True if its outputs were written, False if its id had already been
        processed (then only the ack happens).
        """
        written: list[bool] = []
        for start in range(0, len(batch), _COMMIT_CHUNK):  # bounds Lua's unpack() stack
            written += self._commit_chunk(batch[start : start + _COMMIT_CHUNK])
        self.stats.committed += sum(written)
        self.stats.duplicates += len(written) - sum(written)
        return written

    def _commit_chunk(self, batch: Sequence[tuple[Delivery[T], Sequence[Output]]]) -> list[bool]:
        if not batch:
            return []
        streams: list[str] = []
        outputs: list[Any] = []
        for _, outs in batch:
            for out in outs:
                full = self.keys.stream(out.stream)
                if full not in streams:
                    streams.append(full)
                outputs += [streams.index(full) + 1, out.key, out.payload]
        now_ms = int(time.time() * 1000)
        forget = ""
        if now_ms >= self._next_forget_ms:  # expiring old ids needs doing only now and then
            forget = now_ms - self.cfg.dedupe_ttl_s * 1000
            self._next_forget_ms = now_ms + _FORGET_EVERY_MS
        args = [
            self.group,
            now_ms,
            forget,
            "".join(f"{d.entry_id}\n" for d, _ in batch),
            "".join(f"{d.key}\n" for d, _ in batch),
            "".join(f"{len(outs)}\n" for _, outs in batch),
        ]
        keys = [self.stream, self._done, *streams]
        result = self.redis.call(self._commit, keys=keys, args=args + outputs)
        return [flag == 49 for flag in result]  # b"1"

    def fail(self, delivery: Delivery[T], error: str) -> None:
        """Leave the entry pending (it is retried after ``claim_idle_ms``) and keep the error."""
        self.stats.failed += 1

        def record() -> None:
            pipe = self.redis.client.pipeline(transaction=False)
            pipe.hset(self.keys.errors(self.group), delivery.entry_id, error[:2000])
            pipe.expire(self.keys.errors(self.group), _ERROR_TTL_S)
            pipe.execute()

        self.redis.call(record)

    def _last_error(self, entry_id: str) -> str:
        raw = self.redis.call(self.redis.client.hget, self.keys.errors(self.group), entry_id)
        return raw.decode("utf-8", "replace") if raw else ""

    def deadletter(self, entry_id: str, fields: dict, reason: str) -> None:
        """Move an entry to ``deadletter`` with its reason and ack it, in one transaction."""
        self.stats.deadlettered += 1
        short = reason.split(":")[0][:80]
        self.stats.deadletter_reasons[short] = self.stats.deadletter_reasons.get(short, 0) + 1
        log.warning("deadletter %s %s: %s", self.stream, entry_id, reason)
        record: dict[str | bytes, Any] = {
            "stream": self.stream,
            "group": self.group,
            "entry_id": entry_id,
            "consumer": self.consumer,
            "reason": reason[:4000],
            "time": f"{time.time():.3f}",
        }
        for name, value in list(fields.items())[:16]:
            if isinstance(name, bytes) and isinstance(value, bytes):
                record[b"orig_" + name[:64]] = value[:65536]

        def move() -> None:
            pipe = self.redis.client.pipeline(transaction=True)
            pipe.xadd(
                self.keys.deadletter, record, maxlen=self.cfg.deadletter_maxlen, approximate=True
            )
            pipe.xack(self.stream, self.group, entry_id)
            pipe.hdel(self.keys.errors(self.group), entry_id)
            pipe.execute()

        self.redis.call(move)


# --------------------------------------------------------------------------- maintenance


def stale_run_refusal(
    redis_: Resilient, keys: Keys, checkpoint_dir: object, where: str = ""
) -> str | None:
    """Why a run without any checkpoint (in ``checkpoint_dir``) must not start afresh: Redis
    already holds its state, and every id a fresh learner would feed again is marked done and
    would be skipped. None when Redis holds nothing of the run."""
    client = redis_.client
    done = sum(
        redis_.call(client.zcard, keys.done(g)) for g in ("generators", "verifiers", "learner")
    )
    version = int(redis_.call(client.get, keys.policy_version) or 0)
    if not done and not version:
        return None
    return (
        f"run {keys.run!r} has no checkpoint in {checkpoint_dir} but Redis{where} already "
        f"holds its state (policy version {version}, {done} processed ids under "
        f"{keys.prefix}*): start a new run with another --run.name, or delete those keys "
        f"first (redis-cli --scan --pattern '{keys.prefix}*' | xargs redis-cli del)"
    )


def delete_run_keys(client: redis.Redis, keys: Keys) -> int:
    """Delete every Redis key of one run (what ``stale_run_refusal`` asks users to do by hand);
    returns how many. Run names are limited to ``[A-Za-z0-9_.-]``: the prefix holds no glob
    character."""
    names = list(client.scan_iter(match=keys.prefix + "*", count=500))
    for start in range(0, len(names), 500):
        client.delete(*names[start : start + 500])
    return len(names)


def trim_acked(redis_: Resilient, keys: Keys, name: str) -> int:
    """Trim ``name`` below the oldest entry some group has not acked; returns entries removed."""
    script = redis_.client.register_script(_SAFE_TRIM_LUA)
    result = redis_.call(script, keys=[keys.stream(name)])
    return int(result[1]) if result else 0


def stream_depths(redis_: Resilient, keys: Keys) -> dict[str, dict[str, int]]:
    """Per stream: length, entries not yet delivered to its group (lag) and pending (unacked)."""

    def query() -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name, group in STREAM_GROUPS.items():
            stream = keys.stream(name)
            try:
                groups = redis_.client.xinfo_groups(stream)
            except redis.ResponseError:
                out[name] = {"length": 0, "lag": 0, "pending": 0}
                continue
            info = next((g for g in groups if g["name"].decode() == group), None)
            out[name] = {
                "length": int(redis_.client.xlen(stream)),
                "lag": int((info or {}).get("lag") or 0),
                "pending": int((info or {}).get("pending") or 0),
            }
        out["deadletter"] = {"length": int(redis_.client.xlen(keys.deadletter))}
        return out

    return redis_.call(query)


__all__ = [
    "STREAM_GROUPS",
    "ConsumerStats",
    "Delivery",
    "Keys",
    "Output",
    "Publisher",
    "Resilient",
    "Stopped",
    "StreamConsumer",
    "StreamPublisher",
    "connect",
    "delete_run_keys",
    "ensure_group",
    "stale_run_refusal",
    "stream_depths",
    "trim_acked",
]
