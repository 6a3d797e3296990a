"""The service's request bodies: what a client may send, with its limits, checked by pydantic
before anything is resolved or stored.

Every model forbids unknown keys (a typo is an error, not a silently ignored option), every text
and list is bounded (:data:`MAX_ROWS`, :data:`MAX_TEXT`, :data:`MAX_FIELDS`, :data:`MAX_DEMOS`,
:data:`MAX_BUDGET`), and the "exactly one of" choices say which keys were given. A violation is a
:class:`pydantic.ValidationError`; the app answers it with 422 and the location of the first
error (``body.data.rows[3].inputs.question``). Nothing here is ever imported or executed: an
algorithm is a base optimizer's name with parameters, never code.

>>> OptimizeRequest.model_validate({"program": {"signature": "text -> label"},
...                                 "data": {"dataset": "sentiment"}}).budget
100
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from evo.optimizers import names as optimizer_names
from evo.optimizers import optimizer_class
from evo.program import Signature

__all__ = ["MAX_BUDGET", "MAX_DEMOS", "MAX_FIELDS", "MAX_ROWS", "MAX_TEXT", "AlgorithmRequest",
           "DataSpec", "DatasetRequest", "ExperimentRequest", "JobRef", "OptimizeRequest",
           "ProgramRef", "ProgramSpec", "Row", "VersionRef"]

MAX_ROWS = 5000          # rows in one request (inline rows, a dataset, a train or val set)
MAX_TEXT = 20_000        # characters in one field's text
MAX_BUDGET = 100_000     # metric calls of one optimization
MAX_DEMOS = 50           # demos of one program
MAX_FIELDS = 20          # fields on each side of a row
MAX_LABELS = 200         # labels of one program

# names that become folder names or store keys: no path separators, no leading dot
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ALGORITHM_NAME = r"^[a-z][a-z0-9_-]{0,40}$"
FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("is empty (a field's text must have a non-space character)")
    return text


FieldName = Annotated[str, StringConstraints(pattern=FIELD_NAME)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_not_blank)]
Fields = Annotated[dict[FieldName, Text], Field(min_length=1, max_length=MAX_FIELDS)]
Name = Annotated[str, StringConstraints(pattern=NAME)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Row(_Body):
    """One example: ``inputs`` and gold ``outputs``, field name -> text."""

    inputs: Fields
    outputs: Fields


class ProgramSpec(_Body):
    """A program: a ``signature`` ("question -> label") with an optional instruction, demos and
    labels, or ``agent``: the deployed version of one of the tenant's agents."""

    signature: Annotated[str, StringConstraints(max_length=1000)] | None = None
    instruction: Annotated[str, StringConstraints(max_length=MAX_TEXT)] | None = None
    demos: Annotated[list[Row], Field(max_length=MAX_DEMOS)] = []
    labels: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=200)]],
                      Field(min_length=1, max_length=MAX_LABELS)] | None = None
    agent: Name | None = None

    @field_validator("signature")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            Signature.parse(value)  # a ValueError naming what is wrong with it
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ProgramSpec:
        if (self.signature is None) == (self.agent is None):
            raise ValueError("give exactly one of 'signature' (a new program) or 'agent' (its "
                             "deployed program)")
        if self.agent is not None and (self.instruction is not None or self.demos
                                       or self.labels is not None):
            raise ValueError("'agent' takes its deployed program as it is: no instruction, "
                             "demos or labels with it")
        return self


class JobRef(_Body):
    """The best program of one of the tenant's finished optimizations."""

    job: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class VersionRef(_Body):
    """Version ``version`` of the tenant's agent ``agent``."""

    agent: Name
    version: int = Field(ge=1)


def _program_kind(value: Any) -> str:
    if isinstance(value, dict):
        if "job" in value:
            return "job"
        if "version" in value:
            return "version"
    elif isinstance(value, JobRef | VersionRef):
        return "job" if isinstance(value, JobRef) else "version"
    return "program"


ProgramRef = Annotated[Annotated[ProgramSpec, Tag("program")] | Annotated[JobRef, Tag("job")]
                       | Annotated[VersionRef, Tag("version")], Discriminator(_program_kind)]

_SOURCES = ("rows", "dataset", "agent", "trainset")


class DataSpec(_Body):
    """Where the examples come from, exactly one of: inline ``rows`` (split into train and
    validation by ``val_share``, seeded), a ``dataset`` (the tenant's registered one of that
    name, else a public task), an ``agent``'s graded traces, or an explicit ``trainset`` with
    ``valset``. ``n_train`` / ``n_val`` cap the split's sizes."""

    rows: Annotated[list[Row], Field(min_length=1, max_length=MAX_ROWS)] | None = None
    dataset: Name | None = None
    agent: Name | None = None
    trainset: Annotated[list[Row], Field(min_length=1, max_length=MAX_ROWS)] | None = None
    valset: Annotated[list[Row], Field(min_length=1, max_length=MAX_ROWS)] | None = None
    val_share: float = Field(0.5, gt=0, lt=1)
    n_train: int | None = Field(None, ge=1, le=MAX_ROWS)
    n_val: int | None = Field(None, ge=1, le=MAX_ROWS)

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.trainset is None) != (self.valset is None):
            raise ValueError("'trainset' and 'valset' go together: give both, or neither")
        given = [s for s in _SOURCES if getattr(self, s) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'rows', 'dataset', 'agent', or 'trainset' "
                             "with 'valset'" + (f" (got {', '.join(given)})" if given else ""))
        return self


class OptimizeRequest(_Body):
    """One optimization: the program, the data, the optimizer (a built-in or the tenant's
    algorithm) with its parameters, and the budget in metric calls."""

    program: ProgramSpec
    data: DataSpec
    optimizer: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "evolution"
    params: dict[str, Any] = {}
    budget: int = Field(100, ge=1, le=MAX_BUDGET)
    objectives: Annotated[list[Literal["accuracy", "cost"]],
                          Field(min_length=1, max_length=2)] = ["accuracy"]
    seed: int = Field(0, ge=0, le=2**32 - 1)
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"objectives repeat one: {value}")
        return value


class ExperimentRequest(_Body):
    """A paired comparison of programs ``a`` and ``b`` on the same examples: a dataset, or
    ``{"agent": name}``, the agent's graded traces (its live traffic)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    a: ProgramRef
    b: ProgramRef
    data: DataSpec
    alpha: float = Field(0.05, gt=0, lt=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)


def _builtin(name: str) -> bool:
    try:
        optimizer_class(name)
    except ValueError:  # ConfigError: not a built-in
        return False
    return True


class AlgorithmRequest(_Body):
    """A custom algorithm: a registered optimizer (``base``) with fixed parameters and, for an
    Evolution-based one, registered variation operators with their probabilities. Declarative:
    no code is sent, stored or run."""

    name: Annotated[str, StringConstraints(pattern=ALGORITHM_NAME)]
    base: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    params: dict[str, Any] = {}
    operators: Annotated[dict[Annotated[str, StringConstraints(min_length=1, max_length=64)],
                              Annotated[float, Field(ge=0, le=1)]],
                         Field(max_length=50)] = {}
    description: Annotated[str, StringConstraints(max_length=2000)] = ""

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        if _builtin(value):
            raise ValueError(f"{value!r} is a built-in optimizer's name; choose another (built-"
                             f"ins: {', '.join(optimizer_names())})")
        return value


class DatasetRequest(_Body):
    """A dataset the tenant registers under ``name`` (its optimizations and experiments then
    name it as ``data.dataset``)."""

    name: Name
    rows: Annotated[list[Row], Field(min_length=1, max_length=MAX_ROWS)]
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
