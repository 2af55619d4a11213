"""SegAnswer data sources: each is imported once into the two normalised tables of
`tables.py` (referring rows, question rows) plus a validation report.

Formats (the `format` key of a `seganswer.sources` entry):
    shapes     SegAnswer's own synthetic pictures (the embedded default): one large object
               on drone-like terrain, its referring row and colour questions (shapes.py)
    finers     this run's FineRS splits: IS records -> referring rows, MVQA / OVQA
               records -> question rows
    refer      the RefCOCO family (RefCOCO, RefCOCO+, RefCOCOg, RefClef): refs(<by>).p + instances.json
    vstar      V* Bench test_questions.jsonl
    hrbench    HR-Bench 4K / 8K TSV (images embedded as base64; written out on import)
    visualcot  VisualCoT's LLaVA-style conversation JSON (question + final answer; boxes unused)
    qa_table   a question/answer/image table (Parquet or JSONL), e.g. ViRL39K

This module stays import-light: the Snakefile reads `image_root` while parsing, so the
importers and the table code (pyarrow, PIL, pycocotools) load inside the functions that
use them.
"""
from __future__ import annotations

import logging
from pathlib import Path

REFERRING_FORMATS = {"finers", "refer", "shapes"}
QUESTION_FORMATS = {"finers", "vstar", "hrbench", "visualcot", "qa_table", "shapes"}
FORMATS = REFERRING_FORMATS | QUESTION_FORMATS
# Formats whose images the import writes (embedded in the annotation file, or generated).
WRITES_IMAGES = {"hrbench", "shapes"}


def image_root(spec: dict, written_images, finers_images) -> str:
    """The folder a source's normalised `image_path` values are relative to: its import's
    `written_images` folder for formats that embed their images, else where they live."""
    fmt = spec["format"]
    if fmt == "finers":
        return str(finers_images)
    if fmt in WRITES_IMAGES:
        return str(written_images)
    return spec["images"]


def import_source(name: str, spec: dict, *, images_out, finers_splits: dict | None = None):
    """(referring table, question table, report) of one source. FineRS frames were
    decoded by this workflow and the shapes pictures are drawn by their import; every
    other source's images are decoded once here (verify.py): at most the spec's
    `max_image_pixels` pixels each (reproseg.data.images.DEFAULT_MAX_IMAGE_PIXELS
    without one)."""
    from .tables import question_table, referring_table  # lazy: pyarrow stays out of the Snakefile's parse

    fmt = spec["format"]
    spec = {**spec, "name": name}
    on_invalid = spec.get("on_invalid", "fail")
    if fmt not in FORMATS:
        raise ValueError(f"seganswer source {name!r}: unknown format {fmt!r} (known: {sorted(FORMATS)})")
    if fmt == "finers":
        from .finers import import_finers  # lazy: an importer loads when its format is imported

        return import_finers(spec, finers_splits or {})
    if fmt == "shapes":
        from .shapes import import_shapes  # lazy: an importer loads when its format is imported

        return import_shapes(spec, images_out=Path(images_out))
    from ...data.images import DEFAULT_MAX_IMAGE_PIXELS  # lazy: PIL stays out of the Snakefile's parse
    from .verify import verify_images  # lazy: as above

    max_pixels = spec.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"seganswer source {name!r}: max_image_pixels must be a positive integer, "
                         f"got {max_pixels!r}")
    spec["max_image_pixels"] = max_pixels
    root = Path(image_root(spec, images_out, finers_images=None))
    checks = {"max_pixels": max_pixels, "remove_bad": fmt in WRITES_IMAGES}
    if fmt == "refer":
        from .refer import import_refer  # lazy: an importer loads when its format is imported

        table, report = import_refer(spec, on_invalid=on_invalid)
        return (verify_images(table, root, report, on_invalid, file=spec["refs"], **checks),
                question_table([]), report)
    from .vqa import IMPORTERS  # lazy: an importer loads when its format is imported

    table, report = IMPORTERS[fmt](spec, on_invalid=on_invalid, images_out=Path(images_out))
    return referring_table([]), verify_images(table, root, report, on_invalid, file=spec["file"], **checks), report


def import_stage(name: str, spec: dict, referring_out: str, questions_out: str, images_out: str,
                 report_json: str, report_md: str, report_log: str, finers_splits: dict | None = None) -> None:
    """Rule seganswer_import_source (reports written as for the FineRS import)."""
    # lazy: the report and Parquet writers (pyarrow) stay out of the Snakefile's parse
    from ...data.annotations import failed_report_to, write_reports
    from ...io_atomic import atomic_dir, write_parquet  # lazy: as above

    with atomic_dir(images_out) as tmp_images, failed_report_to(report_log):
        referring, questions, report = import_source(name, spec, images_out=tmp_images, finers_splits=finers_splits)
    d = write_reports(report, report_log, report_json, report_md)
    write_parquet(referring_out, referring)
    write_parquet(questions_out, questions)
    logging.getLogger(__name__).info("%s: %d referring rows, %d question rows; %d of %d records invalid (policy %s)",
                                     name, referring.num_rows, questions.num_rows, d["invalid"], d["total"],
                                     spec.get("on_invalid", "fail"))
