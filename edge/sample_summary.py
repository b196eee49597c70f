"""One sample's summary from its stored captures: fields per answer, cells found and classified, and the
sample's answer, worded like a field's. A sample is the set of captures stored under its id. Research use only.
"""
from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, Field

from leukoscreen import RESEARCH_USE_NOTICE
from leukoscreen.edge.decision import WORDING

SampleDecision = Literal["no_blasts", "indeterminate", "possible_blasts", "not_screened"]
OUTCOMES = ("possible_blasts", "indeterminate", "no_blasts", "unfamiliar", "retake")  # the first present decides
NOT_SCREENED_OUTCOMES = ("unfamiliar", "retake")
NOT_SCREENED = "Not screened: no field could be screened; retake"


class SampleSummary(BaseModel):
    sample_id: str
    first_time: str
    last_time: str
    captures: int
    fields: dict[str, int] = Field(description="captures per answer: no_blasts, indeterminate, possible_blasts, "
                                               "unfamiliar (not screened: unlike the model's images), retake")
    white_cells_found: int = Field(description="cells the cell finder located, over the screened fields")
    cells_classified: int = Field(description="cells a single-cell model classified (0 for field models)")
    blast_like_cells: int = Field(description="of those, the cells it called blast-like")
    decision: SampleDecision = Field(description="possible_blasts if any field is; else indeterminate if any is; "
                                                 "else no_blasts if any field was screened")
    message: str
    bundles: list[str] = Field(description="the bundles that decided the sample's fields")
    notice: str = RESEARCH_USE_NOTICE

    @property
    def screened_fields(self) -> int:
        return sum(count for outcome, count in self.fields.items() if outcome not in NOT_SCREENED_OUTCOMES)


def summarize(sample_id: str, rows: list[dict]) -> SampleSummary:
    """The summary of a sample's stored rows (the store's capture rows, any order; at least one)."""
    if not rows:
        raise ValueError(f"sample {sample_id!r} has no stored captures")
    fields = {outcome: 0 for outcome in OUTCOMES}
    found = classified = blast_like = 0
    for row in rows:
        fields[row["decision"]] = fields.get(row["decision"], 0) + 1  # a later code gets its own count
        if row["decision"] in NOT_SCREENED_OUTCOMES:
            continue
        record = json.loads(row["result"])
        found += record.get("cells_found", 0)
        cells = sum(record.get("counts", {}).values())
        classified += cells
        blast_like += round((record.get("blast_fraction") or 0.0) * cells)
    decision = next((outcome for outcome in OUTCOMES[:3] if fields[outcome]), "not_screened")
    times = sorted(row["time"] for row in rows)
    message = NOT_SCREENED if decision == "not_screened" else WORDING[decision]
    return SampleSummary(sample_id=sample_id, first_time=times[0], last_time=times[-1], captures=len(rows),
                         fields=fields, white_cells_found=found, cells_classified=classified,
                         blast_like_cells=blast_like, decision=decision,
                         message=f"{message} (sample of {len(rows)} fields). {RESEARCH_USE_NOTICE}",
                         bundles=sorted({row["bundle"] for row in rows}))
