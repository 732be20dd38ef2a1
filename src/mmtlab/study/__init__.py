"""Studies: grids of runs x seeds, resumable, aggregated with 95% confidence intervals."""

from mmtlab.study.runner import aggregate, mean_ci95, run_study
from mmtlab.study.spec import Cell, StudySpec, expand, load_study

__all__ = ["Cell", "StudySpec", "aggregate", "expand", "load_study", "mean_ci95", "run_study"]
