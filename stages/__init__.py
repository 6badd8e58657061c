"""The steps of wspsr's jobs: one module per stage, each a plain function over a batch plus an options dataclass.

Nothing here imports Ray; ``pipeline.run.runner`` decides where and how a stage runs.
"""
