"""The mask explorer: type a sentence, hide parts of it, read what a checkpoint believes.

`worker` computes (store reads, predictions) off the UI thread, `render` turns results into Rich
`Text`, `widget` is the editable sentence and `screen` puts them together. Nothing here imports
torch at import time; the app imports this package only when the explorer is opened.
"""

from mlmlab.tui.explorer.screen import MaskExplorerScreen

__all__ = ["MaskExplorerScreen"]
