"""slimstep: small one-step generators distilled from diffusion / flow-matching teachers."""
from slimstep._version import __version__ as __version__


def load(path, device="cpu"):
    """Load a checkpoint directory (or a ``slimstep run`` stage folder) as a
    :class:`slimstep.generator.Generator`."""
    from slimstep.generator import load as _load  # why here: `import slimstep` stays free of torch

    return _load(path, device)


def save(generator, path):
    """Write a :class:`~slimstep.generator.Generator` as a checkpoint directory."""
    from slimstep.generator import save as _save  # why here: as load

    return _save(generator, path)
