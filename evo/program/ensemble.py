"""An ensemble of programs: every member answers, the outputs are put to a vote.

An :class:`EnsembleProgram` is what :class:`evo.optimizers.Ensemble` returns when voting beats
its best member on validation, and a user can build one from any saved programs. It costs one LM
call per member per input. Unparseable member replies abstain; a tie goes to the earliest member
(the optimizer puts the best first).

>>> a = Program(signature="q -> label", labels=["x", "y"])
>>> ens = EnsembleProgram(members=(a, a.model_copy(update={"instruction": "Say x or y."})))
>>> ens.vote_on([a.parse("label: y"), a.parse("label: x")]).outputs
{'label': 'y'}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evo._io import write_json
from evo.errors import DamagedFileError
from evo.program import (
    PROGRAM_FORMAT,
    PROGRAM_HINT,
    Prediction,
    Program,
    Signature,
    check_format,
    read_program_file,
    refuse_module_file,
    validate_program_data,
)


def _vote_key(outputs: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, " ".join(v.lower().split())) for k, v in outputs.items()))


class EnsembleProgram(BaseModel):
    """Programs for one signature whose answers are combined by (weighted) majority vote."""

    model_config = ConfigDict(frozen=True)

    members: tuple[Program, ...]
    vote: Literal["majority", "weighted"] = "majority"
    weights: tuple[float, ...] | None = Field(
        None, description="one per member for vote='weighted' (e.g. validation accuracy)")

    @model_validator(mode="after")
    def _check(self) -> EnsembleProgram:
        if not self.members:
            raise ValueError("an ensemble needs at least one member program")
        sig = str(self.members[0].signature)
        for i, member in enumerate(self.members):
            if str(member.signature) != sig:
                raise ValueError(f"ensemble member {i} has signature '{member.signature}', "
                                 f"member 0 has '{sig}'")
        if self.vote == "weighted" and (self.weights is None
                                        or len(self.weights) != len(self.members)):
            raise ValueError("vote='weighted' needs one weight per member")
        return self

    @property
    def signature(self) -> Signature:
        return self.members[0].signature

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.members[0].labels

    def check_example(self, example, *, outputs: bool = False) -> None:  # noqa: ANN001
        self.members[0].check_example(example, outputs=outputs)

    def vote_on(self, predictions: Sequence[Prediction]) -> Prediction:
        """The members' predictions (in member order) combined into one."""
        if len(predictions) != len(self.members):
            raise ValueError(f"{len(predictions)} predictions for {len(self.members)} members")
        weights = self.weights if self.vote == "weighted" else (1.0,) * len(self.members)
        tally: dict[tuple, float] = {}
        first: dict[tuple, Prediction] = {}
        for pred, w in zip(predictions, weights, strict=True):
            if not pred.ok:
                continue
            key = _vote_key(pred.outputs)
            tally[key] = tally.get(key, 0.0) + w
            first.setdefault(key, pred)
        if not tally:
            errors = "; ".join(p.error or "" for p in predictions)
            return Prediction(predictions[0].text, None, f"no member answered: {errors}")
        top = max(tally.values())
        winner = next(k for k in first if tally[k] == top)  # first-seen = earliest member
        return first[winner]

    def prompt_chars(self) -> int:
        return sum(m.prompt_chars() for m in self.members)

    def to_json(self) -> dict:
        return {"vote": self.vote, "weights": None if self.weights is None else list(self.weights),
                "members": [m.to_json() for m in self.members]}

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"evo_ensemble": PROGRAM_FORMAT, **self.to_json()})


def load_program(path: str | Path) -> Program | EnsembleProgram:
    """A program file written by :meth:`Program.save` or :meth:`EnsembleProgram.save`. A
    damaged file (truncated, nested too deep, not a program, a field missing or of the wrong
    type) is one :class:`~evo.errors.DamagedFileError` naming the file and the field, e.g.
    ``best.json: members[1].demos[2].outputs: missing``. The best.json of an
    :func:`evo.optimize_module` run (a ``dspy.Module``'s) is a :class:`~evo.errors.ConfigError`:
    the module's own ``load`` reads its saved program."""
    data = read_program_file(path)
    refuse_module_file(data, path)
    if "evo_ensemble" in data:
        check_format(data, "evo_ensemble", path)
        return validate_program_data(EnsembleProgram, data, path)
    if "evo_program" in data:
        check_format(data, "evo_program", path)
        return validate_program_data(Program, data, path)
    raise DamagedFileError(path, "not an evo program file (neither an 'evo_program' nor an "
                                 "'evo_ensemble' key)", hint=PROGRAM_HINT)
