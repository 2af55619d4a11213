"""DeepSpeed ZeRO configs for the Hugging Face Trainer (the GRPO settings' "zero2" / "zero3")."""
from __future__ import annotations


def deepspeed_config(
    stage: int,
    *,
    bf16: bool | str = "auto",
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> dict:
    """A DeepSpeed ZeRO-2 or ZeRO-3 config for the Hugging Face Trainer.

    Batch sizes, accumulation and clipping are "auto": the Trainer fills them from the
    GRPO settings, so the two cannot disagree. bf16 "auto" follows the Trainer's bf16
    flag, which the engine turns on on GPUs only.
    """
    if stage not in (2, 3):
        raise ValueError(f"ZeRO stage must be 2 or 3, got {stage}")
    zero: dict = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 2:
        zero.update(allgather_partitions=True, allgather_bucket_size=2e8, reduce_scatter=True)
    else:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_max_live_parameters=1e9,
            stage3_max_reuse_distance=1e9,
            sub_group_size=1e9,
            # the final save needs whole 16-bit weights, not per-rank shards
            stage3_gather_16bit_weights_on_model_save=True,
        )
        if offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        # the Trainer's torch AdamW is used, not a DeepSpeed optimizer
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
