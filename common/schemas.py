"""Wire schemas: the records on the ``prompts``, ``rollouts`` and ``scored`` streams and their
msgpack form. One import for both halves: the records (``common.records``: ``Task``,
``Rollout``, ``ScoredRollout``, ``Sampling``) and the codec that validates every field
(``common.wire``: ``encode_*`` / ``decode_*``, raising ``SchemaError``)."""

from common.records import (
    FINISH_REASONS,
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    STATUSES,
    WIRE_VERSION,
    FinishReason,
    Rollout,
    Sampling,
    SchemaError,
    ScoredRollout,
    Status,
    Task,
    pack_floats,
    pack_tokens,
)
from common.wire import (
    decode_rollout,
    decode_scored,
    decode_task,
    encode_rollout,
    encode_scored,
    encode_task,
)

__all__ = [
    "FINISH_REASONS",
    "MAX_MESSAGE_BYTES",
    "MAX_TEXT_CHARS",
    "MAX_TOKENS",
    "STATUSES",
    "WIRE_VERSION",
    "FinishReason",
    "Rollout",
    "Sampling",
    "SchemaError",
    "ScoredRollout",
    "Status",
    "Task",
    "decode_rollout",
    "decode_scored",
    "decode_task",
    "encode_rollout",
    "encode_scored",
    "encode_task",
    "pack_floats",
    "pack_tokens",
]
