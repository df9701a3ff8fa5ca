"""Training on several processes (GPUs, machines) under `torchrun`: PyTorch's own engine, our policy.

torchrun starts the processes, finds their peers and tells each its rank through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, ...). `World` reads that, opens the process group (NCCL on CUDA,
Gloo on CPU) with a timeout, and offers the few collective steps training needs: agreeing to stop
at the same step, averaging a loss, checking the ranks prepared the same data. Without torchrun it
is a world of one, and every method is free.
"""
from .world import CommunicationError, World

__all__ = ["CommunicationError", "World"]
