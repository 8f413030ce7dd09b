"""``python -m slimstep.cli``: the ``slimstep`` command (also under ``torchrun -m``)."""

import sys

from slimstep.cli import main

if __name__ == "__main__":  # importing this module (a walk over the package) runs nothing
    sys.exit(main())
