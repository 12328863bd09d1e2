"""Compare finished runs: quality against cost, and which method to pick for a budget.

:mod:`tunelab.compare.report` reads each run directory's ``results.json`` (test metrics, trainable
parameters, peak memory, time, throughput) and the size of ``model/weights.safetensors``, marks the
Pareto front (best metric for the cost), states the trade-off in numbers, and writes the comparison as a
terminal table, markdown, CSV, JSON, matplotlib plots and one self-contained HTML report. Runs that
failed are recorded with their error and left out of the comparison; runs that cannot be compared
(different tasks or metrics) raise a one-line :class:`tunelab.errors.UserError`.

Layout: :mod:`~tunelab.compare.config` (the compare file, planning runs), :mod:`~tunelab.compare.runner`
(training them), and the report: :mod:`~tunelab.compare.summary` (reading runs),
:mod:`~tunelab.compare.ranking` (Pareto front, recommendation), :mod:`~tunelab.compare.tables`
(terminal, markdown, CSV, JSON), :mod:`~tunelab.compare.plots`, :mod:`~tunelab.compare.html_report`,
:mod:`~tunelab.compare.formatting` (numbers in text), with :mod:`~tunelab.compare.report` the entry
that writes every file and re-exports their public names.
"""
