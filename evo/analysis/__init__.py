"""Reading results: paired A/B comparison (:mod:`evo.analysis.compare`), the HTML run report
(:mod:`evo.analysis.report`) and the dry-run cost projection (:mod:`evo.analysis.projection`)."""
