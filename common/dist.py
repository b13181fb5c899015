"""The one "is a process group up?" question, asked the same way everywhere."""


def is_distributed() -> bool:
    """True when torch.distributed is built in and a process group is initialised (collectives are then needed)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()
