"""Tests for data/dedup.py: normalisation, shingles, exact MinHash arithmetic and accuracy, LSH
parameters, dedup decisions, decontamination and cross-group pairs, stability across processes."""

import os
import subprocess
import sys

import numpy as np
import pytest

from data import dedup

CONFIG = dedup.DedupConfig()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vocabulary(seed: int, size: int = 3000) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(size)]


def _words(seed: int, n: int = 300) -> list[str]:
    """n tokens of generated text: words from a seeded vocabulary, some punctuation marks."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(seed)
    marks = list(",.()")
    return [str(rng.choice(marks) if rng.random() < 0.1 else rng.choice(vocab)) for _ in range(n)]


def _render(words: list[str], per_line: int = 12, sep: str = " ", blank_every: int = 0) -> str:
    lines = [sep.join(words[i : i + per_line]) for i in range(0, len(words), per_line)]
    if blank_every:
        lines = [line + ("\n" if n % blank_every == 0 else "") for n, line in enumerate(lines)]
    return "\n".join(lines) + "\n"


def _edit(words: list[str], positions, seed: int) -> list[str]:
    """Replaces the words at `positions` with words of an unrelated vocabulary."""
    vocab = _vocabulary(seed + 1000)
    out = list(words)
    for n, p in enumerate(positions):
        out[p] = vocab[n] + "zz"
    return out


@pytest.fixture(scope="module")
def docs():
    """Base, whitespace-only copy, 5% edited copy, 40% edited copy, unrelated document."""
    base = _words(0)
    rng = np.random.default_rng(1)
    whitespace = _render(base, sep=" \t ", blank_every=2).replace("\n", "  \r\n")
    light = _edit(base, range(140, 155), seed=1)  # 15 of 300 words: a rewritten sentence.
    heavy = _edit(base, rng.choice(300, 120, replace=False), seed=2)  # 40%, scattered.
    return [_render(base), whitespace, _render(light), _render(heavy), _render(_words(3))]


def test_normalise_and_exact_key():
    text = "def f(x):\r\n\tif x:  \r\n\r\n        return  x\t\n\n\n"
    assert dedup.normalise(text) == "def f(x):\n if x:\n return x"
    assert dedup.exact_key(text) == dedup.exact_key("def f(x):\n if x:\n return x\n")
    # Case is kept: code is case-sensitive.
    assert dedup.exact_key("X = 1") != dedup.exact_key("x = 1")
    assert dedup.exact_key("a b") != dedup.exact_key("ab")


def test_shingles():
    a = dedup.shingles("alpha beta(gamma, delta) epsilon zeta", 5)
    assert a.dtype == np.uint64 and len(a) == 9 - 5 + 1  # 9 words, 3 of them punctuation marks.
    assert np.all(np.diff(a) > 0)  # Sorted and unique.
    assert np.array_equal(a, dedup.shingles("alpha\n\n  beta ( gamma ,\tdelta )epsilon zeta", 5))
    assert not np.array_equal(a, dedup.shingles("zeta epsilon) delta ,gamma( beta alpha", 5))
    assert len(dedup.shingles("a b c c", 5)) == 1  # Fewer than k words: one shingle.
    assert len(dedup.shingles("x y x y x y x y", 2)) == 2  # Repeated k-grams count once.
    assert len(dedup.shingles(" \n\t", 5)) == 0


def test_jaccard():
    a, b = np.array([1, 3, 5, 7], np.uint64), np.array([3, 4, 5], np.uint64)
    assert dedup.jaccard(a, b) == pytest.approx(2 / 5)
    assert dedup.jaccard(b, a) == pytest.approx(2 / 5)
    empty = np.zeros(0, np.uint64)
    assert dedup.jaccard(empty, empty) == 1.0 and dedup.jaccard(a, empty) == 0.0


def test_minhash_matches_big_integer_reference():
    """Every signature entry equals min_x (a_p x + b_p) mod (2^61 - 1) in exact Python integers,
    including inputs at the edges of the reduction (x = p - 1, p, p + 1, 2^64 - 1) and inputs whose
    hash is 0..7, where a missing final reduction would show."""
    mh = dedup.MinHasher(num_perm=16, seed=3)
    prime = (1 << 61) - 1
    hi, lo, b = (v.tolist() for v in (mh._a_hi_P, mh._a_lo_P, mh._b_P))
    ab = [(hi[p] << 32 | lo[p], b[p]) for p in range(16)]
    edges = [0, 1, prime - 1, prime, prime + 1, 2**61, 2**63, 2**64 - 1]
    a0_inverse = pow(ab[0][0], -1, prime)
    edges += [(h - ab[0][1]) * a0_inverse % prime for h in range(8)]  # h_0(x) = h.
    xs = sorted(set(edges + np.random.default_rng(0).integers(0, 2**63, 3000).tolist()))
    for subset in (xs, edges, edges[-1:], [2**64 - 1]):
        want = [min((ap * (x % prime) + bp) % prime for x in subset) for ap, bp in ab]
        assert mh.signature(np.array(subset, np.uint64)).tolist() == want
    assert np.all(mh.signature(np.zeros(0, np.uint64)) == np.iinfo(np.uint64).max)
    # Batched signatures (documents sharing chunks) equal one-by-one signatures.
    sets = [np.array(xs[i : i + n], np.uint64) for i, n in ((0, 700), (5, 0), (900, 2100), (7, 1))]
    batched = mh.signatures(sets)
    for s, row in zip(sets, batched, strict=True):
        assert np.array_equal(mh.signature(s), row)


def test_minhash_estimates_jaccard():
    """200 pairs of random sets with true Jaccard J spread over [0, 1], 128 permutations.

    An estimate is a mean of P Bernoulli(J) draws, std sigma = sqrt(J (1 - J) / P), so the expected
    mean |error| is sqrt(2 / pi) * mean(sigma) = 0.028; we require < 0.03. Each error must be within
    4.5 sigma + 1 / P (the slack covers the discreteness of P draws at J near 0 or 1).
    """
    rng = np.random.default_rng(0)
    mh = dedup.MinHasher(num_perm=128, seed=0)
    pairs, exact = [], []
    for target in np.linspace(0.0, 1.0, 200):
        n = int(rng.integers(200, 600))
        common = int(round(2 * n * target / (1 + target)))  # |A & B| / |A | B| = target.
        pool = np.unique(rng.integers(0, 2**64 - 1, 3 * n, dtype=np.uint64, endpoint=True))
        pool = rng.permutation(pool)
        a, b = np.sort(pool[:n]), np.sort(pool[n - common : 2 * n - common])
        pairs += [a, b]
        exact.append(dedup.jaccard(a, b))
    sig_NP = mh.signatures(pairs)
    est = np.array([dedup.estimate_jaccard(sig_NP[2 * i], sig_NP[2 * i + 1]) for i in range(200)])
    exact = np.array(exact)
    err, sigma = np.abs(est - exact), np.sqrt(exact * (1 - exact) / 128)
    assert exact.min() == 0.0 and exact.max() == 1.0
    assert err.mean() < 0.03, err.mean()
    assert np.all(err <= 4.5 * sigma + 1 / 128), np.max(err - 4.5 * sigma)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_lsh_s_curve(threshold):
    bands, rows = dedup.lsh_params(128, threshold)
    assert bands * rows <= 128
    prob = lambda j: 1 - (1 - j**rows) ** bands
    assert prob(min(threshold + 0.1, 1.0)) >= 0.9
    assert prob(threshold - 0.3) <= 0.1


def test_hand_made_documents(docs):
    sk = dedup.sketch(docs, CONFIG)
    j = [dedup.jaccard(sk.shingles[0], s) for s in sk.shingles]
    assert sk.keys[1] == sk.keys[0] and j[1] == 1.0  # Whitespace-only changes.
    assert 0.85 < j[2] < 1.0  # 5% of words changed, in one block.
    assert j[3] < 0.3 and j[4] < 0.05  # 40% changed, scattered; unrelated.
    assert sk.sig_NP.shape == (5, CONFIG.num_perm) and sk.sig_NP.dtype == np.uint64
    assert list(sk.sizes) == [len(d.encode()) for d in docs]

    result = dedup.deduplicate(sk, CONFIG)
    assert result.keep == [0, 3, 4]
    assert result.dropped == {1: ("exact", 0), 2: ("near", 0)}
    assert (result.exact_docs, result.exact_bytes) == (1, sk.sizes[1])
    assert (result.near_docs, result.near_bytes) == (1, sk.sizes[2])
    # Within a subset the lowest index is kept, whatever the order given.
    result = dedup.deduplicate(sk, CONFIG, indices=[4, 2, 1])
    assert result.keep == [1, 4] and result.dropped == {2: ("near", 1)}


def test_decontaminate(docs):
    # validation: 0 (base), 5 (unrelated); train: 1 (exact copy), 2 (near copy), 3, 4.
    sk = dedup.sketch(docs + [_render(_words(7))], CONFIG)
    found = dedup.decontaminate(sk, CONFIG, train=[1, 2, 3, 4], validation=[0, 5])
    assert found == {1: 0, 2: 0}
    assert dedup.decontaminate(sk, CONFIG, train=[3, 4], validation=[0, 5]) == {}
    # A train doc near two validation docs maps to the more similar one, whatever the order.
    other = _render(_edit(_words(0), range(200, 203), seed=5))
    sk = dedup.sketch([docs[2], docs[0], other], CONFIG)
    assert 0.8 <= dedup.jaccard(sk.shingles[0], sk.shingles[2]) < 0.85
    assert dedup.jaccard(sk.shingles[0], sk.shingles[1]) > 0.85
    assert dedup.decontaminate(sk, CONFIG, train=[0], validation=[1, 2]) == {0: 1}
    assert dedup.decontaminate(sk, CONFIG, train=[0], validation=[2, 1]) == {0: 1}
    with pytest.raises(ValueError):
        dedup.decontaminate(sk, CONFIG, train=[0, 1], validation=[0])


def test_cross_pairs_only_across_groups(docs):
    sk = dedup.sketch(docs, CONFIG)
    all_pairs = dedup.near_duplicate_pairs(sk, CONFIG)
    assert [(i, j) for i, j, _ in all_pairs] == [(0, 1), (0, 2), (1, 2)]
    group_a, group_b = {0, 1, 3}, {2, 4}
    cross = dedup.near_duplicate_pairs(sk, CONFIG, cross=(sorted(group_b), sorted(group_a)))
    assert [(i, j) for i, j, _ in cross] == [(0, 2), (1, 2)]
    assert all((i in group_a) != (j in group_a) for i, j, _ in cross)
    assert dedup.near_duplicate_pairs(sk, CONFIG, indices=[1, 3, 4]) == []
    with pytest.raises(ValueError):
        dedup.near_duplicate_pairs(sk, CONFIG, indices=[0], cross=([0], [1]))


def test_hashes_stable_across_processes(docs):
    """Shingles and signatures in fresh interpreters with different str-hash salts equal ours."""
    code = (
        "import sys; from data import dedup; t = sys.stdin.read(); s = dedup.shingles(t, 5); "
        "print(s.tolist(), dedup.MinHasher(8, 1).signature(s).tolist())"
    )
    shingles_S = dedup.shingles(docs[0], 5)
    want = f"{shingles_S.tolist()} {dedup.MinHasher(8, 1).signature(shingles_S).tolist()}"
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=docs[0],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            check=True,
        )
        assert out.stdout.strip() == want


def test_config_is_checked():
    for bad in ({"threshold": 0.0}, {"threshold": 1.5}, {"num_perm": 0}, {"shingle_words": 0}):
        with pytest.raises(ValueError):
            dedup.DedupConfig(**bad)
