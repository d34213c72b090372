"""LUFFY's recipe scale: the gradient of ``loss_agg = "luffy"`` against LUFFY's update built by
hand (verl's per-micro-batch loss, accumulated over micro-batches, FSDP-averaged over ranks).

A toy policy (a logit table per position) keeps the arithmetic visible: every token's log-prob
and entropy come from its own row, so the hand formula below is LUFFY's mix_actor loop written
out: for each rank, for each micro-batch, loss = sum(token pg loss) / 8192
+ sft_coef * mean(NLL of trace tokens) - 0.001 * mean(entropy), backward; then the mean over
ranks.
"""

import torch

from common.config import AlgorithmConfig
from learner.objective import make_objective, micro_batch_loss, token_losses

RESPONSE_LEN = 8192
VOCAB = 5


def toy_batch(seed: int = 0):
    """Eight sequences of 2-5 response tokens: targets, behaviour log-probs, advantages, off."""
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 5, 2, 4, 4, 2, 5, 3]
    off = [False, False, False, True, False, False, False, True]
    seqs = []
    for n, is_off in zip(lengths, off, strict=True):
        seqs.append(
            {
                "targets": torch.randint(0, VOCAB, (n,), generator=g),
                "behav": torch.zeros(n) if is_off else -torch.rand(n, generator=g) - 0.5,
                "adv": torch.full((n,), float(torch.randn(1, generator=g))),
                "off": torch.full((n,), is_off),
            }
        )
    return seqs


def forward(table: torch.Tensor, seqs: list[dict]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Flat [T] log-probs and entropies of ``seqs`` (token t of the micro-batch uses row t)."""
    cat = {k: torch.cat([s[k] for s in seqs]) for k in ("targets", "behav", "adv", "off")}
    logits = table[: len(cat["targets"])]
    logz = torch.logsumexp(logits, -1)
    logp = logits.gather(1, cat["targets"][:, None]).squeeze(1) - logz
    probs = torch.softmax(logits, -1)
    entropy = logz - (probs * logits).sum(-1)
    return logp, entropy, cat


def luffy_by_hand(table, ranks, mode, sft_coef=1.0, entropy_coef=0.001):
    """LUFFY's gradient: per micro-batch verl loss, summed per rank, averaged over ranks."""
    grads = []
    for micro_batches in ranks:
        rank_table = table.detach().clone().requires_grad_(True)
        for seqs in micro_batches:
            logp, entropy, b = forward(rank_table, seqs)
            on, off = ~b["off"], b["off"]
            if mode == "luffy":  # compute_token_on_off_policy_loss, remove clip, token sum
                p = logp.exp()
                on_loss = -b["adv"] * torch.exp(logp - b["behav"])
                off_loss = -b["adv"] * p / (p + 0.1)
                pg = (on_loss * on).sum() / RESPONSE_LEN + (off_loss * off).sum() / RESPONSE_LEN
                sft = torch.tensor(0.0)
            else:  # rl_sft: policy loss on on-policy rows + coef * masked-mean NLL of traces
                on_loss = -b["adv"] * torch.exp(logp - b["behav"])
                pg = (on_loss * on).sum() / RESPONSE_LEN
                sft = (-logp * off).sum() / off.sum() if off.any() else torch.tensor(0.0)
            loss = pg + sft_coef * sft - entropy_coef * entropy.mean()
            loss.backward()  # gradient_accumulation = 1 under LUFFY's dynamic batch size
        grads.append(rank_table.grad)
    return torch.stack(grads).mean(0)  # FSDP averages over ranks


def ours(table, ranks, algo: AlgorithmConfig):
    """Our trainer's arithmetic: each rank backwards micro_batch_loss * world, FSDP averages."""
    objective = make_objective(algo)
    every = [s for micro in ranks for seqs in micro for s in seqs]
    n_tokens = sum(len(s["targets"]) for s in every)
    denom = objective.denominator(len(every), n_tokens)
    world = len(ranks)
    grads = []
    for micro_batches in ranks:
        rank_table = table.detach().clone().requires_grad_(True)
        for seqs in micro_batches:
            logp, entropy, b = forward(rank_table, seqs)
            parts = token_losses(objective, logp, b["behav"], b["adv"], b["off"])
            loss = micro_batch_loss(objective, parts, entropy, b["off"], denom, n_tokens)
            (loss * world).backward()
        grads.append(rank_table.grad)
    return torch.stack(grads).mean(0)


def split(seqs):
    """Two ranks x two micro-batches of unequal sizes (as a token budget would cut them)."""
    return [[seqs[0:1], seqs[1:4]], [seqs[4:7], seqs[7:8]]]


def test_luffy_scale_gives_luffys_gradient_on_ranks_and_micro_batches():
    seqs = toy_batch()
    table = torch.randn(16, VOCAB, generator=torch.Generator().manual_seed(1))
    ranks = split(seqs)
    algo = AlgorithmConfig(
        mode="luffy", loss_agg="luffy", luffy_ranks=2, max_response_len=RESPONSE_LEN
    )
    expected = luffy_by_hand(table, ranks, "luffy")
    # decoupled off: the on-policy ratio is against the behaviour log-probs, as in LUFFY
    got = ours(table, ranks, algo.model_copy(update={"decoupled": False}))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)
    # decoupled (the default): the gradient of exp(logp - prox) * min(pi_prox / pi_behav, 2) is
    # LUFFY's exp(logp - behav) * grad logp wherever the weight is below its cap (all rows
    # here: pi / pi_behav <= exp(-1.6 + 1.5) < 2), i.e. for fresh samples
    torch.testing.assert_close(ours(table, ranks, algo), expected, rtol=1e-5, atol=1e-9)


def test_luffy_scale_gives_luffys_rl_sft_gradient():
    seqs = toy_batch(2)
    table = torch.randn(16, VOCAB, generator=torch.Generator().manual_seed(3))
    algo = AlgorithmConfig(
        mode="rl_sft",
        advantage="grpo_split",
        decoupled=False,
        loss_agg="luffy",
        luffy_ranks=2,
        sft_coef=0.5,
        max_response_len=RESPONSE_LEN,
    )
    expected = luffy_by_hand(table, split(seqs), "rl_sft", sft_coef=0.5)
    torch.testing.assert_close(ours(table, split(seqs), algo), expected, rtol=1e-5, atol=1e-9)


def test_luffy_scale_is_sequences_over_ranks_times_ours():
    # without the entropy bonus the policy gradient of LUFFY's recipe is ours (token_sum_norm:
    # / (8 sequences x 8192)) times 8 sequences / 2 ranks = 4; with 512 sequences on 8 GPUs 64
    seqs = toy_batch(4)
    table = torch.randn(16, VOCAB, generator=torch.Generator().manual_seed(5))
    base = {"decoupled": False, "max_response_len": RESPONSE_LEN, "entropy_coef": 0.0}
    luffy = ours(table, split(seqs), AlgorithmConfig(loss_agg="luffy", luffy_ranks=2, **base))
    norm = ours(table, split(seqs), AlgorithmConfig(loss_agg="token_sum_norm", **base))
    torch.testing.assert_close(luffy, 4.0 * norm, rtol=1e-5, atol=1e-12)


def test_entropy_weight_relative_to_the_policy_term_follows_micro_batches():
    # LUFFY's entropy term is a per-micro-batch mean summed over micro-batches: with the
    # policy term switched off (advantages 0) its gradient is 0.001 * sum_m grad mean_m(H) / R
    seqs = [{**s, "adv": torch.zeros_like(s["adv"])} for s in toy_batch(6)]
    table = torch.randn(16, VOCAB, generator=torch.Generator().manual_seed(7))
    algo = AlgorithmConfig(
        loss_agg="luffy", luffy_ranks=2, decoupled=False, max_response_len=RESPONSE_LEN
    )
    expected = luffy_by_hand(table, split(seqs), "luffy")
    torch.testing.assert_close(ours(table, split(seqs), algo), expected, rtol=1e-5, atol=1e-12)
    assert expected.abs().sum() > 0
