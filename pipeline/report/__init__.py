"""The offline HTML report: one photo walked from pixels to score with the model's own numbers.

It only renders: the numbers come from ``pipeline.analysis`` (one ``PhotoRun`` per photo: one decode, one
recorded forward pass, named extra passes). ``sections`` turns a run into each section's values and figures,
``plots`` draws them, ``render`` fills the Jinja2 templates in ``templates/``, and ``page`` writes it all.

Examples:
    >>> from pipeline.report.page import write_report
    >>> write_report("best.pt", "photo.jpg", "runs/report")
    PosixPath('runs/report/report.html')
"""
