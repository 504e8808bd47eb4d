"""Search-based generation (【搜出来的文本】): targets equal slow reference paths, and every sampler is
exact on a target whose normalised distribution is enumerated.

The enumerable target: every string of length 1..4 over a 5-token vocabulary, scored by a small
random causal Transformer as p(x, EOS | BOS) (780 strings). Its log-densities are computed once
with `CausalLMScorer` and tabulated (`Table`), so the samplers can run thousands of chains for
hundreds of steps in a second or two; `test_table_is_the_lm` checks the table is the LM.
Figures are total variation (TV) distances between the empirical distribution of the chains'
states (all chains, every step after burn-in) and the exact one.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genloom.decode.independent import LMSequences, UniformSequences, importance_sample, rejection_sample
from genloom.decode.mcmc import (Chains, Constant, Geometric, Linear, gibbs, keyword_chains, make_chains,
                                 metropolis_hastings)
from genloom.decode.mcmc_edits import (EditConfig, EditProposal, LMSlots, MaskedSlots, UniformSlots,
                                       _delete, _insert, _slot_ok)
from genloom.decode.targets import (CausalLMScorer, CosineSimilarity, ExactConditional, ForbiddenTokens,
                                    HammingPenalty, KeywordsPresent, LengthPrior, LengthRange, MaskedLMScorer,
                                    MaxRun, MeanHidden, NoRepeatNgram, Target, entropy_rate, reverse_rows)
from genloom.errors import UserError
from genloom.models import Transformer, TransformerConfig

BOS, EOS, V = 0, 1, 7
VOCAB = [2, 3, 4, 5, 6]
STRINGS = [list(s) for n in range(1, 5) for s in itertools.product(VOCAB, repeat=n)]


def tiny_lm(mask: str = "causal", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(vocab_size=V, n_layer=1, n_head=2, d_model=16, d_ff=32, max_len=8,
                                         init_std=0.5, mask=mask)).eval()


def _codes(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A unique integer per string (length and tokens), for tables and histograms."""
    mask = torch.arange(tokens.shape[1])[None] < lengths[:, None]
    powers = V ** torch.arange(tokens.shape[1])
    return (tokens.clamp(min=0) * powers * mask).sum(1) + V ** 4 * lengths


class Table(Target):
    """A target given by a table of its values on the enumerated strings (-inf elsewhere)."""

    def __init__(self, values: torch.Tensor) -> None:
        self.lut = torch.full((V ** 4 * 6,), -math.inf)
        chains = make_chains(STRINGS, width=4)
        self.lut[_codes(chains.tokens, chains.lengths)] = values

    def __call__(self, tokens, mask, cond=None):
        lengths = mask.sum(1)
        ok = lengths <= 4
        codes = _codes(tokens[:, :4], lengths.clamp(max=4))
        return torch.where(ok, self.lut[codes], -math.inf)


@pytest.fixture(scope="module")
def lm_target():
    return CausalLMScorer(tiny_lm(), bos_id=BOS, eos_id=EOS) + LengthRange(1, 4)


@pytest.fixture(scope="module")
def exact(lm_target):
    chains = make_chains(STRINGS, width=4)
    f = lm_target(chains.tokens, chains.mask)
    return Table(f), (f - f.logsumexp(0)).exp()


def histogram_tv(p: torch.Tensor, burn: int):
    """(on_step callback, tv()) collecting the states of every chain after `burn` steps."""
    chains = make_chains(STRINGS, width=4)
    index = torch.full((V ** 4 * 6,), -1, dtype=torch.long)
    index[_codes(chains.tokens, chains.lengths)] = torch.arange(len(STRINGS))
    counts = torch.zeros(len(STRINGS))

    def on_step(step: int, ch: Chains) -> None:
        if step >= burn:
            counts.index_add_(0, index[_codes(ch.tokens, ch.lengths)], torch.ones(len(ch)))

    def tv() -> float:
        return float(0.5 * (counts / counts.sum() - p).abs().sum())

    return on_step, tv


def exact_chains(n: int, g: torch.Generator, target: Target, p: torch.Tensor) -> Chains:
    """n states drawn from the exact distribution p: a kernel that preserves p keeps them there."""
    draws = torch.multinomial(p, n, replacement=True, generator=g).tolist()
    return make_chains([STRINGS[i] for i in draws], width=4, target=target)


def random_chains(n: int, g: torch.Generator, target: Target, *, length: int | None = None) -> Chains:
    pool = [s for s in STRINGS if length is None or len(s) == length]
    return make_chains([pool[i] for i in torch.randint(0, len(pool), (n,), generator=g).tolist()], width=4,
                       target=target)


# ---- targets --------------------------------------------------------------------------------


def _stepwise_log_prob(model: Transformer, row: list[int]) -> float:
    """log p(row, EOS | BOS) through the model's own start/step cache (the slow reference path)."""
    logits, state = model.start(input_ids=torch.tensor([[BOS]]), max_new_tokens=len(row) + 1)
    total = 0.0
    for tok in [*row, EOS]:
        total += float(logits.log_softmax(-1)[0, tok])
        if tok != EOS:
            logits, state = model.step(torch.tensor([tok]), state)
    return total


def test_causal_scorer_equals_stepwise_decoding(monkeypatch):
    model = tiny_lm()
    rows = [[2], [3, 4, 5, 6], [6, 6, 2], [4, 5]]
    chains = make_chains(rows, width=6, pad_id=3)
    scorer = CausalLMScorer(model, bos_id=BOS, eos_id=EOS)
    want = torch.tensor([_stepwise_log_prob(model, r) for r in rows])
    torch.testing.assert_close(scorer.log_prob(chains.tokens, chains.mask), want, atol=1e-5, rtol=0)
    monkeypatch.setattr("genloom.decode.targets._LOGIT_BUDGET", 1)  # one row per forward chunk
    torch.testing.assert_close(scorer(chains.tokens, chains.mask), want, atol=1e-5, rtol=0)
    backward = CausalLMScorer(model, bos_id=BOS, eos_id=EOS, reverse=True)
    want_rev = torch.tensor([_stepwise_log_prob(model, r[::-1]) for r in rows])
    torch.testing.assert_close(backward(chains.tokens, chains.mask), want_rev, atol=1e-5, rtol=0)
    assert reverse_rows(chains.tokens, chains.mask)[1, :4].tolist() == [6, 5, 4, 3]


def test_causal_scorer_on_a_hugging_face_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=8, n_embd=16, n_layer=1, n_head=2)).eval()
    rows = [[2, 3], [4, 5, 6, 2], [5]]
    chains = make_chains(rows, width=4)
    got = CausalLMScorer(hf, bos_id=BOS, eos_id=EOS)(chains.tokens, chains.mask)
    for row, value in zip(rows, got.tolist()):
        ids = torch.tensor([[BOS, *row]])
        with torch.no_grad():
            logp = hf(ids).logits[0].log_softmax(-1)
        want = sum(float(logp[i, t]) for i, t in enumerate([*row, EOS]))
        assert value == pytest.approx(want, abs=1e-5)


def test_masked_scorer_fill_and_pseudo_likelihood():
    mlm = tiny_lm("bidirectional", seed=1)
    scorer = MaskedLMScorer(mlm, mask_id=6, bos_id=BOS, eos_id=EOS)
    rows = [[2, 3, 4], [5, 2], [3, 3, 4, 5]]
    chains = make_chains(rows, width=5, pad_id=4)
    positions = torch.tensor([1, 0, 3])
    got = scorer.fill(chains.tokens, positions, chains.mask)
    for b, (row, p) in enumerate(zip(rows, positions.tolist())):
        ids = [BOS, *row, EOS]
        ids[p + 1] = 6
        torch.testing.assert_close(got[b], mlm(torch.tensor([ids]))[0, p + 1], atol=1e-5, rtol=0)
    pll = scorer.log_prob(chains.tokens, chains.mask)
    for b, row in enumerate(rows):
        one = make_chains([row], width=len(row))
        want = sum(float(scorer.fill(one.tokens, torch.tensor([i])).log_softmax(-1)[0, t]) for i, t in enumerate(row))
        assert float(pll[b]) == pytest.approx(want, abs=1e-4)


class Recorder(Target):
    def __init__(self):
        self.seen = []

    def __call__(self, tokens, mask, cond=None):
        self.seen.append(tokens.shape[0])
        return mask.sum(1).float()


def test_constraints_compose_and_short_circuit():
    rows = [[2, 3, 4, 5], [3, 4], [2, 6, 3, 4], [6]]
    chains = make_chains(rows, width=4, cond=[0, 1, 1, 0])
    kw = KeywordsPresent([[3, 4]])
    assert kw(chains.tokens, chains.mask).tolist() == [0, 0, 0, -math.inf]
    per = KeywordsPresent([[[2], [5]], [[3, 4]]], per_cond=True)
    assert per(chains.tokens, chains.mask, chains.cond).tolist() == [0, 0, 0, -math.inf]
    assert LengthRange(2, 3)(chains.tokens, chains.mask).tolist() == [-math.inf, 0, -math.inf, -math.inf]
    soft_length = LengthRange(2, 3, weight=0.5)
    assert not soft_length.hard
    assert soft_length(chains.tokens, chains.mask).tolist() == [-0.5, 0, -0.5, -0.5]
    assert ForbiddenTokens([6])(chains.tokens, chains.mask).tolist() == [0, 0, -math.inf, -math.inf]
    soft = Recorder()
    total = 2.0 * soft + kw + ForbiddenTokens([6])
    assert total(chains.tokens, chains.mask).tolist() == [8.0, 4.0, -math.inf, -math.inf]
    assert soft.seen == [2]  # the soft term saw only the two feasible rows
    with pytest.raises(ValueError):
        _ = 2.0 * kw


def test_similarity_and_hamming_targets():
    rows = [[2, 3, 4], [2, 5, 4], [2, 3]]
    chains = make_chains(rows, width=4, cond=[0, 1, 0])
    refs = make_chains([[2, 3, 4], [6, 5, 4, 3]], width=4)
    ham = HammingPenalty(refs.tokens, refs.lengths, weight=1.5)
    assert ham(chains.tokens, chains.mask, chains.cond).tolist() == [-0.0, -3.0, -1.5]
    table = torch.randn(V, 3)

    def embed(tokens, mask):
        return (table[tokens] * mask[..., None]).sum(1)

    ref = torch.randn(2, 3)
    got = CosineSimilarity(embed, ref, weight=2.0)(chains.tokens, chains.mask, chains.cond)
    for b, row in enumerate(rows):
        vec = table[torch.tensor(row)].sum(0)
        want = 2.0 * torch.nn.functional.cosine_similarity(vec, ref[chains.cond[b]], dim=0)
        assert float(got[b]) == pytest.approx(float(want), abs=1e-6)


def test_mean_hidden_ignores_padding():
    model = tiny_lm("bidirectional", seed=3)
    chains = make_chains([[2, 3, 4], [5, 6]], width=5, pad_id=4)
    got = MeanHidden(model)(chains.tokens, chains.mask)
    for b, row in enumerate(chains.rows()):
        want = model.hidden_states(torch.tensor([row]))[0].mean(0)
        torch.testing.assert_close(got[b], want, atol=1e-5, rtol=0)


def test_table_is_the_lm(exact, lm_target):
    table, _ = exact
    g = torch.Generator().manual_seed(0)
    d = UniformSequences(VOCAB, min_len=1, max_len=4).draw(200, generator=g)
    torch.testing.assert_close(table(d.tokens, d.mask), lm_target(d.tokens, d.mask))


# ---- edit moves -----------------------------------------------------------------------------


def test_insert_delete_and_slots_match_python_lists():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, 7, (50, 6), generator=g)
    pos = torch.randint(0, 6, (50,), generator=g)
    val = torch.randint(2, 7, (50,), generator=g)
    for r, p, v, ins, dele in zip(x.tolist(), pos.tolist(), val.tolist(), _insert(x, pos, val).tolist(),
                                  _delete(x, pos, 0).tolist()):
        assert ins == (r[:p] + [v] + r[p:])[:6]
        assert dele == r[:p] + r[p + 1:] + [0]
    spans = torch.tensor([[1, 1, 0, 2, 3, 3, 0, 0]])
    assert _slot_ok(spans, torch.tensor([6]))[0].tolist() == [True, False, True, True, True, False, True, False, False]


class FixedSlots:
    """A deliberately lopsided slot model: token 2 gets e^2 = 7.4 times the weight of any other."""

    def slot_scores(self, tokens, mask, positions):
        s = torch.zeros(tokens.shape[0], V)
        s[:, 2] = 2.0
        return s


def test_mh_edit_moves_reach_the_exact_distribution(exact):
    """Target-weighted (CGMH) candidates, all 5 tokens: 2,000 chains, 40 burn-in + 120 steps."""
    table, p = exact
    g = torch.Generator().manual_seed(0)
    on_step, tv = histogram_tv(p, burn=40)
    prop = EditProposal(UniformSlots(V), VOCAB, EditConfig(top_k=5, min_len=1, max_len=4))
    res = metropolis_hastings(table, prop, random_chains(2000, g, table), steps=160, generator=g, on_step=on_step)
    assert tv() <= 0.03
    assert 0.3 < res.accept_rate < 1.0
    assert torch.equal(res.best.log_target, table(res.best.tokens, res.best.mask))
    assert bool((res.best.log_target >= res.last.log_target).all())


def test_asymmetric_proposal_is_corrected_by_its_backward_probability(exact):
    """Lopsided slot scores and action priors (replace 0.3, insert 0.5, delete 0.2), tokens drawn
    by the slot model's weights. Started from the exact distribution (4,000 chains), the chains
    stay there for 250 steps when the acceptance uses q(x|y) / q(y|x); Metropolis' rule without
    it drifts far away within 100 steps (it samples the wrong distribution)."""
    table, p = exact
    cfg = EditConfig(replace=0.3, insert=0.5, delete=0.2, top_k=5, weighting="model", min_len=1, max_len=4)
    tvs = {}
    for correct, steps in ((True, 250), (False, 100)):
        g = torch.Generator().manual_seed(1)
        on_step, tv = histogram_tv(p, burn=0)
        metropolis_hastings(table, EditProposal(FixedSlots(), VOCAB, cfg), exact_chains(4000, g, table, p),
                            steps=steps, generator=g, on_step=on_step, correct=correct)
        tvs[correct] = tv()
    assert tvs[True] <= 0.03
    assert tvs[False] >= 0.3


def test_model_weighted_moves_converge_from_anywhere(exact):
    """The same lopsided proposal from uniformly random starts: 1,000 chains, 150 + 450 steps."""
    table, p = exact
    cfg = EditConfig(replace=0.3, insert=0.5, delete=0.2, top_k=5, weighting="model", min_len=1, max_len=4)
    g = torch.Generator().manual_seed(2)
    on_step, tv = histogram_tv(p, burn=150)
    metropolis_hastings(table, EditProposal(FixedSlots(), VOCAB, cfg), random_chains(1000, g, table),
                        steps=600, generator=g, on_step=on_step)
    assert tv() <= 0.03


def test_top_k_below_the_vocabulary_with_exploration_is_exact(exact):
    """K = 2 of 5 candidates (from the lopsided slot model) plus explore = 0.3 uniform draws keep
    the exact distribution (4,000 chains from exact starts, 250 steps)."""
    table, p = exact
    g = torch.Generator().manual_seed(2)
    on_step, tv = histogram_tv(p, burn=0)
    prop = EditProposal(FixedSlots(), VOCAB, EditConfig(top_k=2, explore=0.3, min_len=1, max_len=4))
    metropolis_hastings(table, prop, exact_chains(4000, g, table, p), steps=250, generator=g, on_step=on_step)
    assert tv() <= 0.03


def test_gibbs_with_the_exact_conditional(exact):
    """Gibbs over length-4 strings (625 of them) with the target's own conditional: 2,000 chains,
    20 burn-in + 80 steps, against the exact distribution restricted to length 4."""
    table, p = exact
    four = torch.tensor([len(s) == 4 for s in STRINGS])
    p4 = torch.where(four, p, 0.0)
    p4 = p4 / p4.sum()
    g = torch.Generator().manual_seed(3)
    on_step, tv = histogram_tv(p4, burn=20)
    res = gibbs(ExactConditional(table, VOCAB, vocab_size=V), random_chains(2000, g, table, length=4), steps=100,
                vocab=VOCAB, generator=g, target=table, on_step=on_step)
    assert tv() <= 0.03
    assert bool((res.best.log_target >= res.last.log_target).all())


def test_replace_sweep_reaches_the_exact_distribution(exact):
    """Replace moves scanning positions left to right (a deterministic scan), target-weighted over
    all 5 tokens, on length-4 strings: 2,000 chains, 20 burn-in + 80 steps."""
    table, p = exact
    four = torch.tensor([len(s) == 4 for s in STRINGS])
    p4 = torch.where(four, p, 0.0)
    g = torch.Generator().manual_seed(9)
    on_step, tv = histogram_tv(p4 / p4.sum(), burn=20)
    cfg = EditConfig(replace=1.0, insert=0.0, delete=0.0, top_k=5, order="sweep", min_len=1, max_len=4)
    init = random_chains(2000, g, table, length=4)
    first = EditProposal(UniformSlots(V), VOCAB, cfg).propose(init, target=table, temperature=1.0, generator=g, step=1)
    changed = first.proposed.tokens != init.tokens  # step 1 may only touch position 1
    assert not bool(changed[:, [0, 2, 3]].any()) and bool(changed[:, 1].any())
    metropolis_hastings(table, EditProposal(UniformSlots(V), VOCAB, cfg), init, steps=100, generator=g,
                        on_step=on_step)
    assert tv() <= 0.03


def test_keywords_stay_pinned_and_whole():
    """Two-token and one-token keywords survive 200 steps of every move in every chain."""
    target = CausalLMScorer(tiny_lm(), bos_id=BOS, eos_id=EOS)
    keywords = [[[3, 4], [6]], [[5], [2, 2], [4]]]
    g = torch.Generator().manual_seed(4)
    init = keyword_chains(keywords, chains_per_set=16, width=7, target=target, generator=g)
    check = KeywordsPresent(keywords, per_cond=True)
    seen_lengths = set()

    def on_step(step, ch):
        assert bool((check(ch.tokens, ch.mask, ch.cond) == 0).all())
        for row, span, n in zip(ch.tokens.tolist(), ch.spans.tolist(), ch.lengths.tolist()):
            seen_lengths.add(n)
            for s in set(span[:n]) - {0}:
                where = [i for i in range(n) if span[i] == s]
                assert where == list(range(where[0], where[0] + len(where)))  # contiguous, unsplit
        assert bool((ch.spans[~ch.mask] == 0).all())

    prop = EditProposal(LMSlots(target.model, None, bos_id=BOS), VOCAB, EditConfig(top_k=3, explore=0.1))
    res = metropolis_hastings(target, prop, init, steps=200, generator=g, on_step=on_step)
    assert max(seen_lengths) == 7 and min(seen_lengths) <= 4
    assert res.best.cond.tolist() == init.cond.tolist()


def test_annealing_finds_the_mode(exact):
    """Geometric cooling from 2 to 0.02 over 300 steps puts most chains on the most likely string
    (p = 0.107 at temperature 1, where a chain sits on it that often)."""
    table, p = exact
    mode = STRINGS[int(p.argmax())]
    prop = EditProposal(UniformSlots(V), VOCAB, EditConfig(top_k=5, min_len=1, max_len=4))
    share = {}
    for name, schedule in (("annealed", Geometric(2.0, 0.02, 300)), ("plain", Constant(1.0))):
        g = torch.Generator().manual_seed(5)
        res = metropolis_hastings(table, prop, random_chains(200, g, table), steps=300, generator=g, schedule=schedule)
        share[name] = sum(row == mode for row in res.last.rows()) / 200
    assert share["annealed"] >= 0.8
    assert share["plain"] <= 0.25


def test_schedules():
    assert Constant(0.5)(10) == 0.5
    lin, geo = Linear(1.0, 0.1, 10), Geometric(1.0, 0.01, 3)
    assert lin(0) == 1.0 and lin(9) == pytest.approx(0.1) and lin(100) == pytest.approx(0.1)
    assert [round(geo(i), 6) for i in range(4)] == [1.0, 0.1, 0.01, 0.01]
    with pytest.raises(UserError):
        Constant(0.0)


def test_slot_models_match_manual_scores():
    fwd, bwd, mlm = tiny_lm(seed=6), tiny_lm(seed=7), tiny_lm("bidirectional", seed=8)
    chains = make_chains([[2, 3, 4, 5], [6, 2]], width=5)
    pos = torch.tensor([2, 0])
    got = LMSlots(fwd, bwd, bos_id=BOS).slot_scores(chains.tokens, chains.mask, pos)
    for b, (row, i) in enumerate(zip(chains.rows(), pos.tolist())):
        f = fwd(torch.tensor([[BOS, *row[:i]]]))[0, -1].log_softmax(-1)
        r = bwd(torch.tensor([[BOS, *row[i + 1:][::-1]]]))[0, -1].log_softmax(-1)
        torch.testing.assert_close(got[b], f + r, atol=1e-5, rtol=0)
    scorer = MaskedLMScorer(mlm, mask_id=6, bos_id=BOS, eos_id=EOS)
    torch.testing.assert_close(MaskedSlots(scorer).slot_scores(chains.tokens, chains.mask, pos),
                               scorer.fill(chains.tokens, pos, chains.mask).log_softmax(-1))


def test_edit_errors():
    with pytest.raises(UserError, match="each other's reverse"):
        EditConfig(insert=0.5, delete=0.0)
    with pytest.raises(UserError, match="weighting"):
        EditConfig(weighting="best")
    with pytest.raises(UserError, match="replace moves only"):
        EditConfig(order="sweep")
    prop = EditProposal(UniformSlots(V), VOCAB, EditConfig(min_len=3))
    with pytest.raises(UserError, match="must start with"):
        prop.propose(make_chains([[2]], width=4, target=Recorder()), target=Recorder(), temperature=1.0,
                     generator=None)


# ---- rejection and importance sampling -----------------------------------------------------------


def test_rejection_sampling_is_exact(exact):
    """Proposal: length uniform in 1..4, tokens uniform; M = max rho / q over the enumeration, so
    the acceptance rate must be Z / M. 40,000 accepted draws (about 8 M proposed)."""
    table, p = exact
    sampler = UniformSequences(VOCAB, min_len=1, max_len=4)
    chains = make_chains(STRINGS, width=4)
    log_q = -math.log(4) - chains.lengths * math.log(5)
    f = table(chains.tokens, chains.mask)
    log_bound = float((f - log_q).max())
    g = torch.Generator().manual_seed(6)
    res = rejection_sample(table, sampler, log_bound=log_bound, n=40_000, generator=g, batch=1 << 16,
                           max_draws=20_000_000)
    on_step, tv = histogram_tv(p, burn=0)
    on_step(0, make_chains(res.samples, width=4))
    assert tv() <= 0.03
    z_over_m = math.exp(float(f.logsumexp(0)) - log_bound)
    assert res.accept_rate == pytest.approx(z_over_m, rel=0.05)
    with pytest.raises(ValueError, match="bound"):
        rejection_sample(table, sampler, log_bound=log_bound - 1.0, n=10, generator=g, batch=1 << 16)


def test_importance_sampling_estimates_z_and_expectations(exact):
    table, p = exact
    chains = make_chains(STRINGS, width=4)
    log_z = float(table(chains.tokens, chains.mask).logsumexp(0))
    g = torch.Generator().manual_seed(7)
    res = importance_sample(table, UniformSequences(VOCAB, min_len=1, max_len=4), n=100_000, generator=g)
    assert res.log_z == pytest.approx(log_z, abs=0.03)
    mean_len = float((res.weights * res.mask.sum(1)).sum())
    assert mean_len == pytest.approx(float((p * chains.lengths).sum()), abs=0.03)
    assert 1_000 < res.ess < 100_000


def test_lm_proposal_gives_the_keyword_conditional():
    """rho = q(x) * [token 4 present], q the LM's own ancestral sampler (BOS banned, EOS banned
    before one token, cut at 4 tokens): LMSequences reports q exactly (brute force through the
    model's start/step), and rejection with M = 1 keeps draws that follow q(x | 4 in x)."""
    lm = tiny_lm()
    sampler = LMSequences(lm, bos_id=BOS, eos_id=EOS, max_len=4, min_len=1, banned=[BOS])
    chains = make_chains(STRINGS, width=4)
    q_all = sampler_log_q(lm, chains)
    assert float(q_all.logsumexp(0)) == pytest.approx(0.0, abs=1e-5)  # q is a distribution on the strings
    g = torch.Generator().manual_seed(8)
    d = sampler.draw(64, generator=g)
    torch.testing.assert_close(d.log_q, Table(q_all)(d.tokens, d.mask), atol=1e-4, rtol=0)
    target = Table(q_all) + KeywordsPresent([[4]])
    res = rejection_sample(target, sampler, log_bound=0.0, n=20_000, generator=g, batch=4096)
    has4 = torch.tensor([4 in s for s in STRINGS])
    want = torch.where(has4, q_all.exp(), 0.0)
    on_step, tv = histogram_tv(want / want.sum(), burn=0)
    on_step(0, make_chains(res.samples, width=4))
    assert tv() <= 0.03


def sampler_log_q(lm: Transformer, chains: Chains) -> torch.Tensor:
    """log q(x) of LMSequences(max_len=4, min_len=1, banned=[BOS]) by brute force, per string."""
    out = []
    for row in chains.rows():
        logits, state = lm.start(input_ids=torch.tensor([[BOS]]), max_new_tokens=5)
        total = 0.0
        steps = [*row, EOS] if len(row) < 4 else row
        for i, tok in enumerate(steps):
            lg = logits[0].clone()
            lg[BOS] = -math.inf
            if i == 0:
                lg[EOS] = -math.inf
            total += float(lg.log_softmax(-1)[tok])
            if tok != EOS and i + 1 < len(steps):
                logits, state = lm.step(torch.tensor([tok]), state)
        out.append(total)
    return torch.tensor(out)


# ---- the length model and the repeat ban of CGMH's keyword search -----------------------------------


def test_length_prior_values_and_its_gaussian():
    prior = LengthPrior.gaussian(3.0, 1.5, 6)
    assert prior[0] == -math.inf and float(prior.logsumexp(0)) == pytest.approx(0.0, abs=1e-6)
    assert int(prior.argmax()) == 3 and prior[2] == pytest.approx(float(prior[4]), abs=1e-6)
    chains = make_chains([[2], [2, 3, 4], [2, 3, 4, 5, 6, 2, 3, 4]], width=8)
    got = LengthPrior(prior, per_token=0.7)(chains.tokens, chains.mask)
    want = [float(prior[1]) + 0.7, float(prior[3]) + 2.1, float(prior[6]) + 5.6]  # 8 > T = 6: log P(6)
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    with pytest.raises(UserError):
        LengthPrior.gaussian(3.0, 0.0, 6)
    with pytest.raises(UserError):
        LengthPrior([], per_token=1.0)


def test_entropy_rate_matches_the_enumerated_one():
    """E[-log p(sample)] / E[tokens] over every sample of <= 3 tokens (EOS counted where it stops),
    under the LM renormalised to the allowed tokens, against 6,000 drawn samples."""
    model = tiny_lm()
    allowed = [2, 3, 4]
    keep = torch.tensor(allowed + [EOS])
    nll = tokens = 0.0
    for n in range(0, 4):
        for seq in itertools.product(allowed, repeat=n):
            stop = n < 3
            ids = torch.tensor([[BOS, *seq]])
            with torch.no_grad():
                logits = model(ids)[0]
            logp = torch.full_like(logits, -math.inf)
            logp[:, keep] = logits[:, keep].log_softmax(-1)
            lp = sum(float(logp[i, t]) for i, t in enumerate(seq)) + (float(logp[n, EOS]) if stop else 0.0)
            p = math.exp(lp)
            nll -= p * lp
            tokens += p * (n + stop)
    got = entropy_rate(model, bos_id=BOS, eos_id=EOS, samples=6000, max_new_tokens=3, allowed=allowed,
                       generator=torch.Generator().manual_seed(0))
    assert got == pytest.approx(nll / tokens, rel=0.03)


def test_no_repeat_ngram_matches_python_lists():
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(2, 5, (int(n),), generator=g).tolist() for n in torch.randint(1, 9, (300,), generator=g)]
    chains = make_chains(rows, width=8)
    for n in (1, 2, 3):
        got = NoRepeatNgram(n)(chains.tokens, chains.mask)
        grams = [[tuple(r[i: i + n]) for i in range(len(r) - n + 1)] for r in rows]
        want = [0.0 if len(set(gs)) == len(gs) else -math.inf for gs in grams]
        assert got.tolist() == want
    assert NoRepeatNgram.hard and NoRepeatNgram(9)(chains.tokens, chains.mask).eq(0).all()


def test_max_run_matches_python_lists():
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(2, 4, (int(n),), generator=g).tolist() for n in torch.randint(1, 9, (300,), generator=g)]
    chains = make_chains(rows, width=8)
    for n in (1, 2, 3):
        got = MaxRun(n)(chains.tokens, chains.mask)
        want = [-math.inf if any(len(set(r[i: i + n + 1])) == 1 for i in range(len(r) - n)) else 0.0 for r in rows]
        assert got.tolist() == want and 0 < want.count(0.0) < len(rows)
    assert MaxRun.hard and MaxRun(8)(chains.tokens, chains.mask).eq(0).all()
    with pytest.raises(UserError, match="n >= 1"):
        MaxRun(0)
