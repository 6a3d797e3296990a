"""The DSPy bridge: every ``import dspy`` of evo's own use lives here.

- :mod:`evo.integrations.dspy.compat`: dspy examples and metrics as evo's;
- :mod:`evo.integrations.dspy.lm`: evo's LM session as a ``dspy.BaseLM`` (cache, journal, budget),
  :func:`to_dspy`;
- :mod:`evo.integrations.dspy.module`: :func:`optimize_module`, a ``dspy.Module`` searched by any
  evo optimizer on the one engine (:class:`ModuleProgram`, its adapter);
- :mod:`evo.integrations.dspy.agent`: a ``dspy.Module`` as a self-improving
  :class:`~evo.agents.Agent` (:class:`ModuleAgent`; its factory is
  ``evo.integrations.dspy.agent.agent``, not bound here, where it would hide the submodule).

``dspy`` itself is imported on first use, so importing this package is cheap.
"""

from evo.integrations.dspy.agent import ModuleAgent
from evo.integrations.dspy.lm import SessionEngine, to_dspy
from evo.integrations.dspy.module import ModuleProgram, ModuleResult, optimize_module

__all__ = ["ModuleAgent", "ModuleProgram", "ModuleResult", "SessionEngine", "optimize_module",
           "to_dspy"]
