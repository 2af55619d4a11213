"""GRPO step and two-stage inference at the papers' model sizes, randomly initialised.

Builds a Qwen2.5-VL-7B-architecture policy (random weights, bf16; the tokenizer is the
project's small offline one, so the LM head has its vocabulary rather than Qwen's
152,064 rows) and SAM 2.1 hiera-large (random), then measures:
  - seconds per GRPO step and peak GPU memory of LPR (n=8 completions of a 512x512 crop)
    and of GSE (n=8 completions of a 1920x1080 frame at the paper config's GSE size), with
    the paper config's rewards and settings; LoRA, since full fine-tuning of 7B needs the
    paper's 8-GPU ZeRO-3 setting;
  - seconds per step and peak GPU memory of SegAnswer stage 3 (multi-turn DAPO, the paper
    config's group of 4 completions of 2 prompts, LoRA likewise): the policy's first turn is
    scripted to call `<|seg|>` (random weights never would), so that every rollout decodes
    a SAM 2.1 hiera-large mask and is fed its segmented image back, as a trained policy's is;
  - seconds per image of GSE (1920x1080 frame) and of LPR+SAM2 (512 crop), at a fixed
    number of generated tokens (random weights never stop on their own).
Usage (on a GPU machine): python benchmarks/bench_gpu_real_sizes.py --work /tmp/bench
`--smoke` runs the same code at tiny sizes on CPU (tests/test_gpu_benchmark_script.py does, so that the
script keeps up with the library between GPU sessions).
"""
import argparse
import json
import time
from pathlib import Path

QWEN25_VL_7B = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=128000, rope_theta=1000000.0, mrope_section=[16, 24, 24],
    vision_depth=32, vision_hidden_size=1280, vision_intermediate_size=3420, vision_num_heads=16,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    min_pixels=3136, max_pixels=12845056, vocab_size=4096,
)


SMOKE = dict(QWEN25_VL_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, mrope_section=None, vision_depth=2, vision_hidden_size=32,
             vision_intermediate_size=64, vision_num_heads=2, max_pixels=200704, vocab_size=1024)


def build_policy(out: Path, spec: dict, device: str) -> None:
    import torch

    from reproseg.models import tiny_bundle as tb

    spec = tb.resolve_spec(spec)
    tokenizer = tb._train_tokenizer([], spec["vocab_size"])
    processor = tb._build_processor(tokenizer, spec)
    with torch.device(device):
        model = tb._build_policy(tokenizer, spec, seed=0).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    del model
    torch.cuda.empty_cache()


def scene(w, h, seed):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.kron(rng.random((h // 32 + 1, w // 32 + 1, 1)), np.ones((32, 32, 3)))[:h, :w]
    return Image.fromarray((60 + 120 * base).astype("uint8"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/bench")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, to check the script itself")
    args = ap.parse_args()
    import pyarrow.parquet as pq
    import torch

    device = "cpu" if args.smoke else "cuda"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    from reproseg import config as cfglib
    from reproseg.finers import gse_rewards, lpr_rewards
    from reproseg.finers import samples as S
    from reproseg.finers.rewards import stage_reward_functions
    from reproseg.grpo.engine import train_grpo

    root = Path(__file__).resolve().parents[1]
    paper = cfglib.resolve(cfglib.load_yaml(root / "config/config.yaml"), [cfglib.load_yaml(root / "config/paper.yaml")])
    cfg, seganswer_cfg = paper["finers"], paper["seganswer"]
    work = Path(args.work)
    qwen = work / "qwen7b"
    figures = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)"}
    t0 = time.perf_counter()
    build_policy(qwen, SMOKE if args.smoke else QWEN25_VL_7B, device)
    figures["build_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(figures), flush=True)
    question = {"task_type": "reasoning", "question": "What colour is the car?", "options": [], "option_letters": []}

    def grpo_step(stage: str, rows: list[dict], terms: dict) -> None:
        """args.steps GRPO steps of one stage, 8 completions of one image each."""
        settings = dict(cfg[stage]["grpo"], deepspeed=None, max_steps=args.steps, save_steps=1000, num_generations=8,
                        per_device_batch_size=8, gradient_accumulation_steps=1, steps_per_generation=None,
                        max_completion_length=args.new_tokens, model_dtype="float32" if args.smoke else "bfloat16",
                        bf16=not args.smoke, report_to=[],
                        lora={"r": 64, "lora_alpha": 128, "target_modules": "all-linear"})
        t0 = time.perf_counter()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        train_grpo(qwen, rows, stage_reward_functions(stage, cfg, terms), settings, work / stage,
                   work / f"{stage}_log.parquet")
        log = pq.read_table(work / f"{stage}_log.parquet").to_pydict()
        figures[f"{stage}_grpo_total_s"] = round(time.perf_counter() - t0, 1)
        figures[f"{stage}_grpo_step_s"] = [round(v, 2) for v in log["step_time_s"]]
        if device == "cuda":
            figures[f"{stage}_grpo_peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            torch.cuda.empty_cache()
        print(json.dumps(figures), flush=True)

    # ---- GRPO steps: LPR on 512x512 crops, GSE on whole frames (8 rows: one image, 8 completions)
    lpr_prompt = S.P.messages(S.P.render(cfg["prompts"], "lpr", "reasoning", question=question["question"]))
    grpo_step("lpr", [{"prompt": lpr_prompt, "image": scene(512, 512, 0), "qtype": "reasoning", "answer": "red",
                       "bbox": [200.0, 200.0, 240.0, 230.0], "points": [[220.0, 215.0], [225.0, 220.0]]}] * 8,
              lpr_rewards.TERMS)
    w, h = cfg["gse_size"]
    grpo_step("gse", [{"prompt": S.gse_prompt(question, cfg), "image": S.gse_image(scene(1920, 1080, 1), cfg),
                       "qtype": "reasoning", "answer": "red", "region": [w / 4, h / 4, w / 4 + 256, h / 4 + 256],
                       "bbox": [w / 4 + 100, h / 4 + 100, w / 4 + 120, h / 4 + 115]}] * 8, gse_rewards.TERMS)

    # ---- SegAnswer stage 3 on the same policy, with the <|seg|> token and SAM 2.1 heads
    from reproseg.models.tiny_bundle import build_tiny_sam2
    from reproseg.seganswer import stage3
    from reproseg.seganswer import synthetic as seg_synthetic
    from reproseg.seganswer.model import SegAnswerModel

    sam_cfg = "configs/sam2.1/sam2.1_hiera_t.yaml" if args.smoke else "configs/sam2.1/sam2.1_hiera_l.yaml"
    seg = seganswer_cfg["stage3"]
    build_tiny_sam2(work / "sam2", {"sam2_config": sam_cfg, "sam2_image_size": 256 if args.smoke else 1024}, seed=0)
    SegAnswerModel.from_base(qwen, work / "sam2", seed=0, dtype="float32" if args.smoke else "bfloat16",
                             device=device).save_pretrained(work / "seganswer")
    if device == "cuda":
        torch.cuda.empty_cache()
    real_rollout = stage3.rollout_batch

    def seg_first(model, prompts, s, lm=None, generators=None, samplers=None):
        """Turn 1 is `<|seg|><|im_end|>`; the later turns are sampled."""
        tok = model.processor.tokenizer
        seg_id, end = tok.convert_tokens_to_ids("<|seg|>"), tok.convert_tokens_to_ids("<|im_end|>")

        def script(gen):
            def pick(logits, done):
                if len(done) < 2:
                    return end if done else seg_id
                return int(torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen))
            return pick
        return real_rollout(model, prompts, s, lm=lm, generators=generators, samplers=[script(g) for g in generators])

    stage3.rollout_batch = seg_first
    size = (64, 96) if args.smoke else (1024, 1536)
    t0 = time.perf_counter()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # One rollout batch per step (steps_per_generation 1, not the paper's 16: a step here is
    # one rollout and one update); no refills (random weights score every group alike); LoRA
    # in one process instead of the paper config's ZeRO-3 over 8 GPUs; its activation
    # checkpointing is kept.
    stage3.train_stage3(
        work / "seganswer", seg_synthetic.qa_rows(2, seed=0, size=size), work / "stage3", work / "stage3_log.parquet",
        grpo=dict(seg["grpo"], deepspeed=None, max_steps=args.steps, epochs=None, save_steps=1000, candidate_every=None,
                  per_device_batch_size=2 * seg["grpo"]["num_generations"], steps_per_generation=1,
                  model_dtype="float32" if args.smoke else "bfloat16", bf16=not args.smoke, report_to=[],
                  lora={"r": 64, "lora_alpha": 128, "target_modules": "all-linear"}),
        settings=dict(seg["settings"], dynamic_sampling=False, processes=1,
                      rollout=dict(seg["settings"]["rollout"], max_turn_tokens=args.new_tokens,
                                   max_completion_tokens=3 * args.new_tokens)))
    stage3.rollout_batch = real_rollout
    log = pq.read_table(work / "stage3_log.parquet").to_pydict()
    figures["seganswer_stage3_total_s"] = round(time.perf_counter() - t0, 1)
    figures["seganswer_stage3_step_s"] = [round(v, 2) for v in log["step_time_s"]]
    if device == "cuda":
        figures["seganswer_stage3_peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        torch.cuda.empty_cache()
    print(json.dumps(figures), flush=True)

    # ---- two-stage inference, one image at a time as in the paper's Table A4
    from reproseg.models.generation import Policy
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    policy = Policy(str(qwen), device=device, dtype="float32" if args.smoke else "bfloat16")
    sam = SAM2ImagePredictor(build_sam2(sam_cfg, ckpt_path=None, device=device))
    row = {"task_type": "reasoning", "question": "What colour is the car?", "options": [], "option_letters": []}
    gse_s, lpr_s, sam_s = [], [], []
    for i in range(4):
        frame = scene(3840, 2160, 100 + i)
        sync()
        t = time.perf_counter()
        policy.generate([S.gse_image(frame, cfg)], [S.gse_prompt(row, cfg)], args.new_tokens)
        gse_s.append(time.perf_counter() - t)
        crop = frame.crop((1000, 1000, 1512, 1512))
        t = time.perf_counter()
        prompt = S.P.messages(S.P.render(cfg["prompts"], "lpr", "reasoning", question=row["question"]))
        policy.generate([crop], [prompt], args.new_tokens)
        lpr_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        import numpy as np
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=not args.smoke):
            sam.set_image(np.asarray(crop))
            sam.predict(box=np.array([200, 200, 240, 230], np.float32),
                        point_coords=np.array([[220, 215], [225, 220]], np.float32),
                        point_labels=np.ones(2, np.int32), multimask_output=False)
        sync()
        sam_s.append(time.perf_counter() - t)
    # the first image includes warm-up; report the rest
    figures.update({
        "new_tokens": args.new_tokens,
        "gse_s_per_image": round(sum(gse_s[1:]) / 3, 2),
        "lpr_s_per_image": round(sum(lpr_s[1:]) / 3, 2),
        "sam2_large_s_per_image": round(sum(sam_s[1:]) / 3, 3),
        "lpr_plus_sam2_s_per_image": round((sum(lpr_s[1:]) + sum(sam_s[1:])) / 3, 2),
        "paper_table_a4_s_per_image": {"GSE": 7.31, "LPR+SAM2": 5.57, "hardware": "A100"},
    })
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
