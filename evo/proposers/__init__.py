"""LM operators that write instructions: reflection on failures (GEPA-style,
:mod:`evo.proposers.reflection`) and grounded, COPRO and EvoPrompt proposals
(:mod:`evo.proposers.instructions`). Every proposal passes the one public sanity filter,
:func:`evo.proposers.instructions.check`."""
