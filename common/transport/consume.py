"""Consuming a stream: at-least-once delivery, exactly-once effect by id.

``StreamConsumer`` owns one consumer name in one group. ``fetch`` returns new entries plus
entries reclaimed (XAUTOCLAIM) from consumers idle longer than ``claim_idle_ms``; entries that
are malformed, oversized, undecodable or delivered more than ``max_deliveries`` times go to
``deadletter`` with the reason. ``commit`` writes a batch's outputs, acks the inputs and records
their ids in one Lua script (atomic), so a re-delivered or re-published id is acked without
producing output twice. Durable state lives in Redis (pending lists, ``done:<group>`` sorted
sets of processed ids); a consumer keeps only counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import redis

from common.config import RedisConfig
from common.transport import scripts
from common.transport.client import Resilient, ensure_group
from common.transport.entries import FLAT_MAX_BYTES, Entry, nested_entries, valid_key
from common.transport.keys import STREAM_GROUPS, Keys

log = logging.getLogger(__name__)
T = TypeVar("T")
_ERROR_TTL_S = 24 * 3600


class RunStateLost(RuntimeError):
    """The run's state in Redis is gone (its incarnation marker vanished or changed)."""


_COMMIT_CHUNK = 500
_FORGET_EVERY_MS = 10_000


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
        self._commit = redis_.client.register_script(scripts.COMMIT)
        self._read_flat = redis_.client.register_script(scripts.READ_FLAT)
        self._large = False  # recent entries too large for the flat Lua read
        # the run incarnation this consumer works for ('' until one is known): a commit for
        # another one is refused atomically (see scripts/commit.lua)
        self.incarnation = ""
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

    def _read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Non-blocking flat read through Lua; only when nothing is there, a blocking read."""

        def read() -> list[Entry]:
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
            return nested_entries(reply[0][1] if reply else [])

        entries = self.redis.call(read)
        if entries:  # large payloads are cheaper nested than copied through Lua
            size = sum(len(e[2] or b"") for e in entries) / len(entries)
            self._large = size > FLAT_MAX_BYTES
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
            raw = nested_entries(rows)
            counts = self._delivery_counts([e[0] for e in raw])
            raw = [(eid, k, d, counts.get(eid, 1)) for eid, k, d, _ in raw]
            self.stats.delivered += len(raw)
            out += self._screen(raw)

    def _reclaim(self, count: int) -> list[Entry]:
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
        cursor, entries = reply[0], nested_entries(reply[1])
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

    def _screen(self, raw: list[Entry]) -> list[Delivery[T]]:
        """Dead-letter poison, (optionally) ack already-processed ids, decode the rest."""
        good: list[Delivery[T]] = []
        limit, max_deliveries = self.cfg.max_entry_bytes, self.cfg.max_deliveries
        for eid, key, payload, deliveries in raw:
            if not payload or not key:
                reason = "malformed entry: fields 'k' and 'd' are required"
            elif not valid_key(key):
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

    def commit(
        self,
        batch: Sequence[tuple[Delivery[T], Sequence[Output]]],
        incarnation: str | None = None,
    ) -> list[bool]:
        """Atomically append outputs, ack inputs and remember their ids.

        Returns, per input, True if its outputs were written, False if its id had already been
        processed (then only the ack happens). ``incarnation``: the run state the inputs were
        read under (default: the consumer's); raises ``RunStateLost`` when Redis holds another.
        """
        written: list[bool] = []
        inc = self.incarnation if incarnation is None else incarnation
        for start in range(0, len(batch), _COMMIT_CHUNK):  # bounds Lua's unpack() stack
            written += self._commit_chunk(batch[start : start + _COMMIT_CHUNK], inc)
        self.stats.committed += sum(written)
        self.stats.duplicates += len(written) - sum(written)
        return written

    def _commit_chunk(
        self, batch: Sequence[tuple[Delivery[T], Sequence[Output]]], incarnation: str
    ) -> list[bool]:
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
            incarnation,
        ]
        keys = [self.stream, self._done, self.keys.incarnation, *streams]
        try:
            result = self.redis.call(self._commit, keys=keys, args=args + outputs)
        except redis.ResponseError as exc:
            if "LUFFY_RUN_LOST" not in str(exc):
                raise
            raise RunStateLost(
                f"Redis lost the run's state: its marker {self.keys.incarnation} is no longer "
                f"{incarnation!r} (Redis restarted without persistence, or was flushed); "
                f"{len(batch)} entries read before were not committed"
            ) from None
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


__all__ = ["ConsumerStats", "Delivery", "Output", "RunStateLost", "StreamConsumer"]
