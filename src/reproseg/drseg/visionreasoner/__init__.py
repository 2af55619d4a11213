"""Dr. Seg's own setting: VisionReasoner's multi-object task (Dr. Seg sec. 4.1, 5.1).

Modules, each named for what it holds:
    task        the prompts, the answer format, reading an answer's objects, and the
                840x840 policy frame (image resize, coordinates back to the original)
    rewards     the reward terms, `term(parsed, gt, profile) -> float`, on top of
                reproseg.drseg.rewards (VisionReasoner's four terms, Dr. Seg's
                Look-to-Confirm and distribution-ranked accuracy), and TRL reward functions
    data        the importer of the released training set (VisionReasoner_multi_object_7k_840)
    benchmarks  the importers of the evaluation sets (RefCOCO/+/g, ReasonSeg, REC, COCO,
                Pixmo-Count, CountBench) from their owners' parquet columns
    metrics     gIoU / cIoU from SAM2 masks, REC accuracy, counting, COCO AP (COCOeval)

Sources read (facts only): dvlab-research/VisionReasoner @ a455092 (evaluation/*,
vision_reasoner/models/vision_reasoner_model.py), dvlab-research/Seg-Zero @ 42a3345
(verl/utils/rl_dataset.py, prepare_dataset/gen_training_dataset.py,
evaluation_scripts/create_reasonseg_hf.py, verl/utils/reward_score/vision_reasoner.py),
xVI-group-SCU/Dr-Seg @ 1873f80 (verl/utils/rl_dataset.py, evaluation_scripts/evaluation_drseg.py).
"""
