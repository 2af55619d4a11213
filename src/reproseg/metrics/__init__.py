"""Evaluation metrics and result tables for FineRS-4k.

- `segmentation`: gIoU / cIoU on COCO RLE masks, by object-size bucket (S / XS / XXS / All);
- MVQA and OVQA accuracy by question attribute: `reproseg.answers.qa`;
- `paper_numbers`: the FineRS paper's own reported numbers (Table 2, Table A1, Table A4);
- `tables`: our numbers beside the paper's, written as Parquet and Markdown.
"""
