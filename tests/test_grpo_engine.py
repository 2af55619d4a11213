"""GRPO engine on a tiny random Qwen2.5-VL: logging, checkpoints, exact resume, reward state."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import atexit
import json
import math
import subprocess
import sys
from pathlib import Path
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback

from reproseg.models.tiny_bundle import build_tiny_policy
from reproseg.grpo.engine import GRPOSettings, StatefulReward, TrainingInterrupted, train_grpo, zero_std_fraction
from reproseg.grpo.callbacks import log_columns
from reproseg.grpo.deepspeed import deepspeed_config
from reproseg.launch import THREAD_VARS, WORKER_MODULE, launch_command, visible_gpu_count, worker_env, write_job
from reproseg.runs import CHECKPOINT_TIMES
from reproseg.grpo.trainer import reward_state_file

SETTINGS = dict(
    n=4,
    lr=1e-3,  # large enough that every step moves the weights visibly
    per_device_batch_size=4,
    gradient_accumulation_steps=2,  # 2 prompts x 4 completions per optimizer step
    max_completion_length=8,
    max_steps=3,
    save_steps=100,
    gradient_checkpointing=False,
    seed=0,
)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "qwen"
    build_tiny_policy(path, {}, ["find the car"], seed=0)
    return path


def _rows():
    return [
        {"prompt": [{"role": "user", "content": f"Find object {i}."}],
         "image": Image.fromarray(np.full((56, 56, 3), 40 + 60 * i, np.uint8)),
         "kind": kind}
        for i, kind in enumerate(["const", "vary"])
    ]


def length_reward(completions, kind, **columns):
    # "const" prompts always score 0, so their group has zero std by construction.
    assert "image" in columns and "prompt" not in columns
    return [0.0 if k == "const" else float(len(c) % 3) for c, k in zip(completions, kind)]


class CountingReward:
    """A stateful reward: buffers completions, flushes them after each optimizer step."""

    def __init__(self):
        self.pending = 0
        self.flushed = []  # completions per flush
        self.totals = []  # the total rewards of each call, for the zero-std check

    def __call__(self, completions, kind, **columns):
        self.pending += len(completions)
        self.totals.append(length_reward(completions, kind, **columns))
        return [0.0] * len(completions)

    def on_step_end(self):
        self.flushed.append(self.pending)
        self.pending = 0

    def state_dict(self):
        return {"pending": self.pending, "flushed": list(self.flushed)}

    def load_state_dict(self, state):
        self.pending = state["pending"]
        self.flushed = list(state["flushed"])


class SigtermAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def run_a(policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    counter = CountingReward()
    train_grpo(policy, _rows(), {"length": length_reward, "count": counter}, SETTINGS, out, out / "log.parquet")
    return out, counter


def test_zero_std_fraction_hand_made():
    rewards = [1, 1, 1, 1,  0, 1, 0, 1,  2, 2, 2, 2,  0.5, 0.5, 0.5, 0.5000001]
    assert zero_std_fraction(rewards, 4) == 0.5
    assert zero_std_fraction([1, 1, math.nan, 1, 0, 0, 0, 1], 4) == 0.5  # NaN left out of its group
    assert zero_std_fraction([math.nan] * 4, 4) == 0.0
    assert zero_std_fraction(torch.tensor([3.0, 3.0]), 2) == 1.0


def test_settings_from_dict():
    s = GRPOSettings.from_dict({"n": 8, "lr": "1e-6", "kl_coef": 0.005, "max_steps": "200"})
    assert (s.num_generations, s.learning_rate, s.beta, s.max_steps, s.loss_type) == (8, 1e-6, 0.005, 200, "grpo")
    with pytest.raises(ValueError, match="unknown GRPO setting"):
        GRPOSettings.from_dict({"num_gen": 8})
    with pytest.raises(ValueError, match="loss_type"):
        GRPOSettings.from_dict({"loss_type": "ppo"})
    assert s.fingerprint() == GRPOSettings.from_dict({"n": 8, "lr": 1e-6, "beta": 0.005, "max_steps": 200,
                                                      "save_steps": 7}).fingerprint()


def test_training_log_checkpoint_and_reward_state(run_a, policy):
    out, counter = run_a
    table = pq.read_table(out / "log.parquet")
    assert table.column_names == log_columns(["length", "count"])
    log = table.to_pylist()
    assert [r["step"] for r in log] == [1, 2, 3]
    assert [r["generated"] for r in log] == [1.0, 1.0, 1.0]   # one update per rollout batch
    for r in log:
        for col in ("reward_mean", "reward_std", "reward_length_mean", "reward_count_mean", "kl", "entropy",
                    "completion_length_mean", "frac_zero_std", "loss", "grad_norm"):
            assert math.isfinite(r[col]), col
        assert 0 < r["completion_length_mean"] <= SETTINGS["max_completion_length"]

    # Flushed once per optimizer step, each time with that step's 2 x 4 completions.
    assert counter.flushed == [8, 8, 8] and counter.pending == 0
    # The logged zero-std fraction matches the rewards the step produced.
    for r, totals in zip(log, counter.totals):
        groups = [totals[i:i + 4] for i in range(0, 8, 4)]
        assert r["frac_zero_std"] == sum(len(set(g)) == 1 for g in groups) / len(groups)
        assert r["frac_zero_std"] >= 0.5  # the "const" group
        assert r["reward_mean"] == pytest.approx(sum(totals) / 8)

    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    final = out / "checkpoint"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(final, local_files_only=True)
    AutoProcessor.from_pretrained(final, local_files_only=True)
    trained = load_file(final / "model.safetensors")
    base = load_file(policy / "model.safetensors")
    assert trained.keys() == base.keys()
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    assert model.config.image_token_id == Qwen2_5_VLForConditionalGeneration.from_pretrained(
        policy, local_files_only=True).config.image_token_id
    assert not (out / "resume").exists()  # removed after success unless keep_resume_state


def test_resume_after_sigterm_is_exact(run_a, policy, tmp_path):
    out_a, _ = run_a
    out_b = tmp_path / "run_b"
    counter = CountingReward()
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        train_grpo(policy, _rows(), {"length": length_reward, "count": counter}, SETTINGS, out_b,
                   out_b / "log.parquet", callbacks=[SigtermAt(1)])
    assert info.value.code == 143 and info.value.step == 1
    ckpt = out_b / "resume" / "checkpoint-1"
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "model.safetensors"):
        assert (ckpt / name).is_file(), name
    assert torch.load(reward_state_file(ckpt, 0), weights_only=False)["count"]["flushed"] == [8]
    assert not (out_b / "checkpoint").exists()
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the engine's handler is gone again

    # A new process would start with fresh reward objects: the state comes from the checkpoint.
    counter = CountingReward()
    train_grpo(policy, _rows(), {"length": length_reward, "count": counter}, SETTINGS, out_b, out_b / "log.parquet")
    assert counter.flushed == [8, 8, 8]

    a = load_file(out_a / "checkpoint" / "model.safetensors")
    b = load_file(out_b / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = pq.read_table(out_a / "log.parquet").to_pylist()
    log_b = pq.read_table(out_b / "log.parquet").to_pylist()
    for ra, rb in zip(log_a, log_b, strict=True):
        for col in ("step", "loss", "reward_mean", "kl", "entropy", "grad_norm"):
            assert ra[col] == rb[col], (ra["step"], col)

    # The checkpoint clock: the fresh start, the save the stop asked for, the resumed start.
    times = [json.loads(line) for line in (out_b / CHECKPOINT_TIMES).read_text().splitlines()]
    assert [(t["event"], t["step"]) for t in times] == [("start", 0), ("save", 1), ("start", 1)]
    assert times[0]["resumed_from"] is None and times[2]["resumed_from"] == str(ckpt)
    assert all(t["seconds"] > 0 for t in times)


def test_resume_refuses_other_settings(policy, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train_grpo(policy, _rows(), {"length": length_reward}, SETTINGS, out, out / "log.parquet",
                   callbacks=[SigtermAt(1)])
    with pytest.raises(ValueError, match="different run"):
        train_grpo(policy, _rows(), {"length": length_reward}, {**SETTINGS, "lr": 1e-4}, out, out / "log.parquet")


def test_lora_final_checkpoint_is_merged(policy, tmp_path):
    out = tmp_path / "lora"
    rows = _rows()
    for i, row in enumerate(rows):  # images given as paths are opened when served
        row["image"].save(tmp_path / f"{i}.png")
        row["image"] = str(tmp_path / f"{i}.png")

    def reward(completions, kind, image, **columns):
        assert all(isinstance(im, Image.Image) and im.size == (56, 56) for im in image)
        return length_reward(completions, kind, image=image)

    settings = {**SETTINGS, "max_steps": 1, "lr": 1e-2, "lora": {"r": 4, "lora_alpha": 8}}
    train_grpo(policy, rows, {"length": reward}, settings, out, out / "log.parquet")
    merged = load_file(out / "checkpoint" / "model.safetensors")
    base = load_file(policy / "model.safetensors")
    assert merged.keys() == base.keys()  # no adapter keys: a plain Qwen2.5-VL checkpoint
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all("visual" not in k for k in changed)  # LoRA targets the language model only


def print_and_write_at_exit(path: str) -> None:
    """A worker target (run by name from the job file) with a buffered print and an exit handler."""
    atexit.register(Path(path).write_text, "exit handler ran")
    print("worker ran")  # no flush: stdout is a pipe here, so block-buffered


def test_a_worker_leaves_through_its_exit_handlers_with_its_output(tmp_path):
    """A worker skips the interpreter's finalisation (reproseg.launch.exit_worker) but not
    Python's exit handlers or its buffered output; its exit status is main's."""
    job = write_job(tmp_path / "job.pkl", _target=f"{__name__}:print_and_write_at_exit",
                    path=str(tmp_path / "at_exit.txt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTHONUNBUFFERED", None)
    done = subprocess.run([sys.executable, "-m", WORKER_MODULE, str(job)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "worker ran"
    assert (tmp_path / "at_exit.txt").read_text() == "exit handler ran"
    bad = write_job(tmp_path / "bad.pkl", path="x")  # no target
    done = subprocess.run([sys.executable, "-m", WORKER_MODULE, str(bad)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 2 and "names no _target" in done.stderr


def test_deepspeed_config_and_launch_command(tmp_path):
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from torch.distributed.run import get_args_parser

    for stage in (2, 3):
        cfg = deepspeed_config(stage)
        assert cfg["zero_optimization"]["stage"] == stage and cfg["bf16"]["enabled"] == "auto"
        zero = {k: (1000 if v == "auto" else v) for k, v in cfg["zero_optimization"].items()}
        DeepSpeedZeroConfig(**zero)  # rejects unknown or mistyped keys
    assert deepspeed_config(3)["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert deepspeed_config(2, bf16=False, offload_optimizer=True)["zero_optimization"]["offload_optimizer"]
    with pytest.raises(ValueError):
        deepspeed_config(1)

    job = tmp_path / "job.pkl"
    cmd = launch_command(job, 4, python="python")
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    parsed = get_args_parser().parse_args(cmd[3:])
    assert parsed.nproc_per_node == "4" and parsed.module and parsed.training_script == WORKER_MODULE
    assert parsed.training_script_args == [str(job)]
    ds = launch_command(job, 2, launcher="deepspeed", python="python", master_port=29555)
    assert ds[:3] == ["python", "-m", "deepspeed.launcher.runner"] and ds[ds.index("--num_gpus") + 1] == "2"
    assert launch_command(job, 1, launcher=None, python="python") == ["python", "-m", WORKER_MODULE, str(job)]
    assert "--nproc-per-node=1" in launch_command(job, 1, python="python")  # DeepSpeed on one GPU
    with pytest.raises(ValueError):
        launch_command(job, 2, launcher=None)

    assert visible_gpu_count({"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0"}) == 4
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": "2,3"}) == 2
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": ""}) == 0


def test_workers_share_the_jobs_threads():
    """N workers split the job's CPU threads (Snakemake's OMP_NUM_THREADS = the rule's
    threads), at least one each, in every thread-pool variable; other variables pass."""
    two = worker_env(2, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PATH": "/bin"})
    assert {two[v] for v in THREAD_VARS} == {"1"} and two["PATH"] == "/bin"
    assert {worker_env(2, {"OMP_NUM_THREADS": "8"})[v] for v in THREAD_VARS} == {"4"}
    assert worker_env(4, {"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "1"
    assert worker_env(1, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    cpus = len(os.sched_getaffinity(0))
    assert worker_env(1, {})["OMP_NUM_THREADS"] == str(cpus)        # unset: the CPUs this job may use
    assert worker_env(2, {"OMP_NUM_THREADS": "x"})["OMP_NUM_THREADS"] == str(max(1, cpus // 2))


def test_stateful_protocol():
    assert isinstance(CountingReward(), StatefulReward)
    assert not isinstance(length_reward, StatefulReward)


def test_internal_tensor_names_are_saved_in_base_layout(policy, tmp_path):
    # What ZeRO-3's gathered state dict holds: the module's own names (model.language_model.*).
    from transformers import Qwen2_5_VLForConditionalGeneration

    from reproseg.grpo.engine import _save_in_base_layout, _weight_names

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(policy, local_files_only=True)
    state = {k: v.clone() + 1.0 for k, v in model.state_dict().items()}
    assert set(state) != _weight_names(policy)
    _save_in_base_layout(state, policy, tmp_path / "out")
    assert _weight_names(tmp_path / "out") == _weight_names(policy)
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "out", local_files_only=True)
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_rollout_batch_settings():
    assert GRPOSettings().updates_per_rollout == 1 and GRPOSettings().steps_per_generation is None
    s = GRPOSettings.from_dict({"gradient_accumulation_steps": 2, "steps_per_generation": "8", "save_steps": 4})
    assert (s.steps_per_generation, s.updates_per_rollout) == (8, 4)
    assert GRPOSettings.from_dict({"steps_per_generation": 2, "num_iterations": 2, "save_steps": 8}).updates_per_rollout == 4
    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps"):
        GRPOSettings.from_dict({"gradient_accumulation_steps": 2, "steps_per_generation": 3})
    with pytest.raises(ValueError, match="save_steps"):
        GRPOSettings.from_dict({"steps_per_generation": 4, "save_steps": 50})
    assert GRPOSettings.from_dict({"report_to": "none"}).report_to == []
    assert GRPOSettings.from_dict({"report_to": "wandb"}).report_to == ["wandb"]
    assert GRPOSettings().report_to == ["tensorboard"]
    with pytest.raises(ValueError, match="report_to"):
        GRPOSettings.from_dict({"report_to": ["tensorboard", "neptune"]})
    # Where the logs go does not change the run: a resume may switch reporters.
    assert GRPOSettings(report_to=[], logging_dir="/x").fingerprint() == GRPOSettings().fingerprint()


def test_grpo_config_mapping(tmp_path, monkeypatch):
    from transformers import integrations

    from reproseg.grpo.engine import build_grpo_config

    s = GRPOSettings.from_dict({**SETTINGS, "steps_per_generation": 4, "save_steps": 2})
    args = build_grpo_config(s, tmp_path, ["length"])
    # 4 micro-batches of 4 completions per rollout, 2 per optimizer step: 2 updates per rollout.
    assert (args.steps_per_generation, args.generation_batch_size, args.gradient_accumulation_steps) == (4, 16, 2)
    assert args.report_to == ["tensorboard"] and args.disable_tqdm is False
    assert build_grpo_config(GRPOSettings.from_dict(SETTINGS), tmp_path, ["length"]).steps_per_generation == 2
    monkeypatch.setattr(integrations, "is_wandb_available", lambda: False)
    with pytest.raises(RuntimeError, match="wandb"):
        build_grpo_config(GRPOSettings(report_to=["wandb"]), tmp_path, ["length"])


def _same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.slow
def test_stop_waits_for_the_rollout_batch_and_resumes_exactly(policy, tmp_path):
    # One prompt (4 completions) per optimizer step, both prompts per rollout batch: 2 updates each.
    settings = {**SETTINGS, "gradient_accumulation_steps": 1, "steps_per_generation": 2, "max_steps": 4,
                "save_steps": 2}
    ref_counter = CountingReward()
    out_a = tmp_path / "a"
    stale = out_a / "tensorboard" / "events.out.tfevents.stale"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")  # an earlier run's curves: a run from scratch drops them
    train_grpo(policy, _rows(), {"length": length_reward, "count": ref_counter}, settings, out_a, out_a / "log.parquet")
    assert not stale.exists() and len(list(stale.parent.glob("events.out.tfevents.*"))) == 1
    # Completions are scored once per rollout batch and flushed after every optimizer step.
    assert ref_counter.flushed == [8, 0, 8, 0]

    out_b = tmp_path / "b"
    with pytest.raises(TrainingInterrupted) as info:
        train_grpo(policy, _rows(), {"length": length_reward, "count": CountingReward()}, settings, out_b,
                   out_b / "log.parquet", callbacks=[SigtermAt(1)])
    assert info.value.step == 2  # the signal came in step 1, inside the first rollout batch
    assert [p.name for p in (out_b / "resume").glob("checkpoint-*")] == ["checkpoint-2"]
    counter = CountingReward()
    train_grpo(policy, _rows(), {"length": length_reward, "count": counter}, settings, out_b, out_b / "log.parquet")
    assert counter.flushed == [8, 0, 8, 0]
    a = load_file(out_a / "checkpoint" / "model.safetensors")
    b = load_file(out_b / "checkpoint" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = pq.read_table(out_a / "log.parquet").to_pylist()
    log_b = pq.read_table(out_b / "log.parquet").to_pylist()
    for ra, rb in zip(log_a, log_b, strict=True):
        for col in ("step", "loss", "reward_mean", "clip_ratio", "entropy", "grad_norm"):
            assert _same(ra[col], rb[col]), (ra["step"], col)
    # The update-only steps repeat their rollout batch's figures (the resumed run's step 3
    # generated anew); the first update of a batch cannot clip.
    assert [r["generated"] for r in log_a] == [1.0, 0.0, 1.0, 0.0]
    assert [log_a[1]["reward_mean"], log_a[3]["reward_mean"]] == [log_a[0]["reward_mean"], log_a[2]["reward_mean"]]
    assert all(math.isfinite(r["reward_mean"]) for r in log_a)
    assert log_a[0]["clip_ratio"] == log_a[2]["clip_ratio"] == 0.0
    # Each run writes its own TensorBoard file beside checkpoint/ (and the checkpoint clock
    # its lines); resume/ is gone.
    assert len(list((out_b / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert sorted(p.name for p in out_b.iterdir()) == ["checkpoint", "checkpoint_times.jsonl", "log.parquet",
                                                       "tensorboard"]


def test_curves_panels_and_notes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import pyarrow as pa
    from PIL import Image as PILImage

    from reproseg.curves import plot_curves

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))

    cols = log_columns(["iou", "format"])
    nan = math.nan
    rows = []
    for step in (1, 2, 3):
        row = {c: 1000.0 + 0.001 * step for c in cols}  # a tiny change on a large value: offset notation by default
        row.update(step=step, kl=nan, reward_format_mean=nan, clip_ratio=0.1 * (step - 1))
        rows.append(row)
    rows[1]["reward_mean"] = nan  # a step that did not generate
    table = pa.Table.from_pylist(rows, pa.schema([(c, pa.int64() if c == "step" else pa.float64()) for c in cols]))
    log = tmp_path / "log.parquet"
    pq.write_table(table, log)
    panels = plot_curves(str(log), str(tmp_path / "curves.png"), "test")
    assert [p.title for p in panels] == [
        "total reward", "reward term: iou", "reward term: format", "KL to the reference policy",
        "policy entropy", "completion length", "ratio-clipped tokens", "groups with zero reward std"]
    notes = {p.title: p.note for p in panels}
    assert notes.pop("KL to the reference policy") == "no KL logged: TRL computes it only when beta > 0"
    assert "no finite value" in notes.pop("reward term: format")
    assert all(n is None for n in notes.values()), notes
    with PILImage.open(tmp_path / "curves.png") as im:
        assert im.format == "PNG" and im.size == (1584, 638)  # 4 x 2 panels of 3.6 x 2.9 in at 110 dpi
    (fig,) = figures
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(panels)
    for ax in axes:
        assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel()
        assert all(float(t).is_integer() for t in ax.get_xticks())
        assert ax.yaxis.get_major_formatter().get_offset() == ""  # no "+1e3" above the axis


@pytest.mark.parametrize("with_iou", [True, False])
def test_sft_curves_mask_iou_panel(tmp_path, monkeypatch, with_iou):
    import matplotlib.pyplot as plt
    import pyarrow as pa

    from reproseg.curves import plot_curves

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    # A SegAnswer stage 1 log has mask_iou (NaN where the batch had no object); stage 2's has not.
    rows = [{"step": s, "epoch": 0, "loss": 1.0 / s, "focal": 0.1, "dice": 0.5, "grad_norm": 2.0,
             "learning_rate": 1e-3, "step_time_s": 0.1, **({"mask_iou": iou} if with_iou else {})}
            for s, iou in ((1, 0.2), (2, math.nan), (3, 0.4))]
    log = tmp_path / "log.parquet"
    pq.write_table(pa.Table.from_pylist(rows), log)
    panels = plot_curves(str(log), str(tmp_path / "curves.png"), "test", kind="sft")
    titles = ["training loss", "loss parts", "learning rate", "gradient norm"]
    if with_iou:
        titles.insert(2, "mask IoU on the training batch")
    assert [p.title for p in panels] == titles
    assert all(p.note is None for p in panels)
    (fig,) = figures
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert len(axes) == len(panels)
    assert all(ax.get_xlabel() == "optimizer step" and ax.get_ylabel() for ax in axes.values())
    if with_iou:
        ax = axes["mask IoU on the training batch"]
        assert ax.get_ylabel() == "IoU (batch mean)"
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [1, 3]  # the NaN step is skipped


def test_candidates_survive_a_stop_and_match_an_uninterrupted_run(run_a, policy, tmp_path):
    out_a, _ = run_a
    out = tmp_path / "candidates"
    settings = {**SETTINGS, "candidate_every": 1}
    with pytest.raises(TrainingInterrupted):
        train_grpo(policy, _rows(), {"length": length_reward, "count": CountingReward()}, settings, out,
                   out / "log.parquet", callbacks=[SigtermAt(2)])
    # Saved during training where a failed job's outputs are not deleted (resume/).
    assert sorted(p.name for p in (out / "resume" / "candidates").iterdir()) == ["step-000001", "step-000002"]
    assert not (out / "candidates").exists()
    train_grpo(policy, _rows(), {"length": length_reward, "count": CountingReward()}, settings, out,
               out / "log.parquet")
    assert sorted(p.name for p in (out / "candidates").iterdir()) == ["step-000001", "step-000002", "step-000003"]
    final = out / "candidates" / "step-000003" / "model.safetensors"
    assert os.stat(final).st_ino == os.stat(out / "checkpoint" / "model.safetensors").st_ino  # a link, no copy
    assert (out / "candidates" / "step-000001" / "processor_config.json").is_file()  # loadable on its own
    # Saving candidates leaves the trajectory alone: the final weights are run_a's.
    a, b = load_file(out_a / "checkpoint" / "model.safetensors"), load_file(final)
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(out / "candidates" / "step-000001" / "model.safetensors")
    assert first.keys() == a.keys() and any(not torch.equal(first[k], a[k]) for k in a)


def test_epochs_count_their_steps_from_the_data_and_the_processes():
    """One epoch = every training prompt once: prompts per optimizer step = completions per
    step / num_generations (divided by num_iterations passes), rounded up to whole rollout batches."""
    from reproseg.grpo.engine import epoch_steps

    # SegAnswer stage 3 as config/paper.yaml: 8 completions per GPU x 8 GPUs / 4 = 16 prompts a
    # step; 39,000 prompts -> 2,437.5 -> 2,438 steps -> 2,448 (16-step rollout batches).
    s = GRPOSettings(num_generations=4, per_device_batch_size=8, steps_per_generation=16, max_steps=None, epochs=1,
                     save_steps=32)
    assert s.updates_per_rollout == 16
    assert epoch_steps(s, 39_000, 8) == 2448
    assert epoch_steps(s, 39_000, 1) == math.ceil(39_000 / 2 / 16) * 16   # 2 prompts a step on one GPU
    half = GRPOSettings(num_generations=8, per_device_batch_size=8, max_steps=None, epochs=0.5)
    assert epoch_steps(half, 100, 1) == 50     # one prompt a step, half of 100
    assert epoch_steps(GRPOSettings(num_generations=8, per_device_batch_size=8, max_steps=None, epochs=1,
                                    num_iterations=2), 100, 1) == 200   # each rollout batch twice
    with pytest.raises(ValueError, match="exactly one of max_steps"):
        GRPOSettings(max_steps=10, epochs=1)
    with pytest.raises(ValueError, match="exactly one of max_steps"):
        GRPOSettings(max_steps=None)


def test_a_run_given_epochs_takes_the_steps_they_count(policy, tmp_path):
    out = tmp_path / "epochs"
    # 2 rows, 2 prompts (2 x 4 completions) per optimizer step: 3 epochs are 3 steps
    train_grpo(policy, _rows(), {"length": length_reward}, {**SETTINGS, "max_steps": None, "epochs": 3}, out,
               out / "log.parquet")
    assert pq.read_table(out / "log.parquet").column("step").to_pylist() == [1, 2, 3]


def _noise_reward(completions, kind, **columns):
    # A reward the policy can move (length), on its own RNG: torch's stays untouched.
    return [float((len(c) * 7919 + i) % 5) for i, c in enumerate(completions)]


def test_a_weight_zero_reward_is_logged_but_never_trains(policy, tmp_path):
    """A monitor (weight 0: Dr. Seg's binary accuracy beside its ranked one, FineRS's box
    terms beside the ranked reward) is logged every step and leaves the update exactly as
    without it; with weight 1 the same reward changes the weights, so the check can fail."""
    settings = {**SETTINGS, "max_steps": 2}
    runs = {}
    for name, fns, weights in (("alone", {"length": length_reward}, None),
                               ("monitor", {"length": length_reward, "noise": _noise_reward}, {"noise": 0.0}),
                               ("weighted", {"length": length_reward, "noise": _noise_reward}, {"noise": 1.0})):
        out = tmp_path / name
        train_grpo(policy, _rows(), fns, {**settings, "reward_weights": weights}, out, out / "log.parquet")
        runs[name] = (load_file(out / "checkpoint" / "model.safetensors"), pq.read_table(out / "log.parquet"))
    alone, monitor, weighted = (runs[k][0] for k in ("alone", "monitor", "weighted"))
    assert all(torch.equal(alone[k], monitor[k]) for k in alone)
    assert not all(torch.equal(alone[k], weighted[k]) for k in alone)
    log = runs["monitor"][1]
    assert "reward_noise_mean" in log.schema.names and any(v > 0 for v in log.column("reward_noise_mean").to_pylist())
    assert log.column("reward_mean").to_pylist() == runs["alone"][1].column("reward_mean").to_pylist()


def test_a_row_whose_image_is_gone_when_served_is_named_with_its_file(policy, tmp_path):
    """Rows hold file references decoded when served; a frame deleted after the rows were
    built fails the step with the row's id and the file, not a bare PIL error."""
    from reproseg.data.images import ImageRef

    (tmp_path / "video_003").mkdir()
    Image.new("RGB", (56, 56)).save(tmp_path / "video_003" / "000012.png")
    rows = _rows()
    rows[1] = {**rows[1], "id": "video_003-000012-1", "image": ImageRef(str(tmp_path), "video_003/000012.png")}
    (tmp_path / "video_003" / "000012.png").unlink()
    with pytest.raises(OSError, match=r"row video_003-000012-1: .*video_003/000012\.png: cannot load image"):
        train_grpo(policy, rows, {"length": length_reward}, {**SETTINGS, "max_steps": 1}, tmp_path / "run",
                   tmp_path / "log.parquet")
