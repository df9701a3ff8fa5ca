"""What depends on the machine, and nothing else: the precision policy (precision.py), CPU settings
(cpu.py), file I/O that survives crashes (fileio.py), progress for people (progress.py)."""
