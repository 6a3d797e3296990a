"""Behaviour fingerprints of every optimizer, to prove a refactor changed nothing a user sees.

    python benchmarks/replay.py record OUT.json     # fingerprint the current code
    python benchmarks/replay.py check OUT.json      # the current code must give the same

Each optimizer (and the multi-objective and parallel-ensemble variants) runs through
``evo.optimize`` on a deterministic scripted LM whose answers are a hash of the request: every
different prompt gets different scores and every proposal a different instruction, so a search
that takes a different path anywhere (another parent, another minibatch, another demo set,
another order of calls) changes the fingerprint. A fingerprint holds the best program, the
validation scores, the metric calls, every candidate (genome, operator, score) and a digest of
the multiset of LM requests (order-free, so thread scheduling in a parallel ensemble does not
matter). ``tests/optimizers/test_replay.py`` checks the committed
``benchmarks/results/replay.json``.

The real-model replays are ``benchmarks/optimizers.py --replay`` (each optimizer's row from its
own response cache) and the README demo rerun on the default cache (0 paid calls).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import evo  # noqa: E402
from evo.lm import ScriptedLM  # noqa: E402
from evo.testing import HASHED, hashed_example, hashed_respond  # noqa: E402

LABELS = HASHED.labels


def make(i: int) -> evo.Example:
    """The i-th example of the hashed task (evo.testing.HASHED draws its splits the same way)."""
    return hashed_example(i)


TRAIN = [make(i) for i in range(60)]
VAL = [make(i) for i in range(100, 124)]
respond = hashed_respond  # the model whose skill is a hash of the prompt (evo.testing)


VARIANTS: dict[str, dict] = {name: {} for name in evo.optimizers.names()}
VARIANTS["evolution+moo"] = {"optimizer": "evolution",
                             "objectives": ["accuracy", "prompt_chars"]}
VARIANTS["evolution+tournament"] = {"optimizer": "evolution", "selection": "tournament",
                                    "knn": False}
VARIANTS["ensemble+parallel"] = {"optimizer": "ensemble", "parallel": True}


def fingerprint(variant: str, budget: int = 150, seed: int = 0) -> dict:
    params = dict(VARIANTS[variant])
    name = params.pop("optimizer", variant)
    params.setdefault("encoder", "hashing")
    lm = ScriptedLM(respond)
    optimizer = evo.optimizers.get(name, budget=evo.Budget(metric_calls=budget), **params)
    result = evo.optimize(evo.Program(signature="text -> label", labels=LABELS), TRAIN, VAL,
                          lm=lm, optimizer=optimizer, seed=seed, cache=False, progress=False)
    requests = sorted(r.key("m") for r in lm.calls)
    best = result.best.to_json() if hasattr(result.best, "to_json") else str(result.best)
    return {
        "best": best,
        "baseline_val": result.baseline_val, "best_val": result.best_val,
        "metric_calls": result.metric_calls, "lm_calls": len(lm.calls),
        "requests": hashlib.sha256("\n".join(requests).encode()).hexdigest(),
        "candidates": [[json.dumps(c.genome, default=str, sort_keys=True), c.op,
                        c.val_score] for c in result.candidates],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("record", "check"):
        print(__doc__)
        return 2
    mode, path = argv[0], Path(argv[1])
    now = json.loads(json.dumps({v: fingerprint(v) for v in VARIANTS}, sort_keys=True))
    if mode == "record":
        path.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(now)} fingerprints in {path}")
        return 0
    before = json.loads(path.read_text())
    bad = [v for v in sorted(set(before) | set(now)) if before.get(v) != now.get(v)]
    for v in sorted(set(before) | set(now)):
        print(f"{v}: {'DIFFERENT' if v in bad else 'same'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
