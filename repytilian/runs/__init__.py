"""A training run, cut along its ideas: options.py (what is asked), assemble.py (the model, data and
configs before the loop), running.py (the loop, trackers, signals and the save), keep.py (what a run
keeps: best/, checkpoints, the last good model). `api.train` is the front door."""
