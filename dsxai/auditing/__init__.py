"""Audit a segmenter mask by mask: where does the evidence of each predicted mask come from?

>>> result = dsxai.audit("shapes-unet", "scenes/", masks="gt/", out="audit/")   # doctest: +SKIP
>>> result.flagged()[0]["reasons"]                                               # doctest: +SKIP

:func:`audit` explains every predicted mask and returns an :class:`AuditResult`: per mask the share of its
map inside the mask, in a ring around it and beyond, pointing, confidence, agreement with ground truth,
flags with reasons and a ranking score; with ``out``, a resumable journal, JSON, CSV and an HTML report.
Why: a mask whose evidence lies beyond its own object points at a shortcut or context bias, which the
mask's accuracy alone cannot show. The figures and flags are defined in the README ("Audit").
The package is not named ``audit`` because ``dsxai.audit`` is the function.
"""
from .config import AuditConfig
from .figures import MAX_OUTSIDE, MIN_CONFIDENCE, MIN_IOU, RING_FRAC, RING_PX, mask_figures
from .report import CSV_COLUMNS, AuditResult
from .run import audit

__all__ = [
    "audit", "AuditResult", "AuditConfig", "mask_figures", "RING_PX", "RING_FRAC", "MAX_OUTSIDE",
    "MIN_CONFIDENCE", "MIN_IOU", "CSV_COLUMNS",
]
