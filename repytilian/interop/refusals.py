"""Why torch's safe unpickler (torch.load(weights_only=True)) refused a file, in our words.

Its own message goes on to advise loading the file again without that safeguard, which runs
whatever code the file holds: that advice never reaches a user of Repytilian.
"""
from __future__ import annotations

import re


def refusal(error: Exception, allowed: str = "tensors and plain data") -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    if found:
        return f"it asks for {found.group(1)}, which is not among the {allowed} it may hold"
    return "it is damaged, or it is not a file of tensors saved by PyTorch"
