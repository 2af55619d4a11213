"""How long each training stage takes to save its resume state and to resume from it, on
the workflow itself: the stage is stopped the way Slurm stops it and then retried.

For each stage, on a copy of its own of a finished results folder (the default's):
1. the stage's rule runs again (forced: the copy has no Snakemake records) with a smaller
   `save_steps`, and nothing else;
2. once its first resume state is complete, the stop file is created in the resume folder
   (what reproseg.launch does on SIGTERM or SIGUSR1): the stage saves at the end of that
   step and the job fails with 143, leaving the resume folder;
3. the same command runs again and resumes.
The stage's own clock (reproseg.runs.CheckpointClock, `<run dir>/checkpoint_times.jsonl`;
the SAM 2.1 warm-up's loop writes the same events to `sam2_checkpoint_times.jsonl`)
gives every save's seconds and both starts' seconds (train() to the first step); resuming
costs the resumed start minus the fresh one. The size of a resume state is read while it
exists (the stage removes its resume folder when it ends).

    .venv/bin/snakemake --cores 2                                     # the default run first
    .venv/bin/python benchmarks/bench_resume.py results --copy results-resume
"""
import argparse
import json
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reproseg.finers.warmup import SAM2_CHECKPOINT_TIMES, SAM2_RESUME_DIR
from reproseg.models.sam2_warmup import STATE_PREFIX
from reproseg.runs import CHECKPOINT_TIMES, RESUME_DIR, STOP_FILE

ROOT = Path(__file__).resolve().parents[1]


def first_trainer_state(resume: Path) -> Path | None:
    done = sorted(resume.glob("checkpoint-*/trainer_state.json"))
    return done[0].parent if done else None


def first_sam2_state(resume: Path) -> Path | None:
    done = sorted(resume.glob(f"{STATE_PREFIX}*.pt"))   # written whole (renamed into place)
    return done[0] if done else None


@dataclass(frozen=True)
class Stage:
    rule: str
    run: str                 # the run folder under results
    override: dict           # the config override giving save_steps
    log: str = "train_log.parquet"          # the step log the rule writes (the target)
    resume: str = RESUME_DIR                # the resume folder, under the run folder
    clock: str = CHECKPOINT_TIMES           # the checkpoint clock, in the run folder
    first_state: Callable[[Path], Path | None] = first_trainer_state


STAGES = {
    "SegAnswer stage 3 (DAPO)": Stage("seganswer_stage3_dapo", "seganswer/stage3",
                                      {"seganswer": {"stage3": {"grpo": {"save_steps": 16}}}}),
    "SegAnswer stage 2 (SFT)": Stage("seganswer_stage2_sft", "seganswer/stage2",
                                     {"seganswer": {"stage2": {"save_steps": 20}}}),
    "SegAnswer stage 1b (LoRA)": Stage("seganswer_stage1_lora", "seganswer/stage1_lora",
                                       {"seganswer": {"stage1": {"lora": {"save_steps": 12}}}}),
    "SegAnswer stage 1a (projector)": Stage("seganswer_stage1_projector", "seganswer/stage1_projector",
                                            {"seganswer": {"stage1": {"projector": {"save_steps": 4}}}}),
    "FineRS GSE GRPO": Stage("train_gse", "finers/gse/main", {"finers": {"gse": {"grpo": {"save_steps": 10}}}}),
    "FineRS LPR GRPO": Stage("train_lpr", "finers/lpr/main", {"finers": {"lpr": {"grpo": {"save_steps": 10}}}}),
    "Dr. Seg GRPO": Stage("drseg_train", "drseg/train/main", {"drseg": {"grpo": {"save_steps": 10}}}),
    "FineRS policy warm-up (SFT)": Stage("warmup_policy", "finers/warmup/main",
                                         {"finers": {"warmup": {"save_steps": 100}}}),
    "FineRS SAM 2.1 warm-up": Stage("warmup_sam2", "finers/warmup/main",
                                    {"finers": {"warmup": {"sam2": {"save_steps": 25}}}}, log="sam2_log.parquet",
                                    resume=SAM2_RESUME_DIR, clock=SAM2_CHECKPOINT_TIMES,
                                    first_state=first_sam2_state),
    "Dr. Seg warm-up (SFT)": Stage("drseg_warmup", "drseg/warmup/main", {"drseg": {"warmup": {"save_steps": 75}}}),
}


def size_mb(state: Path) -> float:
    """A resume state's size: a Trainer checkpoint folder, or the SAM 2.1 warm-up's one file."""
    files = [state] if state.is_file() else [f for f in state.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def snakemake(results: Path, stage: Stage, log, force: bool = False) -> subprocess.Popen:
    overrides = [f"{k}={json.dumps(v)}" for k, v in stage.override.items()]
    cmd = [str(ROOT / ".venv/bin/snakemake"), "--cores", "2", "--rerun-incomplete",
           *(["--forcerun", stage.rule] if force else []), str(results / stage.run / stage.log),
           "--configfile", str(ROOT / "config/config.yaml"), "--config", f"results={results}", *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def bench(results: Path, name: str, stage: Stage, logs: Path) -> dict:
    run_dir, resume = results / stage.run, results / stage.run / stage.resume
    with (logs / f"{stage.rule}.log").open("w") as log:
        job = snakemake(results, stage, log, force=True)
        state, mb = None, None
        while job.poll() is None:
            state = state or stage.first_state(resume)
            if state is not None and mb is None:
                mb = size_mb(state)
                (resume / STOP_FILE).touch()
            time.sleep(0.2)
        if state is None or job.returncode == 0:
            raise SystemExit(f"{name}: the run ended (exit {job.returncode}) before it could be stopped; "
                             f"see {log.name}")
        resumed = snakemake(results, stage, log)
        if resumed.wait() != 0:
            raise SystemExit(f"{name}: the resumed run failed (exit {resumed.returncode}); see {log.name}")
    events = [json.loads(line) for line in (run_dir / stage.clock).read_text().splitlines()]
    saves = [e["seconds"] for e in events if e["event"] == "save"]
    starts = [e for e in events if e["event"] == "start"]
    fresh = next(e["seconds"] for e in starts if e["resumed_from"] is None)
    again = next(e for e in starts if e["resumed_from"] is not None)
    return {"saves": len(saves), "save_s": statistics.fmean(saves), "save_max_s": max(saves), "state_mb": mb,
            "fresh_start_s": fresh, "resumed_start_s": again["seconds"], "resumed_at": again["step"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a finished results folder (left as it is)")
    ap.add_argument("--copy", type=Path, required=True,
                    help="a folder for the copies (one per stage, removed after it); the logs go beside it")
    ap.add_argument("--stages", nargs="*", default=list(STAGES), choices=list(STAGES), metavar="STAGE")
    args = ap.parse_args()
    if not (args.results / "tables").is_dir():
        raise SystemExit(f"{args.results}: no finished workflow run (no tables/)")
    logs = args.copy.with_name(args.copy.name + "-logs")
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    print(f"{'stage':32s} {'saves':>5s} {'save s':>7s} {'max s':>6s} {'state MB':>8s} "
          f"{'fresh start s':>13s} {'resumed start s':>15s} {'resume cost s':>13s} {'at step':>7s}", flush=True)
    for stage in args.stages:
        # a folder of its own per stage: Snakemake's records of one stage's failed try (kept
        # in the working directory, by path) must not make another stage re-run it
        copy = args.copy / STAGES[stage].rule
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(args.results, copy, symlinks=True)
        f = bench(copy, stage, STAGES[stage], logs)
        shutil.rmtree(copy)
        print(f"{stage:32s} {f['saves']:5d} {f['save_s']:7.3f} {f['save_max_s']:6.3f} {f['state_mb']:8.1f} "
              f"{f['fresh_start_s']:13.3f} {f['resumed_start_s']:15.3f} "
              f"{f['resumed_start_s'] - f['fresh_start_s']:13.3f} {f['resumed_at']:7d}", flush=True)


if __name__ == "__main__":
    main()
