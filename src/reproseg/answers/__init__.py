"""Reading and judging model answers, shared by rewards and metrics of every paper.

- `parsing`: the <think>/<answer> blocks and the JSON objects inside them;
- `geometry`: boxes and points (IoU, L1, containment);
- `qa`: the one home of the MVQA / OVQA answer rules.
"""
