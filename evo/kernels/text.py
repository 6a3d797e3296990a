"""Answer metrics (exact match, token F1, contains, numeric match) over token-id arrays, batched.

Texts are normalized and whitespace-tokenized in Python, then a :class:`Vocabulary` maps tokens to
``int32`` ids. A batch of texts is CSR: ``ids`` (all tokens, concatenated) and ``offsets`` (``n+1``
int64; text ``i`` is ``ids[offsets[i]:offsets[i+1]]``). A kernel scores each gold row against
its prediction row; a prediction with several references (rows ``ref_offsets[i]:ref_offsets[i+1]``
of the gold CSR) keeps the best. Every kernel has a per-pair pure-Python ``*_reference`` beside
it, which is what the kernel means.

>>> token_f1_batch(["the Eiffel Tower", "Lyon"], ["Eiffel Tower", ["Paris", "lyon"]]).tolist()
[1.0, 1.0]

Edge cases (kernel and reference agree):

* exact match: two empty token sequences match (1.0), as dspy's ``em_score("", "!")`` does.
* token F1: 0.0 when there is no overlap, including when both sides are empty (dspy's
  ``f1_score`` returns 0 there too, "for uniformity"; SQuAD-2.0 would give 1.0).
* contains: an empty gold is contained only in an empty prediction (no vacuous hits: a gold that
  normalizes to nothing, e.g. "The", must not make every prediction right).
* numeric: the LAST number in the prediction against the LAST number in the gold, with
  ``math.isclose`` semantics; no number on either side scores 0.0. See :func:`parse_number` for
  what counts as a number.
* a prediction with zero references scores 0.0.
"""

from __future__ import annotations

import itertools
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from evo.kernels._jit import jit

__all__ = [
    "METRIC_NAMES", "Normalize", "TokenBatch", "Vocabulary",
    "contains_batch", "contains_ids", "contains_kernel", "contains_reference",
    "exact_match_batch", "exact_match_ids", "exact_match_kernel", "exact_match_reference",
    "group_max_kernel", "group_max_reference",
    "normalize_answer", "normalize_squad", "normalize_text", "number_words_to_digits",
    "numeric_match_batch", "numeric_match_ids", "strip_answer_phrase",
    "numeric_match_kernel", "numeric_match_reference", "parse_number", "score_batch",
    "token_f1_batch", "token_f1_ids", "token_f1_kernel", "token_f1_reference",
]

Normalize = str | Callable[[str], str]  # "none", "squad" or a callable str -> str
Gold = str | Sequence[str]  # one reference or several (the score is the max)

# ---- normalization ------------------------------------------------------------------------------

_PUNCT_RE = re.compile("[" + re.escape(string.punctuation) + "]")
_PUNCT_BYTES = string.punctuation.encode("ascii")
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_ARTICLES = ("a", "an", "the")
# ASCII control characters that are neither whitespace (for str.split) nor word characters: in
# their presence ``\b`` can fall inside a token, so the token-level article filter is not exact.
_ODD_CONTROLS = bytes([*range(1, 9), *range(14, 28), 127])
# Texts are normalized many at a time, joined by a separator token that no normalization step
# creates, removes or lets touch a neighbour (spaces around it keep ``\b``, final-sigma casing
# and NFD reordering local to each text). Id 0 of every vocabulary is this token.
_SEP = "\x00"
_JOIN = " \x00 "


def normalize_squad(text: str) -> str:
    """dspy's ``normalize_text`` (SQuAD): NFD, lower, drop ``string.punctuation``, drop the
    articles a/an/the, collapse whitespace. Same output, faster (regexes compiled once).

    >>> normalize_squad("The,  Eiffel  Tower!")
    'eiffel tower'
    """
    text = unicodedata.normalize("NFD", text).lower()
    return " ".join(_ARTICLES_RE.sub(" ", _PUNCT_RE.sub("", text)).split())


# "The answer is", "So the final answer is:", "Answer:" ... at the start of a reply
_ANSWER_PHRASE = re.compile(
    r"^\W*(?:(?:so|thus|therefore|hence)\b[\s,]*)?(?:the\s+)?(?:final\s+|correct\s+)?"
    r"answer\s*(?:is\b\s*:?|[:=])\s*", re.IGNORECASE)


def strip_answer_phrase(text: str) -> str:
    """``text`` without a leading "the answer is" (or "So the final answer is:", "Answer:"):
    the words a model wraps a short answer in. A text that is only the phrase stays as it is.

    >>> strip_answer_phrase("The answer is Paris.")
    'Paris.'
    """
    rest = _ANSWER_PHRASE.sub("", text, count=1)
    return rest if any(c.isalnum() for c in rest) else text


def normalize_answer(text: str) -> str:
    """:func:`normalize_squad` after :func:`strip_answer_phrase`: a short answer compared as
    dspy's ``em_score`` does, once the model's "the answer is" is dropped.

    >>> normalize_answer("So the answer is: the Eiffel Tower!")
    'eiffel tower'
    """
    return normalize_squad(strip_answer_phrase(text))


def normalize_text(text: str, normalize: Normalize = "squad") -> str:
    """One text under a normalization mode: ``"none"`` (whitespace collapsed only, case kept),
    ``"squad"`` (:func:`normalize_squad`), ``"answer"`` (:func:`normalize_answer`) or a callable
    ``str -> str``."""
    return " ".join(_check_normalize(normalize)(text).split())


def _identity(text: str) -> str:
    return text


def _check_normalize(normalize: Normalize) -> Callable[[str], str]:
    if callable(normalize):
        return normalize
    if normalize == "squad":
        return normalize_squad
    if normalize == "none":
        return _identity
    if normalize == "answer":
        return normalize_answer
    raise ValueError(f"normalize must be 'none', 'squad', 'answer' or a callable, got "
                     f"{normalize!r}")


# 1,024 / -3 / .5 / 2.75 / 1e-3 / $5 / 5% / (42) / 42. — thousands commas only between groups of
# three digits; a leading currency sign, a trailing % and surrounding brackets, quotes and
# sentence punctuation are dropped. "5%" is 5 (not 0.05) on both sides, so it compares fairly.
_NUMBER_TOKEN = re.compile(
    r"""["'(\[]*(?P<sign>[-+\u2212]?)[$€£¥]?"""
    r"""(?P<num>(?=\.?\d)(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?)"""
    r"""%?[)\]"'.,;:!?]*""")


def parse_number(token: str) -> float:
    """The numeric value of one token, or NaN when it is not a number.

    >>> [parse_number(t) for t in ["1,024", "-3", ".5", "2.75", "1e-3", "$5", "5%", "(42).", "x"]]
    [1024.0, -3.0, 0.5, 2.75, 0.001, 5.0, 5.0, 42.0, nan]
    """
    m = _NUMBER_TOKEN.fullmatch(token)
    if m is None:
        return math.nan
    sign = "-" if m.group("sign") in ("-", "\u2212") else ""
    return float(sign + m.group("num").replace(",", ""))


# ---- number words ------------------------------------------------------------------------------

_UNITS = {w: v for v, w in enumerate([
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen"])}
_TENS = {w: 10 * v for v, w in enumerate([
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], start=2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_NUMBER_WORD = re.compile(r"\b(?:" + "|".join([*_UNITS, *_TENS, "hundred", *_SCALES]) + r")\b",
                          re.IGNORECASE)
_WORD_RE = re.compile(r"[A-Za-z]+")
# "the one", "this one", "no one": a pronoun, not the number 1
_DETERMINERS = frozenset({"the", "this", "that", "which", "no", "each", "every", "any",
                          "another"})


def number_words_to_digits(text: str) -> str:
    """``text`` with each English number written in words replaced by its digits, so a numeric
    answer compares as a number: ``"seven"`` -> ``"7"``, ``"twenty-one"`` -> ``"21"``, ``"one
    hundred and five"`` -> ``"105"``, ``"three thousand two hundred"`` -> ``"3200"``. Words
    that do not form one number stay apart (``"one, two"`` -> ``"1, 2"``); "one" after a
    determiner ("the one", "no one") is a pronoun and stays a word.

    >>> number_words_to_digits("So there are twenty-one apples, not seven.")
    'So there are 21 apples, not 7.'
    """
    if not _NUMBER_WORD.search(text):
        return text
    words = list(_WORD_RE.finditer(text))
    out, pos, i = [], 0, 0
    while i < len(words):
        run = _number_run(text, words, i)
        if run is None:
            i += 1
            continue
        end, value = run
        out += [text[pos:words[i].start()], str(value)]
        pos, i = words[end - 1].end(), end
    return "".join(out) + text[pos:]


def _number_run(text: str, words: list[re.Match], start: int) -> tuple[int, int] | None:
    """The longest run of number words from ``words[start]`` that reads as one number (words
    joined by spaces, hyphens or "and" after a hundred / thousand): ``(end, value)``."""
    total = current = 0
    last, top_scale, end = "", 10**15, start
    k = start
    while k < len(words):
        word = words[k].group().lower()
        if k > start and text[words[k - 1].end():words[k].start()].strip() not in ("", "-"):
            break
        if word == "and" and last in ("hundred", "scale") and k + 1 < len(words) \
                and words[k + 1].group().lower() in (_UNITS.keys() | _TENS.keys()):
            k += 1
            continue
        if word in _UNITS:
            kind = "teen" if _UNITS[word] >= 10 else "unit"
            ok = last in ("", "hundred", "scale") or (
                kind == "unit" and last == "ten" and _UNITS[word] > 0)
            if not ok or (last and _UNITS[word] == 0):
                break
            current += _UNITS[word]
        elif word in _TENS:
            kind = "ten"
            if last not in ("", "hundred", "scale"):
                break
            current += _TENS[word]
        elif word == "hundred":
            kind = "hundred"
            if last not in ("unit", "teen", "ten") or current >= 100:
                break
            current *= 100
        elif word in _SCALES:
            kind = "scale"
            if last not in ("unit", "teen", "ten", "hundred") or _SCALES[word] >= top_scale:
                break
            total += current * _SCALES[word]
            current, top_scale = 0, _SCALES[word]
        else:
            break
        last, end, k = kind, k + 1, k + 1
    if end == start:
        return None
    if end == start + 1 and words[start].group().lower() == "one" and start > 0 \
            and words[start - 1].group().lower() in _DETERMINERS:
        return None
    return end, total + current


# ---- vocabulary and CSR batches -----------------------------------------------------------------

@dataclass(frozen=True)
class TokenBatch:
    """Texts as CSR token ids: text ``i`` is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: np.ndarray  # int32 (total,)
    offsets: np.ndarray  # int64 (n+1,)
    vocabulary: Vocabulary

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def tokens(self, i: int) -> list[str]:
        """The tokens of text ``i`` (for debugging and feedback)."""
        return [self.vocabulary.token(t) for t in self.ids[self.offsets[i]:self.offsets[i + 1]]]


class Vocabulary:
    """Token -> int32 id (grows as texts are encoded), plus ``numeric[id]``: each token's value
    as a number (NaN if it is not one), parsed once per token. Id 0 is reserved (the separator).

    >>> vocab = Vocabulary()
    >>> batch = vocab.encode(["The Eiffel Tower", "eiffel tower!"])
    >>> batch.tokens(0) == batch.tokens(1) == ["eiffel", "tower"]
    True
    """

    def __init__(self) -> None:
        self._index: dict[str, int] = {_SEP: 0}
        self._tokens: list[str] = [_SEP]
        self._numeric = np.full(1, np.nan)

    def __len__(self) -> int:
        return len(self._tokens)

    def token(self, token_id: int) -> str:
        return self._tokens[token_id]

    def id(self, token: str) -> int | None:
        return self._index.get(token)

    @property
    def numeric(self) -> np.ndarray:
        """float64 ``(len(self),)``: :func:`parse_number` of each token (computed lazily)."""
        done = len(self._numeric)
        if done < len(self._tokens):
            new = np.fromiter((parse_number(t) if any(c.isdigit() for c in t) else math.nan
                               for t in self._tokens[done:]), np.float64,
                              len(self._tokens) - done)
            self._numeric = np.concatenate([self._numeric, new])
        return self._numeric

    def ids(self, tokens: list[str]) -> np.ndarray:
        """int32 ids of ``tokens``, adding the new ones (in first-seen order)."""
        index = self._index
        new = [t for t in dict.fromkeys(tokens) if t not in index]
        if new:
            start = len(self._tokens)
            index.update(zip(new, range(start, start + len(new))))
            self._tokens.extend(new)
        return np.fromiter(map(index.__getitem__, tokens), np.int32, len(tokens))

    def encode(self, texts: Sequence[str], normalize: Normalize = "squad") -> TokenBatch:
        """Normalize, whitespace-tokenize and map ``texts`` to a :class:`TokenBatch`.

        Each distinct text is normalized once (texts repeat a lot in prompt search), and many
        texts are normalized in one pass over a joined string where that is exact.
        """
        fn = _check_normalize(normalize)
        texts = list(texts)
        n = len(texts)
        if n == 0:
            return TokenBatch(np.zeros(0, np.int32), np.zeros(1, np.int64), self)
        if not all(issubclass(kind, str) for kind in set(map(type, texts))):
            bad = next(i for i, t in enumerate(texts) if not isinstance(t, str))
            raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected str")

        # first[i]: index of the first text equal to texts[i]; the distinct texts are the firsts.
        seen: dict[str, int] = {}
        first = np.fromiter(map(seen.setdefault, texts, range(n)), np.int64, n)
        is_first = first == np.arange(n)
        uniq = texts if len(seen) == n else [texts[i] for i in np.flatnonzero(is_first)]

        if normalize == "squad":
            parts = self._encode_squad(uniq)
        else:
            whole = np.arange(len(uniq))
            joined = self._encode_joined(uniq, _identity, ()) if normalize == "none" else None
            parts = [(whole, *(joined or self._encode_each(uniq, fn)))]

        # Stitch the parts into one CSR over the distinct texts, then gather it per text.
        order = np.concatenate([p[0] for p in parts])
        u_ids = np.concatenate([p[1] for p in parts])
        u_len = np.concatenate([p[2] for p in parts])
        u_off = np.zeros(len(uniq) + 1, np.int64)
        np.cumsum(u_len, out=u_off[1:])
        slot = np.empty(len(uniq), np.int64)  # slot[u]: row of distinct text u in the CSR
        slot[order] = np.arange(len(uniq))
        row = slot if len(uniq) == n else slot[(np.cumsum(is_first) - 1)[first]]
        lengths = u_len[row]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if len(uniq) == n and np.array_equal(order, _arange(n)):
            ids = u_ids  # nothing repeated, nothing reordered
        else:
            gather = np.repeat(u_off[row] - offsets[:-1], lengths) + np.arange(offsets[-1])
            ids = u_ids[gather]
        return TokenBatch(np.ascontiguousarray(ids, np.int32), offsets, self)

    # -- encoding paths: (ids, lengths) of their texts, in order --
    def _encode_each(self, texts: list[str], fn: Callable[[str], str]
                     ) -> tuple[np.ndarray, np.ndarray]:
        token_lists = [fn(t).split() for t in texts]
        lengths = np.fromiter(map(len, token_lists), np.int64, len(texts))
        return self.ids(list(itertools.chain.from_iterable(token_lists))), lengths

    def _encode_joined(self, texts: list[str], fn: Callable[[str], str], drop: tuple[str, ...]
                       ) -> tuple[np.ndarray, np.ndarray] | None:
        """All texts in one pass: ``fn`` over the separator-joined string, split, cut at the
        separators. None when a text itself holds the separator (then go one at a time)."""
        joined = _JOIN.join(texts)
        if joined.count(_SEP) != len(texts) - 1:
            return None
        ids = self.ids(fn(joined).split())
        if drop:  # tokens the normalization removes (articles, on the ASCII fast path)
            drop_ids = [self._index[t] for t in drop if t in self._index]
            if drop_ids:
                ids = ids[~np.isin(ids, drop_ids)]
        separators = np.flatnonzero(ids == 0)
        lengths = np.diff(np.concatenate(([-1], separators, [len(ids)]))) - 1
        return ids[ids != 0], lengths.astype(np.int64)

    def _encode_squad(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        is_ascii = np.fromiter(map(str.isascii, texts), bool, len(texts))
        fast = np.flatnonzero(is_ascii)
        slow = np.flatnonzero(~is_ascii)
        parts = []
        if len(fast):
            group = texts if len(fast) == len(texts) else [texts[i] for i in fast]
            raw = "".join(group).encode("ascii")
            # ASCII: NFD is the identity and, once punctuation is gone, every token is [a-z0-9]+
            # unless an odd control character sits inside it; then dropping whole article
            # tokens is exactly dspy's ``\b(a|an|the)\b`` substitution.
            encoded = None
            if len(raw.translate(None, _ODD_CONTROLS)) == len(raw):
                encoded = self._encode_joined(group, _ascii_lower_unpunct, _ARTICLES)
            if encoded is None:
                slow = np.sort(np.concatenate([slow, fast]))
            else:
                parts.append((fast, *encoded))
        if len(slow):
            group = [texts[i] for i in slow]
            encoded = (self._encode_joined(group, normalize_squad, ())
                       or self._encode_each(group, normalize_squad))
            parts.append((slow, *encoded))
        return parts


def _ascii_lower_unpunct(text: str) -> str:
    return text.encode("ascii").lower().translate(None, _PUNCT_BYTES).decode("ascii")


# ---- kernels and their references ---------------------------------------------------------------
# A kernel scores gold row ``r`` against prediction row ``pair_pred[r]`` and returns one float64
# per gold row; :func:`group_max_kernel` then keeps each prediction's best reference. (A flat loop
# over pairs runs ~3x faster than a loop over predictions with a nested loop over references.)

def exact_match_reference(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """1.0 when the token sequences are equal (two empty ones are equal)."""
    return 1.0 if list(pred_tokens) == list(gold_tokens) else 0.0


@jit
def exact_match_kernel(p_ids, p_off, g_ids, g_off, pair_pred):  # pragma: no cover - jitted
    m = g_off.shape[0] - 1
    out = np.zeros(m, np.float64)
    for r in range(m):
        i = pair_pred[r]
        ps = p_off[i]
        plen = p_off[i + 1] - ps
        gs = g_off[r]
        if g_off[r + 1] - gs == plen:
            same = 1.0
            for k in range(plen):
                if p_ids[ps + k] != g_ids[gs + k]:
                    same = 0.0
                    break
            out[r] = same
    return out


def token_f1_reference(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """SQuAD / dspy token F1: harmonic mean of precision and recall of the multiset overlap;
    0.0 without overlap (both empty included, as dspy)."""
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


@jit
def token_f1_kernel(p_ids, p_off, g_ids, g_off, pair_pred):  # pragma: no cover - jitted
    m = g_off.shape[0] - 1
    out = np.zeros(m, np.float64)
    size = 0
    for t in g_ids:
        if t + 1 > size:
            size = t + 1
    counts = np.zeros(size, np.int32)  # token counts of the gold at hand; all 0 between pairs
    for r in range(m):
        i = pair_pred[r]
        ps = p_off[i]
        pe = p_off[i + 1]
        gs = g_off[r]
        ge = g_off[r + 1]
        if pe == ps or ge == gs:
            continue
        for k in range(gs, ge):
            counts[g_ids[k]] += 1
        same = 0
        for k in range(ps, pe):
            t = p_ids[k]
            if t < size and counts[t] > 0:
                counts[t] -= 1
                same += 1
        for k in range(gs, ge):
            counts[g_ids[k]] = 0
        if same > 0:
            # the same float operations as dspy's f1_score, so results are bit-identical
            precision = 1.0 * same / (pe - ps)
            recall = 1.0 * same / (ge - gs)
            out[r] = (2 * precision * recall) / (precision + recall)
    return out


def contains_reference(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """1.0 when the gold tokens occur contiguously in the prediction; an empty gold only in an
    empty prediction."""
    p, g = list(pred_tokens), list(gold_tokens)
    if not g:
        return 1.0 if not p else 0.0
    return 1.0 if any(p[s:s + len(g)] == g for s in range(len(p) - len(g) + 1)) else 0.0


@jit
def contains_kernel(p_ids, p_off, g_ids, g_off, pair_pred):  # pragma: no cover - jitted
    m = g_off.shape[0] - 1
    out = np.zeros(m, np.float64)
    for r in range(m):
        i = pair_pred[r]
        ps = p_off[i]
        plen = p_off[i + 1] - ps
        gs = g_off[r]
        glen = g_off[r + 1] - gs
        if glen == 0:
            out[r] = 1.0 if plen == 0 else 0.0
            continue
        for s in range(ps, ps + plen - glen + 1):
            same = True
            for k in range(glen):
                if p_ids[s + k] != g_ids[gs + k]:
                    same = False
                    break
            if same:
                out[r] = 1.0
                break
    return out


def numeric_match_reference(pred_tokens: list[str], gold_tokens: list[str], *,
                            rel_tol: float = 1e-9, abs_tol: float = 1e-9) -> float:
    """1.0 when the last number in the prediction ``math.isclose``-equals the last number in
    the gold; 0.0 when either has none."""
    p = [v for v in map(parse_number, pred_tokens) if not math.isnan(v)]
    g = [v for v in map(parse_number, gold_tokens) if not math.isnan(v)]
    if not p or not g:
        return 0.0
    return 1.0 if math.isclose(p[-1], g[-1], rel_tol=rel_tol, abs_tol=abs_tol) else 0.0


@jit
def _last_number(ids, start, stop, numeric):  # pragma: no cover - jitted
    for k in range(stop - 1, start - 1, -1):
        v = numeric[ids[k]]
        if v == v:  # not NaN
            return v
    return np.nan


@jit
def numeric_match_kernel(p_ids, p_off, g_ids, g_off, pair_pred, numeric, rel_tol,
                         abs_tol):  # pragma: no cover - jitted
    m = g_off.shape[0] - 1
    out = np.zeros(m, np.float64)
    for r in range(m):
        i = pair_pred[r]
        a = _last_number(p_ids, p_off[i], p_off[i + 1], numeric)
        b = _last_number(g_ids, g_off[r], g_off[r + 1], numeric)
        if a != a or b != b:
            continue
        # math.isclose, as CPython implements it
        close = a == b
        if not close and not (math.isinf(a) or math.isinf(b)):
            diff = abs(b - a)
            close = diff <= abs(rel_tol * b) or diff <= abs(rel_tol * a) or diff <= abs_tol
        if close:
            out[r] = 1.0
    return out


def group_max_reference(values: Sequence[float], ref_offsets: Sequence[int]) -> list[float]:
    """The best of each prediction's references; 0.0 for a prediction without any."""
    return [max(values[ref_offsets[i]:ref_offsets[i + 1]], default=0.0)
            for i in range(len(ref_offsets) - 1)]


@jit
def group_max_kernel(values, ref_offsets):  # pragma: no cover - jitted
    n = ref_offsets.shape[0] - 1
    out = np.zeros(n, np.float64)  # scores are >= 0, so no reference -> 0.0
    for i in range(n):
        for r in range(ref_offsets[i], ref_offsets[i + 1]):
            if values[r] > out[i]:
                out[i] = values[r]
    return out


# ---- id-level entry points (checked) ------------------------------------------------------------

@jit
def _offsets_ok(off, n_ids):  # pragma: no cover - jitted
    """Offsets are non-decreasing and inside ``[0, n_ids]`` (no early exit: it vectorizes)."""
    if off.shape[0] == 0:
        return False
    ok = off[0] >= 0 and off[off.shape[0] - 1] <= n_ids
    for i in range(1, off.shape[0]):
        ok &= off[i] >= off[i - 1]
    return ok


@jit
def _id_range(ids):  # pragma: no cover - jitted
    lo = 0
    hi = -1
    for t in ids:
        if t < lo:
            lo = t
        if t > hi:
            hi = t
    return lo, hi


_ARANGE = np.arange(1, dtype=np.int64)


def _arange(n: int) -> np.ndarray:
    """``0..n-1`` as a view of a cached arange (no allocation in the hot path)."""
    global _ARANGE
    if len(_ARANGE) < n:
        _ARANGE = np.arange(max(n, 2 * len(_ARANGE)), dtype=np.int64)
    return _ARANGE[:n]


def _csr(ids: np.ndarray, off: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    ids = np.ascontiguousarray(ids, np.int32)
    off = np.ascontiguousarray(off, np.int64)
    if ids.ndim != 1 or off.ndim != 1 or len(off) < 1:
        raise ValueError(f"{what}: ids and offsets must be 1-D, offsets of length n+1")
    if not _offsets_ok(off, len(ids)):
        raise ValueError(f"{what}: offsets must be non-decreasing within [0, {len(ids)}]")
    return ids, off


def _run(kernel: Callable[..., np.ndarray], p_ids: np.ndarray, p_off: np.ndarray,
         g_ids: np.ndarray, g_off: np.ndarray, ref_offsets: np.ndarray | None,
         extra: tuple = (), *, id_bound: int | None = None, checked: bool = True) -> np.ndarray:
    """Score every (prediction, reference) pair with ``kernel`` and keep each prediction's best.
    ``id_bound``: token ids must lie below it (kernels that index a per-id array)."""
    if checked:
        p_ids, p_off = _csr(p_ids, p_off, "predictions")
        g_ids, g_off = _csr(g_ids, g_off, "golds")
    n, m = len(p_off) - 1, len(g_off) - 1
    if ref_offsets is None:
        if n != m:
            raise ValueError(f"{n} predictions but {m} golds (pass ref_offsets for several "
                             "references per prediction)")
    else:
        ref_offsets = np.ascontiguousarray(ref_offsets, np.int64)
        if (checked and (len(ref_offsets) != n + 1 or ref_offsets[0] != 0
                         or ref_offsets[-1] != m or not _offsets_ok(ref_offsets, m))):
            raise ValueError(f"ref_offsets must be {n + 1} non-decreasing offsets from 0 to {m}")
    if checked and id_bound is not None:
        for ids in (p_ids, g_ids):
            lo, hi = _id_range(ids)
            if lo < 0 or hi >= id_bound:
                raise ValueError(f"token ids must lie in [0, {id_bound}), found "
                                 f"{lo if lo < 0 else hi}")
    if ref_offsets is None:
        return kernel(p_ids, p_off, g_ids, g_off, _arange(n), *extra)
    pair_pred = np.repeat(_arange(n), np.diff(ref_offsets))
    return group_max_kernel(kernel(p_ids, p_off, g_ids, g_off, pair_pred, *extra), ref_offsets)


_NO_NEGATIVE_IDS = int(np.iinfo(np.int32).max)


def exact_match_ids(p_ids: np.ndarray, p_off: np.ndarray, g_ids: np.ndarray, g_off: np.ndarray,
                    ref_offsets: np.ndarray | None = None) -> np.ndarray:
    """Exact match of CSR predictions against CSR golds (same vocabulary), float64 ``(n,)``.

    Without ``ref_offsets`` gold ``i`` is prediction ``i``'s one reference; with it, prediction
    ``i``'s references are gold rows ``ref_offsets[i]:ref_offsets[i+1]`` and the best counts.
    """
    return _run(exact_match_kernel, p_ids, p_off, g_ids, g_off, ref_offsets)


def token_f1_ids(p_ids: np.ndarray, p_off: np.ndarray, g_ids: np.ndarray, g_off: np.ndarray,
                 ref_offsets: np.ndarray | None = None) -> np.ndarray:
    """Token F1 on CSR ids (arguments as :func:`exact_match_ids`)."""
    return _run(token_f1_kernel, p_ids, p_off, g_ids, g_off, ref_offsets,
                id_bound=_NO_NEGATIVE_IDS)


def contains_ids(p_ids: np.ndarray, p_off: np.ndarray, g_ids: np.ndarray, g_off: np.ndarray,
                 ref_offsets: np.ndarray | None = None) -> np.ndarray:
    """Gold contained in prediction, on CSR ids (arguments as :func:`exact_match_ids`)."""
    return _run(contains_kernel, p_ids, p_off, g_ids, g_off, ref_offsets)


def numeric_match_ids(p_ids: np.ndarray, p_off: np.ndarray, g_ids: np.ndarray, g_off: np.ndarray,
                      numeric: np.ndarray, ref_offsets: np.ndarray | None = None, *,
                      rel_tol: float = 1e-9, abs_tol: float = 1e-9) -> np.ndarray:
    """Numeric match on CSR ids; ``numeric`` is the vocabulary's :attr:`Vocabulary.numeric`."""
    _check_tolerances(rel_tol, abs_tol)
    numeric = np.ascontiguousarray(numeric, np.float64)
    return _run(numeric_match_kernel, p_ids, p_off, g_ids, g_off, ref_offsets,
                (numeric, float(rel_tol), float(abs_tol)), id_bound=len(numeric))


def _check_tolerances(rel_tol: float, abs_tol: float) -> None:
    if not (rel_tol >= 0 and abs_tol >= 0):
        raise ValueError(f"tolerances must be non-negative, got rel_tol={rel_tol}, "
                         f"abs_tol={abs_tol}")


# ---- string-level batch API ---------------------------------------------------------------------

def _prepare(preds: Sequence[str], golds: Sequence[Gold], normalize: Normalize,
             vocabulary: Vocabulary | None):
    """Encode predictions and (flattened) references in one pass: ``(ids, p_off, ids, g_off),
    ref_offsets`` (None when every gold is one string) and the vocabulary."""
    if len(preds) != len(golds):
        raise ValueError(f"preds has {len(preds)} items but golds has {len(golds)}")
    if set(map(type, golds)) <= {str}:
        flat, ref = list(golds), None
    else:
        flat, counts = [], []
        for i, g in enumerate(golds):
            refs = [g] if isinstance(g, str) else list(g)
            if not all(isinstance(r, str) for r in refs):
                raise TypeError(f"golds[{i}] must be a str or a sequence of str, got {g!r}")
            flat += refs
            counts.append(len(refs))
        ref = np.zeros(len(golds) + 1, np.int64)
        np.cumsum(counts, out=ref[1:])
    vocab = vocabulary if vocabulary is not None else Vocabulary()
    batch = vocab.encode(list(preds) + flat, normalize)  # one pass, one memo for both sides
    n = len(preds)
    return (batch.ids, batch.offsets[:n + 1], batch.ids, batch.offsets[n:]), ref, vocab


def exact_match_batch(preds: Sequence[str], golds: Sequence[Gold], *,
                      normalize: Normalize = "squad",
                      vocabulary: Vocabulary | None = None) -> np.ndarray:
    """float64 ``(n,)``: 1.0 where prediction ``i`` equals (one of) gold ``i`` after
    normalization. ``normalize="squad"`` equals dspy's ``em_score`` (``EM`` for several).

    >>> exact_match_batch(["The Eiffel Tower!", "Paris"], ["eiffel tower", ["Lyon", "paris"]])
    array([1., 1.])
    """
    args, ref, _ = _prepare(preds, golds, normalize, vocabulary)
    return _run(exact_match_kernel, *args, ref, checked=False)


def token_f1_batch(preds: Sequence[str], golds: Sequence[Gold], *, normalize: Normalize = "squad",
                   vocabulary: Vocabulary | None = None) -> np.ndarray:
    """float64 ``(n,)``: token F1 of prediction ``i`` against (the best of) gold ``i``;
    ``normalize="squad"`` equals dspy's ``f1_score`` (``F1`` for several)."""
    args, ref, _ = _prepare(preds, golds, normalize, vocabulary)
    return _run(token_f1_kernel, *args, ref, checked=False)


def contains_batch(preds: Sequence[str], golds: Sequence[Gold], *, normalize: Normalize = "squad",
                   vocabulary: Vocabulary | None = None) -> np.ndarray:
    """float64 ``(n,)``: 1.0 where (one of) gold ``i``'s tokens occur contiguously in
    prediction ``i``."""
    args, ref, _ = _prepare(preds, golds, normalize, vocabulary)
    return _run(contains_kernel, *args, ref, checked=False)


def numeric_match_batch(preds: Sequence[str], golds: Sequence[Gold], *, rel_tol: float = 1e-9,
                        abs_tol: float = 1e-9,
                        vocabulary: Vocabulary | None = None) -> np.ndarray:
    """float64 ``(n,)``: 1.0 where the last number in prediction ``i`` is close to the last
    number in (one of) gold ``i`` (``math.isclose``). Tokens are split on whitespace only, so
    ``"1,024"`` and ``"-3"`` survive; see :func:`parse_number`.

    >>> numeric_match_batch(["The answer is $1,024.", "about 3"], ["1024", "4"]).tolist()
    [1.0, 0.0]
    """
    _check_tolerances(rel_tol, abs_tol)
    args, ref, vocab = _prepare(preds, golds, "none", vocabulary)
    return _run(numeric_match_kernel, *args, ref,
                (vocab.numeric, float(rel_tol), float(abs_tol)), checked=False)


METRIC_NAMES = ("exact_match", "normalized_exact_match", "f1", "contains", "numeric")


def score_batch(name: str, preds: Sequence[str], golds: Sequence[Gold], **kw: object
                ) -> np.ndarray:
    """Dispatch by metric name: ``"exact_match"`` (``normalize="none"`` unless given: tokens
    must be equal, whitespace aside), ``"normalized_exact_match"`` (SQuAD normalization),
    ``"f1"``, ``"contains"``, ``"numeric"``. Keyword options go to the batch function."""
    if name == "exact_match":
        kw.setdefault("normalize", "none")
        return exact_match_batch(preds, golds, **kw)  # type: ignore[arg-type]
    if name == "normalized_exact_match":
        kw.setdefault("normalize", "squad")
        return exact_match_batch(preds, golds, **kw)  # type: ignore[arg-type]
    if name == "f1":
        return token_f1_batch(preds, golds, **kw)  # type: ignore[arg-type]
    if name == "contains":
        return contains_batch(preds, golds, **kw)  # type: ignore[arg-type]
    if name == "numeric":
        return numeric_match_batch(preds, golds, **kw)  # type: ignore[arg-type]
    raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")
