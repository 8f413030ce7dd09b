"""``slimstep data``: real samples of a built-in data set, written as a samples ``.npz``
(what ``slimstep eval --samples`` scores, e.g. as a reference)."""

from __future__ import annotations

from slimstep.data import load_data
from slimstep.files import write_npz
from slimstep.outdir import check_path, output_path


def cmd_data(a) -> None:
    check_path(a.out, a.overwrite)
    data = load_data(a.name)
    x, y = data.reference(a.n, split=a.split, seed=a.seed)
    arrays = {"samples": x.numpy(), "data": a.name}
    if y is not None:
        arrays["labels"] = y.numpy()
    with output_path(a.out, a.overwrite):
        write_npz(a.out, **arrays)
    print(f"{len(x)} real samples of {a.name} ({a.split}) -> {a.out}")
