"""The research layer: the loop's state machine, proposals, the gate, integrity of each result."""
