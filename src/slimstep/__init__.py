"""slimstep: small one-step generators distilled from diffusion / flow-matching teachers."""
__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a checkpoint directory as a :class:`slimstep.generator.Generator`."""
    from slimstep.generator import load as _load

    return _load(path, device)
