"""Document deduplication and train/validation decontamination: exact keys, MinHash, LSH.

Exact duplicates have equal sha256 keys of the `normalise`d text. Near duplicates have a Jaccard
similarity >= threshold of their word k-gram shingle sets: LSH banding of MinHash signatures gives
candidate pairs, each verified with the exact Jaccard, so no reported pair is a false positive.
Hashes are stable across processes, machines and numpy versions (blake2b and exact uint64
arithmetic, no salted `hash()` or numpy random streams). Shapes: N docs, P permutations, S shingles.
"""

import dataclasses
import functools
import hashlib
import re
from collections.abc import Sequence

import numpy as np

_WORD_RE = re.compile(r"\w+|[^\w\s]")
_SPACES_RE = re.compile(r"[ \t]+")
_TRAILING_RE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_BLANK_LINES_RE = re.compile(r"\n{2,}")
_U64 = np.uint64
_PRIME = (1 << 61) - 1  # Mersenne prime: x mod p is (x & p) + (x >> 61), then one subtraction.
_CHUNK = 1024  # Shingles per MinHash chunk: [C, P] uint64 buffers of 1 MB stay in the L2 cache.


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """Settings of near-duplicate detection."""

    num_perm: int = 128  # MinHash permutations.
    shingle_words: int = 5  # Shingles are k consecutive word tokens.
    threshold: float = 0.8  # Jaccard similarity at/above which two documents are near-duplicates.
    seed: int = 0

    def __post_init__(self):
        if self.num_perm < 1 or self.shingle_words < 1 or not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"Need num_perm, shingle_words >= 1 and 0 < threshold <= 1: {self}")


def normalise(text: str) -> str:
    """Returns `text` with line endings as '\\n', trailing whitespace stripped, blank lines dropped.

    Runs of spaces and tabs (indentation included) collapse to one space. Case is kept: code is
    case-sensitive, so `Foo` and `foo` documents are different documents.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES_RE.sub(" ", _TRAILING_RE.sub("", text))
    return _BLANK_LINES_RE.sub("\n", text).strip("\n")


def exact_key(text: str) -> bytes:
    """Returns the sha256 digest of `normalise(text)`: equal keys are exact duplicates."""
    return hashlib.sha256(normalise(text).encode("utf-8", "surrogatepass")).digest()


def _stable_hash(data: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


def _mix(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: spreads every input bit over the whole 64-bit output."""
    h = (h ^ (h >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> _U64(27))) * _U64(0x94D049BB133111EB)
    return h ^ (h >> _U64(31))


def _combine(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Hashes rows of equal-length uint64 columns, order-sensitively (wrapping polynomial)."""
    h = np.zeros(len(columns[0]), np.uint64)
    for column in columns:
        h = h * _U64(0x9E3779B97F4A7C15) + column
    return _mix(h)


def _shingles(text: str, k: int, cache: dict[str, int]) -> np.ndarray:
    words = _WORD_RE.findall(text)
    if not words:
        return np.zeros(0, np.uint64)
    for word in set(words).difference(cache):
        cache[word] = _stable_hash(word)
    w_W = np.fromiter(map(cache.__getitem__, words), np.uint64, count=len(words))
    m = max(len(words) - k + 1, 1)
    return np.unique(_combine([w_W[j : j + m] for j in range(min(k, len(words)))]))


def shingles(text: str, k: int) -> np.ndarray:
    """Returns the sorted unique uint64 hashes of the word k-grams of `text`.

    Words are `re.findall(r"\\w+|[^\\w\\s]", text)`: identifiers, numbers and single punctuation
    marks, so whitespace and blank lines never matter. A text of fewer than k words gives one
    shingle of all its words; a text without words gives an empty array.
    """
    return _shingles(text, k, {})


def jaccard(a_S: np.ndarray, b_S: np.ndarray) -> float:
    """Returns the exact Jaccard similarity of two sorted unique arrays (1.0 if both are empty)."""
    if len(a_S) == 0 and len(b_S) == 0:
        return 1.0
    if len(a_S) > len(b_S):
        a_S, b_S = b_S, a_S
    if len(a_S) == 0:
        return 0.0
    pos = np.minimum(np.searchsorted(b_S, a_S), len(b_S) - 1)
    inter = int(np.count_nonzero(b_S[pos] == a_S))
    return inter / (len(a_S) + len(b_S) - inter)


class MinHasher:
    """MinHash with the universal hashes h_p(x) = (a_p x + b_p) mod (2^61 - 1), p < num_perm."""

    def __init__(self, num_perm: int = 128, seed: int = 0):
        self.num_perm = num_perm
        # From blake2b, not a numpy Generator: its streams may change between numpy versions.
        a = [_stable_hash(f"minhash:{seed}:a:{p}") % (_PRIME - 1) + 1 for p in range(num_perm)]
        b = [_stable_hash(f"minhash:{seed}:b:{p}") % _PRIME for p in range(num_perm)]
        a_P = np.array(a, np.uint64)
        self._a_lo_P, self._a_hi_P = a_P & _U64(0xFFFFFFFF), a_P >> _U64(32)
        self._b_P = np.array(b, np.uint64)

    def _hash_chunk(self, x_C: np.ndarray) -> np.ndarray:
        """Returns h_p(x) for every shingle and permutation as uint64[C, P], without overflow.

        With a = a_hi 2^32 + a_lo, x = x_hi 2^32 + x_lo (hi parts < 2^29) and 2^61 = 1 mod p:
        a x = 8 a_hi x_hi + mid 2^32 + a_lo x_lo = 8 a_hi x_hi + (mid >> 29)
        + (mid & (2^29 - 1)) 2^32 + a_lo x_lo: every term fits in 64 bits, and so does their sum.
        """
        p = _U64(_PRIME)
        x_C = (x_C & p) + (x_C >> _U64(61))
        x_C = np.where(x_C >= p, x_C - p, x_C)
        x_lo_C1, x_hi_C1 = (x_C & _U64(0xFFFFFFFF))[:, None], (x_C >> _U64(32))[:, None]
        # In place where it is cheap: fewer temporaries keep the chunk in cache.
        out_CP = (x_hi_C1 * self._a_hi_P) << _U64(3)
        mid_CP = x_hi_C1 * self._a_lo_P
        mid_CP += x_lo_C1 * self._a_hi_P
        out_CP += mid_CP >> _U64(29)
        out_CP += (mid_CP & _U64((1 << 29) - 1)) << _U64(32)
        low_CP = np.multiply(x_lo_C1, self._a_lo_P, out=mid_CP)
        out_CP += low_CP & p
        out_CP += (low_CP >> _U64(61)) + self._b_P
        out_CP = (out_CP & p) + (out_CP >> _U64(61))
        np.subtract(out_CP, p, out=out_CP, where=out_CP >= p)
        return out_CP

    def signatures(self, shingles: Sequence[np.ndarray]) -> np.ndarray:
        """Returns the uint64[N, P] signatures of N shingle arrays, in chunks of `_CHUNK` shingles.

        The documents are concatenated so that small documents share chunks; each chunk's minima
        per document come from one `np.minimum.reduceat`. An empty document keeps the all-max row.
        """
        sig_NP = np.full((len(shingles), self.num_perm), np.iinfo(np.uint64).max, np.uint64)
        lengths_N = np.array([len(s) for s in shingles], np.int64)
        docs = np.flatnonzero(lengths_N)
        if len(docs) == 0:
            return sig_NP
        flat_S = np.concatenate([shingles[d] for d in docs]).astype(np.uint64, copy=False)
        ends = np.cumsum(lengths_N[docs])
        starts = ends - lengths_N[docs]
        for start in range(0, len(flat_S), _CHUNK):
            stop = min(start + _CHUNK, len(flat_S))
            lo, hi = np.searchsorted(ends, start, "right"), np.searchsorted(starts, stop)
            offsets = np.maximum(starts[lo:hi] - start, 0)
            min_DP = np.minimum.reduceat(self._hash_chunk(flat_S[start:stop]), offsets, axis=0)
            sig_NP[docs[lo:hi]] = np.minimum(sig_NP[docs[lo:hi]], min_DP)
        return sig_NP

    def signature(self, shingles_S: np.ndarray) -> np.ndarray:
        """Returns the uint64[P] signature of one shingle set (all max if it is empty)."""
        return self.signatures([shingles_S])[0]


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Returns the MinHash estimate of the Jaccard similarity: the fraction of equal entries."""
    return float(np.mean(sig_a == sig_b))


@functools.cache
def lsh_params(num_perm: int, threshold: float) -> tuple[int, int]:
    """Returns (bands, rows), bands * rows <= num_perm, for LSH at a Jaccard `threshold`.

    Two documents of Jaccard J share a band with probability 1 - (1 - J^rows)^bands. The rule:
    the highest probability at J = threshold, among the choices that keep it <= 0.1 at
    J = threshold - 0.3. Every candidate is verified exactly, so a false positive costs one cheap
    Jaccard, while a false negative is a missed duplicate; datasketch's equal-weight area rule
    (9 x 13 at 128 and 0.8: 0.40 at J = 0.8) favours precision instead. At 128 permutations and
    0.8 this gives 13 bands of 7 rows: 0.95 at J = 0.8, 0.994 at 0.85, 0.097 at 0.5.
    """
    low = max(threshold - 0.3, 0.0)
    prob = lambda j, bands, rows: 1.0 - (1.0 - j**rows) ** bands
    choices = [
        (bands, rows)
        for rows in range(1, num_perm + 1)
        for bands in range(1, num_perm // rows + 1)
        if prob(low, bands, rows) <= 0.1
    ]
    return max(choices, key=lambda c: (prob(threshold, *c), -c[0] * c[1]))


@dataclasses.dataclass
class Sketches:
    """Everything deduplication needs, computed once per corpus by `sketch`."""

    keys: list[bytes]  # Exact keys (`exact_key`).
    shingles: list[np.ndarray]  # Per document: sorted unique uint64 shingle hashes.
    sig_NP: np.ndarray  # uint64[N, P] MinHash signatures.
    sizes: np.ndarray  # int64[N]: UTF-8 bytes per document.


def sketch(texts: Sequence[str], config: DedupConfig) -> Sketches:
    """Returns the exact keys, shingles, MinHash signatures and sizes of `texts`."""
    cache: dict[str, int] = {}  # Word hashes, shared by all documents.
    shingles_N = [_shingles(text, config.shingle_words, cache) for text in texts]
    return Sketches(
        keys=[exact_key(text) for text in texts],
        shingles=shingles_N,
        sig_NP=MinHasher(config.num_perm, config.seed).signatures(shingles_N),
        sizes=np.array([len(text.encode("utf-8", "surrogatepass")) for text in texts], np.int64),
    )


def _candidates(sk: Sketches, config: DedupConfig, docs: np.ndarray, group_N=None) -> set:
    """Pairs (i, j), i < j, of `docs` that share an LSH band (and, with `group_N`, not a group)."""
    bands, rows = lsh_params(config.num_perm, config.threshold)
    pairs = set()
    for band in range(bands):
        key_D = _combine(list(sk.sig_NP[docs, band * rows : (band + 1) * rows].T))
        order = np.argsort(key_D, kind="stable")
        for bucket in np.split(order, np.flatnonzero(np.diff(key_D[order])) + 1):
            members = sorted(int(d) for d in docs[bucket])
            pairs.update(
                (i, j)
                for n, i in enumerate(members)
                for j in members[n + 1 :]
                if group_N is None or group_N[i] != group_N[j]
            )
    return pairs


def near_duplicate_pairs(
    sk: Sketches,
    config: DedupConfig,
    indices: Sequence[int] | None = None,
    cross: tuple[Sequence[int], Sequence[int]] | None = None,
) -> list[tuple[int, int, float]]:
    """Returns the sorted verified pairs (i, j, jaccard), i < j, with jaccard >= threshold.

    Args:
      sk: the sketches of the corpus, computed with `config`.
      config: the settings.
      indices: the documents to compare among themselves (default: all).
      cross: `(idx_a, idx_b)`, two disjoint groups: only pairs with one document in each.

    Raises:
      ValueError: if both `indices` and `cross` are given, or the groups overlap.
    """
    group_N = None
    if cross is not None:
        if indices is not None:
            raise ValueError("Pass `indices` or `cross`, not both.")
        idx_a, idx_b = (np.unique(np.asarray(g, np.int64)) for g in cross)
        if np.intersect1d(idx_a, idx_b).size:
            raise ValueError("The two `cross` groups share documents.")
        group_N = np.full(len(sk.keys), -1, np.int8)
        group_N[idx_a], group_N[idx_b] = 0, 1
        docs = np.concatenate([idx_a, idx_b])
    else:
        docs = np.arange(len(sk.keys)) if indices is None else np.unique(np.asarray(indices, int))
    found = []
    for i, j in sorted(_candidates(sk, config, docs, group_N)):
        a_S, b_S = sk.shingles[i], sk.shingles[j]
        # J <= min/max of the set sizes: most candidates below the threshold stop here.
        if min(len(a_S), len(b_S)) < config.threshold * max(len(a_S), len(b_S)):
            continue
        similarity = jaccard(a_S, b_S)
        if similarity >= config.threshold:
            found.append((i, j, similarity))
    return found


@dataclasses.dataclass
class DedupResult:
    """Which documents `deduplicate` keeps, and why the others went."""

    keep: list[int]  # Kept document indices, ascending.
    dropped: dict[int, tuple[str, int]]  # Doc -> ("exact" | "near", the kept doc it duplicates).
    exact_docs: int
    exact_bytes: int
    near_docs: int
    near_bytes: int


def _find(parent: dict[int, int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def deduplicate(
    sk: Sketches, config: DedupConfig, indices: Sequence[int] | None = None
) -> DedupResult:
    """Drops exact, then near duplicates among `indices` (default: all), keeping lowest indices.

    Exact duplicates (equal keys) keep the lowest index. Near duplicates among the survivors form
    the connected components of the verified-pairs graph; each component keeps its lowest index.
    Through chains (A ~ B ~ C) a dropped document may be less similar than the threshold to the
    one kept. Callers order documents (e.g. by path) so that the kept copy is deterministic.
    """
    docs = sorted(set(range(len(sk.keys)) if indices is None else map(int, indices)))
    dropped: dict[int, tuple[str, int]] = {}
    first: dict[bytes, int] = {}
    for d in docs:
        kept = first.setdefault(sk.keys[d], d)
        if kept != d:
            dropped[d] = ("exact", kept)
    survivors = [d for d in docs if d not in dropped]
    parent = {d: d for d in survivors}
    for i, j, _ in near_duplicate_pairs(sk, config, survivors):
        ri, rj = _find(parent, i), _find(parent, j)
        parent[max(ri, rj)] = min(ri, rj)  # The root is the lowest index of its component.
    for d in survivors:
        root = _find(parent, d)
        if root != d:
            dropped[d] = ("near", root)
    exact = [d for d, (kind, _) in dropped.items() if kind == "exact"]
    near = [d for d, (kind, _) in dropped.items() if kind == "near"]
    return DedupResult(
        keep=[d for d in docs if d not in dropped],
        dropped=dict(sorted(dropped.items())),
        exact_docs=len(exact),
        exact_bytes=int(sk.sizes[exact].sum()),
        near_docs=len(near),
        near_bytes=int(sk.sizes[near].sum()),
    )


def decontaminate(
    sk: Sketches, config: DedupConfig, train: Sequence[int], validation: Sequence[int]
) -> dict[int, int]:
    """Returns {train doc: validation doc} for train docs that duplicate a validation doc.

    A train doc maps to the lowest validation doc with its exact key, else to the most similar
    (then lowest) validation doc with Jaccard >= threshold. The caller removes these docs from
    train, so the validation set itself never changes.

    Raises:
      ValueError: if a document is in both `train` and `validation`.
    """
    if set(map(int, train)) & set(map(int, validation)):
        raise ValueError("Some documents are in both `train` and `validation`.")
    val_of_key: dict[bytes, int] = {}
    for v in sorted(map(int, validation)):
        val_of_key.setdefault(sk.keys[v], v)
    found = {int(t): val_of_key[sk.keys[t]] for t in train if sk.keys[t] in val_of_key}
    rest = {int(t) for t in train} - set(found)
    best: dict[int, tuple[float, int]] = {}  # Train doc -> (similarity, -validation doc).
    for i, j, similarity in near_duplicate_pairs(sk, config, cross=(sorted(rest), validation)):
        t, v = (i, j) if i in rest else (j, i)
        best[t] = max(best.get(t, (-1.0, 0)), (similarity, -v))
    found.update({t: -neg_v for t, (_, neg_v) in best.items()})
    return dict(sorted(found.items()))
