"""Dr. Seg: the Look-to-Confirm format rewards and the distribution-ranked accuracy reward
(`rewards`), usable by any GRPO stage of the engine."""
