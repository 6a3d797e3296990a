"""The HTML report without matplotlib (an optional dependency): the page is written, and says
where the plots would be."""

import sys

import evo
import evo.testing as T
from evo.analysis.report import build


def test_report_without_matplotlib_has_no_plots_and_says_so(tmp_path, monkeypatch):
    evo.optimize(T.program(), T.TRAIN, T.VAL, lm=T.SENTIMENT.lm(), cache=False, progress=False,
                 optimizer=evo.Evolution(budget=evo.Budget(metric_calls=90), knn=False,
                                         encoder="hashing"), run_dir=tmp_path / "run")
    with_plots = build(tmp_path / "run")
    assert "data:image/png;base64," in with_plots
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = build(tmp_path / "run")
    assert "data:image/png" not in page
    assert page.count("plots need matplotlib") == 3
    assert "Lineage" in page and "From the seed to the best" in page
