"""SegAnswer (Segmentation before Answering): model, losses, three training stages, evaluation.

Stage functions the workflow calls (each writes a reloadable SegAnswer directory):
    stage1.train_stage1_projector(qwen_dir, sam2_path, rows, out_dir, settings, log_path)   phase a
    stage1.train_stage1_lora(phase_a_dir, rows, out_dir, settings, log_path)               phase b (unmerged)
    model.merge_lora(phase_b_dir, out_dir)                                                 merged stage 1
    stage2.train_stage2(stage1_dir, rows, out_dir, settings, log_path)                     interleaved SFT
    stage3.train_stage3(stage2_dir, rows, out_dir, log_path, grpo, settings)               DAPO -> out_dir/checkpoint
    evaluate.evaluate_referring(model, rows) / evaluate_referring_given(model, rows)       Table 3 (generated / given)
    evaluate.answer_questions(model, rows) + qa_accuracy                                   Table 1
The workflow evaluates every checkpoint (base, stage 1, 2, 3: workflow_stages.evaluate_stage)
and lays them side by side (paper_tables); the embedded default trains on
sources.shapes, a task a tiny random model learns in a minute.
"""
