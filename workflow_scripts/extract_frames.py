"""Rule extract_frames: one video -> PNG frames + Parquet manifest + the report of damaged frames."""
import json

from reproseg.data.video import extract_stage
from reproseg.provenance import run_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
frames = json.loads(smk.params.cfg)["data"]["frames"]
run_job(smk, lambda: extract_stage(smk.input.video, smk.output.frames, smk.output.manifest,
                                   stride=frames["stride"], indices=frames["indices"],
                                   on_corrupt=frames["on_corrupt"], report=smk.output.report,
                                   report_log=smk.log.report))
