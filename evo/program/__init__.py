"""A prompt program: a signature, an instruction and few-shot demos.

The program renders an example to chat messages whose prefix (instruction, output format, demos)
is the same for every example, so a local backend reuses its KV cache across one candidate's
examples; the example under test always comes last. Replies are parsed leniently; an unparseable
reply is a :class:`Prediction` with an ``error`` (scored as a failure with feedback), never an
exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evo._io import write_json
from evo.data import Example
from evo.embeddings.knn import KNNDemos
from evo.errors import ConfigError, DamagedFileError
from evo.kernels.text import number_words_to_digits
from evo.lm.base import Message

FieldType = Literal["str", "int", "float", "bool"]
_FIELD = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::\s*(str|int|float|bool))?\s*$")


class FieldSpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    type: FieldType = "str"


class Signature(BaseModel):
    """Typed input and output fields, parsed from ``"question -> label"`` or
    ``"question: str, context: str -> answer: int"``."""

    model_config = ConfigDict(frozen=True)
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]

    @classmethod
    def parse(cls, text: str) -> Signature:
        if text.count("->") != 1:
            raise ValueError(f"signature {text!r} must have the form 'inputs -> outputs'")
        sides = [side.split(",") for side in text.split("->")]
        fields: list[list[FieldSpec]] = [[], []]
        for k, side in enumerate(sides):
            for part in side:
                m = _FIELD.match(part)
                if not m:
                    raise ValueError(f"signature {text!r}: bad field {part.strip()!r} "
                                     "(expected 'name' or 'name: str|int|float|bool')")
                fields[k].append(FieldSpec(name=m.group(1), type=m.group(2) or "str"))
        names = [f.name for f in fields[0] + fields[1]]
        if len(set(names)) != len(names):
            raise ValueError(f"signature {text!r} repeats a field name")
        return cls(inputs=tuple(fields[0]), outputs=tuple(fields[1]))

    def __str__(self) -> str:
        def side(fs: Sequence[FieldSpec]) -> str:
            return ", ".join(f.name if f.type == "str" else f"{f.name}: {f.type}" for f in fs)
        return f"{side(self.inputs)} -> {side(self.outputs)}"


class ExampleMismatch(ValueError):
    """An example that does not fit a program (:meth:`Program.check_example`): ``side`` is
    "inputs" or "outputs" and ``field`` the field at fault; ``gold`` is the gold label that is
    not one of the program's labels (None when the field is missing)."""

    def __init__(self, message: str, *, side: str, field: str, gold: str | None = None) -> None:
        super().__init__(message)
        self.side, self.field, self.gold = side, field, gold


@dataclass(frozen=True)
class Prediction:
    """A parsed reply. ``outputs`` is None when the reply could not be parsed (see ``error``)."""

    text: str
    outputs: dict[str, str] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outputs is not None


def default_instruction(signature: Signature) -> str:
    ins = ", ".join(f"`{f.name}`" for f in signature.inputs)
    outs = ", ".join(f"`{f.name}`" for f in signature.outputs)
    return f"Given the fields {ins}, produce the fields {outs}."


class Program(BaseModel):
    """Instruction + demos for one signature. JSON round-trips with :meth:`save` / :meth:`load`.

    >>> p = Program(signature="question -> label", labels=["yes", "no"])
    >>> p.parse("label: Yes").outputs
    {'label': 'yes'}
    """

    signature: Signature
    instruction: str = ""
    demos: tuple[Example, ...] = ()
    labels: tuple[str, ...] | None = Field(
        default=None, description="allowed values of the single output field, if it is a class")
    knn: KNNDemos | None = Field(
        default=None, description="per-input demos: the k nearest training examples, placed "
                                  "after the fixed demos")
    # Settings genes (saved only when not at their default, so older program files and their
    # readers see no change).
    answer_mode: Literal["generate", "rank"] = Field(
        "generate", description="'rank': answer a closed label set by label scoring (the most "
                                "probable label; needs a backend that scores choices), else "
                                "generate a reply and parse it")
    calibrate: bool = Field(
        False, description="with answer_mode='rank': subtract the label bias measured on "
                           "content-free inputs (contextual calibration)")
    reasoning: bool = Field(
        False, description="think step by step in a 'reasoning' line before the answer fields "
                           "(a reply then needs more tokens: see "
                           "evo.search.evaluate.REASONING_MAX_TOKENS)")
    model: str | None = Field(
        None, description="which model of a model choice (evo.lm.ModelChoice) answers, by its "
                          "name; None: the task LM's default (other LMs ignore it)")

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("signature"), str):
                data["signature"] = Signature.parse(data["signature"])
            # (a missing or wrong-typed signature is left to the field's own validation error)
            if not data.get("instruction") and isinstance(data.get("signature"), Signature):
                data["instruction"] = default_instruction(data["signature"])
        return data

    @model_validator(mode="after")
    def _check(self) -> Program:
        if self.labels is not None:
            if len(self.signature.outputs) != 1:
                raise ValueError("labels need a signature with exactly one output field")
            if len(set(self.labels)) != len(self.labels) or not self.labels:
                raise ValueError(f"labels must be distinct and non-empty: {self.labels}")
        self._check_settings()
        fields = ([f.name for f in self.signature.inputs], [f.name for f in self.signature.outputs])
        for i, demo in enumerate(self.demos):  # a demo is shown with every field of the signature
            for names, have, kind in ((fields[0], demo.inputs, "inputs"),
                                      (fields[1], demo.outputs, "outputs")):
                missing = [n for n in names if n not in have]
                if missing:
                    raise ValueError(f"demos[{i}].{kind} lacks {missing} of the signature "
                                     f"'{self.signature}'")
        return self

    def _check_settings(self) -> None:
        """The settings genes that cannot go together, refused where the program is made."""
        if self.model is not None and (not self.model.strip() or self.model != self.model.strip()):
            raise ValueError(f"model {self.model!r} must name a model of the task LM's choice "
                             "(evo.lm.ModelChoice), without surrounding spaces, or be None")
        if self.answer_mode == "rank" and self.labels is None:
            raise ValueError("answer_mode='rank' picks the most probable of a closed label set: "
                             "give the program labels=[...] (or use answer_mode='generate')")
        if self.answer_mode == "rank" and self.reasoning:
            raise ValueError("answer_mode='rank' scores the labels without generating, so it "
                             "cannot think step by step first: reasoning=True needs "
                             "answer_mode='generate'")
        if self.calibrate and self.answer_mode != "rank":
            raise ValueError("calibrate=True corrects the label probabilities of label scoring: "
                             "it needs answer_mode='rank' (and labels)")
        if self.reasoning:
            taken = [f.name for f in (*self.signature.inputs, *self.signature.outputs)
                     if f.name.lower() == REASONING_FIELD]
            if taken:
                raise ValueError(f"reasoning=True adds a '{REASONING_FIELD}' line to the reply, "
                                 f"but the signature '{self.signature}' has a field named "
                                 f"{taken[0]!r}")

    # ---- rendering -------------------------------------------------------------------------
    def format_spec(self) -> str:
        """The output-format line(s) appended to the instruction. Fixed by code, not evolved, so
        no mutation can break the reply format. With ``reasoning`` the reply starts with a
        ``reasoning:`` line of step-by-step thinking and ends with the answer line(s)."""
        lines = []
        for f in self.signature.outputs:
            if self.labels is not None:
                hint = "one of: " + ", ".join(self.labels)
            else:
                hint = {"str": "text", "int": "an integer", "float": "a number",
                        "bool": "yes or no"}[f.type]
            lines.append(f"{f.name}: <{hint}>")
        if self.reasoning:
            last = "the last line" if len(lines) == 1 else f"the last {len(lines)} lines"
            return ("Think step by step before answering. Reply in this format, nothing else: "
                    f"first your reasoning, then the answer as {last}:\n"
                    f"{REASONING_FIELD}: <your step-by-step thinking>\n" + "\n".join(lines))
        word = "one line" if len(lines) == 1 else f"{len(lines)} lines"
        return f"Reply with exactly {word}, nothing else:\n" + "\n".join(lines)

    def render_inputs(self, example: Example) -> str:
        return "\n".join(f"{f.name}: {example.inputs[f.name]}" for f in self.signature.inputs)

    def render_outputs(self, example: Example) -> str:
        """A demo's reply: its output fields, after its ``reasoning`` (when the program reasons
        and the demo has one, e.g. a bootstrapped trace), as the format asks."""
        lines = [f"{f.name}: {example.outputs[f.name]}" for f in self.signature.outputs]
        if self.reasoning and example.outputs.get(REASONING_FIELD):
            lines.insert(0, f"{REASONING_FIELD}: {example.outputs[REASONING_FIELD]}")
        return "\n".join(lines)

    # ---- label scoring (answer_mode="rank") -------------------------------------------------
    def rank_prefill(self) -> str:
        """Where the scored labels continue the assistant turn: ``"<output field>:"``, the
        start of the one line the format asks for (:attr:`LMRequest.prefill`)."""
        return f"{self.signature.outputs[0].name}:"

    def content_free_messages(self, text: str) -> tuple[Message, ...]:
        """The prompt of a content-free input (every input field set to ``text``, e.g.
        ``"N/A"``) under this program's shared :meth:`prefix`: what contextual calibration
        measures the label bias on (Zhao et al. 2021). No KNN demos: they belong to a real
        input, and the bias is the prefix's."""
        content = "\n".join(f"{f.name}: {text}".rstrip() for f in self.signature.inputs)
        return self.prefix() + (Message("user", content),)

    def prefix(self) -> tuple[Message, ...]:
        """The part of every prompt that does not depend on the example: system message
        (instruction + format), then the demos as user/assistant turns."""
        out = [Message("system", f"{self.instruction.strip()}\n\n{self.format_spec()}")]
        for demo in self.demos:
            out += [Message("user", self.render_inputs(demo)),
                    Message("assistant", self.render_outputs(demo))]
        return tuple(out)

    def messages(self, example: Example) -> tuple[Message, ...]:
        """The prompt for one example: the shared :meth:`prefix`, then its KNN demos (if any),
        then the example last."""
        out = self.prefix()
        for demo in self.knn_demos(example):
            out += (Message("user", self.render_inputs(demo)),
                    Message("assistant", self.render_outputs(demo)))
        return out + (Message("user", self.render_inputs(example)),)

    def knn_demos(self, example: Example) -> tuple[Example, ...]:
        """The example's nearest pool examples not already fixed demos, the nearest placed last
        (next to the question, where a small model attends most)."""
        if self.knn is None:
            return ()
        # a bootstrapped trace is the same example as the pool member it was run on
        fixed = {d.source_id for d in self.demos}
        near = self.knn.retrieve([example], self.knn.k + len(fixed))[0]
        near = [d for d in near if d.id not in fixed]
        return tuple(reversed(near[: self.knn.k]))

    def prepare(self, examples: Sequence[Example]) -> None:
        """Retrieve the KNN demos of ``examples`` in one batched search (no-op without KNN)."""
        if self.knn is not None and examples:
            self.knn.retrieve(examples)

    def check_example(self, example: Example, *, outputs: bool = False) -> None:
        """Raise :class:`ExampleMismatch` (a ValueError) if ``example`` lacks a field this
        program reads (its inputs, and with ``outputs`` its gold outputs, which must be one of
        ``labels`` when there are labels); it names the first field at fault."""
        sides = [("inputs", self.signature.inputs, example.inputs)] + (
            [("outputs", self.signature.outputs, example.outputs)] if outputs else [])
        missing = [(side, f.name) for side, specs, have in sides for f in specs
                   if f.name not in have]
        if missing:
            side, name = missing[0]
            raise ExampleMismatch(f"example {example.id} lacks field(s) "
                                  f"{[n for _, n in missing]} required by signature "
                                  f"'{self.signature}'", side=side, field=name)
        if outputs and self.labels is not None:
            name = self.signature.outputs[0].name
            gold = example.outputs[name]
            if gold not in self.labels:
                raise ExampleMismatch(f"example {example.id}: gold label {gold!r} is not one of "
                                      f"{list(self.labels)}", side="outputs", field=name,
                                      gold=gold)

    def check_labels(self, gold: Iterable[str], *, source: str = "the data") -> None:
        """Raise :class:`ConfigError` when a gold label of ``source`` is not one of this
        program's labels (a program made for other data would score 0 on every such example).
        No-op for a program without labels.

        >>> Program(signature="q -> label", labels=["yes", "no"]).check_labels(["maybe", "yes"])
        Traceback (most recent call last):
        evo.errors.ConfigError: the data has gold label(s) 'maybe' that the program cannot ...
        """
        if self.labels is None:
            return
        unknown = sorted(set(gold) - set(self.labels))
        if unknown:
            shown = ", ".join(repr(g) for g in unknown[:10]) + (
                f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            raise ConfigError(f"{source} has gold label(s) {shown} that the program cannot "
                              f"answer: its labels are {', '.join(map(repr, self.labels))} "
                              "(a program made for other data?)")

    # ---- parsing ---------------------------------------------------------------------------
    def parse(self, text: str) -> Prediction:
        """The reply's output fields (the last ``field:`` line of each wins). A single output
        field may also be a bare first line, unless the program reasons and the reply has a
        reasoning line: the reasoning is never taken for the answer."""
        outputs: dict[str, str] = {}
        single = len(self.signature.outputs) == 1 and not (
            self.reasoning and _has_field_line(text, REASONING_FIELD))
        for f in self.signature.outputs:
            raw = _field_value(text, f.name, single=single)
            if raw is None and single is False and len(self.signature.outputs) == 1:
                # a reasoning reply that ends "... so the answer is 7" without its field line
                raw = _stated_answer(text)
            if raw is None:
                after = " after the reasoning" if self.reasoning else ""
                return Prediction(text, None, f"no '{f.name}:' line{after} in the reply")
            value, error = _coerce_value(raw, f.type, self.labels)
            if error:
                return Prediction(text, None, error)
            outputs[f.name] = value
        return Prediction(text, outputs)

    # ---- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict:
        data = self.model_dump(mode="json")
        data["signature"] = str(self.signature)
        for name in SETTINGS_GENES:
            if data[name] == type(self).model_fields[name].default:
                del data[name]
        return data

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"evo_program": PROGRAM_FORMAT, **self.to_json()})

    @classmethod
    def load(cls, path: str | Path) -> Program:
        """A program file written by :meth:`save`. A damaged file (not JSON, nested too deep,
        not a program, a field missing or of the wrong type) is one
        :class:`~evo.errors.DamagedFileError` naming the file and the field."""
        data = read_program_file(path)
        refuse_module_file(data, path)
        if "evo_program" not in data:
            raise DamagedFileError(path, "not an evo program file (no 'evo_program' key)",
                                   hint=PROGRAM_HINT)
        check_format(data, "evo_program", path)
        return validate_program_data(cls, data, path)

    def prompt_chars(self) -> int:
        """Length of the prompt before the example, in characters (a cheap proxy for prompt
        tokens); KNN demos count at the pool's average length."""
        fixed = sum(len(m.content) for m in self.prefix())
        return fixed + (round(self.knn.k * self.knn.mean_demo_chars) if self.knn else 0)


SETTINGS_GENES = ("answer_mode", "calibrate", "reasoning", "model")
REASONING_FIELD = "reasoning"  # the reply line a reasoning program thinks in, before its answer
# Content-free inputs of contextual calibration (Zhao et al. 2021): the label distribution the
# prompt gives them, averaged, is its bias.
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


PROGRAM_HINT = ("a program file is the best.json / baseline.json an `evo run` writes "
                 "(or Program.save)")


PROGRAM_FORMAT = 1  # the program-file format this evo writes and reads


def refuse_module_file(data: dict, path: str | Path) -> None:
    """The best.json of an :func:`evo.optimize_module` run holds a ``dspy.Module``'s description
    (its ``dspy_module`` key), not a program evo can run: a :class:`~evo.errors.ConfigError`."""
    if "dspy_module" in data:
        raise ConfigError(f"{path}: a dspy.Module's program (only its description is saved "
                          "here): load it with the module's own load(), from a file written by "
                          "result.program.save(...) of evo.optimize_module")


def check_format(data: dict, key: str, path: str | Path) -> None:
    """Take the format marker ``key`` out of ``data``: a format this evo does not know (a
    newer evo's, or not a number) is a :class:`DamagedFileError`, not a silent misreading."""
    version = data.pop(key)
    if type(version) is not int or not 1 <= version <= PROGRAM_FORMAT:
        raise DamagedFileError(path, f"{key} is {version!r}: this evo reads program files of "
                               f"format 1 to {PROGRAM_FORMAT}", hint="update evo, or save the "
                               "program again with this one")


def read_program_file(path: str | Path) -> dict:
    """The JSON object of a program file; anything else is a :class:`DamagedFileError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedFileError(path, f"not text ({exc.reason} at byte {exc.start})",
                               hint=PROGRAM_HINT) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the program file ({exc.strerror or exc})"
                          ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedFileError(path, f"not JSON ({exc.msg} at line {exc.lineno} column "
                                     f"{exc.colno}); truncated?", hint=PROGRAM_HINT) from None
    except RecursionError:
        raise DamagedFileError(path, "nested too deeply to be a program file",
                               hint=PROGRAM_HINT) from None
    if not isinstance(data, dict):
        raise DamagedFileError(path, f"a program file holds a JSON object, this one a "
                                     f"{type(data).__name__}", hint=PROGRAM_HINT)
    return data


def validate_program_data(model: type[BaseModel], data: dict, path: str | Path) -> Any:
    """``model.model_validate(data)`` for a program file (:func:`validate_file_data`)."""
    return validate_file_data(model, data, path, what="a program file", hint=PROGRAM_HINT)


def validate_file_data(model: type[BaseModel], data: Any, path: str | Path, *, what: str,
                       hint: str = "") -> Any:
    """``model.model_validate(data)``, with a failure named by file and field as one
    :class:`DamagedFileError`: ``"not <what> of the expected shape: demos[2].outputs: missing"``
    (the first three fields that do not fit). Every file evo reads back (program files, the run
    files ``evo report`` reads) is checked through this."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_loc(err['loc'])}: {_problem(err)}" for err in exc.errors()]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DamagedFileError(path, f"not {what} of the expected shape: "
                               + "; ".join(problems[:3]) + more, hint=hint) from None
    except (ValueError, TypeError) as exc:  # a validator's own check (labels, signature)
        raise DamagedFileError(path, str(exc), hint=hint) from None
    except RecursionError:
        raise DamagedFileError(path, f"nested too deeply to be {what}", hint=hint) from None


def _loc(loc: Sequence[object]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union", "union")) or \
                "[" in str(part):
            continue  # pydantic's names for its own validators, not fields of the file
        else:
            out += ("." if out else "") + str(part)
    return out or "(the program)"


def _problem(err: dict) -> str:
    if err.get("type") == "missing":
        return "missing"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {str(got)[:60]!r})"
    return f"{err.get('msg', 'invalid')}{shown}"


def label_key(text: str) -> str:
    """How a reply is matched to a label: lowercase ASCII letters and digits, every other run of
    characters one space (``"**Human.**"`` -> ``"human"``). Looser than the exact-match metric's
    :func:`evo.metrics.exact_match_key` on purpose: parsing finds which label a reply names;
    scoring then compares the parsed label exactly."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _field_line(name: str) -> re.Pattern[str]:
    # "label: x", "**Label**: x", "Label = x"
    return re.compile(rf"^[\s>*_`#-]*{re.escape(name)}[\s*_`]*[:=]\s*(.*)$",
                      re.IGNORECASE | re.MULTILINE)


def _has_field_line(text: str, name: str) -> bool:
    return _field_line(name).search(text) is not None


# "the answer is 7", "Final answer: 7", "answer = 7": a conclusion stated in words (the last one)
_STATED = re.compile(r"^.*\banswer\b(?:\s+is)?\s*[:=]?\s*(.+?)\s*$",
                     re.IGNORECASE | re.MULTILINE)


def _stated_answer(text: str) -> str | None:
    """The answer a reasoning reply states in words when it has no field line for it: what
    follows the last "answer is" / "answer:" (the reasoning's conclusion), else None."""
    hits = [m.group(1).strip().rstrip(".") for m in _STATED.finditer(text)]
    hits = [h for h in hits if h]
    return hits[-1] if hits else None


def _field_value(text: str, name: str, *, single: bool) -> str | None:
    # The last "name:" line wins (models restate the format first and answer after it).
    pattern = _field_line(name)
    hits = [m.group(1).strip() for m in pattern.finditer(text) if m.group(1).strip()]
    hits = [h for h in hits if not h.startswith("<")]  # a copied format hint is no answer
    if hits:
        return hits[-1]
    if single:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return lines[0] if lines else None
    return None


def _coerce_value(raw: str, type_: FieldType, labels: tuple[str, ...] | None
                  ) -> tuple[str, str | None]:
    value = raw.strip().strip("`*\"'").strip()
    if labels is not None:
        return _match_label(value, labels)
    if type_ == "str":
        return (value, None) if value else ("", "empty answer")
    if type_ == "bool":
        word = label_key(value).split(" ")[0] if label_key(value) else ""
        if word in {"yes", "true"}:
            return "yes", None
        if word in {"no", "false"}:
            return "no", None
        return "", f"'{value[:60]}' is not yes or no"
    number = _NUMBER.search(value) or _NUMBER.search(number_words_to_digits(value))
    if not number:  # (a number in words, "seven", counts only where no digit is written)
        return "", f"'{value[:60]}' contains no number"
    try:
        parsed = Decimal(number.group(0).replace(",", ""))
    except InvalidOperation:
        return "", f"'{number.group(0)[:60]}' is not a number"
    if type_ == "int":
        if parsed != parsed.to_integral_value():
            return "", f"'{number.group(0)[:60]}' is not an integer"
        return str(int(parsed)), None
    return str(float(parsed)), None


# 1,024 / -3 / .5 / 2.75 / 1e-3 (thousands commas only between groups of three digits)
_NUMBER = re.compile(r"[-+]?(?=\.?\d)(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _match_label(value: str, labels: tuple[str, ...]) -> tuple[str, str | None]:
    """Exact, then case-folded, then normalized match; then a label named inside the reply.

    Looser tiers only use labels whose loose form is unique, so "-1" / "1" or "A" / "a" stay
    apart (the stricter tiers tell them apart)."""
    bare = value.strip().rstrip(".!,;:").strip()
    for fold in (str, str.casefold, label_key):
        forms: dict[str, list[str]] = {}
        for label in labels:
            forms.setdefault(fold(label), []).append(label)
        hit = forms.get(fold(bare))
        if hit is not None and len(hit) == 1:
            return hit[0], None
    by_norm = {n: group[0] for n, group in forms.items() if n and len(group) == 1}
    # Labels named as whole words inside the answer ("The label is Human."); a label contained in
    # another found label ("positive" in "not positive") does not count on its own.
    padded = f" {label_key(value)} "
    named = [n for n in by_norm if f" {n} " in padded]
    named = [n for n in named if not any(n != m and f" {n} " in f" {m} " for m in named)]
    found = [(padded.find(f" {n} "), by_norm[n]) for n in named]
    if len(found) == 1:
        return found[0][1], None
    if len(found) > 1:
        return "", (f"the reply '{value[:60]}' names several labels "
                    f"({', '.join(label for _, label in sorted(found))})")
    return "", f"the reply '{value[:60]}' is not one of: {', '.join(labels)}"
