"""GEPA-style reflective mutation: an LM reads a minibatch of failures and improves the instruction.

Two styles:

* ``"rules"`` (default): the reflection LM writes a few short general rules; code assembles the new
  instruction as the parent's core text plus a bounded rules list. Small models (0.5B) fail at
  free rewriting (they answer the examples, or return a bare label) but can list rules.
* ``"rewrite"``: GEPA's own meta-prompt, the LM writes a whole new instruction in a fenced block.
  Better with a strong reflection LM.

Either way a proposal passes a sanity filter before it enters the archive: it must not be a
label, an answer, a near-copy of the parent, or a quote of the examples it was shown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from evo.data import Example
from evo.lm.base import LMError, LMRequest, LMUnavailableError, Message
from evo.lm.session import LMSession
from evo.program import Program
from evo.search.evaluate import Cell

ReflectionStyle = Literal["rules", "rewrite"]
RULES_HEADER = "Rules:"


@dataclass(frozen=True)
class Proposal:
    """A reflection outcome: ``instruction`` is None when the proposal was rejected (``reason``)."""

    instruction: str | None
    reason: str
    raw: str


def split_rules(instruction: str) -> tuple[str, list[str]]:
    """An instruction's core text and its rules list, when the rules section is one that
    :func:`join_rules` wrote (a ``Rules:`` line followed only by ``- `` bullets); any other text
    is all core, so a user's own instruction is never cut."""
    head, sep, tail = instruction.partition(f"\n{RULES_HEADER}\n")
    lines = tail.splitlines()
    if not sep or not lines or not all(line.startswith("- ") for line in lines):
        return instruction.strip(), []
    return head.strip(), [line[2:].strip() for line in lines]


def join_rules(core: str, rules: Sequence[str]) -> str:
    if not rules:
        return core
    return f"{core}\n\n{RULES_HEADER}\n" + "\n".join(f"- {r}" for r in rules)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _quotes(text: str, sources: Sequence[str], n: int = 6) -> bool:
    """True when ``text`` repeats ``n`` consecutive words of one of ``sources`` (all of a short
    source of 4 or more words)."""
    grams = set()
    for words in map(_words, sources):
        size = min(n, len(words))
        if size >= 4:
            grams |= {tuple(words[i:i + size]) for i in range(len(words) - size + 1)}
    words = _words(text)
    return any(tuple(words[i:i + len(g)]) == g for g in grams
               for i in range(len(words) - len(g) + 1))


def jaccard(a: str, b: str) -> float:
    x, y = set(_words(a)), set(_words(b))
    return len(x & y) / max(1, len(x | y))


def describe_task(program: Program, description: str = "") -> str:
    ins = ", ".join(f.name for f in program.signature.inputs)
    outs = ", ".join(f.name for f in program.signature.outputs)
    text = description.strip() or f"Given {ins}, produce {outs}."
    if program.labels:
        text += f"\nThe {outs} is always one of: {', '.join(program.labels)}."
    return text


def _show_failures(program: Program, failures: Sequence[tuple[Example, Cell]]) -> str:
    blocks = []
    for i, (example, cell) in enumerate(failures, 1):
        answer = cell.prediction.text.strip().replace("\n", " ")[:200] or "(empty)"
        blocks.append(f"### Example {i}\n{program.render_inputs(example)}\n"
                      f"Assistant's answer: {answer}\nFeedback: {cell.feedback}")
    return "\n\n".join(blocks)


def rules_request(program: Program, failures: Sequence[tuple[Example, Cell]], *,
                  description: str, n_rules: int, seed: int, temperature: float) -> LMRequest:
    prompt = (
        f"An assistant does this task:\n{describe_task(program, description)}\n\n"
        f"Its current instruction is:\n\"\"\"\n{program.instruction.strip()}\n\"\"\"\n\n"
        f"It got these examples wrong:\n\n{_show_failures(program, failures)}\n\n"
        f"Write {n_rules} new rules for the assistant that would have prevented these mistakes. "
        "Each rule is one sentence and general: it must help with many other inputs, so do not "
        "mention these particular examples. Do not answer the examples.\n"
        "Reply with the rules only, one per line, each line starting with \"- \"."
    )
    return rule_writer_request(prompt, max_tokens=60 * n_rules + 40, temperature=temperature,
                               seed=seed)


def rule_writer_request(prompt: str, *, max_tokens: int, temperature: float, seed: int
                        ) -> LMRequest:
    """``prompt`` sent to the reflection LM as a rule writer: every meta-prompt that asks for
    rules ("- " lines) goes out this way (reflection, SIMBA's and InferRules' rules)."""
    return LMRequest(
        (Message("system", "You are an expert prompt engineer who writes clear rules."),
         Message("user", prompt)),
        max_tokens=max_tokens, temperature=temperature, seed=seed, purpose="reflection")


def rewrite_request(program: Program, failures: Sequence[tuple[Example, Cell]], *,
                    description: str, seed: int, temperature: float) -> LMRequest:
    prompt = (
        "I provided an assistant with the following instructions to perform a task for me:\n"
        f"```\n{program.instruction}\n```\n\n"
        f"The task: {describe_task(program, description)}\n\n"
        "The following are examples of different task inputs provided to the assistant along "
        "with the assistant's response for each of them, and some feedback on how the "
        f"assistant's response could be better:\n\n{_show_failures(program, failures)}\n\n"
        "Your task is to write a new instruction for the assistant. Read the inputs carefully "
        "and identify the input format and infer detailed task description about the task I "
        "wish to solve with the assistant. Include any domain-specific facts and generalizable "
        "strategy the assistant can use. Do not answer the examples.\n"
        "Provide the new instructions within ``` blocks."
    )
    return LMRequest((Message("user", prompt),), max_tokens=400, temperature=temperature,
                     seed=seed, purpose="reflection")


def bad_text(text: str, program: Program, failures: Sequence[tuple[Example, Cell]]
              ) -> str | None:
    """Why a proposed text is unusable, or None. Generic checks, no task-specific lists."""
    norm = " ".join(_words(text))
    answers = {" ".join(_words(v)) for ex, _ in failures for v in ex.outputs.values()}
    answers |= {" ".join(_words(label)) for label in program.labels or ()}
    if len(_words(text)) < 4:
        return "too short"
    if norm in answers or any(norm.startswith(f"the {a} ") or norm == f"the {a}" for a in answers):
        return "an answer, not an instruction"
    sources = [v for ex, _ in failures for v in ex.inputs.values()]
    if _quotes(text, sources):
        return "quotes an example"
    return None


def propose(session: LMSession, program: Program, failures: Sequence[tuple[Example, Cell]], *,
            style: ReflectionStyle = "rules", description: str = "", seed: int = 0,
            n_rules: int = 3, max_rules: int = 6, temperature: float = 0.7) -> Proposal:
    """Ask the reflection LM for a better instruction for ``program`` given its failures."""
    try:
        if style == "rules":
            request = rules_request(program, failures, description=description, n_rules=n_rules,
                                    seed=seed, temperature=temperature)
        else:
            request = rewrite_request(program, failures, description=description, seed=seed,
                                      temperature=temperature)
        raw = session.complete(request).text
    except LMUnavailableError:
        raise
    except LMError as exc:
        return Proposal(None, f"reflection LM failed: {exc}", "")
    if style == "rewrite":
        fenced = re.findall(r"```(?:[a-z]*\n)?(.*?)```", raw, re.DOTALL)
        text = (fenced[0] if fenced else raw).strip()
        problem = bad_text(text, program, failures)
        if problem is None and jaccard(text, program.instruction) > 0.9:
            problem = "a near-copy of the current instruction"
        return Proposal(None if problem else text, problem or "ok", raw)

    core, old_rules = split_rules(program.instruction)
    new_rules, reasons = [], []
    for line in raw.splitlines():
        m = re.match(r"^\s*(?:[-*•]|\d+[.)])\s+(.*\S)", line)
        if not m:
            continue
        rule = m.group(1).strip().strip('"').strip()
        problem = bad_text(rule, program, failures)
        if problem is None and len(rule) > 300:
            problem = "too long"
        if problem is None and any(jaccard(rule, r) > 0.8 for r in old_rules + new_rules):
            problem = "repeats a rule"
        if problem:
            reasons.append(problem)
        else:
            new_rules.append(rule[0].upper() + rule[1:])
    if not new_rules:
        why = ", ".join(sorted(set(reasons))) or "no rule lines in the reply"
        return Proposal(None, f"no usable rule ({why})", raw)
    rules = (old_rules + new_rules[:n_rules])[-max_rules:]
    return Proposal(join_rules(core, rules), "ok", raw)
