"""Other tools' formats and services: Hugging Face transformers (hf.py), nanoGPT checkpoints
(nanogpt.py), the original Repytilian's pickled folders (legacy.py), W&B and TensorBoard (trackers.py)."""
