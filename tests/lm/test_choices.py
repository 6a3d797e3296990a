"""Label scoring (``LMRequest.choices``) through the LM layer: the scripted backend's scores, the
session's refusal of a backend that cannot score, the cache and the journal keeping
``choice_logprobs`` (and reading files from before them), and one check on the real local model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sqlite3
from pathlib import Path

import pytest

from evo.errors import ConfigError
from evo.lm import LMSession, ResponseCache, ScriptedLM
from evo.lm.base import LMError, LMRequest, LMResponse, Message, scores_choices
from evo.lm.hosted import DSPyLM
from evo.lm.journal import Journal
from evo.lm.local import LocalLM, continuation
from evo.lm.scripted import UNNAMED_LOGPROB, named_choice

LABELS = ("positive", "negative")


def ask(text: str, choices: tuple[str, ...] = LABELS, prefill: str = "Answer:") -> LMRequest:
    return LMRequest((Message("system", "Classify the sentiment."), Message("user", text)),
                     choices=choices, prefill=prefill)


class GenerateOnly:
    """A backend that only generates (no ``scores_choices``)."""

    model_id = "gen-only"

    def __init__(self) -> None:
        self.calls = 0

    def complete(self, request: LMRequest) -> LMResponse:
        self.calls += 1
        return LMResponse("Answer: positive")


# --- the request key ---------------------------------------------------------------------------

def test_generation_keys_are_the_keys_of_before_label_scoring() -> None:
    # computed with evo/lm/base.py of da7b1b7 (before choices existed)
    assert LMRequest((Message("user", "hi"),)).key("m") == (
        "218aa39538dc99ba635dedff57a6dd4b8790bc385a57e99d077da61fa4be064a")
    req = LMRequest((Message("system", "s"), Message("user", "hi")), max_tokens=8, stop=("x",))
    assert req.key("m", "http://h") == (
        "b7711d745bdeccdc829a8f9771f287b145fdcb51dc413cf7d659ac786ac8f559")
    # a prefill alone (no choices) is no scoring request: the key ignores it
    assert LMRequest((Message("user", "hi"),), prefill="x").key("m") == (
        LMRequest((Message("user", "hi"),)).key("m"))


def test_choices_and_prefill_are_part_of_the_key() -> None:
    keys = {ask("t").key("m"), ask("t", choices=("negative", "positive")).key("m"),
            ask("t", prefill="label:").key("m"), ask("t", choices=()).key("m")}
    assert len(keys) == 4


# --- the scripted backend ----------------------------------------------------------------------

def test_continuation_puts_one_space_after_a_prefill() -> None:
    assert continuation("Answer:", "yes") == "Answer: yes"
    assert continuation("Answer: ", "yes") == "Answer: yes"
    assert continuation("", "yes") == "yes"


def test_scripted_scores_by_mapping_or_sequence() -> None:
    by_name = ScriptedLM({}, scores=lambda r: {"negative": -0.1, "positive": -2.3})
    r = by_name.complete(ask("dull"))
    assert r.choice_logprobs == (-2.3, -0.1) and r.text == "Answer: negative"
    assert r.completion_tokens == 0
    in_order = ScriptedLM({}, scores=lambda r: [-0.5, -0.9])
    assert in_order.complete(ask("fine")).text == "Answer: positive"
    with pytest.raises(ValueError, match="negative"):
        ScriptedLM({}, scores=lambda r: {"positive": 0.0}).complete(ask("x"))
    with pytest.raises(ValueError, match="1 log-probabilities for 2 choices"):
        ScriptedLM({}, scores=lambda r: [0.0]).complete(ask("x"))


def test_scripted_default_names_the_choice_the_reply_names() -> None:
    lm = ScriptedLM({"loved": "Positive", "hated": "Answer: negative", "meh": "no idea"})
    loved, hated, meh = (lm.complete(ask(t)) for t in ("I loved it", "I hated it", "meh"))
    assert loved.choice_logprobs == (0.0, UNNAMED_LOGPROB) and loved.text == "Answer: positive"
    assert hated.choice_logprobs == (UNNAMED_LOGPROB, 0.0) and hated.text == "Answer: negative"
    # names none: uniform, and the first choice is the answer
    assert meh.choice_logprobs == pytest.approx((-math.log(2),) * 2)
    assert meh.text == "Answer: positive"


def test_named_choice_prefers_equal_then_the_longest_contained() -> None:
    assert named_choice(" NUMBER ", ("num", "number")) == 1
    assert named_choice("very positive", ("positive", "very positive")) == 1
    assert named_choice("label: human", ("entity", "human")) == 1
    assert named_choice("nothing", ("a b", "c")) is None


def test_which_backends_score_choices() -> None:
    assert scores_choices(ScriptedLM({})) and LocalLM.scores_choices
    assert not scores_choices(GenerateOnly()) and not DSPyLM.scores_choices


# --- the session -------------------------------------------------------------------------------

def test_a_backend_that_cannot_score_is_a_config_error_not_a_generation(tmp_path: Path) -> None:
    lm = GenerateOnly()
    s = LMSession(lm, cache=ResponseCache(tmp_path / "c.sqlite"))
    with pytest.raises(ConfigError, match=r"gen-only.*backend that scores choices.*local"):
        s.complete(ask("dull"))
    assert lm.calls == 0 and s.usage.requests == 0 and s.usage.errors == 0
    assert s.complete(LMRequest((Message("user", "hi"),))).text == "Answer: positive"


@pytest.mark.parametrize("bad", [None, (-1.0,), (-1.0, float("nan")), (-1.0, 3.0)])
def test_a_scoring_reply_without_one_logprob_per_choice_is_a_failed_call(bad) -> None:
    class Bad:
        model_id, scores_choices = "bad", True

        def complete(self, request: LMRequest) -> LMResponse:
            return LMResponse("Answer: positive", choice_logprobs=bad)

    s = LMSession(Bad(), cache=None, retries=0)
    with pytest.raises(LMError, match="one number"):
        s.complete(ask("x"))


def test_cache_hit_returns_the_same_choice_logprobs(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    lm = ScriptedLM({"": "fine"}, scores=lambda r: {"positive": -0.25, "negative": -1.5})
    gen = ask("fine", choices=())  # a generation: no scores, in the cache or out of it
    first = LMSession(lm, cache=ResponseCache(path)).complete(gen)
    hit = LMSession(lm, cache=ResponseCache(path)).complete(gen)
    assert hit.cached and first.choice_logprobs is None and hit.choice_logprobs is None
    req = ask("fine")
    paid = LMSession(lm, cache=ResponseCache(path)).complete(req)
    s = LMSession(lm, cache=ResponseCache(path))
    cached = s.complete(req)
    assert s.usage.cache_hits == 1 and cached.cached
    assert cached.choice_logprobs == paid.choice_logprobs == (-0.25, -1.5)
    assert cached.text == paid.text == "Answer: positive"
    with sqlite3.connect(path) as conn:  # the request's choices are kept for inspection
        stored = json.loads(conn.execute("SELECT request FROM responses WHERE key = ?",
                                         (req.key(lm.model_id),)).fetchone()[0])
    assert stored["choices"] == list(LABELS) and stored["prefill"] == "Answer:"


def test_a_cached_scoring_answer_without_scores_is_asked_again(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    lm = ScriptedLM({}, scores=lambda r: [-1.0, -2.0])
    req = ask("x")
    cache = ResponseCache(path)
    cache.put(req.key(lm.model_id), LMResponse("Answer: positive"), model_id=lm.model_id,
              request=req)  # (as a row whose scores were lost)
    s = LMSession(lm, cache=cache)
    assert s.complete(req).choice_logprobs == (-1.0, -2.0)
    assert s.usage.calls == 1 and s.usage.cache_hits == 0


def _old_cache(path: Path) -> None:
    """A cache file as evo wrote it before label scoring: no choice_logprobs table."""
    with sqlite3.connect(path) as conn:
        conn.execute("""CREATE TABLE responses (key TEXT PRIMARY KEY, model_id TEXT NOT NULL,
            text TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL, seconds REAL NOT NULL, request TEXT NOT NULL,
            created REAL NOT NULL)""")
        conn.execute("INSERT INTO responses VALUES ('old', 'm', 'an answer', 3, 2, 0.1, '{}', 0)")


def test_a_cache_from_before_label_scoring_is_read_and_extended(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _old_cache(path)
    cache = ResponseCache(path)
    old = cache.get("old")
    assert old is not None and old.text == "an answer" and old.choice_logprobs is None
    cache.put("new", LMResponse("Answer: negative", choice_logprobs=(-3.0, -0.5)),
              model_id="m", request=ask("x"))
    assert ResponseCache(path).get("new").choice_logprobs == (-3.0, -0.5)
    # an evo from before label scoring still writes it (8 positional values into responses)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT OR REPLACE INTO responses VALUES "
                     "('older', 'm', 'x', 1, 1, 0, '{}', 0)")


def test_a_read_only_cache_from_before_label_scoring_is_still_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.sqlite"
    _old_cache(path)
    with sqlite3.connect(path) as conn:  # SQLite refuses to add the scores table to it
        conn.execute("PRAGMA journal_mode = WAL")
    before = path.read_bytes()
    opened = []
    real = ResponseCache._add_scores_table

    def read_only(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA query_only = ON")
        opened.append(conn)
        real(conn)

    monkeypatch.setattr(ResponseCache, "_add_scores_table", staticmethod(read_only))
    cache = ResponseCache(path)
    got = cache.get("old")
    assert opened and got is not None and got.text == "an answer" and got.choice_logprobs is None
    assert cache.get("missing") is None and cache.bypassed is None
    cache.close()
    assert path.read_bytes() == before


def test_journal_replay_returns_the_same_choice_logprobs(tmp_path: Path) -> None:
    lm = ScriptedLM({"": "hmm"}, scores=lambda r: {"positive": -0.7, "negative": -0.69})
    s = LMSession(lm, cache=None)
    s.journal = Journal(tmp_path / "journal.sqlite")
    s.journal.begin_sitting()
    req, gen = ask("hmm"), ask("hmm", ())
    paid, paid_gen = s.complete(req), s.complete(gen)
    s.journal.close()
    resumed = LMSession(ScriptedLM({}), cache=None, retries=0)  # it answers nothing itself
    resumed.journal = Journal(tmp_path / "journal.sqlite")
    replay = resumed.complete(req)
    assert resumed.usage.replayed == 1 and resumed.usage.calls == 0
    assert replay.choice_logprobs == paid.choice_logprobs == (-0.7, -0.69)
    assert replay.text == paid.text == "Answer: negative"
    assert resumed.complete(gen).choice_logprobs is None and paid_gen.choice_logprobs is None


def test_a_journal_from_before_label_scoring_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE answers (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
                source TEXT NOT NULL, sitting INTEGER NOT NULL, phase TEXT NOT NULL, text TEXT,
                error TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
                reused_prompt_tokens INTEGER NOT NULL, seconds REAL NOT NULL,
                created REAL NOT NULL, kind TEXT);
            CREATE TABLE sittings (id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL NOT NULL,
                pid INTEGER NOT NULL);
            INSERT INTO answers VALUES (1, 'a', 'paid', 1, 'search', 'yes', NULL, 1, 1, 0, 0, 0,
                NULL);""")
    journal = Journal(path)
    assert journal.get("a").text == "yes" and journal.get("a").choice_logprobs is None
    journal.put("b", LMResponse("Answer: positive", choice_logprobs=(-0.1, -2.0)), source="paid")
    assert journal.get("b").choice_logprobs == (-0.1, -2.0)


# --- the real local model ------------------------------------------------------------------------

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python not installed")


@pytest.mark.local_lm
@pytest.mark.network
@needs_llama
def test_local_model_scores_a_two_label_sentiment_prompt() -> None:
    from evo.lm import local

    lm = local("qwen2.5-coder-0.5b")
    try:
        system = ("Classify the sentiment of the movie review. Reply `Answer: positive` or "
                  "`Answer: negative`.")

        def score(review: str) -> LMResponse:
            return lm.complete(LMRequest((Message("system", system),
                                          Message("user", f"Review: {review}")),
                                         choices=LABELS, prefill="Answer:"))

        good = score("An absolute delight from start to finish; I loved every minute.")
        bad = score("Dull, predictable and far too long. I want my money back.")
        for r in (good, bad):
            assert r.choice_logprobs is not None and len(r.choice_logprobs) == 2
            assert all(math.isfinite(x) and x < 0 for x in r.choice_logprobs)
            assert r.completion_tokens == 0 and r.prompt_tokens > 20
        assert good.text == "Answer: positive" and bad.text == "Answer: negative"
        assert good.choice_logprobs[0] > good.choice_logprobs[1]
        assert bad.choice_logprobs[1] > bad.choice_logprobs[0]
        assert bad.reused_prompt_tokens > 20  # the system prompt's prefix stayed in the KV cache
        # a generation after scoring starts from a clean state: the same greedy answer
        gen = lm.complete(LMRequest((Message("system", system),
                                     Message("user", "Review: I loved every minute.")),
                                    max_tokens=8))
        assert "positive" in gen.text.lower()
    finally:
        lm.close()
