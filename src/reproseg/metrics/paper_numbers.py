"""The FineRS paper's own numbers for "Ours (FineRS) 7B", in percent as printed.

Source: shared/papers/finers.txt (text extraction of the paper). Line numbers below
refer to that file.

Column order, from the two header rows of both tables (lines 112-113 and 632-633):
  IoU cells are "gIoU/cIoU" under S, xS, xxS, All;
  QA cells are "MVQA/OVQA" under Color, Shape, Others, Position, All
  (Table A1 labels the QA pair "Option/Open", the same two tasks).

- Table 2, test set, line 131:
  62.2/52.6 59.0/43.1 47.2/27.5 55.1/46.5 | 85.8/60.5 76.0/49.2 78.6/34.4 63.2/27.8 83.3/56.7
  The All cells agree with Table 4 (line 170), Table A2 (line 667) and Table A4 (line 689).
- Table A1 ("Tab. A.3" in the text, line 629), validation set, line 651:
  64.8/55.3 50.8/27.1 42.5/21.0 49.7/38.6 | 85.4/65.6 88.4/46.7 100/30.8 91.7/66.7 86.8/60.4
  Ambiguity, kept as printed: the paper's other val numbers for the same full model,
  Table 4 (line 170) and Table A2 (line 667), give All = 49.9/39.4 gIoU/cIoU and
  87.2/60.0 MVQA/OVQA, not Table A1's 49.7/38.6 and 86.8/60.4. Which is right is not
  recoverable from the paper; VAL_ALL_ALTERNATIVE holds the other reading.
- Table A4, line 689: "7.31 (GSE) + 5.57 (LPR&SAM2)" seconds per 4K image on one A100.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

SEG_GROUPS = ("s", "xs", "xxs", "all")
QA_GROUPS = ("colors", "shape", "others", "position", "all")


def _frozen(keys, values) -> Mapping[str, float]:
    assert len(keys) == len(values)
    return MappingProxyType(dict(zip(keys, values)))


@dataclass(frozen=True)
class PaperResult:
    table: str
    split: str
    line: int                                   # line of the row in finers.txt
    giou: Mapping[str, float] = field(repr=False)
    ciou: Mapping[str, float] = field(repr=False)
    mvqa: Mapping[str, float] = field(repr=False)
    ovqa: Mapping[str, float] = field(repr=False)

    def metric(self, name: str) -> Mapping[str, float]:
        return {"gIoU": self.giou, "cIoU": self.ciou, "MVQA": self.mvqa, "OVQA": self.ovqa}[name]


TEST = PaperResult(
    table="Table 2", split="test", line=131,
    giou=_frozen(SEG_GROUPS, (62.2, 59.0, 47.2, 55.1)),
    ciou=_frozen(SEG_GROUPS, (52.6, 43.1, 27.5, 46.5)),
    mvqa=_frozen(QA_GROUPS, (85.8, 76.0, 78.6, 63.2, 83.3)),
    ovqa=_frozen(QA_GROUPS, (60.5, 49.2, 34.4, 27.8, 56.7)),
)

VAL = PaperResult(
    table="Table A1", split="val", line=651,
    giou=_frozen(SEG_GROUPS, (64.8, 50.8, 42.5, 49.7)),
    ciou=_frozen(SEG_GROUPS, (55.3, 27.1, 21.0, 38.6)),
    mvqa=_frozen(QA_GROUPS, (85.4, 88.4, 100.0, 91.7, 86.8)),
    ovqa=_frozen(QA_GROUPS, (65.6, 46.7, 30.8, 66.7, 60.4)),
)

# Table 4 / Table A2 (lines 170, 667): the full model's val "All" numbers, which differ
# from Table A1's row; see the module docstring.
VAL_ALL_ALTERNATIVE = MappingProxyType({"gIoU": 49.9, "cIoU": 39.4, "MVQA": 87.2, "OVQA": 60.0})

# Table A4 (line 689): seconds per image, FineRS-4k test set, one A100.
TIMING_S_PER_IMAGE = MappingProxyType({"GSE": 7.31, "LPR+SAM2": 5.57})

_BY_SPLIT = {"test": TEST, "val": VAL}


def paper_result(split: str) -> PaperResult:
    try:
        return _BY_SPLIT[split]
    except KeyError:
        raise ValueError(f"the paper reports FineRS-4k splits {sorted(_BY_SPLIT)}, not {split!r}") from None
