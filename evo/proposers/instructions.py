"""LM operators that write instruction texts (besides reflection, :mod:`evo.proposers.reflection`).

* :func:`grounded_instruction` — MIPROv2's grounded proposer: a dataset summary, the program's
  description, the candidate's demos, earlier proposals and a random tip go into one prompt.
* :func:`copro_instruction` — COPRO: a fresh instruction from the signature, or one written after
  seeing earlier attempts sorted by their scores (best last).
* :func:`evoprompt_instruction` — EvoPrompt's GA (crossover + mutation of two parents) and DE
  (mutate the differences of two prompts, combine with the best, cross over with the base).
* :func:`paraphrase` — EvoPrompt's resampling of a prompt, to seed a population.

Every operator returns a :class:`~evo.proposers.reflection.Proposal`: the text, or None with the
reason it failed the sanity filter shared with reflection (not a label, not an answer, not a quote
of an example, not a copy of its sources). A small model often fails it; a failed proposal costs its
LM call, never a metric call.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from evo.data import Example
from evo.lm.base import LMError, LMRequest, LMUnavailableError, Message
from evo.lm.session import LMSession
from evo.program import Program
from evo.proposers.reflection import Proposal, bad_text, describe_task, jaccard

# MIPROv2's proposal tips (dspy/propose/grounded_proposer.py), one drawn per proposal.
TIPS = {
    "none": "",
    "creative": "Don't be afraid to be creative when creating the new instruction!",
    "simple": "Keep the instruction clear and concise.",
    "description": "Make sure your instruction is very informative and descriptive.",
    "high_stakes": "The instruction should include a high stakes scenario in which the LM must "
                   "solve the task!",
    "persona": 'Include a persona that is relevant to the task in the instruction (ie. "You are '
               'a ...")',
}

MAX_CHARS = 1500


def _ask(session: LMSession, prompt: str, *, seed: int, temperature: float, max_tokens: int,
         purpose: str, system: str = "You are an expert prompt engineer.") -> str | Proposal:
    request = LMRequest((Message("system", system), Message("user", prompt)),
                        max_tokens=max_tokens, temperature=temperature, seed=seed,
                        purpose=purpose)
    try:
        return session.complete(request).text
    except LMUnavailableError:
        raise
    except LMError as exc:
        return Proposal(None, f"proposal LM failed: {exc}", "")


def extract(raw: str) -> str:
    """The instruction inside a reply: a <prompt> block, a fenced block, or the text after an
    'Instruction:' label; else the whole reply."""
    for pattern in (r"<prompt>(.*?)</prompt>", r"```(?:[a-z]*\n)?(.*?)```"):
        found = re.findall(pattern, raw, re.DOTALL | re.IGNORECASE)
        if found and found[-1].strip():
            return found[-1].strip()
    m = re.search(r"(?:proposed |new |improved |final )?(?:instruction|prompt)\s*(?:#\d+)?\s*:"
                  r"\s*(.+)", raw, re.IGNORECASE | re.DOTALL)
    text = m.group(1) if m else raw
    return text.strip().strip('"').strip()


def check(text: str, program: Program, sources: Sequence[str] = (),
          examples: Sequence[Example] = ()) -> str | None:
    """Why ``text`` is no usable instruction, or None (the filter reflection uses, plus length
    and near-copy checks against ``sources``)."""
    problem = bad_text(text, program, [(ex, None) for ex in examples])  # type: ignore[misc]
    if problem is None and len(text) > MAX_CHARS:
        problem = f"longer than {MAX_CHARS} characters"
    if problem is None and any(jaccard(text, s) > 0.9 for s in sources):
        problem = "a near-copy of an instruction it was shown"
    return problem


def _proposal(raw: str | Proposal, program: Program, sources: Sequence[str],
              examples: Sequence[Example] = ()) -> Proposal:
    if isinstance(raw, Proposal):
        return raw
    text = extract(raw)
    problem = check(text, program, sources, examples)
    return Proposal(None if problem else text, problem or "ok", raw)


def _show_demos(program: Program, demos: Sequence[Example]) -> str:
    return "\n\n".join(f"{program.render_inputs(d)}\n{program.render_outputs(d)}" for d in demos)


def summarize_dataset(session: LMSession, program: Program, examples: Sequence[Example], *,
                      seed: int = 0) -> str:
    """MIPROv2's data-aware step: a short description of the data, written by the LM from a
    sample of it ('' when the LM fails)."""
    prompt = (f"Here are examples from a dataset:\n\n{_show_demos(program, examples)}\n\n"
              "In two or three sentences, describe this dataset: what the inputs are and what "
              "the outputs mean. Do not list the examples.")
    raw = _ask(session, prompt, seed=seed, temperature=0.0, max_tokens=150, purpose="proposal",
               system="You describe datasets precisely.")
    if isinstance(raw, Proposal):
        return ""
    text = " ".join(raw.split())[:600]
    return "" if bad_text(text, program, []) else text


def grounded_instruction(session: LMSession, program: Program, *, summary: str,
                         description: str, demos: Sequence[Example], history: Sequence[str],
                         tip: str, seed: int, temperature: float = 0.7) -> Proposal:
    """MIPROv2's grounded proposal of an instruction for ``program``."""
    parts = [f"Task: {describe_task(program, description)}",
             f"Program: one LM call with input fields "
             f"{', '.join(f.name for f in program.signature.inputs)} and output fields "
             f"{', '.join(f.name for f in program.signature.outputs)}."]
    if summary:
        parts.append(f"Dataset summary: {summary}")
    if demos:
        parts.append(f"Task demos:\n{_show_demos(program, demos)}")
    if history:
        parts.append("Instructions proposed before (write a different one):\n"
                     + "\n".join(f"- {h}" for h in history))
    parts.append(f"Basic instruction: {program.instruction}")
    if TIPS.get(tip, tip):
        parts.append(f"Tip: {TIPS.get(tip, tip)}")
    parts.append("Propose an instruction that will prompt a language model to perform this "
                 "task well. Reply with the instruction only, inside <prompt> and </prompt>.")
    raw = _ask(session, "\n\n".join(parts), seed=seed, temperature=temperature, max_tokens=300,
               purpose="proposal")
    return _proposal(raw, program, [program.instruction, *history], demos)


def copro_instruction(session: LMSession, program: Program, *,
                      attempts: Sequence[tuple[str, float]] = (), description: str = "",
                      seed: int = 0, temperature: float = 1.4) -> Proposal:
    """COPRO's proposal: from the signature alone (no ``attempts``), or after seeing earlier
    instructions with their scores, in increasing order of score."""
    if not attempts:
        prompt = ("You are an instruction optimizer for large language models. I will give you "
                  "a task description with its input and output fields. Your task is to propose "
                  "an instruction that will lead a good language model to perform the task "
                  "well. Don't be afraid to be creative.\n\n"
                  f"Task: {describe_task(program, description)}\n"
                  f"Basic instruction: {program.instruction}\n\n"
                  "Reply with the improved instruction only, inside <prompt> and </prompt>.")
    else:
        shown = "\n".join(f"Instruction #{i}: {text}\nResulting Score #{i}: {score:.3f}"
                          for i, (text, score) in enumerate(attempts, 1))
        prompt = ("You are an instruction optimizer for large language models. I will give "
                  "some task instructions I've tried, along with their corresponding validation "
                  "scores. The instructions are arranged in increasing order based on their "
                  "scores, where higher scores indicate better quality.\n\n"
                  f"Task: {describe_task(program, description)}\n\n{shown}\n\n"
                  "Your task is to propose a new instruction that will lead a good language "
                  "model to perform the task even better. Don't be afraid to be creative.\n"
                  "Reply with the new instruction only, inside <prompt> and </prompt>.")
    raw = _ask(session, prompt, seed=seed, temperature=temperature, max_tokens=300,
               purpose="proposal")
    return _proposal(raw, program, [program.instruction, *(a for a, _ in attempts)])


# EvoPrompt's templates (Guo et al., 2024), for instructions.
_GA = ("Please follow the instruction step-by-step to generate a better prompt.\n"
       "1. Cross over the following prompts and generate a new prompt:\n"
       "Prompt 1: {a}\nPrompt 2: {b}\n"
       "2. Mutate the prompt generated in Step 1 and generate a final prompt bracketed with "
       "<prompt> and </prompt>.")
_DE = ("Please follow the instruction step-by-step to generate a better prompt.\n"
       "1. Identify the different parts between the Prompt 1 and Prompt 2:\n"
       "Prompt 1: {a}\nPrompt 2: {b}\n"
       "2. Randomly mutate the different parts.\n"
       "3. Combine the different parts with Prompt 3, selectively replace it with the different "
       "parts in Step 2 and generate a new prompt.\nPrompt 3: {c}\n"
       "4. Cross over the prompt in the Step 3 with the following basic prompt and generate a "
       "final prompt bracketed with <prompt> and </prompt>:\nBasic Prompt: {base}")


def evoprompt_instruction(session: LMSession, program: Program, parents: Sequence[str], *,
                          variant: str = "ga", seed: int = 0, temperature: float = 0.5
                          ) -> Proposal:
    """EvoPrompt's LM crossover + mutation: ``parents`` = (a, b) for GA, (a, b, best, base) for
    DE."""
    if variant == "ga":
        a, b = parents
        prompt = _GA.format(a=a, b=b)
    else:
        a, b, c, base = parents
        prompt = _DE.format(a=a, b=b, c=c, base=base)
    raw = _ask(session, f"Task: {describe_task(program)}\n\n{prompt}", seed=seed,
               temperature=temperature, max_tokens=400, purpose="proposal")
    return _proposal(raw, program, list(parents))


def paraphrase(session: LMSession, program: Program, instruction: str, *, seed: int = 0,
               temperature: float = 0.9) -> Proposal:
    """EvoPrompt's resampling: a variation of ``instruction`` with the same meaning."""
    prompt = ("Generate a variation of the following instruction while keeping the semantic "
              f"meaning.\nTask: {describe_task(program)}\nInput: {instruction}\n"
              "Reply with the new instruction only, inside <prompt> and </prompt>.")
    raw = _ask(session, prompt, seed=seed, temperature=temperature, max_tokens=300,
               purpose="proposal")
    return _proposal(raw, program, [instruction])
