"""Whisper: model resolution (never downloaded), the two engines behind one batched interface, the CTranslate2
reader/converter, and the fine-tuning steps (loss, checkpoints, evaluation) that ``pipeline.run.train`` drives."""
