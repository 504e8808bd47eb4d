"""Exact token healing (decode/heal.py, decode/heal_tree.py) against brute-force enumeration.

The model is a random trigram LM over a hand-made byte vocabulary with tokens that are prefixes of
each other ("a", "ab", "abc"; ":", ":/", "://"), whitespace runs, and multi-byte characters split
several ways (白 as one token, as three byte tokens, as a two-byte piece plus a byte). The brute
force enumerates token sequences one vocabulary entry at a time with `bytes.startswith`, using
neither the trie nor the tree, and everything is float64.
"""

from __future__ import annotations

import codecs
import math
import random
import warnings

import pytest
import torch

from genloom.decode.heal import (
    ApproximateHealingWarning,
    HealProcessor,
    PostProcessor,
    back_off,
    continue_prompt,
    heal_prompt,
    healed_logprobs,
    split_utf8,
    tol_bound,
)
from genloom.decode.heal_tree import VocabIndex, build_tree, prefix_logprob
from genloom.decode.loops import beam_search, greedy, sample
from genloom.errors import UserError

BAI, YUN = "白".encode(), "云".encode()
VOCAB = [b"", b""]  # 0 <eos>, 1 <bos>: specials with no bytes
VOCAB += [bytes([c]) for c in b"abchtp:/ \n"]  # single ASCII bytes
VOCAB += [bytes([c]) for c in BAI + YUN]  # the six bytes of 白云 as single tokens
VOCAB += [b"ab", b"abc", b"ba", b"bc", b"cab", b"http", b":/", b"://", b"//", b"  ", b"    ", b"\n    ",
          b" a", b" ab", BAI, YUN, BAI + YUN, BAI[:2], b" b", b"a "]
EOS, BOS = 0, 1
V = len(VOCAB)
ID = {b: i for i, b in enumerate(VOCAB) if b}


class GreedyTokenizer:
    """Longest-match tokenizer over VOCAB (enough of the Tokenizer protocol for healing)."""

    vocab_size = V
    special_ids = frozenset({EOS, BOS})
    bos_id, eos_id = BOS, EOS

    def encode(self, text: str) -> list[int]:
        data, out, i = text.encode(), [], 0
        while i < len(data):
            n = max(n for n in range(1, len(data) - i + 1) if data[i:i + n] in ID)
            out.append(ID[data[i:i + n]])
            i += n
        return out

    def token_bytes(self, i: int) -> bytes:
        return VOCAB[i]


class TrigramLM:
    """A random trigram LM behind the decoding protocol; its state is the token history."""

    def __init__(self, seed: int, scale: float = 2.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = V
        self.table = torch.randn(V + 1, V + 1, V, generator=g, dtype=torch.float64) * scale  # (ctx2, ctx1, V)
        self.starts = 0

    def logits_at(self, row: list[int]) -> torch.Tensor:
        a = row[-2] if len(row) > 1 else V
        return self.table[a, row[-1]]  # (V,)

    def logp(self, row: list[int]) -> torch.Tensor:
        return self.logits_at(row).log_softmax(-1)

    def start(self, *, input_ids, lengths=None, max_new_tokens):
        self.starts += 1
        rows = [r[: int(n)] for r, n in zip(input_ids.tolist(), lengths or [input_ids.shape[1]] * len(input_ids))]
        return torch.stack([self.logits_at(r) for r in rows]), rows

    def step(self, tokens, state):
        rows = [r + [t] for r, t in zip(state, tokens.tolist())]
        return torch.stack([self.logits_at(r) for r in rows]), rows

    def select(self, state, index):
        return [list(state[i]) for i in index.tolist()]


TOK = GreedyTokenizer()
INDEX = VocabIndex(VOCAB, special_ids=[EOS, BOS])


def brute_z(model: TrigramLM, ctx: list[int], s: bytes) -> float:
    """P(the text after ctx starts with s), by enumerating every token of the vocabulary."""
    if not s:
        return 1.0
    p = model.logp(ctx).exp()
    total = 0.0
    for v, b in enumerate(VOCAB):
        if not b:
            continue
        if b.startswith(s):
            total += float(p[v])
        elif s.startswith(b):
            total += float(p[v]) * brute_z(model, ctx + [v], s[len(b):])
    return total


def brute_next(model: TrigramLM, ctx: list[int], r: bytes) -> torch.Tensor:
    """The exact conditional next-token distribution given that the text starts with r."""
    p = model.logp(ctx).exp()
    w = torch.zeros(V, dtype=torch.float64)
    for v, b in enumerate(VOCAB):
        if b and b.startswith(r):
            w[v] = p[v]
        elif b and r.startswith(b):
            w[v] = p[v] * brute_z(model, ctx + [v], r[len(b):])
    return w / w.sum()


def _first_chars(data: bytes, k: int) -> str | None:
    """The first k characters of data (bad bytes as U+FFFD), or None if it has fewer yet."""
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)
    return text[:k] if len(text) >= k else None


def char_distribution(model: TrigramLM, ctx: list[int], r: bytes, k: int, next_logp) -> dict[str, float]:
    """Distribution of the first k characters after r, enumerating token sequences whose text
    starts with r; next_logp(seq) gives the log-probabilities (V,) of the next token (a sequence
    inconsistent with r gets weight 0); the total is normalized at the end."""
    out: dict[str, float] = {}

    def rec(seq: list[int], data: bytes, prob: float) -> None:
        if len(data) >= len(r):
            key = _first_chars(data[len(r):], k)
            if key is not None:
                out[key] = out.get(key, 0.0) + prob
                return
        logp = next_logp(seq)
        for v, b in enumerate(VOCAB):
            if logp[v] == -math.inf:
                continue
            if not b:  # end of text: counts only once r is complete
                if len(data) >= len(r):
                    key = data[len(r):].decode("utf-8", errors="replace") + "<eos>"
                    out[key] = out.get(key, 0.0) + prob * math.exp(logp[v])
                continue
            new = data + b
            n = min(len(new), len(r))
            if new[:n] == r[:n]:
                rec(seq + [v], new, prob * math.exp(logp[v]))

    rec([], b"", 1.0)
    total = sum(out.values())
    return {key: value / total for key, value in out.items()}


def tv(p: dict[str, float], q: dict[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def random_prompt(rng: random.Random) -> bytes:
    pieces = [b"a", b"b", b"c", b"ab", b"abc", b"http", b":", b"//", b" ", b"  ", b"\n", BAI, YUN, b"ba"]
    endings = [b"ab", b" a", b"\n  ", b"  ", BAI, BAI + YUN[:1], BAI[:2], b":", b"ca", b"a"]
    data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
    if rng.random() < 0.5:  # cut anywhere, or end with text that is the start of longer tokens
        return data[: rng.randint(1, len(data))]
    return data + rng.choice(endings)


# ---- exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_tree_z_equals_brute_force(seed):
    rng = random.Random(seed)
    model = TrigramLM(seed)
    for _ in range(6):
        ctx = [BOS] + [rng.randrange(2, V) for _ in range(rng.randint(0, 3))]
        s = random_prompt(rng)[:7]
        tree = build_tree(model, ctx, s, INDEX, tol=0.0, max_rows=10_000)
        assert tree.bound == 0.0
        assert math.exp(tree.log_z) == pytest.approx(brute_z(model, ctx, s), rel=1e-10, abs=1e-300)


@pytest.mark.parametrize("seed", range(6))
def test_healed_next_token_and_first_chars_equal_brute_force(seed):
    rng = random.Random(100 + seed)
    model = TrigramLM(seed, scale=1.0)
    deep = 0
    for i in range(6):
        prompt = random_prompt(rng)
        k = None if i % 2 == 0 else rng.choice([2, 3])  # dynamic, or a fixed deeper back-off
        healed = heal_prompt(model, TOK, prompt, bos_id=BOS, back_off_tokens=k, tol=0.0, max_rows=10_000,
                             index=INDEX)
        ctx, r = healed.context, healed.removed
        assert TOK_bytes(ctx[1:]) + r == prompt
        if not r:
            assert healed.processors == []
            continue
        deep += healed.tree.model_calls >= 3  # paths of two or more tokens inside r
        proc = healed.processors[0]
        # next token: the processor's distribution at the root equals the brute-force conditional
        root = proc(model.logits_at(ctx)[None], torch.zeros(1, 0, dtype=torch.long))[0].exp()
        assert 0.5 * float((root - brute_next(model, ctx, r)).abs().sum()) <= 1e-6

        # first k characters after r: healed decoding (processor while constrained) vs brute force
        def healed_logp(seq):
            return proc(model.logits_at(ctx + seq)[None], torch.tensor([seq], dtype=torch.long).view(1, -1))[0] \
                .log_softmax(-1).tolist()

        def model_logp(seq):
            return model.logp(ctx + seq).tolist()

        for k in (1, 2):
            exact = char_distribution(model, ctx, r, k, model_logp)
            ours = char_distribution(model, ctx, r, k, healed_logp)
            assert tv(exact, ours) <= 1e-6
    assert deep >= 2  # the random prompts exercise multi-token paths through r


def TOK_bytes(ids):
    return b"".join(VOCAB[i] for i in ids)


@pytest.mark.parametrize("probe", [False, True])
def test_pruning_bound_is_certified(probe):
    model = TrigramLM(7, scale=3.0)
    ctx, s = [BOS, ID[b"a"]], b"ab  abc\n    " + BAI
    exact = brute_z(model, ctx, s)
    full = build_tree(model, ctx, s, INDEX, tol=0.0, max_rows=10_000, probe=probe)
    assert full.bound == 0.0 and math.exp(full.log_z) == pytest.approx(exact, rel=1e-10)
    for tol, rows in ((1e-3, 10_000), (1e-1, 10_000), (0.0, 2), (1e-2, 3)):
        tree = build_tree(model, ctx, s, INDEX, tol=tol, max_rows=rows, probe=probe)
        zc = math.exp(tree.log_z)
        assert zc <= exact * (1 + 1e-12)
        assert (exact - zc) / zc <= tree.bound + 1e-12  # the reported bound is certified
        if rows == 10_000:
            assert tree.bound <= tol / (1 - tol)
            assert len(tree.nodes) < len(full.nodes)  # and pruning did remove paths
    log_z, bound = prefix_logprob(model, ctx, s, INDEX, tol=1e-3)
    assert bound <= 1e-3 / (1 - 1e-3) and abs(math.exp(log_z) - exact) / exact <= bound + 1e-12


@pytest.mark.parametrize("prompt, gold", [(b"c ab", b"c "), (b"abc:", b"//a"), ("c白".encode(), YUN + b"a")])
def test_healed_logprobs_equal_brute_force(prompt, gold):
    model = TrigramLM(3, scale=1.5)
    ids = TOK.encode(prompt.decode())
    got = healed_logprobs(model, TOK, prompt, gold, bos_id=BOS, tol=0, index=INDEX)
    assert all(bound == 0.0 for _, bound in got.values())
    # none: Z(all tokens, gold)
    assert got["none"][0] == pytest.approx(math.log(brute_z(model, [BOS] + ids, gold)), abs=1e-9)
    # exact: Z(kept, r gold) / Z(kept, r)
    kept, r = back_off(ids, INDEX)
    want = brute_z(model, [BOS] + kept, r + gold) / brute_z(model, [BOS] + kept, r)
    assert got["exact"][0] == pytest.approx(math.log(want), abs=1e-9)
    # post: the first token among the extensions of the last token, renormalized
    kept, r = ids[:-1], VOCAB[ids[-1]]
    p = model.logp([BOS] + kept).exp()
    num = den = 0.0
    for v, bv in enumerate(VOCAB):
        if bv and bv.startswith(r):
            den += float(p[v])
            rest = r + gold
            if bv.startswith(rest):
                num += float(p[v])
            elif rest.startswith(bv):
                num += float(p[v]) * brute_z(model, [BOS] + kept + [v], rest[len(bv):])
    assert got["post"][0] == pytest.approx(math.log(num / den), abs=1e-9)
    # each mode alone (separate trees) gives the same numbers as the shared tree
    for mode in ("post", "exact"):
        assert healed_logprobs(model, TOK, prompt, gold, modes=[mode], bos_id=BOS, tol=0, index=INDEX)[mode][0] \
            == pytest.approx(got[mode][0], abs=1e-9)


# ---- search loops -------------------------------------------------------------------------------


def test_greedy_and_beam_follow_the_exact_conditional():
    model = TrigramLM(11)
    healed = heal_prompt(model, TOK, "ca", bos_id=BOS, tol=0, index=INDEX)
    ctx, r = healed.context, healed.removed
    assert r == b"ca"  # "c" + "a" is a proper prefix of "cab"
    ids = torch.tensor([ctx])
    out = greedy(model, input_ids=ids, max_new_tokens=3, processors=healed.processors)
    assert out.sequences[0][0] == int(brute_next(model, ctx, r).argmax())
    assert TOK_bytes(out.sequences[0]).startswith(r)
    beams = beam_search(model, num_beams=3, num_return_sequences=3, input_ids=ids, max_new_tokens=3,
                        processors=healed.processors)
    for seq in beams.sequences:
        assert TOK_bytes(seq).startswith(r)
    # the best beam's score is its exact conditional log-probability (length penalty 1, 3 tokens)
    seq = beams.sequences[0]
    logp = 0.0
    for t in range(3):
        dist = HealProcessor(healed.tree)(model.logits_at(ctx + seq[:t])[None], torch.tensor([seq[:t]]).view(1, -1))
        logp += float(dist[0].log_softmax(-1)[seq[t]])
    assert beams.scores[0] == pytest.approx(logp / 3, abs=1e-4)


def test_sampling_draws_from_the_exact_conditional():
    model = TrigramLM(5, scale=1.0)
    healed = heal_prompt(model, TOK, "h", bos_id=BOS, tol=0, index=INDEX)
    ctx, r = healed.context, healed.removed
    n = 3000
    out = sample(model, input_ids=torch.tensor([ctx]), max_new_tokens=4, num_samples=n,
                 generator=torch.Generator().manual_seed(0), processors=healed.processors)
    counts: dict[str, float] = {}
    for seq in out.sequences:
        data = TOK_bytes(seq)
        assert data.startswith(r)
        key = _first_chars(data[len(r):], 1)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    total = sum(counts.values())
    empirical = {k: c / total for k, c in counts.items()}
    exact = char_distribution(model, ctx, r, 1, lambda seq: model.logp(ctx + seq).tolist())
    exact = {k: v for k, v in exact.items() if not k.endswith("<eos>")}
    z = sum(exact.values())
    exact = {k: v / z for k, v in exact.items()}
    assert tv(empirical, exact) < 0.05  # 3000 draws over ~20 outcomes: expected TV about 0.02


def test_post_processor_renormalizes_the_extensions_at_the_first_step_only():
    logits = torch.randn(2, V, dtype=torch.float64)
    allowed = INDEX.cover(b"ab")
    proc = PostProcessor(allowed)
    out = proc(logits, torch.zeros(2, 0, dtype=torch.long))
    want = torch.full_like(logits, -math.inf)
    want[:, allowed] = logits[:, allowed].log_softmax(-1)
    assert torch.allclose(out, want)
    assert sorted(VOCAB[i] for i in allowed.tolist()) == [b"ab", b"abc"]
    assert proc(logits, torch.zeros(2, 1, dtype=torch.long)) is logits


# ---- the cases a user hits ----------------------------------------------------------------------


def rigged(seed: int, pairs: dict[tuple[bytes, bytes], float]) -> TrigramLM:
    """A trigram LM with the bigram logits of some (previous token, next token) pairs raised."""
    model = TrigramLM(seed)
    for (a, b), bonus in pairs.items():
        model.table[:, ID[a], ID[b]] += bonus
    return model


def test_http_colon_heals_to_double_slash():
    model = rigged(0, {(b"http", b"://"): 12.0, (b":", b"/"): -12.0, (b":", b"//"): -12.0})
    kept, r = back_off(TOK.encode("http:"), INDEX)
    assert [VOCAB[i] for i in kept] == [b"http"] and r == b":"
    exact = continue_prompt(model, TOK, "http:", bos_id=BOS, max_new_tokens=3, tol=0, index=INDEX)[0]
    plain = continue_prompt(model, TOK, "http:", mode="none", bos_id=BOS, max_new_tokens=3, index=INDEX)[0]
    assert exact.text.startswith("//")
    assert not plain.text.startswith("//")


def test_trailing_space_is_kept_and_healed():
    model = rigged(1, {(b"c", b" ab"): 10.0})
    kept, r = back_off(TOK.encode("c "), INDEX)
    assert [VOCAB[i] for i in kept] == [b"c"] and r == b" "
    out = continue_prompt(model, TOK, "c ", bos_id=BOS, max_new_tokens=2, tol=0, index=INDEX)[0]
    assert VOCAB[out.token_ids[0]] == b" ab" and out.text.startswith("ab")  # the space is not lost


def test_indentation_backs_off_to_the_newline():
    model = rigged(2, {(b"b", b"\n    "): 10.0})
    kept, r = back_off(TOK.encode("b\n  "), INDEX)
    assert [VOCAB[i] for i in kept] == [b"b"] and r == b"\n  "
    healed = heal_prompt(model, TOK, "b\n  ", bos_id=BOS, tol=0, index=INDEX)
    dist = healed.processors[0](model.logits_at(healed.context)[None], torch.zeros(1, 0, dtype=torch.long))[0].exp()
    assert torch.allclose(dist, brute_next(model, healed.context, r), atol=1e-12)
    assert int(dist.argmax()) == ID[b"\n    "]


def test_cut_inside_a_utf8_character():
    prompt = (BAI + YUN)[:4]  # 白 and the first byte of 云
    assert split_utf8(prompt) == ("白", YUN[:1])
    model = rigged(3, {(BAI, YUN): 8.0})
    healed = heal_prompt(model, TOK, prompt, bos_id=BOS, tol=0, index=INDEX)
    assert healed.removed == BAI + YUN[:1] and healed.context == [BOS]
    out = continue_prompt(model, TOK, prompt, bos_id=BOS, max_new_tokens=2, tol=0, index=INDEX)[0]
    assert out.text.startswith("云")  # the continuation completes the cut character
    assert out.data.startswith(YUN[1:])
    root = healed.processors[0](model.logits_at([BOS])[None], torch.zeros(1, 0, dtype=torch.long))[0].exp()
    assert 0.5 * float((root - brute_next(model, [BOS], healed.removed)).abs().sum()) <= 1e-6
    with pytest.raises(UserError, match="not valid UTF-8"):
        heal_prompt(model, TOK, b"\xff" + prompt, bos_id=BOS, index=INDEX)


def test_single_partial_token_prompt():
    model = TrigramLM(4)
    healed = heal_prompt(model, TOK, "ab", bos_id=BOS, tol=0, index=INDEX)
    assert healed.context == [BOS] and healed.removed == b"ab"
    out = continue_prompt(model, TOK, "ab", bos_id=BOS, max_new_tokens=3, tol=0, index=INDEX)[0]
    assert TOK_bytes(out.token_ids).startswith(b"ab")
    with pytest.raises(UserError, match="single partial token"):
        heal_prompt(model, TOK, "ab", index=INDEX)


def test_empty_prompt_is_a_clear_error():
    model = TrigramLM(0)
    for mode in ("exact", "post", "none"):
        with pytest.raises(UserError, match="prompt is empty"):
            continue_prompt(model, TOK, "", mode=mode, bos_id=BOS, index=INDEX)
    with pytest.raises(UserError, match="prompt is empty"):
        heal_prompt(model, TOK, [], bos_id=BOS, index=INDEX)


def test_no_healing_across_a_special_token():
    model = TrigramLM(6)
    ids = TOK.encode("ab") + [EOS]
    assert back_off(ids, INDEX) == (ids, b"")
    assert back_off(ids, INDEX, k=3) == (ids, b"")
    healed = heal_prompt(model, TOK, ids, bos_id=BOS, index=INDEX)
    assert healed.removed == b"" and healed.processors == [] and healed.context == [BOS] + ids
    a = continue_prompt(model, TOK, ids, bos_id=BOS, max_new_tokens=4, index=INDEX)[0]
    b = continue_prompt(model, TOK, ids, mode="none", bos_id=BOS, max_new_tokens=4, index=INDEX)[0]
    assert a.token_ids == b.token_ids
    # a special token in the middle stops the back-off too
    ids = TOK.encode("ab") + [EOS] + TOK.encode("ab")
    kept, r = back_off(ids, INDEX, k=5)
    assert kept == ids[:2] and r == b"ab"


def test_back_off_is_dynamic_and_bounded_by_the_longest_token():
    # "cab" is a whole token that no longer token extends: nothing to heal
    ids = TOK.encode("ccab")
    assert [VOCAB[i] for i in ids] == [b"c", b"cab"] and back_off(ids, INDEX) == (ids, b"")
    assert back_off(TOK.encode("c a"), INDEX)[1] == b" a"
    kept, r = back_off(TOK.encode("abcabcab"), INDEX)
    assert len(r) < INDEX.longest_token_len and TOK_bytes(kept) + r == b"abcabcab"
    assert back_off(TOK.encode("abab"), INDEX, k=2) == ([], b"abab")
    with pytest.raises(UserError):
        back_off([2], INDEX, k=-1)


# ---- a real Transformer with its KV cache, and a trained byte-level BPE ------------------------


def test_tree_on_a_transformer_cache_equals_full_forward_brute_force():
    from genloom.models.transformer import Transformer, TransformerConfig
    from genloom.tokenizers import BPETokenizer

    text = ["the theme of these theses is there", "then the other thesis", "白云机场 白云山 白色的云"] * 20
    tok = BPETokenizer.train(text, vocab_size=300)
    index = VocabIndex.from_tokenizer(tok)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, d_ff=64,
                                          max_len=64)).double().eval()

    def logp(ids):
        with torch.no_grad():
            return model(torch.tensor([ids]))[0, -1].log_softmax(-1)

    def z(ctx, s):  # brute force over the whole vocabulary, every prefix by a full forward pass
        if not s:
            return 1.0
        p = logp(ctx).exp()
        total = 0.0
        for v in range(tok.vocab_size):
            b = index.token_bytes[v]
            if b and b.startswith(s):
                total += float(p[v])
            elif b and s.startswith(b):
                total += float(p[v]) * z(ctx + [v], s[len(b):])
        return total

    ctx = [tok.bos_id] + tok.encode("then the")
    for s in (b" thes", "白云".encode()[:5], b" th"):
        tree = build_tree(model, ctx, s, index, tol=0.0, max_rows=10_000)
        assert tree.model_calls >= 3  # several levels of the cache were stepped
        assert math.exp(tree.log_z) == pytest.approx(z(ctx, s), rel=1e-9)
    # the processor inside greedy decoding on the same cache: first token = exact argmax
    healed = heal_prompt(model, tok, "then the thes", bos_id=tok.bos_id, tol=0.0, index=index)
    assert healed.removed.endswith(b"thes")
    out = greedy(model, input_ids=torch.tensor([healed.context]), max_new_tokens=4, processors=healed.processors)
    ctx, r = healed.context, healed.removed
    p = logp(ctx).exp()
    w = torch.zeros(tok.vocab_size, dtype=torch.float64)
    for v in range(tok.vocab_size):
        b = index.token_bytes[v]
        if b and b.startswith(r):
            w[v] = p[v]
        elif b and r.startswith(b):
            w[v] = p[v] * z(ctx + [v], r[len(b):])
    assert out.sequences[0][0] == int(w.argmax())
    assert b"".join(index.token_bytes[i] for i in out.sequences[0]).startswith(r)


def test_exact_healing_warns_when_max_rows_prunes_past_tol():
    """A level cut at max_rows leaves the tree pruned past tol: heal_prompt warns, the result says
    so (`approximate`, `tree.rows_capped`), and the bound it reports is still certified."""
    model = TrigramLM(7, scale=3.0)
    prompt = b"c ab  abc\n    " + BAI
    with pytest.warns(ApproximateHealingWarning, match=r"max_rows=1, certified total-variation bound"):
        cut = heal_prompt(model, TOK, prompt, bos_id=BOS, tol=1e-6, max_rows=1, index=INDEX)
    assert cut.approximate and cut.tree.rows_capped > 0 and cut.tree.bound > tol_bound(1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ApproximateHealingWarning)
        wide = heal_prompt(model, TOK, prompt, bos_id=BOS, tol=1e-6, max_rows=10_000, index=INDEX)
        exact = heal_prompt(model, TOK, prompt, bos_id=BOS, tol=0.0, max_rows=10_000, index=INDEX)
    assert not wide.approximate and wide.tree.rows_capped == 0 and wide.tree.bound <= tol_bound(1e-6)
    assert exact.tree.bound == 0.0 and not exact.approximate
    z, zc = math.exp(exact.tree.log_z), math.exp(cut.tree.log_z)
    assert zc < z and (z - zc) / zc <= cut.tree.bound * (1 + 1e-9)
    post = heal_prompt(model, TOK, prompt, bos_id=BOS, mode="post", index=INDEX)
    assert not post.approximate  # only exact healing builds a tree
