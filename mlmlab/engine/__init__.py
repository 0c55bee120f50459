"""The training engine: everything a run process does between a validated config and its last checkpoint.

One job per module, in the order a run uses them: `data` (the corpus as token tensors), `schedule`
(learning rate and sequence length per step), `step` (one optimizer step, the optimizer, compilation),
`state` (the model, optimizer and generators a step and a checkpoint need, built once), `metrics`
(the on-device window between log lines), `evaluation` (held-out figures and samples), `recorder`
(what rank 0 writes to the store), `reporting` (how a run tells its caller) and `trainer` (the loop,
checkpoints, signals, DDP). Nothing here imports the UI.
"""
