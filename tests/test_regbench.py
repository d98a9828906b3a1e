"""RegBench random-DFA generator, instances and metrics (mosaic_jax/tasks/regbench.py)."""
import numpy as np
import pytest

from mosaic_jax.tasks import regbench as rb


def test_vocabulary():
    assert rb.VOCAB_SIZE == 20 and rb.VOCAB[0] == "." and rb.VOCAB[-1] == "|"
    assert rb.PAD_ID == 0 and rb.SEP_ID == 19 and list(rb.SYMBOL_IDS) == list(range(1, 19))
    assert rb.IGNORE == -1   # the library's loss ignore index (mosaic_jax.data.batch.IGNORE)


def test_raw_sampler_follows_the_spec():
    rng = np.random.default_rng(0)
    n_states, n_edges = [], []
    for _ in range(300):
        trans = rb.random_raw_dfa(rng)
        n_states.append(len(trans))
        for s, edges in enumerate(trans):
            n_edges.append(len(edges))
            assert s not in edges.values()                      # no self-loops
            assert len(set(edges.values())) == len(edges)      # distinct destinations
            assert all(1 <= a <= 18 for a in edges)
    assert min(n_states) == 4 and max(n_states) == 12
    assert set(n_edges) == {1, 2, 3}


def test_minimize_merges_equivalent_states_and_is_canonical():
    a, b, c = 1, 2, 3
    # states 1 and 2 both only read `b` back to 0: equivalent; state 3 unreachable
    raw = [{a: 1, c: 2}, {b: 0}, {b: 0}, {a: 0}]
    d = rb.minimize(raw)
    assert d.delta == (((a, 1), (c, 1)), ((b, 0),))
    # a relabelling of the same automaton gives the identical canonical table
    raw2 = [{a: 2, c: 1}, {b: 0}, {b: 0}]
    assert rb.minimize(raw2).delta == d.delta
    # the language is unchanged
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = list(rng.choice([a, b, c], size=rng.integers(0, 6)))
        st, ok = 0, True
        for x in s:
            if x not in raw[st]:
                ok = False
                break
            st = raw[st][x]
        assert d.accepts(s) == ok


def test_automata_are_seeded_unique_and_split_disjoint():
    tr, te = rb.split_automata(60, 40, seed=3)
    tr2, _ = rb.split_automata(60, 40, seed=3)
    assert [d.delta for d in tr] == [d.delta for d in tr2]
    assert len({d.delta for d in tr + te}) == 100
    assert not ({d.delta for d in tr} & {d.delta for d in te})
    for d in tr + te:
        assert 1 <= d.n_states <= 12
        for s in range(d.n_states):
            assert 1 <= len(d.delta[s]) <= 3 and len(set(d.legal(s))) == len(d.legal(s))
    more = rb.sample_automata(10, seed=99, exclude=tr)
    assert not ({d.delta for d in more} & {d.delta for d in tr})


def test_instances_labels_states_and_masks():
    tr, _ = rb.split_automata(20, 0, seed=1)
    inst = rb.make_instances(tr, seed=0, max_len=96)
    assert inst.inputs.shape == inst.labels.shape == inst.states.shape == (20, 96)
    assert ((inst.states >= 0) == (inst.labels != rb.IGNORE)).all()
    assert not (inst.labels == rb.SEP_ID).any()
    legal = inst.legal_mask()
    for r in range(len(inst)):
        dfa = inst.automata[inst.dfa_index[r]]
        toks = [int(t) for t in inst.inputs[r] if t != rb.PAD_ID]
        strings = " ".join(map(str, toks)).split(str(rb.SEP_ID))
        assert all(dfa.accepts(map(int, s.split())) for s in strings[:-1])
        for t in np.nonzero(inst.states[r] >= 0)[0]:
            assert legal[r, t, inst.labels[r, t]]              # every true next symbol is legal
            if t > 0 and inst.inputs[r, t] == rb.SEP_ID:       # first symbol after `|` is scored, from state 0
                assert inst.states[r, t] == 0
    # instances hold 10-19 strings when not cut
    full = rb.make_instances(tr, seed=0, max_len=4096)
    n_strings = (full.inputs == rb.SEP_ID).sum(1) + 1
    assert n_strings.min() >= 10 and n_strings.max() <= 19


def test_metrics_oracle_uniform_and_factor_two():
    tr, _ = rb.split_automata(10, 0, seed=2)
    inst = rb.make_instances(tr, seed=0, max_len=64)
    legal = inst.legal_mask()
    oracle = np.where(legal, 0.0, -1e9)
    m = rb.dfa_metrics(oracle, inst, legal)
    assert m["accuracy"] == 1.0 and m["tvd"] == pytest.approx(0.0, abs=1e-9)
    uniform = np.zeros(legal.shape)
    m = rb.dfa_metrics(uniform, inst, legal)
    scored = inst.states >= 0
    k = legal.sum(-1)[scored]                                   # legal symbols per scored position
    expect = np.mean(0.5 * (k * np.abs(1 / 20 - 1 / k) + (20 - k) / 20))
    assert m["tvd"] == pytest.approx(expect) and m["l1"] == pytest.approx(2 * m["tvd"])
    assert 0 <= m["accuracy"] <= 1
    # predicting the separator or the pad is wrong
    sep = np.zeros(legal.shape)
    sep[..., rb.SEP_ID] = 10.0
    assert rb.dfa_metrics(sep, inst, legal)["accuracy"] == 0.0


def test_in_context_ngram_baseline_learns_a_deterministic_language():
    a, b, c = 1, 2, 3
    d = rb.minimize([{a: 1}, {b: 2}, {c: 0}])          # the only strings are prefixes of (abc)*
    inst = rb.make_instances([d], seed=0, max_len=200)
    m = rb.dfa_metrics(rb.ngram_logits(inst, 3), inst)
    assert m["accuracy"] > 0.95
