"""The search layer: what every optimizer works through.

- :mod:`evo.search.genome`: genomes (integer vectors) over an archive of instructions and a demo
  pool, and the cheap DEAP operators on them;
- :mod:`evo.search.evaluate`: the budget, the candidates × examples score matrix, and the
  evaluator that fills it (each (prompt, example) cell paid once);
- :mod:`evo.search.events`: the typed events a search emits (one class per kind), as dicts
  on the wire (:meth:`~evo.search.events.Event.to_dict`);
- :mod:`evo.search.strategies`: the search's decisions as small strategy objects (parent
  selection, minibatch acceptance), one protocol per decision;
- :mod:`evo.search.engine`: :class:`~evo.search.engine.Search`, the one search context (archive,
  matrices, budget, events, state), the only code that changes the search state, and
  :class:`~evo.search.engine.SearchConfig`, the base of every optimizer.

Nothing here knows an optimizer: optimizers (:mod:`evo.optimizers`) sit above and drive it.
"""
