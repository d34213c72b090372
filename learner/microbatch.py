"""Micro-batches of a training step: how a batch is split across ranks, and the tensors of one
micro-batch.

- ``plan_microbatches`` / ``plan_shared_microbatches`` are the pure planners: every rank gets
  the same number of micro-batches (FSDP's collectives need it), each within a token budget,
  ranks balanced by size; with prompt sharing a group's samples stay in one micro-batch.
- ``collate`` turns a micro-batch into tensors with one row per sample; ``collate_shared``
  encodes each distinct prompt once and runs its samples' responses against its cached
  keys/values (``learner.share_prompts``). An empty micro-batch is a padding one.
"""

from __future__ import annotations

import torch

from learner.batch import Sample


def _pack(units: list[list[int]], cost, fits, world: int) -> list[list[list[int]]]:
    """Deal ``units`` (lists of sample indices kept together), most costly first, to the
    least loaded of ``world`` ranks; on each rank, join consecutive units into one micro-batch
    while ``fits(units)``; pad every rank with empty micro-batches to the same count (a rank
    with nothing to do still takes part in FSDP's collectives)."""
    ranks: list[list[list[int]]] = [[] for _ in range(world)]
    load = [0] * world
    for unit in sorted(units, key=cost, reverse=True):  # stable: ties keep their order
        r = load.index(min(load))
        ranks[r].append(unit)
        load[r] += cost(unit)
    plans = []
    for rank_units in ranks:
        micro: list[list[list[int]]] = []
        for unit in rank_units:
            if micro and fits([*micro[-1], unit]):
                micro[-1].append(unit)
            else:
                micro.append([unit])
        plans.append([[i for unit in m for i in unit] for m in micro])
    depth = max(1, max(len(p) for p in plans))
    return [p + [[] for _ in range(depth - len(p))] for p in plans]


def plan_microbatches(lengths: list[int], token_budget: int, world: int) -> list[list[list[int]]]:
    """Split sample indices into ``world`` ranks x the same number of micro-batches each, where
    a micro-batch's padded size (longest x count) stays within ``token_budget`` (a sample longer
    than the budget goes alone). Ranks are balanced by tokens; an empty list is a padding
    micro-batch."""

    def fits(units: list[list[int]]) -> bool:
        return max(lengths[u[0]] for u in units) * len(units) <= token_budget

    return _pack([[i] for i in range(len(lengths))], lambda u: lengths[u[0]], fits, world)


def plan_shared_microbatches(
    prompt_keys: list[object],
    prompt_lens: list[int],
    response_lens: list[int],
    token_budget: int,
    world: int,
) -> list[list[list[int]]]:
    """``plan_microbatches`` for prompt sharing: samples with the same prompt key stay in one
    micro-batch (their prompt is encoded once there). A micro-batch's padded size is
    prompts x longest prompt + samples x longest response; a group too big for the budget is cut
    into pieces that fit (a piece of one sample may exceed it). Ranks balanced by size."""
    groups: dict[object, list[int]] = {}
    for i, key in enumerate(prompt_keys):
        groups.setdefault(key, []).append(i)
    units: list[list[int]] = []
    for items in groups.values():
        items.sort(key=lambda i: -response_lens[i])
        plen = prompt_lens[items[0]]
        piece: list[int] = []
        for i in items:  # longest first, so the first of a piece is its longest
            if piece and plen + response_lens[piece[0]] * (len(piece) + 1) > token_budget:
                units.append(piece)
                piece = []
            piece.append(i)
        units.append(piece)

    def size(pieces: list[list[int]]) -> int:
        samples = [i for piece in pieces for i in piece]
        longest_prompt = max(prompt_lens[i] for i in samples)
        return len(pieces) * longest_prompt + len(samples) * max(response_lens[i] for i in samples)

    return _pack(units, lambda u: size([u]), lambda us: size(us) <= token_budget, world)


def prompt_key(sample: Sample) -> tuple[int, ...]:
    return tuple(sample.input_ids[: sample.prompt_len])


def _token_fields(samples: list[Sample], device: torch.device) -> dict[str, torch.Tensor]:
    """[T] per-response-token tensors: targets, behaviour log-probs, advantages, ``off`` (the
    token is off-policy: within its sample's trace prefix) and ``off_seq`` (its sample has
    one: LUFFY's sequence-level mask, ``prefix_mask.any(-1)``) and ``fresh`` (a generated token
    of a sample with lag 0: where learner and generator log-probs should agree)."""
    targets, behav, adv, off, off_seq, fresh = [], [], [], [], [], []
    for s in samples:
        targets += s.input_ids[s.prompt_len :]
        behav += s.behav_logprobs
        adv += [s.advantage] * s.response_len
        generated = s.response_len - s.prefix_len
        off += [True] * s.prefix_len + [False] * generated
        off_seq += [s.off_policy] * s.response_len
        fresh += [False] * s.prefix_len + [s.lag == 0] * generated
    return {
        "targets": torch.tensor(targets, dtype=torch.long, device=device),
        "behav": torch.tensor(behav, dtype=torch.float32, device=device),
        "adv": torch.tensor(adv, dtype=torch.float32, device=device),
        "off": torch.tensor(off, dtype=torch.bool, device=device),
        "off_seq": torch.tensor(off_seq, dtype=torch.bool, device=device),
        "fresh": torch.tensor(fresh, dtype=torch.bool, device=device),
    }


def _right_padded(rows: list[list[int]], pad_id: int):
    """[len(rows), max(1, longest)] ids and 0/1 mask."""
    width = max(1, max((len(r) for r in rows), default=0))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask


def collate(samples: list[Sample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded tensors for one micro-batch, one row per sample; response positions
    flattened. An empty list is a padding micro-batch (two pad tokens, no response)."""
    if not samples:
        ids = torch.full((1, 2), pad_id, dtype=torch.long)
        return {
            "input_ids": ids.to(device),
            "attention_mask": torch.ones_like(ids).to(device),
            "positions": torch.zeros(0, dtype=torch.long, device=device),
            **_token_fields([], device),
        }
    ids, mask = _right_padded([s.input_ids for s in samples], pad_id)
    width, positions = ids.shape[1], []
    for row, s in enumerate(samples):
        # position p predicts token p + 1: response tokens are prompt_len .. n - 1
        positions += [row * width + p for p in range(s.prompt_len - 1, len(s.input_ids) - 1)]
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "positions": torch.tensor(positions, dtype=torch.long, device=device),
        **_token_fields(samples, device),
    }


def collate_shared(
    samples: list[Sample], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """One row per distinct prompt and one per response (``PolicyLogprobs`` reuses a prompt's
    key/value cache for its responses). The first response token is predicted by its prompt's
    last state (index ``prompt row``), token j > 0 by response state j - 1 (index
    ``P + row * Lr + j - 1``). An empty list is a padding micro-batch."""
    rows: dict[tuple[int, ...], int] = {}
    prompt_of = [rows.setdefault(prompt_key(s), len(rows)) for s in samples]
    prompts = list(rows) or [(pad_id,)]
    prompt_ids, prompt_mask = _right_padded([list(p) for p in prompts], pad_id)
    responses = [s.input_ids[s.prompt_len :] for s in samples] or [[]]
    response_ids, response_mask = _right_padded(responses, pad_id)
    n_prompts, width = len(prompts), response_ids.shape[1]
    prompt_lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    of = torch.tensor(prompt_of or [0], dtype=torch.long)
    positions = []
    for row, (p, s) in enumerate(zip(prompt_of, samples, strict=True)):
        if s.response_len:
            positions.append(p)
            positions += [n_prompts + row * width + j for j in range(s.response_len - 1)]
    return {
        "prompt_ids": prompt_ids.to(device),
        "prompt_mask": prompt_mask.to(device),
        "prompt_last": (prompt_lens - 1).to(device),
        "prompt_of": of.to(device),
        "response_ids": response_ids.to(device),
        "response_mask": response_mask.to(device),
        "response_positions": (prompt_lens[of][:, None] + torch.arange(width)).to(device),
        "positions": torch.tensor(positions, dtype=torch.long, device=device),
        **_token_fields(samples, device),
    }


__all__ = [
    "collate",
    "collate_shared",
    "plan_microbatches",
    "plan_shared_microbatches",
    "prompt_key",
]
