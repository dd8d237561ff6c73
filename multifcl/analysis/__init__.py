"""Looking inside a finished run: CKA drift, diffused redundancy, neural collapse, equizero.

`python -m multifcl.analysis RUN_DIR` (or `multifcl analyze RUN_DIR`) writes `analysis.md`
into a run directory that kept its per-task checkpoints (`save-task-checkpoints = true`).
"""
