"""The README's claim table, generated from the experiments' results.json files (issue 18 item 5).

    python experiments/claims.py            # writes experiments/results/claims.md and the README/docs blocks

Every number in the table is read from a results.json here; the verdict rules are written next to each claim.
The README and docs/results.md hold the table between `<!-- claims:begin -->` and `<!-- claims:end -->`.
"""
from __future__ import annotations

import json
import math
import pathlib

import _util  # noqa: F401
from _util import REPO, RESULTS

BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"


def load(name: str) -> dict | None:
    f = RESULTS / name / "results.json"
    return json.loads(f.read_text()) if f.exists() else None


def table(res: dict, first_header: str) -> dict:
    return next(t for t in res["tables"] if t["header"][0] == first_header)


def rows_by(t: dict, *keys: str) -> dict:
    idx = [t["header"].index(k) for k in keys]
    return {tuple(r[i] for i in idx): dict(zip(t["header"], r)) for r in t["rows"]}


def three_moons_rows() -> list[list[str]]:
    old = load("three_moons")
    t = rows_by(table(old, "model"), "model", "seed")
    one = [t[("1 head", s)] for s in (100.0, 101.0, 102.0)]
    mid_key = next(k for k in old["tables"][0]["header"] if "single periods covered" in k)
    late_key = next(k for k in old["tables"][0]["header"] if "combined covered" in k)
    rows = []
    m1, l1 = sorted(r[mid_key] for r in one)[1], sorted(r[late_key] for r in one)[1]
    pre = load("three_moons_prereg")
    pre_txt = ""
    if pre:
        a = pre["arms"]["reference/exact"]
        pre_txt = (f"; pre-registered (window 400, batch 8): 1-head median {a['1head']['mid']['median']:.2f} → "
                   f"{a['1head']['late']['median']:.2f} (reference AdamW), "
                   f"{pre['arms']['optax/exact']['1head']['mid']['median']:.2f} → "
                   f"{pre['arms']['optax/exact']['1head']['late']['median']:.2f} (optax)")
    verdict = "reproduced"
    rows.append(["Three moons: 1 head predicts well only once the context covers the combined period", "yes (Fig. 3)",
                 f"error {m1:.2f} → {l1:.2f} at the combined period, 3 of 3 seeds (window 800, batch 8){pre_txt}",
                 verdict, "every 1-head seed, both optimisers; guarded by tests/test_science_three_moons.py"])
    hist = ("history: 1 of 6 earlier runs (optax AdamW): 1 of 3 at batch 8 after a third seed (102) was added to a "
            "2-seed run that had failed its own check, 0 of 3 at batch 64 (prose only, no files)")
    if pre:
        arms = pre["arms"]
        s = {k: f"{arms[k]['successes']}/{arms[k]['n_3head']}" for k in arms}
        ok_ref = arms["reference/exact"]["successes"] / max(arms["reference/exact"]["n_3head"], 1)
        ok_opt = arms["optax/exact"]["successes"] / max(arms["optax/exact"]["n_3head"], 1)
        # verdict rule (fixed before the runs finished): reproduced if the reference-optimiser arm (the paper's
        # recipe) succeeds in >= 70 % of seeds on the primary (exact) evaluation, partial if >= 30 %, else not
        verdict = "reproduced" if ok_ref >= 0.7 else "partial" if ok_ref >= 0.3 else "not reproduced"
        ours = (f"pre-registered, window 400 / batch 8 (paper 800 / 64): successes (exact / cached evaluation) "
                f"reference AdamW {s['reference/exact']} / {s['reference/cached']}, optax AdamW "
                f"{s['optax/exact']} / {s['optax/cached']}; {hist}")
        why = ("without bias correction (the official MLX AdamW) 3 heads disentangle far more often than with "
               "optax's bias-corrected AdamW" if ok_ref > ok_opt + 0.25 else
               "the optimiser makes little difference at this scale" if abs(ok_ref - ok_opt) <= 0.25 else
               "optax's AdamW does better here")
        why += "; the paper's batch 64 and window 800 did not fit the CPU and remain untested"
    else:
        verdict, ours, why = "partial", hist, "pre-registered study not finished"
    rows.append(["Three moons: 3 heads disentangle (one moon per head) and predict well once the single periods "
                 "are covered", "yes, seed 100, batch 64", ours, verdict, why])
    return rows


def pm(v, f: str = "{:.3f}") -> str:
    """mean ± std (the std unsigned; the mean alone when there is no std)."""
    return (f + " ± " + f.replace("+", "")).format(*v) if len(v) > 1 and not math.isnan(v[1]) else f.format(v[0])


def regbench_rows() -> list[list[str]]:
    short, long_ = load("regbench"), load("regbench_long")
    ts, tl = rows_by(table(short, "train automata"), "train automata", "model"), \
        rows_by(table(long_, "train automata"), "train automata", "model")
    mm = lambda t, n: t[(float(n), "memory mosaic")]["accuracy"]   # noqa: E731
    tr = lambda t, n: t[(float(n), "transformer (GPT-2)")]["accuracy"]   # noqa: E731
    pre = load("regbench_prereg")
    old = (f"one seed, no dropout, 128-token instances: {mm(ts, 100):.3f} vs {tr(ts, 100):.3f} at 100 automata "
           f"(120 steps), {mm(tl, 100):.3f} vs {tr(tl, 100):.3f} (1000 steps)")
    rows = []
    if pre is None:
        rows.append(["RegBench: the memory mosaic learns in-context languages from few automata, the transformer "
                     "does not", "accuracy 0.925 vs 0.52 at 100 automata", old, "partial",
                     "pre-registered multi-seed study not run"])
        return rows
    by, ng, p = pre["by_arch_n"], pre["ngram3"], pre["protocol"]
    cell = lambda a, n: (f"{pm([by[f'{a}/{n}']['accuracy_mean'], by[f'{a}/{n}']['accuracy_std']])} "  # noqa: E731
                         f"({len(by[f'{a}/{n}']['seeds'])} seeds)" if f"{a}/{n}" in by else "not run")
    sizes = p["sizes"]
    pre_txt = (f"pre-registered ({p['seq_len']}-token instances, {p['steps']} steps of {p['batch']}, dropout "
               f"{p['dropout']}, lr chosen on validation: " + ", ".join(f"{a} {lr:g}" if lr else f"{a} grid not run"
                                                           for a, lr in pre["chosen_lr"].items()) + "): accuracy mosaic "
               + ", ".join(f"N={n} {cell('mosaic', n)}" for n in sizes) + "; transformer "
               + ", ".join(f"N={n} {cell('gpt2', n)}" for n in sizes))
    both = [n for n in sizes if f"mosaic_beats_gpt2/{n}" in by]
    lead_old = all(mm(t, n) > tr(t, n) for t in (ts, tl) for n in (100, 500, 1000, 2500))
    rows.append(["RegBench: the memory mosaic learns in-context languages from few automata, the transformer does "
                 "not", "accuracy 0.925 vs 0.52 at 100 automata", f"{pre_txt}; earlier, {old}", "partial",
                 ("the mosaic leads the transformer at every N run" if lead_old and all(
                     by[f"mosaic_beats_gpt2/{n}"] for n in both) else "the lead does not hold everywhere")
                 + (f" (pre-registered: at N = {both})" if both else
                    " (one seed, earlier runs; the pre-registered transformer runs did not fit the CPU time)")
                 + "; accuracies stay below the paper's 0.925–0.94; the 1-layer lead is guarded by "
                   "tests/test_science_regbench.py"])
    ran = [n for n in sizes if f"mosaic/{n}" in by]
    beats = [n for n in ran if by[f"mosaic/{n}"]["beats_3gram"]["accuracy"] and by[f"mosaic/{n}"]["beats_3gram"]["tvd"]]
    verdict = "not attempted" if not ran else "reproduced" if len(beats) == len(ran) == len(sizes) else \
        "partial" if beats else "not reproduced"
    rows.append(["RegBench: the mosaic does better than an untrained in-context 3-gram", "implied (0.925–0.94 "
                 "accuracy; the 3-gram is not in the paper)",
                 f"3-gram on the same test set: accuracy {ng['accuracy']:.3f}, TVD {ng['tvd']:.3f}; mosaic "
                 + "; ".join(f"N={n}: {pm([by[f'mosaic/{n}']['accuracy_mean'], by[f'mosaic/{n}']['accuracy_std']])}"
                             f" / TVD {pm([by[f'mosaic/{n}']['tvd_mean'], by[f'mosaic/{n}']['tvd_std']])}"
                             for n in ran), verdict,
                 f"registered rule: mean and every seed better on both metrics; met at N = {beats or 'none'}"
                 + (f"; not run: {len(p['run_order']) - len(pre['runs'])} of the {len(p['run_order'])} registered runs "
                    "(stopping time; all of the transformer's)" if len(pre["runs"]) < len(p["run_order"]) else "")])
    rows.append(["RegBench: the transformer catches up at 2500 automata", "0.925",
                 f"{tr(ts, 2500):.3f} (0.8 epochs), {tr(tl, 2500):.3f} (12.8 epochs), one seed", "not reproduced",
                 "undertrained (the paper: 200 epochs); an undertrained model compared with a fully trained one "
                 "says nothing"])
    return rows


def lm_rows_old() -> list[list[str]]:
    lm = load("lm_by_depth")
    val = rows_by(table(lm, "model"), "model", "depth")
    pos = rows_by(table(lm, "corpus"), "corpus", "model", "depth")
    gap = rows_by(next(t for t in lm["tables"] if "gap, positions ≥ 50" in t["header"]), "corpus", "depth")
    w = lambda m, d: pos[("WikiText-2 valid", m, float(d))]["mean loss"]   # noqa: E731
    g = lambda c, d: gap[(c, float(d))]   # noqa: E731
    uniform = math.log(4096)
    return [
        ["LM: at depth 1 the memory mosaic beats GPT-2 in distribution", "yes (Fig. 7, BabiStories, 21B tokens)",
         f"GPT-2 better: validation {val[('GPT-2', 1.0)]['validation loss']:.3f} vs "
         f"{val[('memory mosaic', 1.0)]['validation loss']:.3f} (depth 1), "
         f"{val[('GPT-2', 4.0)]['validation loss']:.3f} vs {val[('memory mosaic', 4.0)]['validation loss']:.3f} "
         "(depth 4); 614k tokens, one seed", "not reproduced",
         "5 orders of magnitude fewer tokens; 3 seeds at the largest local token budget not attempted this round"],
        ["LM out of distribution: the mosaic uses context beyond ~50 tokens better (loss falls faster with position)",
         "yes (Fig. 8, Simple English Wikipedia)",
         f"gap GPT-2 − MM on WikiText-2, positions < 50 / ≥ 50: {g('WikiText-2 valid', 1)['gap, positions < 50']:+.2f} / "
         f"{g('WikiText-2 valid', 1)['gap, positions ≥ 50']:+.2f} (depth 1), "
         f"{g('WikiText-2 valid', 4)['gap, positions < 50']:+.2f} / {g('WikiText-2 valid', 4)['gap, positions ≥ 50']:+.2f} "
         "(depth 4)", "not reproduced",
         f"the gap is there from position 0 and does not grow; GPT-2's WikiText-2 loss ({w('GPT-2', 1):.2f} / "
         f"{w('GPT-2', 4):.2f}) is worse than uniform (ln 4096 = {uniform:.2f}), so the gap is most likely "
         "calibration (the mosaic's 1/√C logits stay soft), not context use; the temperature-calibrated "
         "comparison was not attempted this round"],
    ]


def attention_rows_old() -> list[list[str]]:
    old = json.loads((RESULTS / "attention_consistency" / "superseded_raw_metric.json").read_text())
    att = rows_by(table(old, "model"), "model", "depth")
    far = lambda m, d: att[(m, float(d))]["inconsistency, far (d ≥ 32)"]   # noqa: E731
    return [["Attention: scores to far tokens are nearly invariant to the query's position in the mosaic, not in a "
             "transformer", "yes (v2 Fig. 1)",
             f"far-token inconsistency MM vs GPT-2: {far('memory mosaic', 1):.3f} vs {far('GPT-2', 1):.3f} (depth 1), "
             f"{far('memory mosaic', 4):.3f} vs {far('GPT-2', 4):.3f} (depth 4)", "not attempted",
             "the metric counts per-row offsets of the scores, which softmax ignores; the softmax-invariant "
             "re-measurement needs the LM runs, which were not kept and did not fit the CPU this round"]]


def lm_rows() -> list[list[str]]:
    lc, old = load("lm_calibrated"), load("lm_by_depth")
    if lc is None or not lc["summary"]["by_model"]:
        return lm_rows_old()
    sm, p = lc["summary"], lc["protocol"]
    bm = sm["by_model"]
    val = rows_by(table(old, "model"), "model", "depth")
    seeds = {a: bm[a]["seeds"] for a in bm}
    scale = f"depth 1, {p['tokens_per_run']:,} tokens per run, seeds: mosaic {seeds.get('mosaic', 0)}, GPT-2 " \
            f"{seeds.get('gpt2', 0)}"
    ts = "TinyStories valid"
    idv = sm["verdicts"].get("mosaic better in distribution (calibrated)")
    rows = [["LM: at depth 1 the memory mosaic beats GPT-2 in distribution", "yes (Fig. 7, BabiStories, 21B tokens)",
             f"calibrated ID loss mosaic {pm(bm['mosaic'][f'{ts}/Tstar/mean'])} vs GPT-2 "
             f"{pm(bm['gpt2'][f'{ts}/Tstar/mean'])} ({scale}); earlier one-seed depth 4: "
             f"{val[('memory mosaic', 4.0)]['validation loss']:.3f} vs {val[('GPT-2', 4.0)]['validation loss']:.3f}",
             "reproduced" if idv else "not reproduced" if idv is not None else "not attempted",
             "after calibration, GPT-2 is better in distribution at this scale (5 orders of magnitude fewer "
             "tokens than the paper)" if idv is False else "the calibrated mosaic is better in distribution" if idv
             else "fewer than 2 seed pairings finished"]]
    ood = [c for c in ("WikiText-2 valid", "Gutenberg (6 books)")]
    vs = [sm["verdicts"].get(f"{c}: mosaic's calibrated loss falls faster past 50") for c in ood]
    verdict = "not attempted" if None in vs else "reproduced" if all(vs) else "partial" if any(vs) else \
        "not reproduced"
    txt = "; ".join(f"{c}: slope past 50 (nats/100 tokens, calibrated) mosaic {pm(bm['mosaic'][f'{c}/Tstar/slope'])}"
                    f" vs GPT-2 {pm(bm['gpt2'][f'{c}/Tstar/slope'])}, gap GPT-2 − MM at positions ≥ 50 "
                    f"{pm(ms(sm['pairs'][f'{c}/Tstar']['ge_50']), '{:+.2f}')} (uncalibrated "
                    f"{pm(ms(sm['pairs'][f'{c}/T1']['ge_50']), '{:+.2f}')})" for c in ood)
    same = all(abs(ms(sm["pairs"][f"{c}/Tstar"]["slope_diff"])[0]) < 0.02 for c in ood)
    rows.append(["LM out of distribution: the mosaic uses context beyond ~50 tokens better (loss falls faster with "
                 "position)", "yes (Fig. 8, Simple English Wikipedia)", f"{txt}; {scale}", verdict,
                 ("the slopes past 50 agree within 0.02 nats per 100 tokens: the mosaic's OOD advantage is a level "
                  "offset present from position 0, not better use of context; " if same else "")
                 + f"temperatures fitted on in-distribution validation (T* mosaic "
                 f"{bm['mosaic']['T_star']}, GPT-2 {bm['gpt2']['T_star']}); registered rule: the mosaic's calibrated "
                 f"slope more negative in every seed pairing ({len(sm['verdict_pairs'])} pairings run); "
                 + "; ".join(f"{c}: calibration moves the gap at positions ≥ 50 from "
                             f"{ms(sm['pairs'][f'{c}/T1']['ge_50'])[0]:+.2f} to {ms(sm['pairs'][f'{c}/Tstar']['ge_50'])[0]:+.2f}"
                             for c in ood)
                 + ("; an in-distribution temperature leaves GPT-2 at T = 1 and does not remove its OOD "
                    "over-confidence (still worse than uniform, ln 4096 = 8.32, on WikiText-2)"
                    if all(t == 1.0 for t in bm["gpt2"]["T_star"])
                    and bm["gpt2"]["WikiText-2 valid/T1/mean"][0] > math.log(4096) else "")])
    return rows


def ms(xs: list[float]) -> list[float]:
    return [sum(xs) / len(xs), (sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
            if len(xs) > 1 else float("nan")]


def attention_rows() -> list[list[str]]:
    """Far-token inconsistency per depth: depth 1 from attention_consistency/, the others from its depth<N>/ folders."""
    att = load("attention_consistency")
    if not att or not isinstance(att.get("seeds"), list):
        return attention_rows_old()
    tables = attention_tables(att)
    parts, verdicts, held, failed = [], [], [], []
    for res in (t for t in tables if t):
        rows = rows_by(res["tables"][1], "model", "depth", "seed")
        far = next(h for h in res["tables"][1]["header"] if h.startswith("inconsistency, far"))
        for depth in sorted({k[1] for k in rows}):
            mm = [rows[("memory mosaic", depth, float(s))][far] for s in res["seeds"]]
            gp = [rows[("GPT-2", depth, float(s))][far] for s in res["seeds"]]
            every = all(m < g for m, g in zip(mm, gp))
            verdicts.append(every)
            (held if every else failed).append(f"{depth:g}")
            parts.append(f"depth {depth:g}, {len(res['seeds'])} seeds: mosaic {pm(ms(mm))} vs GPT-2 {pm(ms(gp))}"
                         f" ({'mosaic lower in every seed' if every else 'not lower in every seed'})")
    depths_done = len(verdicts) > 1
    verdict = "partial" if any(verdicts) else "not reproduced"   # never "reproduced": 5 orders fewer tokens
    return [["Attention: scores to far tokens are nearly invariant to the query's position in the mosaic, not in a "
             "transformer", "yes (v2 Fig. 1)",
             "far-token inconsistency (scores centred per query row, softmax-invariant): " + "; ".join(parts),
             verdict,
             (f"the mosaic is more consistent in every seed at depth {', '.join(held) or 'none'}"
              + (f", not at depth {', '.join(failed)}" if failed else "") + "; ")
             + ("models 5 orders of magnitude smaller in training tokens than the paper's"
                if depths_done else "depth 4 (where the old raw-score metric had GPT-2 ahead) was not re-measured")]]


def v2_rows() -> list[list[str]]:
    v2 = load("v2_extrapolation")["results"]
    r = lambda k, L: v2[k]["retrieval"][L]   # noqa: E731
    no = next(k for k in v2 if "without long-term" in k)
    return [["v2: retrieval keeps working far beyond the training length; it needs the long-term memory",
             "yes (RULER at 32k after 4k training)",
             f"trained at 256: MM v2 {r('MM v2', '256'):.0%} / {r('MM v2', '2048'):.0%} at 256 / 2048 tokens, "
             f"{r(no, '2048'):.1%} without long-term memory; v1 {r('MM v1', '2048'):.1%}, GPT-2 "
             f"{r('GPT-2', '2048'):.1%} (chance 3.1 %); one seed, toy retrieval", "reproduced",
             "synthetic key-value retrieval, not RULER; one seed; guarded by tests/test_science_v2.py"]]


def md(header: list[str], rows: list[list]) -> str:
    return "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" + \
        "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows) + "\n"


def regbench_block(pre: dict) -> str:
    """Mean ± std per (N, model) of the pre-registered RegBench study, from its results.json."""
    p, by, ng = pre["protocol"], pre["by_arch_n"], pre["ngram3"]
    rows = []
    for n in p["sizes"]:
        for arch, name in (("mosaic", "memory mosaic"), ("gpt2", "transformer (GPT-2)")):
            b = by.get(f"{arch}/{n}")
            rows.append([n, name, "not run", "", "", ""] if b is None else
                        [n, name, len(b["seeds"]), pm([b["accuracy_mean"], b["accuracy_std"]]),
                         pm([b["tvd_mean"], b["tvd_std"]]),
                         "/".join("yes" if b["beats_3gram"][k] else "no" for k in ("accuracy", "tvd"))])
    return (md(["training automata", "model", "seeds", "accuracy", "TVD (½·L1)", "beats 3-gram (acc./TVD)"], rows)
            + f"\nIn-context 3-gram on the same {ng['positions']:,} test positions: accuracy {ng['accuracy']:.3f}, "
              f"TVD {ng['tvd']:.3f}. Learning rates chosen on validation: {pre['chosen_lr']}. Not run (stopping "
              f"rule): {len(pre['not_run'])} of the registered runs.\n")


def lm_block(lc: dict) -> str:
    """Calibrated per-model means and the GPT-2 − mosaic gaps, from lm_calibrated/results.json."""
    sm = lc["summary"]
    corpora = ("TinyStories valid", "WikiText-2 valid", "Gutenberg (6 books)")
    rows = [[a, m["seeds"], pm(ms(m["T_star"]), "{:.2f}")] + [pm(m[f"{c}/Tstar/mean"]) for c in corpora]
            + [pm(m[f"{c}/Tstar/slope"]) for c in corpora[1:]] for a, m in sm["by_model"].items()]
    head = ["model", "seeds", "T*"] + [f"{c} loss (T*)" for c in corpora] + \
        [f"{c} slope past 50 (nats/100 tokens)" for c in corpora[1:]]
    gaps = [[c, tag, pm(ms(sm["pairs"][f"{c}/{k}"]["lt_50"]), "{:+.3f}"),
             pm(ms(sm["pairs"][f"{c}/{k}"]["ge_50"]), "{:+.3f}")]
            for c in corpora for k, tag in (("T1", "T = 1"), ("Tstar", "calibrated"))
            if len(sm["pairs"][f"{c}/{k}"]["seeds"])]
    return md(head, rows) + "\n" + md(["corpus", "scoring", "gap GPT-2 − MM, positions < 50",
                                      "gap GPT-2 − MM, positions ≥ 50"], gaps)


def attention_tables(att: dict) -> list[dict]:
    """The depth-1 table (attention_consistency/) and each depth<N>/ table beside it."""
    return [att] + [t for t in (load(f"attention_consistency/{d.name}") for d in
                                sorted((RESULTS / "attention_consistency").glob("depth*")) if d.is_dir()) if t]


def attention_block(att: dict) -> str:
    """Mean ± std over seeds, one table with a row per (model, depth), with the seed count."""
    tabs = attention_tables(att)
    head = tabs[0]["tables"][0]["header"]
    rows = [[r[0], r[1], len(t["seeds"])] + list(r[2:]) for t in tabs for r in t["tables"][0]["rows"]]
    return md(head[:2] + ["seeds"] + head[2:], rows)


def build() -> str:
    rows = three_moons_rows() + regbench_rows() + lm_rows() + attention_rows() + v2_rows()
    rows.append(["Full-scale BabiStories runs (Fig. 7 at 21B tokens)", "yes", "budgets and launch commands only",
                 "not attempted", "needs 8×H100-class hardware"])
    head = "| claim | paper | ours (scale) | verdict | why |\n|---|---|---|---|---|\n"
    return head + "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows) + "\n"


def splice(path: pathlib.Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: no {begin} ... {end} block to replace")
    pre, rest = text.split(begin, 1)
    post = rest.split(end, 1)[1]
    path.write_text(pre + begin + "\n" + block + end + post)


def main() -> None:
    block = build()
    (RESULTS / "claims.md").write_text("# Claims, paper vs ours (generated by `python experiments/claims.py`)\n\n"
                                       + block)
    pre = load("three_moons_prereg")
    rb, lc, att = load("regbench_prereg"), load("lm_calibrated"), load("attention_consistency")
    for p in (REPO / "README.md", REPO / "docs" / "results.md"):
        splice(p, block)
        if rb:
            splice(p, regbench_block(rb), "<!-- regbench_prereg:begin -->", "<!-- regbench_prereg:end -->")
        if lc and lc["summary"]["by_model"]:
            splice(p, lm_block(lc), "<!-- lm_calibrated:begin -->", "<!-- lm_calibrated:end -->")
        if att and isinstance(att.get("seeds"), list):
            splice(p, attention_block(att), "<!-- attention:begin -->", "<!-- attention:end -->")
        if pre:
            import three_moons_report
            splice(p, three_moons_report.arm_table(pre) + "\n", "<!-- three_moons_prereg:begin -->",
                   "<!-- three_moons_prereg:end -->")
    print(block)


if __name__ == "__main__":
    main()
