"""RegBench (in-context language learning, Akyürek et al. 2024): random DFA languages, problem instances, metrics.

Re-derived from the description in shared/spec/regbench.md (the `seq_icl` data set `icl_dfa`):

* Vocabulary: 18 symbols `a`..`r`, the separator `|` and the pad `.`, sorted → ids `.`=0, `a`..`r`=1..18, `|`=19.
* Automaton: states uniform in [4, 12]; alphabet a random subset of size uniform in [4, 18]; each state gets
  1–3 outgoing edges with distinct labels (from the alphabet) to distinct *other* states; state 0 is the start
  and every state accepts. The DFA is then trimmed (unreachable states removed) and minimised (Moore partition
  refinement with an implicit rejecting sink), and relabelled canonically (BFS from the start state in symbol
  order) so that isomorphic automata get identical tables. Automata are de-duplicated on that table, so the
  training and test automata are disjoint *up to isomorphism*.
* PFA view: a string is a random walk from the start state with the next symbol uniform over the current
  state's outgoing edges; length uniform in [1, 49].
* Instance: 10–19 strings joined by `|` (one automaton per instance); inputs = tokens[:-1], labels =
  tokens[1:], labels equal to `|` or pad are ignored (IGNORE = -1, the library's ignore index).

Metrics (per scored position = a label that is a symbol):
* accuracy: the model's argmax next token is a legal transition from the current DFA state (predicting `|` or
  `.` counts as wrong);
* TVD = ½·Σ_v |p_model(v) − p_DFA(v)| over the full 20-token vocabulary, p_DFA uniform over the legal symbols.
  The seq_icl code accumulates Σ|p − q| without the ½ (the L1 distance, = 2 × TVD); we report TVD with the ½ and
  give L1 = 2·TVD beside it.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Sequence

import numpy as np

from mosaic_jax.data.batch import IGNORE

SYMBOLS = tuple("abcdefghijklmnopqr")            # vocab_size − 2 = 18 ordinary symbols
SEP, PAD = "|", "."
VOCAB = tuple(sorted(SYMBOLS + (SEP, PAD)))      # ('.', 'a', ..., 'r', '|')
TOKEN_ID = {s: i for i, s in enumerate(VOCAB)}
SEP_ID, PAD_ID = TOKEN_ID[SEP], TOKEN_ID[PAD]
SYMBOL_IDS = np.array([TOKEN_ID[s] for s in SYMBOLS])
VOCAB_SIZE = len(VOCAB)                           # 20


@dataclasses.dataclass(frozen=True)
class DFAConfig:
    """The `icl_dfa` defaults (numpy-style ranges: the upper bounds below are inclusive values)."""
    max_num_nodes: int = 12
    max_outgoing_edges: int = 4        # states drawn from [max_outgoing_edges, max_num_nodes]; edges from [1, 3]
    min_alphabet: int = 4
    min_strings: int = 10
    max_strings: int = 19              # integers(10, 20)
    max_string_len: int = 49           # integers(1, 50)


@dataclasses.dataclass(frozen=True)
class DFA:
    """A trimmed, minimised, canonically numbered DFA; every state accepts; state 0 is the start.

    `delta[s]` is a tuple of (symbol id, next state) sorted by symbol id.
    """
    delta: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def n_states(self) -> int:
        return len(self.delta)

    def legal(self, state: int) -> tuple[int, ...]:
        return tuple(a for a, _ in self.delta[state])

    def step(self, state: int, symbol: int) -> Optional[int]:
        for a, nxt in self.delta[state]:
            if a == symbol:
                return nxt
        return None

    def accepts(self, symbols: Iterable[int]) -> bool:
        s: Optional[int] = 0
        for a in symbols:
            s = self.step(s, a)
            if s is None:
                return False
        return True

    def sample_string(self, rng: np.random.Generator, length: int) -> list[int]:
        s, out = 0, []
        for _ in range(length):
            a, s = self.delta[s][rng.integers(len(self.delta[s]))]
            out.append(a)
        return out


def random_raw_dfa(rng: np.random.Generator, cfg: DFAConfig = DFAConfig()) -> list[dict[int, int]]:
    """The sampler before trimming/minimisation: transitions[state] = {symbol id: next state}."""
    n = int(rng.integers(cfg.max_outgoing_edges, cfg.max_num_nodes + 1))
    k = int(rng.integers(cfg.min_alphabet, len(SYMBOLS) + 1))
    alphabet = rng.choice(SYMBOL_IDS, size=k, replace=False)
    trans: list[dict[int, int]] = []
    for s in range(n):
        e = int(rng.integers(1, cfg.max_outgoing_edges))
        labels = rng.choice(alphabet, size=e, replace=False)
        others = np.array([t for t in range(n) if t != s])
        dests = rng.choice(others, size=e, replace=False)
        trans.append({int(a): int(d) for a, d in zip(labels, dests)})
    return trans


def minimize(trans: Sequence[dict[int, int]]) -> DFA:
    """Trim unreachable states, minimise (all states accept; missing edges go to a rejecting sink), and number
    the states in BFS order from the start (symbols in increasing id order): a canonical form."""
    # 1. reachable states
    reach, frontier = {0}, [0]
    while frontier:
        s = frontier.pop()
        for d in trans[s].values():
            if d not in reach:
                reach.add(d)
                frontier.append(d)
    states = sorted(reach)
    symbols = sorted({a for s in states for a in trans[s]})
    SINK = -1
    # 2. Moore refinement: start with {accepting states}, {sink}
    block = {s: 0 for s in states}
    block[SINK] = 1
    while True:
        sig = {s: (block[s],) + tuple(block[trans[s].get(a, SINK)] if s != SINK else block[SINK] for a in symbols)
               for s in states + [SINK]}
        ids: dict[tuple, int] = {}
        new = {s: ids.setdefault(sig[s], len(ids)) for s in states + [SINK]}
        if len(ids) == len(set(block.values())):
            break
        block = new
    # 3. quotient and canonical BFS numbering
    rep: dict[int, int] = {}
    for s in states:
        rep.setdefault(block[s], s)
    order, index = [block[0]], {block[0]: 0}
    i = 0
    while i < len(order):
        s = rep[order[i]]
        for a in sorted(trans[s]):
            b = block[trans[s][a]]
            if b not in index:
                index[b] = len(order)
                order.append(b)
        i += 1
    delta = tuple(tuple((a, index[block[trans[rep[b]][a]]]) for a in sorted(trans[rep[b]])) for b in order)
    return DFA(delta)


def sample_automata(n: int, seed: int, cfg: DFAConfig = DFAConfig(), exclude: Iterable[DFA] = ()) -> list[DFA]:
    """`n` distinct (canonical) automata, none equal to one in `exclude`; at most 10·n tries as the reference."""
    rng = np.random.default_rng(seed)
    seen = {d.delta for d in exclude}
    out: list[DFA] = []
    for _ in range(10 * max(n, 1)):
        if len(out) == n:
            break
        d = minimize(random_raw_dfa(rng, cfg))
        if d.delta not in seen:
            seen.add(d.delta)
            out.append(d)
    if len(out) < n:
        raise RuntimeError(f"sample_automata: only {len(out)} unique automata in {10 * n} tries")
    return out


def split_automata(n_train: int, n_test: int, seed: int, cfg: DFAConfig = DFAConfig()) -> tuple[list[DFA], list[DFA]]:
    """Disjoint train/test automata: all n_train + n_test drawn unique, shuffled, then split (as seq_icl)."""
    allv = sample_automata(n_train + n_test, seed, cfg)
    perm = np.random.default_rng(seed + 1).permutation(len(allv))
    allv = [allv[i] for i in perm]
    return allv[:n_train], allv[n_train:]


def instance_tokens(dfa: DFA, rng: np.random.Generator, cfg: DFAConfig = DFAConfig()) -> list[int]:
    """One problem instance as token ids: 10–19 strings from the DFA joined by the separator."""
    n = int(rng.integers(cfg.min_strings, cfg.max_strings + 1))
    toks: list[int] = []
    for i in range(n):
        if i:
            toks.append(SEP_ID)
        toks.extend(dfa.sample_string(rng, int(rng.integers(1, cfg.max_string_len + 1))))
    return toks


@dataclasses.dataclass
class Instances:
    """Padded batch of instances: inputs/labels (N, T) int32; states (N, T) int32 = DFA state after consuming
    the current string up to and including the input token (−1 where the position is not scored)."""
    inputs: np.ndarray
    labels: np.ndarray
    states: np.ndarray
    dfa_index: np.ndarray          # (N,) which automaton of the list each row uses
    automata: list[DFA]

    def __len__(self) -> int:
        return len(self.inputs)

    def legal_mask(self) -> np.ndarray:
        """(N, T, V) bool: legal next symbols at each scored position (all False elsewhere)."""
        N, T = self.inputs.shape
        m = np.zeros((N, T, VOCAB_SIZE), bool)
        for r in range(N):
            dfa = self.automata[self.dfa_index[r]]
            for t in np.nonzero(self.states[r] >= 0)[0]:
                m[r, t, list(dfa.legal(int(self.states[r, t])))] = True
        return m


def make_instances(automata: Sequence[DFA], seed: int, max_len: int, cfg: DFAConfig = DFAConfig(),
                   per_automaton: int = 1) -> Instances:
    """`per_automaton` instances per automaton, cut to `max_len` input tokens (max_len + 1 tokens in all) and
    right-padded. The reference cuts at 4096 *characters* (≈ 2048 tokens); a smaller `max_len` keeps the first
    strings of each instance."""
    rng = np.random.default_rng(seed)
    rows, idx = [], []
    for i, dfa in enumerate(automata):
        for _ in range(per_automaton):
            rows.append(instance_tokens(dfa, rng, cfg)[:max_len + 1])
            idx.append(i)
    N, T = len(rows), max_len
    inputs = np.full((N, T), PAD_ID, np.int32)
    labels = np.full((N, T), IGNORE, np.int32)
    states = np.full((N, T), -1, np.int32)
    for r, toks in enumerate(rows):
        dfa = automata[idx[r]]
        L = len(toks) - 1
        inputs[r, :L] = toks[:-1]
        lab = np.array(toks[1:], np.int32)
        labels[r, :L] = np.where(lab == SEP_ID, IGNORE, lab)
        # state after the current string prefix ending at input position t; the label at t is scored if a symbol
        s = 0
        for t in range(L):
            s = 0 if toks[t] == SEP_ID else dfa.step(s, toks[t])
            if toks[t + 1] != SEP_ID:
                states[r, t] = s
    return Instances(inputs, labels, states, np.array(idx, np.int32), list(automata))


# -------------------------------------------------------------------------------------------------------------
# Metrics
# -------------------------------------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def dfa_metrics(logits_NTV: np.ndarray, inst: Instances, legal: Optional[np.ndarray] = None) -> dict[str, float]:
    """accuracy, TVD (½·L1) and L1 (= 2·TVD, the seq_icl `model_dfa_diff`) averaged over scored positions."""
    legal = inst.legal_mask() if legal is None else legal
    scored = inst.states >= 0
    pred = logits_NTV.argmax(-1)
    correct = np.take_along_axis(legal, pred[..., None], -1)[..., 0]
    p = softmax(logits_NTV.astype(np.float64))
    q = legal / np.maximum(legal.sum(-1, keepdims=True), 1)
    l1 = np.abs(p - q).sum(-1)
    n = max(int(scored.sum()), 1)
    return {"accuracy": float(correct[scored].sum() / n), "tvd": float(0.5 * l1[scored].sum() / n),
            "l1": float(l1[scored].sum() / n), "positions": int(scored.sum())}


def ngram_logits(inst: Instances, n: int = 3) -> np.ndarray:
    """In-context n-gram with back-off (counts over the prefix of the same instance only), as log-counts.

    For each position, the next-token counts after the last n−1 tokens in the prefix; if that context was never
    seen, back off to n−2, ..., down to unigram counts of the prefix. Returns (N, T, V) scores whose argmax is the
    n-gram prediction and whose softmax is a (sharp) distribution (log(count + 1e-3)).
    """
    N, T = inst.inputs.shape
    out = np.full((N, T, VOCAB_SIZE), np.log(1e-3), np.float32)
    for r in range(N):
        toks = inst.inputs[r]
        L = int((inst.labels[r] != IGNORE).nonzero()[0].max() + 1) if (inst.labels[r] != IGNORE).any() else 0
        tables: list[dict[tuple, np.ndarray]] = [dict() for _ in range(n)]
        for t in range(L + 1):
            # record the transition ending at t (context tokens before t -> toks[t]) for every order
            if t > 0 and t < T:
                for k in range(n):
                    if t - k >= 0 and k <= t:
                        ctx = tuple(toks[t - k:t])
                        tables[k].setdefault(ctx, np.zeros(VOCAB_SIZE))[toks[t]] += 1
            if t >= L:
                break
            for k in range(n - 1, -1, -1):
                ctx = tuple(toks[t - k + 1:t + 1]) if k else ()
                if k and t - k + 1 < 0:
                    continue
                c = tables[k].get(ctx)
                if c is not None and c.sum() > 0:
                    out[r, t] = np.log(c + 1e-3)
                    break
    return out
