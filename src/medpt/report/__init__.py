"""`medpt report` (command), the curves every run draws (curves) and the model card of a run (card)."""
