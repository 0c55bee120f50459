"""The app's screens: the runs table, a run's detail, compare, the new-run form and the dialogs.

`base` holds what they share (live polling, plot keys, common bindings). The mask explorer, the
one screen with a package of its own, lives in `mlmlab/tui/explorer/`.
"""
