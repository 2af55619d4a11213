"""The paper-agnostic GRPO engine on TRL: `engine` (settings, train_grpo, export),
`trainer` (the GRPOTrainer subclass), `callbacks` (step log, stop, candidates),
`launch` (one process per GPU for a GRPO job), `deepspeed` (ZeRO configs)."""
