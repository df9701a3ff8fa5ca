"""The model folder: atomic save, validated load, exact resume (folder.py); the one-writer lock
(lock.py); the model card and loss plot (card.py)."""
