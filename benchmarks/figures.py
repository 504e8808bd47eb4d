"""Where the README's figures come from: each quoted figure, the committed result file and keys it
is formatted from, and the load the file recorded while it was measured.

    python benchmarks/figures.py        # the table: README figure -> file and key -> load

tests/test_readme_figures.py formats every entry from its file and checks the README holds the
result word for word, so a figure cannot drift from its result file, and checks that the README
states each file's recorded load beside its table.

Load: the 1- and 5-minute load averages a result file recorded (before / after its run, in
whichever of the spellings the benchmarks used); `loaded` when the larger is above the CPU count.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class Figure:
    text: str  # the README text, a format string over the values (e.g. "{:.2f} / {:.2f}")
    file: str  # benchmarks/results/<file>
    keys: tuple  # paths into the JSON: "a/b/0" (list items by index), or tuples of parts
    scale: float = 1.0  # the value is multiplied by this first (shares as percent: 100)

    def values(self) -> list[float]:
        data = read(self.file)
        return [lookup(data, k) * self.scale for k in self.keys]


def read(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def lookup(data: Any, key: str | tuple[str, ...]) -> Any:
    """A "/"-separated path into the JSON, or a tuple of its parts (for names holding a "/")."""
    for part in (key.split("/") if isinstance(key, str) else key):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def _load_pairs(machine: dict[str, Any]) -> list[list[float]]:
    pairs = []
    for name in ("load_avg_before", "loadavg_before", "load_average_before", "load_avg_start",
                 "load_avg_after", "loadavg_after", "load_average_after"):
        if name in machine:
            pairs.append(machine[name][:2])
    return pairs


def load(name: str) -> dict[str, Any]:
    """{"cpus", "samples": [[1-min, 5-min], ...] (before, after), "max", "loaded"} of a result file."""
    data = read(name)
    if name == "make_run.json":  # title train's record at its end, title eval's before / after
        machines = [data["train"]["machine_at_end"], *data["eval_machine"].values()]
        samples = [m["loadavg"][:2] for m in machines]
        cpus = machines[0]["cpus"]
    else:
        machine = {**data, **data.get("machine", {})}
        samples = _load_pairs(machine)
        merged = data.get("merged_from")  # --merge: the first run's machine is the file's own
        for run in (merged[1:] if isinstance(merged, list) else []):
            samples += _load_pairs(run.get("machine", {}))
        for variant in data.get("variants", {}).values():  # title.json: each variant's start / end
            samples += [pair[:2] for pair in variant.get("load_avg", [])]
        cpus = machine.get("cpus") or machine.get("cores")
    if not samples:
        return {"cpus": cpus, "samples": [], "max": None, "loaded": None}
    top = max(max(s) for s in samples)
    return {"cpus": cpus, "samples": [[round(x, 2) for x in s] for s in samples], "max": round(top, 2),
            "loaded": top > cpus}


def load_text(name: str) -> str:
    """How the README states a file's load: "load 1.97 / 1.82 -> 1.91 / 1.82 (quiet)" (1- / 5-minute
    averages before -> after), the range of the 1-minute figure for files of many runs."""
    info = load(name)
    if info["loaded"] is None:
        return "load not recorded"
    if len(info["samples"]) > 3:  # many runs in one file: the range
        ones = [a for a, _ in info["samples"]]
        return f"load {min(ones):.2f}-{max(ones):.2f}, at most {info['max']:.2f} ({'loaded' if info['loaded'] else 'quiet'})"
    seq = " -> ".join(f"{a:.2f} / {b:.2f}" for a, b in info["samples"])
    return f"load {seq} ({'loaded' if info['loaded'] else 'quiet'})"


P = 100.0  # shares quoted as percent
FIGURES: list[Figure] = [
    # the main table
    Figure("{:.2f} / {:.2f}", "make_run.json", ("rows/lead-24/rouge-l", "rows/best-sentence/rouge-l")),
    Figure("SmolLM2-135M greedy {:.2f}, beam-4 {:.2f}, sampling {:.2f} ({:.1f} ms/token decode at batch 1, "
           "HF {:.1f})", "decode_vs_hf.json",
           ("results/smollm2/greedy_b1/ratio_hf_over_genloom/of_medians",
            "results/smollm2/beam4_b1/ratio_hf_over_genloom/of_medians",
            "results/smollm2/sample_b1/ratio_hf_over_genloom/of_medians",
            "results/smollm2/greedy_b1/genloom/decode_ms_per_token/median",
            "results/smollm2/greedy_b1/hf/ms_per_token/median")),
    Figure("small GPT-2 (4x256) greedy {:.2f}, beam-4 {:.2f}", "decode_vs_hf.json",
           ("results/small_gpt2/greedy_b1/ratio_hf_over_genloom/of_medians",
            "results/small_gpt2/beam4_b1/ratio_hf_over_genloom/of_medians")),
    Figure("`HFCausalLM` {:.2f}-{:.2f} on SmolLM2 (greedy batch 1 / 8, beam-4, sampling), {:.2f}-{:.2f} on the "
           "small GPT-2", "decode_vs_hf.json",
           ("results/smollm2/greedy_b8/ratio_hf_over_hf_adapter/of_medians",
            "results/smollm2/beam4_b1/ratio_hf_over_hf_adapter/of_medians",
            "results/small_gpt2/greedy_b8/ratio_hf_over_hf_adapter/of_medians",
            "results/small_gpt2/greedy_b1/ratio_hf_over_hf_adapter/of_medians")),
    Figure("{:.2f}x the memory-bandwidth floor of {:.1f} ms/token", "decode_vs_hf.json",
           ("targets/checks/3/value", "results/smollm2/bandwidth_floor_ms_per_token")),
    Figure("genloom {:.0f} MiB, HF {:.0f} MiB", "decode_vs_hf.json",
           ("results/smollm2/peak_rss_greedy_b8/genloom/peak_mib", "results/smollm2/peak_rss_greedy_b8/hf/peak_mib")),
    Figure("char ROUGE-1/2/L {:.2f} / {:.2f} / **{:.2f}**, BLEU {:.2f}, repeated 4-gram {:.1f}%, {:.0f} chars/s",
           "make_run.json", ("rows/rnn (beam 3)/rouge-1", "rows/rnn (beam 3)/rouge-2", "rows/rnn (beam 3)/rouge-l",
                             "rows/rnn (beam 3)/bleu", "repeated_4gram", "chars_per_s")),
    Figure("early-stopped after {:.0f} steps / {:.1f} min", "make_run.json", ("train/steps", "train/train_seconds"),
           scale=1.0),
    Figure("same 55 minutes ({:.0f} steps): {:.2f} against {:.2f} ROUGE-L on test", "title.json",
           ("rows/unilm-zh-base-cut214/steps", "rows/unilm-zh-base-cut214/rouge-l", "rows/unilm-zh-base/rouge-l")),
    Figure("identical titles, {:.2f} s vs {:.1f} s ({:.1f}x)", "title_decode.json",
           ("seconds/cached/median", "seconds/no_cache/median", "speedup_median")),
    Figure("kernel at n = 2048 takes {:.2f}x the time at n = 16; {:.0f}x faster than an S4D Vandermonde kernel",
           "rtf.json", (("targets", "[median] kernel n=2048 / n=16 <= 1.5", "value"),
                        ("targets", "[median] S4D Vandermonde / RTF kernel at n=1024 >= 10", "value"))),
    Figure("{:.1f}-{:.1f}x faster than causal SDPA for L = 4096-16384 (crossover L = {:.0f}); per-token generation "
           "at context 4096 {:.2f}x faster", "rtf.json",
           (("targets", "[median] SDPA / RTF layer > 1 for every L >= 4096", "value", "0"),
            ("targets", "[median] SDPA / RTF layer > 1 for every L >= 4096", "value", "2"),
            "layer_vs_attention/crossover_L", ("targets", "[median] KV-cache / RTF per-token time at context 4096 > 1", "value"))),
    Figure("RTF {:.1f} vs attention {:.1f}", "rtf_lm.json", ("runs/rtf/dev_ppl", "runs/attention/dev_ppl")),
    Figure("none {:.2f} / {:.1f}%, post {:.2f} / {:.1f}%, **exact {:.2f} / {:.1f}%**, HF `token_healing` n/a / "
           "{:.1f}% ({:.0f} crashes)", "heal.json",
           ("english/logprob_gold8/none/mean", "english/greedy_word_match/none", "english/logprob_gold8/post/mean",
            "english/greedy_word_match/post", "english/logprob_gold8/exact/mean", "english/greedy_word_match/exact",
            "english/greedy_word_match/hf", "english/hf_crashes")),
    Figure("exact greedy costs {:.2f}x plain", "heal.json", ("english/time_ratio_exact_over_none/median",)),
    Figure("tol {:.0e}, max_rows {:.0f}; the largest certified bound of the English trees is {:.2f}", "heal.json",
           ("settings/tol", "settings/max_rows", "english/max_certified_bound")),
    Figure("none {:.2f} / {:.1f}%, post {:.2f} / {:.1f}%, exact {:.2f} / {:.1f}%", "heal.json",
           ("chinese/logprob_gold8/none/mean", "chinese/greedy_word_match/none", "chinese/logprob_gold8/post/mean",
            "chinese/greedy_word_match/post", "chinese/logprob_gold8/exact/mean", "chinese/greedy_word_match/exact")),
    Figure("largest certified bound {:.1e}", "heal.json", ("chinese/max_certified_bound",)),
    # NVAE
    Figure("| {:,.0f} | {:.3f} | **{:.2f} +- {:.2f}** | {:.4f} | {:.0f} |", "nvae.json",
           ("models/nvae/steps", "models/nvae/seconds_per_step/median", "models/nvae/iw_nll/nll_nats",
            "models/nvae/iw_nll/nll_stderr", "models/nvae/iw_nll/bpd", "models/nvae/nan_skipped")),
    Figure("| {:,.0f} | {:.3f} | {:.2f} +- {:.2f} | {:.4f} | {:.0f} |", "nvae.json",
           ("models/vae/steps", "models/vae/seconds_per_step/median", "models/vae/iw_nll/nll_nats",
            "models/vae/iw_nll/nll_stderr", "models/vae/iw_nll/bpd", "models/vae/nan_skipped")),
    Figure("the difference is {:.3f} +- {:.3f} nats, and the NVAE scores better on {:.0f}% of the images", "nvae.json",
           ("summary/paired_difference/mean_nats", "summary/paired_difference/stderr_nats",
            "summary/paired_difference/nvae_better_share"), scale=1.0),
]


def _rows() -> list[Figure]:
    """Every row of the README's result tables (title ablation, keywords to sentence, conditional
    generation, SPACES, the extraction rankers, CPU engines), one figure per row."""
    out = []
    title = [("lead-24 (extractive)", "lead-24", False), ("best source sentence (oracle)", "best-sentence", False),
             ("rnn: prior + copy (default)", "rnn", True), ("rnn, no prior", "rnn-no-prior", True),
             ("rnn, no copy (the post's model)", "rnn-no-copy", True),
             ("rnn, no prior, no copy", "rnn-no-prior-no-copy", True),
             ("unilm: prior + copy, from scratch", "unilm", True), ("unilm, no copy", "unilm-no-copy", True),
             ("unilm + 5 min char-LM pre-training", "unilm-pretrained", True),
             ("unilm from genloom-zh-base (step-9,750 snapshot, 55 min)", "unilm-zh-base", True),
             ("unilm from genloom-zh-base (step-13,451 snapshot, 135 min)", "unilm-zh-base-long", True)]
    for label, key, trained in title:
        rl = "**{:.2f}**" if key == "rnn" else "{:.2f}"
        tail = " {:.1f} | {:.0f} | {:.1f}% |" if trained else " - | - | - |"
        fields = ["rouge-1", "rouge-2", "rouge-l", "bleu"] + (["train_minutes", "chars_per_s", "repeated_4gram"]
                                                               if trained else [])
        out.append(Figure(f"| {label} | {{:.2f}} | {{:.2f}} | {rl} | {{:.2f}} |{tail}", "title.json",
                          tuple(f"rows/{key}/{f}" for f in fields)))
    out.append(Figure("other jobs on the other core; {:,.0f} steps, 11 epochs) the dev ROUGE-L per epoch was " +
                      " / ".join(["{:.2f}"] * 4) + " /\n" + " / ".join(["{:.2f}"] * 7), "title.json",
                      ("rows/unilm-zh-base-long/steps",
                       *(f"variants/unilm-zh-base-long/dev_rouge_l/{i}/rouge-l" for i in range(11)))))
    for label, key in (("sample with the keywords as prompt", "sample"),
                       ("grid beam search forcing the keywords", "beam"), ("same, no repeated 3-grams", "beam-norep3"),
                       ("CGMH (`genloom search keywords`)", "cgmh")):
        keys = tuple(f"keywords_{lang}/methods/{key}/{f}" for lang in ("zh", "en")
                     for f in ("coverage", "nll_eval_lm/median", "nll_target_lm/median", "repeated_ngram_rate"))
        out.append(Figure(f"| {label} | {{:.0f}}% | {{:.2f}} / {{:.2f}} | {{:.0f}}% | {{:.0f}}% | {{:.2f}} / {{:.2f}} | "
                          f"{{:.0f}}% |", "search.json", keys))
    for label, key in (("sample with the keywords as prompt", "sample"),
                       ("grid beam search forcing the keywords", "beam"), ("same, no repeated 3-grams", "beam-norep3"),
                       ("CGMH + length model, no repeated 3-grams", "cgmh")):
        out.append(Figure(f"| {label} | {{:.0f}}% | {{:.2f}} / {{:.2f}} | {{:.1f}} | {{:.0f}}% | {{:.2f}} |", "search.json",
                          tuple(f"keywords_zh_base_s4/methods/{key}/{f}" for f in (
                              "coverage", "nll_eval_lm/median", "nll_target_lm/median", "length_chars/mean",
                              "repeated_ngram_rate", "seconds_per_set"))))
    dev = [f"keywords_zh_base_dev_t{t}/methods/cgmh" for t in ("08", "085", "09", "095")]
    out.append(Figure("Mean CGMH length on dev: {:.1f} / {:.1f} / {:.1f} / {:.1f} characters against the beam's {:.1f}, "
                      "with median eval NLL {:.2f} / {:.2f} / {:.2f} / {:.2f} (beam {:.2f})", "search.json",
                      (*(f"{k}/length_chars/mean" for k in dev),
                       "keywords_zh_base_dev_t095/methods/beam-norep3/length_chars/mean",
                       *(f"{k}/nll_eval_lm/median" for k in dev),
                       "keywords_zh_base_dev_t095/methods/beam-norep3/nll_eval_lm/median")))
    for label, key in (("same, no repeated 3-grams", "beam-norep3"),
                       ("CGMH + length model, no repeated 3-grams, no character 3 times running", "cgmh")):
        out.append(Figure(f"| {label} | {{:.0f}}% | {{:.2f}} / {{:.2f}} | {{:.1f}} | {{:.0f}}% | {{:.2f}} |", "search.json",
                          tuple(f"keywords_zh_base_s4_run2/methods/{key}/{f}" for f in (
                              "coverage", "nll_eval_lm/median", "nll_target_lm/median", "length_chars/mean",
                              "repeated_ngram_rate", "seconds_per_set"))))
    out.append(Figure("at 0.95 CGMH wrote {:.1f} characters against the beam's {:.1f} (79%), at 1.0 {:.1f} against\n"
                      "{:.1f} (91%)", "search.json",
                      tuple(f"keywords_zh_base_dev_{t}_run2/methods/{m}/length_chars/mean"
                            for t in ("t095", "t100") for m in ("cgmh", "beam-norep3"))))
    out.append(Figure("Coverage {:.0f}%, median eval NLL {:.2f} against the beam's {:.2f} and {:.1f} characters, 89% of the "
                      "beam's\n{:.1f}", "search.json",
                      ("keywords_zh_base_s4_run2/methods/cgmh/coverage", "keywords_zh_base_s4_run2/methods/cgmh/nll_eval_lm/median",
                       "keywords_zh_base_s4_run2/methods/beam-norep3/nll_eval_lm/median",
                       "keywords_zh_base_s4_run2/methods/cgmh/length_chars/mean",
                       "keywords_zh_base_s4_run2/methods/beam-norep3/length_chars/mean")))
    out.append(Figure("Coverage {:.0f}%, median eval NLL", "search.json", ("keywords_en_len/methods/cgmh/coverage",),
                      scale=P))
    out.append(Figure("median eval NLL {:.2f} against the no-repeat beam's {:.2f} (the 20-step CGMH: "
                      "{:.2f}), mean length {:.1f} characters against the beam's {:.1f}, {:.1f} s per set.", "search.json",
                      ("keywords_en_len/methods/cgmh/nll_eval_lm/median",
                       "keywords_en_len/methods/beam-norep3/nll_eval_lm/median",
                       "keywords_en/methods/cgmh/nll_eval_lm/median",
                       "keywords_en_len/methods/cgmh/length_chars/mean",
                       "keywords_en_len/methods/beam-norep3/length_chars/mean",
                       "keywords_en_len/methods/cgmh/seconds_per_set"), scale=1.0))
    out.append(Figure("count): CGMH {:.1f} characters against the no-repeat beam's {:.1f}, 55% again.", "search.json",
                      ("keywords_en_len_dev_t10/methods/cgmh/length_chars/mean",
                       "keywords_en_len_dev_t10/methods/beam-norep3/length_chars/mean")))
    out.append(Figure("on inews dev, penalty 12: {:.1f}% restored, {:.1f}% of clean sentences changed; penalty 14: "
                      "{:.1f}% and {:.1f}%", "search.json",
                      ("correction_zh_penalty_sweep_base_dev/3/restored", "correction_zh_penalty_sweep_base_dev/3/clean_changed",
                       "correction_zh_penalty_sweep_base_dev/4/restored",
                       "correction_zh_penalty_sweep_base_dev/4/clean_changed"), scale=P))
    out.append(Figure("(on inews dev, penalty 12: {:.1f}% restored, {:.1f}% of the clean sentences changed; penalty 14: "
                      "{:.1f}% and {:.1f}%). Penalty 14 on the 200 test sentences: **{:.1f}%** fully restored, {:.1f}% "
                      "with the wrong character changed, {:.1f}% of the clean sentences changed", "search.json",
                      ("correction_zh_penalty_sweep_base_s4_dev/2/restored",
                       "correction_zh_penalty_sweep_base_s4_dev/2/clean_changed",
                       "correction_zh_penalty_sweep_base_s4_dev/3/restored",
                       "correction_zh_penalty_sweep_base_s4_dev/3/clean_changed",
                       "correction_zh_base_s4/restored", "correction_zh_base_s4/error_position_changed",
                       "correction_zh_base_s4/clean_changed"), scale=P))
    out.append(Figure("(on inews dev, penalty 14: {:.1f}% restored, {:.1f}% of the clean sentences changed; penalty 15: "
                      "{:.1f}% and {:.1f}%). Penalty 15 on the 200 test sentences: **{:.1f}%** fully restored, {:.1f}% "
                      "with the wrong character changed, {:.1f}% of the clean sentences changed", "search.json",
                      ("correction_zh_penalty_sweep_base_s5_dev/3/restored",
                       "correction_zh_penalty_sweep_base_s5_dev/3/clean_changed",
                       "correction_zh_penalty_sweep_base_s5_dev/4/restored",
                       "correction_zh_penalty_sweep_base_s5_dev/4/clean_changed",
                       "correction_zh_base_s5/restored", "correction_zh_base_s5/error_position_changed",
                       "correction_zh_base_s5/clean_changed"), scale=P))
    for tag, pens, (lo, hi) in (("base_s8", ("14", "15"), (2, 3)), ("base_s8_both", ("13", "14"), (2, 3))):
        out.append(Figure(f"(on inews dev, penalty {pens[0]}: {{:.1f}}% restored, {{:.1f}}% of the\nclean sentences "
                          f"changed; penalty {pens[1]}: {{:.1f}}% and {{:.1f}}%). Penalty {pens[1]} on the 200 test "
                          f"sentences: **{{:.1f}}%** fully restored,\n{{:.1f}}% with the wrong character changed, "
                          f"**{{:.1f}}%** of the clean sentences changed", "search.json",
                          (f"correction_zh_penalty_sweep_{tag}_dev/{lo}/restored",
                           f"correction_zh_penalty_sweep_{tag}_dev/{lo}/clean_changed",
                           f"correction_zh_penalty_sweep_{tag}_dev/{hi}/restored",
                           f"correction_zh_penalty_sweep_{tag}_dev/{hi}/clean_changed",
                           f"correction_zh_{tag}/restored", f"correction_zh_{tag}/error_position_changed",
                           f"correction_zh_{tag}/clean_changed"), scale=P))
    oracle = ("correction_zh_oracle_base_s5_dev", "correction_zh_oracle_base_s5_test")
    out.append(Figure("the wrong character's position is among the 4 tried in {:.1f}% / {:.1f}% of the sentences, the right "
                      "character among the 1,024 candidates in {:.1f}% / {:.1f}% and in the 32-candidate shortlist in "
                      "{:.1f}% / {:.1f}%, but restoring it buys more than the 15-nat penalty in only {:.1f}% / {:.1f}% "
                      "(median gain", "search.json",
                      tuple(f"{k}/{f}" for f in ("position_tried", "in_top_k", "in_shortlist", "by_penalty/2/gain_above")
                            for k in oracle), scale=P))
    out.append(Figure("(median gain {:.1f} / {:.1f} nats), and all four hold in", "search.json",
                      tuple(f"{k}/gain_quantiles/0.50" for k in oracle)))
    out.append(Figure("and all four hold in {:.1f}% / {:.1f}%.", "search.json",
                      tuple(f"{k}/by_penalty/2/reachable" for k in oracle), scale=P))
    out.append(Figure("on the 200 test sentences: **{:.1f}%** fully restored, {:.1f}% with the wrong character changed, "
                      "{:.1f}% of the clean sentences changed", "search.json",
                      ("correction_zh_base/restored", "correction_zh_base/error_position_changed",
                       "correction_zh_base/clean_changed"), scale=P))
    fields = ("controllability", "distinct_2", "perplexity", "copied_20")
    for label, w, t, file, key in (("CLN", 0, 1, "condition_t1.json", "cln"),
                                   ("label-token prefix", 0, 1, "condition_t1.json", "prefix"),
                                   ("CLN", 1, 1, "condition_t1.json", "cln guidance 1"),
                                   ("label-token prefix", 1, 1, "condition_t1.json", "prefix guidance 1"),
                                   ("CLN", 3, 1, "condition_t1.json", "cln guidance 3"),
                                   ("label-token prefix", 1, 1.15, "condition.json", "prefix guidance 1"),
                                   ("CLN", 0, 1.15, "condition.json", "cln")):
        out.append(Figure(f"| {label} | {w} | {t} | {{:.1f}}% | {{:.2f}} | {{:.1f}} | {{:.1f}}% |", file,
                          tuple(f"comparison/{key}/{f}" for f in fields)))
    out.append(Figure("| **CLN** | **1** | **1.15** | **{:.1f}%** | **{:.3f}** | {:.1f} | {:.1f}% |", "condition.json",
                      tuple(f"comparison/cln guidance 1/{f}" for f in fields)))
    for label, key in (("(a) truncate, then generate", None), ("(b) extract only", None),
                       ("(c) extract, then generate", None), ("(c) decoded without the copy constraint", None),
                       ("(d) (c) without the B/I/O copy", "(d) (c) without copy"),
                       ("(e) (c) without Sparse Softmax", "(e) (c) without sparse softmax"),
                       ("(c0) (c) without pointer and prior (the post's model)",
                        "(c) without pointer and prior (the post's model)"),
                       ("(c) with oracle extraction at test (upper bound, uses the references)",
                        "(c) with oracle extraction at test (upper bound)")):
        rl = "**{:.2f}**" if label.startswith("(a)") else "{:.2f}"
        out.append(Figure(f"| {label} | {{:.2f}} | {{:.2f}} | {rl} | {{:.2f}} |", "summarize.json",
                          tuple(f"rows/{key or label}/scores/{m}" for m in ("rouge-1", "rouge-2", "rouge-l", "cail"))))
    for label, key in (("lead (what truncation reads)", "lead"), ("tf-idf salience", "salience"),
                       ("salience + position", "salience+lead"), ("the trained k-fold extractor", "extractor"),
                       ("draft-guided (a draft title from the lead)", "draft-guided"),
                       ("oracle (uses the reference)", "oracle (uses the reference)")):
        out.append(Figure(f"| {label} | {{:.1f}}% | {{:.1f}}% | {{:.1f}}% |", "summarize_extract_baselines.json",
                          tuple(f"windows/64/rows/{key}/{f}"
                                for f in ("window_recall", "title_chars_covered", "title_bigrams_covered"))))
    for label, key in (("lead (what truncation reads)", "lead (what truncation reads)"),
                       ("extractor on genloom-zh-base vectors", "extractor on encoder"),
                       ("extractor on genloom-zh-base vectors + centroid features + tf-idf LSA",
                        "extractor on encoder,centroid,tfidf")):
        cell = "**{:.1f}%**" if "tf-idf" in label else "{:.1f}%"
        out.append(Figure(f"| {label} | {cell} | {cell} |", "summarize_long_extract_base.json",
                          tuple(("tables", f"shuffled, window {w}", "recall", key, "window_recall") for w in (64, 128))))
    out += _summarize_long_rows()
    out += _engine_rows()
    return out


def _summarize_long_rows() -> list[Figure]:
    """Issue 22's shuffled tables (benchmarks/summarize_long.py, results/summarize_long.json)."""
    out = []
    tables = [("tables", f"shuffled, window {w}") for w in (64, 128)]
    density = [lookup(read("summarize_long.json"), (*t, "extract_density", "value")) for t in tables]
    full = "extractor on encoder,centroid,tfidf,titlewords"
    for label, keys in (("lead (what truncation reads)", ["lead (what truncation reads)"] * 2),
                        ("tf-idf centroid (no training)", ["tf-idf centroid (no training)"] * 2),
                        ("extractor on title words only", ["extractor on titlewords"] * 2),
                        ("extractor on encoder vectors + centroid + tf-idf LSA + title words", [full] * 2),
                        ("the same, window filled by probability / length ** d (d = 0.75 / 1)",
                         [f"{full}, density {d:g}" for d in density])):
        cell = "**{:.1f}%**" if "filled" in label else "{:.1f}%"
        out.append(Figure(f"| {label} | {cell} | {cell} |", "summarize_long.json",
                          tuple((*t, "recall", k, "window_recall") for t, k in zip(tables, keys))))
    for label in ("(a) truncate, then generate", "(b) extract only", "(c) extract, then generate",
                  "(d) (c) without B/I/O copy", "(e) (c) without Sparse Softmax",
                  "(c-oracle) (c) on the aligned clauses (upper bound, uses the reference)", "lead-3",
                  "TextRank (jiagu), cut to the mean title length"):
        cell = "**{:.2f}**" if label.startswith("(c) extract") else "{:.2f}"
        out.append(Figure(f"| {label} | {cell} | {{:.2f}} | {cell} | {{:.2f}} |", "summarize_long.json",
                          tuple((*t, "rows", label, "scores", m) for t in tables for m in ("rouge-l", "cail-char"))))
    out.append(Figure("(c) beats (a) by {:.2f} and {:.2f} ROUGE-L", "summarize_long.json",
                      tuple((*t, "c_minus_a_rouge_l") for t in tables)))
    out.append(Figure("the extractor beats the lead by {:.2f} and {:.2f} points", "summarize_long.json",
                      tuple((*t, "extractor_minus_lead_window_recall") for t in tables)))
    return out


def _engine_rows() -> list[Figure]:
    """The CPU engines table (benchmarks/engines.py): one figure per engine."""
    out = []
    speed = ("ms_per_token/greedy_b1/{n}", "tokens_per_s/greedy_b1/{n}")
    loops = ("ms_per_token/greedy_b8/{n}", "ms_per_token/beam4_b1/{n}")
    rows = [("HF `generate()`, fp32", "hf", True, False), ("genloom Transformer, fp32", "genloom", True, True)]
    rows += [(f"genloom over llama.cpp, {q}", f"genloom-llamacpp-{q}", True, True) for q in ("f32", "f16", "q8_0", "q4_1")]
    rows += [(f"llama.cpp's own loop, {q}", f"llamacpp-{q}", False, False) for q in ("f32", "f16", "q8_0", "q4_1")]
    for label, n, ours, compared in rows:
        keys = [*speed, *(loops if ours else ()), "ms_per_token/sample_b1/{n}", "prefill_ms/{n}"]
        text = f"| {label} | {{:.1f}} | {{:.1f}} | " + ("{:.1f} | {:.1f} | " if ours else "- | - | ") + "{:.1f} | {:.0f} | "
        if n == "hf":
            text += "reference | reference | - |"
        else:
            keys.append("greedy_equal_hf_of_64/{n}")
            text += "{:.0f} | "
            if compared:
                keys += ["delta_nll_vs_hf/{n}", "exact_healing_over_plain/{n}/median"]
                text += "{:+.1e} | {:.2f} |"
            else:
                text += "- | - |"
        out.append(Figure(text, "engines.json", tuple(k.format(n=n) for k in keys)))
    out.append(Figure("genloom's loops over llama.cpp take {:.2f} / {:.2f} / {:.2f} / {:.2f}x the time of llama.cpp's "
                      "own loop (f32 / f16 / q8_0 / q4_1)", "engines.json",
                      tuple(f"ratios/genloom_llamacpp_over_raw/{q}" for q in ("f32", "f16", "q8_0", "q4_1"))))
    out.append(Figure("HF fp32 takes {:.2f}x the time of genloom over llama.cpp q8_0; genloom's own fp32 Transformer "
                      "takes {:.2f}x the time of llama.cpp f32", "engines.json",
                      ("ratios/hf_over_genloom_llamacpp_q8_0", "ratios/genloom_torch_over_llamacpp_f32")))
    out.append(Figure("greedy equal to HF `generate()` on {:.0f} / {:.0f} prompts x 64 tokens, beam-4 equal to HF's "
                      "best on {:.0f} / {:.0f}, exact healing equal to the torch model's on {:.0f} / {:.0f} cut prompts, "
                      "largest logit difference {:.1e}", "engines.json",
                      ("acceptance/greedy_equal_hf", "acceptance/prompts", "acceptance/beam4_equal_hf_best",
                       "acceptance/prompts", "acceptance/exact_healing_equal_torch", "acceptance/heal_prompts",
                       "acceptance/max_abs_logit_diff_vs_hf")))
    out.append(Figure("CTranslate2 fp32 / int8 {:.1f} / {:.1f} ms/token (greedy tokens equal to HF's: {:.0f} / {:.0f} "
                      "of 64), OpenVINO GenAI on the q4_1 GGUF {:.1f}, beside HF {:.1f} and genloom over llama.cpp "
                      "q8_0 {:.1f} in the same run", "engines.json",
                      ("peers/ms_per_token/ct2-fp32", "peers/ms_per_token/ct2-int8", "peers/greedy_equal_hf_of_64/ct2-fp32",
                       "peers/greedy_equal_hf_of_64/ct2-int8", "peers/ms_per_token/openvino-q4_1", "peers/ms_per_token/hf",
                       "peers/ms_per_token/genloom-llamacpp-q8_0")))
    out.append(Figure("HF {:.0f} MiB, genloom {:.0f}, genloom over llama.cpp f32 / q8_0 {:.0f} / {:.0f}, llama.cpp's own "
                      "loop f32 / q8_0 {:.0f} / {:.0f}", "engines.json",
                      tuple(f"peak_rss/{n}/peak_mib" for n in ("hf", "genloom", "genloom-llamacpp-f32",
                                                                 "genloom-llamacpp-q8_0", "llamacpp-f32", "llamacpp-q8_0"))))
    return out


FIGURES += _rows()


def _serve() -> list[Figure]:
    """genloom serve under load (benchmarks/serve_load.py)."""
    out = [Figure("16 greedy requests of 64 tokens: {:.1f} s one at a time, {:.1f} s all at once, **{:.2f}x**",
                  "serve.json", ("batched_vs_sequential/sequential_wall_s_median",
                                 "batched_vs_sequential/concurrent_wall_s_median",
                                 "batched_vs_sequential/speedup_median"))]
    for level in ("1", "4", "16", "64"):
        keys = [f"load/{level}/alone/tokens_per_s", f"load/{level}/whole/tokens_per_s",
                f"load/{level}/whole/throughput_ratio", f"load/{level}/streamed/tokens_per_s",
                f"load/{level}/streamed/throughput_ratio", f"load/{level}/streamed/ttft_p50_s",
                f"load/{level}/streamed/ttft_p99_s", f"load/{level}/streamed/tpot_p50_ms",
                f"load/{level}/streamed/tpot_p99_ms"]
        out.append(Figure(f"| {level} | {{:.1f}} | {{:.1f}} ({{:.2f}}x) | {{:.1f}} ({{:.2f}}x) | {{:.2f}} / {{:.2f}} s | "
                          "{:.0f} / {:.0f} ms |", "serve.json", tuple(keys)))
    out.append(Figure("{:.0f} flood requests: {:.0f} answered with exactly the text they get alone, {:.0f} refused "
                      "with 429 and Retry-After, {:.0f} otherwise", "serve.json",
                      tuple(f"faults/flood_total/{k}" for k in ("sent", "ok_identical", "rejected_429", "other"))))
    out.append(Figure("{:.0f} clients that leave after three chunks beside {:.0f} normal requests, {:.0f} of which "
                      "match their lone result", "serve.json",
                      tuple(f"faults/disconnects_total/{k}" for k in ("quitters", "normal", "normal_identical"))))
    out.append(Figure("resident memory {:.0f} MiB after warm-up, {:.0f} / {:.0f} / {:.0f} MiB after each round",
                      "serve.json", ("faults/rss_mib_after_warmup", "faults/rss_mib_after_round/0",
                                     "faults/rss_mib_after_round/1", "faults/rss_mib_after_round/2")))
    return out


FIGURES += _serve()
FIGURES.append(Figure("prints its token {:.1f} s after launch (median of {:.0f} cached calls, {:.1f}-{:.1f} s; the first, "
                      "which converts the GGUF, {:.1f} s)", "load_once.json",
                      ("cached/first_byte_s/median", "runs", "cached/first_byte_s/min", "cached/first_byte_s/max",
                       "rows/0/first_byte_s")))
# shares quoted as percent inside otherwise unscaled figures
PERCENT_KEYS = {"english/greedy_word_match", "chinese/greedy_word_match", "repeated_4gram", "coverage",
                "repeated_ngram_rate", "controllability", "copied_20", "nvae_better_share"}


def values(fig: Figure) -> list[float]:
    """The figure's values, shares turned into percent where the README quotes a percent."""
    out = []
    for key, v in zip(fig.keys, fig.values()):
        if fig.scale == 1.0 and isinstance(key, str) and any(p in key for p in PERCENT_KEYS):
            v *= 100
        if key == "train/train_seconds":
            v /= 60
        out.append(v)
    return out


def rendered(fig: Figure) -> str:
    return fig.text.format(*values(fig))


def main() -> int:
    for fig in FIGURES:
        keys = ", ".join(k if isinstance(k, str) else "/".join(k) for k in fig.keys)
        print(f"{rendered(fig)}\n    <- {fig.file}: {keys}\n    {load_text(fig.file)}")
    readme = " ".join(README.read_text(encoding="utf-8").split())  # line breaks do not count
    missing = [rendered(f) for f in FIGURES if " ".join(rendered(f).split()) not in readme]
    for text in missing:
        print(f"not in the README: {text}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
