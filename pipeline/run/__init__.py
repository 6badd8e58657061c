"""Where work runs: the only package that imports Ray (a test enforces it). Jobs describe stages; ``runner`` turns
them into a Ray Data plan, ``train`` runs a fine-tuning loop under Ray Train, ``timing`` records stage times."""
