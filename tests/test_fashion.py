"""Fashion-MNIST: the idx reader on files in the real format, its errors, the classifier
protocol. The files are written here (tiny); the real ones are used where installed."""

import gzip
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slimstep.cli import main
from slimstep.data import DataError, load_data
from slimstep.data.fashion import DEFAULT_DIR, read_idx
from slimstep.eval import evaluate


def _benchmark():
    """benchmarks/fashion.py, imported as the module ``fashion`` (it is a script, not a package)."""
    where = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if where not in sys.path:
        sys.path.insert(0, where)
    import fashion

    return fashion

def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """An idx file as LeCun's format defines it: magic (0, 0, 0x08 = uint8, ndim), sizes, data."""
    head = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = head + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_fashion(folder: Path, n_train=24, n_test=12, gz=True, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28))
        if split == "train":  # two known images; the test split keeps none of them (no copies across splits)
            x[0] = 0
            x[1] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte{sfx}", x, gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{sfx}", np.arange(n) % 10, gz)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_reader_reads_the_real_format_gzipped_or_not(tmp_path, gz):
    root = make_fashion(tmp_path / "fm", gz=gz)
    ds = load_data(f"fashion-mnist:{root}")
    assert ds.info.shape == (1, 28, 28) and ds.info.num_classes == 10 and ds.info.kind == "image"
    assert ds.x.shape == (24, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.x[0].max() == -1.0 and ds.x[1].min() == 1.0  # uint8 0 -> -1, 255 -> 1
    raw = read_idx(root / f"train-images-idx3-ubyte{'.gz' if gz else ''}", 3)
    assert torch.equal(ds.x[5, 0], torch.from_numpy(raw[5].astype(np.float32) / 127.5 - 1))
    assert ds.y.tolist() == [i % 10 for i in range(24)]
    x, y = ds.reference(split="test")
    assert x.shape == (12, 1, 28, 28) and y.tolist()[:3] == [0, 1, 2]
    xb, yb = ds.draw(7, torch.Generator().manual_seed(0))
    assert xb.shape == (7, 1, 28, 28) and yb.shape == (7,)


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimstep: error:") and "\n" not in err, err
    return err


def test_bad_files_are_one_error_line(tmp_path, capsys):
    out = str(tmp_path / "x.npz")
    root = make_fashion(tmp_path / "magic", gz=False)
    p = root / "train-images-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x09\x03" + p.read_bytes()[4:])  # element type 0x09: not unsigned bytes
    assert "magic number 0x00000903, expected 0x00000803" in _cli_error(capsys, ["data", f"fashion-mnist:{root}",
                                                                                 "--split", "train", "--out", out])
    root = make_fashion(tmp_path / "cut", gz=True)
    p = root / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-100]))
    assert "truncated" in _cli_error(capsys, ["data", f"fashion-mnist:{root}", "--split", "train", "--out", out])
    root = make_fashion(tmp_path / "count", gz=True)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(23), True)
    assert "24 images but 23 labels" in _cli_error(capsys, ["data", f"fashion-mnist:{root}", "--split", "train",
                                                           "--out", out])
    root = make_fashion(tmp_path / "gzip", gz=True)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    assert "cannot read" in _cli_error(capsys, ["data", f"fashion-mnist:{root}", "--out", out])
    assert not Path(out).exists()


def test_missing_files_name_the_four_files_and_where_to_put_them(tmp_path, capsys):
    err = _cli_error(capsys, ["data", f"fashion-mnist:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "x.npz")])
    assert "train-images-idx3-ubyte.gz" in err and "t10k-labels-idx1-ubyte.gz" in err and "dataset-fashion-mnist" in err
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        load_data(f"fashion-mnist:{tmp_path / 'half'}")


def test_classifier_protocol_scores_with_its_floor(tmp_path):
    """FD / precision / recall / coverage / copy rate in the shipped classifier's features,
    the test split as the floor; copies of the train split score below the floor."""
    from slimstep.eval.features import FashionClassifier

    clf = FashionClassifier.load()
    assert clf.feature_dim == 256 and clf.info["test_accuracy"] > 0.85
    root = make_fashion(tmp_path / "fm", n_train=40, n_test=20)
    spec = f"fashion-mnist:{root}"
    noise = torch.rand(20, 1, 28, 28) * 2 - 1
    r = evaluate(noise, spec)
    json.dumps(r)
    assert {"fd", "precision", "recall", "class_coverage", "copy_rate"} <= set(r["metrics"])
    assert r["floor_n"] == 20 and r["floor"]["copy_rate"] == pytest.approx(0.05, abs=0.05)
    copies = load_data(spec).x[:20]
    c = evaluate(copies, spec)
    assert c["metrics"]["copy_rate"] == 1.0
    assert "fashion-mnist classifier" in r["features"]


@pytest.mark.skipif(not Path(DEFAULT_DIR).is_dir(), reason=f"the Debian package's files are not in {DEFAULT_DIR}")
def test_the_real_files_and_the_shipped_classifier_accuracy():
    from slimstep.data.fashion import load_fashion_split
    from slimstep.eval.features import FashionClassifier

    x, y = load_fashion_split("test")
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
    clf = FashionClassifier.load()
    acc = (clf.logits(x).argmax(1) == y).double().mean().item()
    assert acc == pytest.approx(clf.info["test_accuracy"], abs=1e-6)


def test_fashion_recipes_load_and_share_their_teacher_with_the_claims():
    """fashion/all and fashion/claims resolve; the claims' teacher, pairs and seed-0 arms hash
    as fashion/all's (benchmarks/fashion.py links them in, so nothing trains twice)."""
    from slimstep.run import load_recipe

    ev, stages = load_recipe("fashion/all")
    assert ev["n"] == 10000 and len(ev["seeds"]) >= 3
    main_h = {s.name: s.hash for s in stages}
    _, claims = load_recipe("fashion/claims")
    claim_h = {s.name: s.hash for s in claims}
    assert claim_h["teacher"] == main_h["teacher"] and claim_h["pairs"] == main_h["pairs"]
    assert claim_h["anneal-flip-s0"] == main_h["annealing-reflow-16"]
    assert claim_h["gdd-i-s0"] == main_h["gdd-i"] and claim_h["gdd-s1"] != main_h["gdd"]
    assert len({claim_h[f"reflow-noflip-s{s}"] for s in range(3)}) == 3  # the seeds train apart


def test_the_claims_run_reuses_the_main_runs_models_and_scored_seeds(tmp_path):
    """benchmarks/fashion.py --claims: the stages fashion/all trained are linked into the
    claims run, and their scored seeds copied, so neither is trained or scored again."""

    from slimstep.run import load_recipe, model_dir, score_samples, stage_dir

    bench = _benchmark()

    main_out, claims_out = tmp_path / "main", tmp_path / "claims"
    _, stages = load_recipe("fashion/all")
    by = {s.name: s for s in stages}
    model_dir(main_out, by["teacher"]).mkdir(parents=True)
    model_dir(main_out, by["annealing-reflow-16"]).mkdir(parents=True)
    drawn = []

    def make(seed, n):
        drawn.append(seed)
        return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)), None, 0.1, {}

    ev = {"n": 100, "seeds": [0, 1]}
    t = by["teacher"]
    _, claims = load_recipe("fashion/claims")
    cby = {s.name: s for s in claims}
    # The claims folder holds scores and samples of an older teacher; the main folder, of the
    # current one, and of another model (an old hash) in its euler-2 row.
    score_samples(make, "toy2d:moons", ev, "old", stage_dir(claims_out, cby["teacher"]), model="old reference")
    score_samples(make, "toy2d:moons", ev, "e2", stage_dir(main_out, t) / "euler-2", model="old euler-2")
    ref = score_samples(make, "toy2d:moons", ev, "ref", stage_dir(main_out, t), model=f"{t.hash} reference")
    score_samples(make, "toy2d:moons", ev, "e1", stage_dir(main_out, t) / "euler-1", model=f"{t.hash} euler-1")
    del drawn[:]
    bench.link_finished(main_out, claims_out)
    assert not (stage_dir(claims_out, cby["teacher"]) / "euler-2").exists()  # another model's: not copied
    assert model_dir(claims_out, cby["teacher"]).resolve() == model_dir(main_out, t).resolve()
    assert model_dir(claims_out, cby["anneal-flip-s0"]).is_symlink()
    assert not model_dir(claims_out, cby["anneal-flip-s1"]).exists()  # not trained by fashion/all
    again = score_samples(make, "toy2d:moons", ev, "ref", stage_dir(claims_out, cby["teacher"]),
                          model=f"{t.hash} reference")
    score_samples(make, "toy2d:moons", ev, "e1", stage_dir(claims_out, cby["teacher"]) / "euler-1",
                  model=f"{t.hash} euler-1")
    assert drawn == [] and again["per_seed"] == ref["per_seed"]  # nothing drawn, nothing scored
    bench.link_finished(main_out, claims_out)  # a rerun changes nothing and does not fail


def test_summary_rows_and_paired_claims():
    _benchmark()
    from fashion import claims, discrimination, fashion_table, headline, paired, summary

    def row(stage, kind, method, fd, sd=0.1, **kw):
        return {"name": kw.pop("name", stage), "stage": stage, "kind": kind, "method": method, "n": 10000,
                "seeds": [0, 1000, 2000], "metrics": {"fd": fd}, "metrics_sd": {"fd": sd},
                "floor": {"fd": 0.3}, "params": 100, "nfe": 1, "teacher": kw.pop("teacher", None), **kw}

    def stage(kind, method=None, **deps):
        return {"kind": kind, "deps": deps, "hash": f"h-{method}", "config": {"method": {"name": method}} if method
                else None}

    stages = {"t": stage("teacher", "flow_matching"), "g": stage("distill", "gdd", teacher="t"),
              "d": stage("teacher", "flow_matching"), "fm": stage("distill", "flowmap", teacher="d"),
              "slt": stage("distill", "slt", teacher="fm"), "scr": stage("screen", student="slt")}
    rows = [row("t", "teacher", "flow_matching", 40.0, name="t euler-1", curve=True, teacher="t"),
            row("t", "teacher", "flow_matching", 20.0, name="t euler-2", curve=True, nfe=2, teacher="t"),
            row("t", "teacher", "flow_matching", 4.0, name="t heun-16 (reference)", reference=True, nfe=32,
                teacher="t"),
            row("g", "distill", "gdd", 3.5, teacher="t"),
            row("d", "teacher", "flow_matching", 5.0, name="d heun-16 (reference)", reference=True, teacher="d"),
            row("fm", "distill", "flowmap", 6.0, teacher="d"), row("slt", "distill", "slt", 7.0, teacher="d"),
            row("scr", "screen", "screen", 6.5, teacher="d")]
    s = summary({"rows": rows, "stages": stages})
    assert s["n"] == 10000 and s["seeds"] == [0, 1000, 2000] and s["floor_fd"] == 0.3
    by = {r["name"]: r for r in s["rows"]}
    assert "t euler-2" not in by  # the curve's other points are not summary rows
    assert by["t euler-1"] == {"name": "t euler-1", "method": "teacher", "teacher": "t", "nfe": 1, "params": 100,
                               "fd_mean": 40.0, "fd_sd": 0.1, "reference": False}
    assert by["t heun-16 (reference)"]["reference"] and by["g"]["teacher"] == "t" and by["g"]["method"] == "gdd"
    assert by["slt"]["teacher"] == "fm" and by["fm"]["reference"] and by["scr"]["teacher"] == "fm"
    assert by["scr"]["method"] == "slt"  # a screening row's method is its student's registry name
    rows[3]["macs"] = 2_500_000  # the table (fashion.md) shows each row's MACs beside its NFE
    table = fashion_table({"rows": rows, "stages": stages}, s)
    assert "MACs / sample" in table[0] and "| g | gdd | t | 1 | 2.5M | 100 |" in "\n".join(table)
    ratio = {line.split(" | ")[0][2:]: line.split(" | ")[9:11] for line in table[2:]}
    assert ratio["g"] == ["0.875x", "yes"] and ratio["t euler-1"] == ["10x", ""]
    # the flow map is the DiT teacher's student and SLT's reference: each is compared with its own
    assert ratio["fm"] == ["1.2x", "yes"] and ratio["slt"] == ["1.17x", "yes"] and ratio["scr"] == ["1.08x", "yes"]
    assert ratio["d heun-16 (reference)"] == ["", ""] and ratio["t heun-16 (reference)"] == ["", ""]
    rows[2]["samples_per_s"], rows[3]["samples_per_s"] = 10.0, 250.0
    head = headline(s, {"rows": rows})
    assert "N = 10,000 samples per seed, mean ± sd over 3 sample seeds" in head[0] and "scores 0.3." in head[0]
    assert head[2:] == [  # one line per multi-step teacher; SLT is compared with its flow map, not here
        "- **t** (100 parameters) at its reference sampler, 32 NFE: FD 4 ± 0.1; at 1 step 40. Best one-step "
        "student: g (gdd), FD 3.5 ± 0.1 = 0.88× the teacher's, with 1× its parameters, 25× its samples/s.",
        "- **d** (100 parameters) at its reference sampler, 1 NFE: FD 5 ± 0.1. Best one-step student: fm "
        "(flowmap), FD 6 ± 0.1 = 1.20× the teacher's, with 1× its parameters."]
    checks = discrimination(s, {"rows": rows}, teacher="t")
    assert "0.0577 = 1.44 % of 4 (target <= 2 %): **met**" in checks[0]  # 0.1 / sqrt(3)
    assert "37.0 spreads above (target > 3): **met**" in checks[1]  # (4 - 0.3) / 0.1
    assert "teacher at 1 step: FD 40 = 10.0x its reference (target >= 5x): **met**" in checks[2]
    wide = {**s, "rows": [{**r, "fd_sd": 0.2} if r["reference"] else r for r in s["rows"]]}
    assert "at this spread 7 seeds would meet it): **not met**" in discrimination(wide, {"rows": rows}, "t")[0]
    assert "not scored yet" in discrimination(s, {"rows": rows})[0]  # no stage named "teacher" here
    # a row scored on one seed has no spread (null), not a spread of 0
    rows[2]["failed_seeds"] = [{"seed": 1000, "error": "x"}, {"seed": 2000, "error": "x"}]
    one = summary({"rows": rows, "stages": stages})
    assert next(r for r in one["rows"] if r["reference"] and r["teacher"] == "t")["fd_sd"] is None
    assert "one seed only" in discrimination(one, {"rows": rows}, "t")[0]
    assert "FD 4 (one seed)" in headline(one, {"rows": rows})[2]
    del rows[2]["failed_seeds"]
    assert summary({"rows": [], "stages": {}, "eval": {"n": 10, "seeds": [0]}})["floor_fd"] is None
    p = paired([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert p["diffs"] == [-1.0, -2.0, -3.0] and p["mean"] == -2.0 and p["se"] == pytest.approx(1 / 3 ** 0.5)
    assert p["verdict"] == "A better"
    def arm(stage, fds, failed=()):
        seeds = [0, 1000, 2000]
        return {"stage": stage, "seeds": seeds, "failed_seeds": [{"seed": x, "error": "nan"} for x in failed],
                "per_seed": [{"fd": f, "recall": 0.5} for x, f in zip(seeds, fds, strict=True) if x not in failed],
                "metrics": {"fd": 0.0}}

    fd_rows = [arm(f"{a}-s{k}", [fd + k] * 3) for a, fd in (("gdd-i", 3.0), ("gdd", 3.1)) for k in range(3)]
    c = {r["a"]: r for r in claims({"rows": fd_rows})["claims"]}
    assert c["gdd-i"]["mean"] == pytest.approx(-0.1) and c["gdd-i"]["verdict"] == "A better"  # sd 0: exact
    assert c["gdd-i"]["pairs_over"] == "training seeds" and c["gdd-i"]["sample_seeds"] == [[0, 1000, 2000]]
    assert c["anneal-flip"]["missing"]
    # an arm that failed a sample seed: both arms of that pair are scored on the seeds they share
    fd_rows[3] = arm("gdd-s0", [3.1, 99.0, 3.1], failed=(1000,))
    fd_rows[0] = arm("gdd-i-s0", [3.0, 50.0, 3.0])
    c = {r["a"]: r for r in claims({"rows": fd_rows})["claims"]}
    assert c["gdd-i"]["fd_a"][0] == 3.0 and c["gdd-i"]["mean"] == pytest.approx(-0.1)
    assert c["gdd-i"]["sample_seeds"] == [[0, 1000, 2000], [0, 2000]]


def test_best_student_and_screening_claims_pair_on_one_protocol():
    """The best one-step student vs its teacher's reference: over the claims run's training
    seeds where its recipe has arms there (matched by hash), else over sample seeds; realism
    screening vs unscreened SLT over the sample seeds both scored, with the time ratio of 128
    candidates to two samples of the flow map SLT re-distils."""
    _benchmark()
    from fashion import best_vs_teacher, claims_table, screening_claim

    seeds = [0, 1000, 2000]

    def row(stage, fds, failed=(), **kw):
        kept = [f for x, f in zip(seeds, fds, strict=True) if x not in failed]
        return {"name": kw.pop("name", stage), "stage": stage, "method": kw.pop("method", "gdd"), "nfe": 1,
                "n": 10000, "seeds": seeds, "params": 10, "teacher": "teacher", "floor": {"fd": 0.5},
                "failed_seeds": [{"seed": x, "error": "nan"} for x in failed],
                "per_seed": [{"fd": f, "recall": r} for f, r in kept],
                "metrics": {"fd": sum(f for f, _ in kept) / len(kept)},
                "metrics_sd": {"fd": 0.1}, **kw}

    def st(kind, method, h, **deps):
        return {"kind": kind, "hash": h, "deps": deps, "config": {"method": {"name": method}}, "params": {}}

    ref = row("teacher", [(10.0, 0.8)] * 3, method="flow_matching", reference=True, nfe=32)
    main = {"stages": {"teacher": st("teacher", "flow_matching", "ht"), "gdd": st("distill", "gdd", "hg"),
                       "dmd2": st("distill", "dmd2", "hd")},
            "rows": [ref, row("gdd", [(9.0, 0.8)] * 3), row("dmd2", [(12.0, 0.8)] * 3, method="dmd2")]}
    alone = best_vs_teacher(main, None)  # no claims run: the one trained student, over sample seeds
    assert alone["a"] == "gdd" and alone["pairs_over"] == "sample seeds" and alone["diffs"] == [-1.0] * 3
    cres = {"stages": {"teacher": st("teacher", "flow_matching", "ht"), **{
                f"gdd-s{k}": st("distill", "gdd", "hg" if k == 0 else f"hg{k}") for k in range(3)}},
            "rows": [ref, *(row(f"gdd-s{k}", [(9.0 + k, 0.8)] * 3) for k in range(3))]}
    arms = best_vs_teacher(main, cres)
    assert arms["a"] == "gdd" and arms["b"] == "teacher" and arms["pairs_over"] == "training seeds"
    assert arms["seeds"] == [0, 1, 2] and arms["diffs"] == [-1.0, 0.0, 1.0] and arms["verdict"] == "within noise"
    # screening: the two rows failed different seeds; the pairs are over the one both scored
    dit = {"stages": {"fm": st("distill", "flowmap", "hf", teacher="d"),
                      "slt": st("distill", "slt", "hs", teacher="fm"),
                      "scr": {"kind": "screen", "hash": "hx", "deps": {"student": "slt"}, "config": None,
                              "params": {"candidates": 16}}},
           "rows": [row("fm", [(6.0, 0.6)] * 3, method="flowmap", samples_per_s=100.0),
                    row("slt", [(8.0, 0.4), (8.5, 0.4), (9.0, 0.4)], failed=(2000,), method="slt"),
                    row("scr", [(7.0, 0.6), (7.5, 0.6), (99.0, 0.6)], failed=(1000,), method="screen",
                        samples_per_s=20.0)]}
    c = screening_claim(dit, screen="scr", student="slt")
    assert c["seeds"] == [0] and c["diffs"] == [-1.0] and c["pairs_over"] == "sample seeds"
    assert c["recall_ratio"] == pytest.approx(1.5)
    assert c["time_ratio_128_vs_2"] == pytest.approx((128 / 16 / 20.0) / (2 / 100.0))  # 20x
    table = "\n".join(claims_table({"claims": [arms, c]}))
    assert "| training seeds | [0, 1, 2] |" in table and "take 20x the time of two samples" in table


def test_a_failed_stage_still_gives_the_tables_a_bad_command_stops(tmp_path):
    """benchmarks/fashion.py: `slimstep run` exiting 1 (a stage failed; results.json says
    which) lets the tables be written; exit 2 (bad input) or no results stop the script."""
    import subprocess
    _benchmark()
    from fashion import run_recipe

    class Failing:
        def __init__(self, code):
            self.code = code

        def run(self, args):
            raise subprocess.CalledProcessError(self.code, args)

    with pytest.raises(subprocess.CalledProcessError):
        run_recipe(Failing(1), ["run", "fashion/all"], tmp_path)  # no results.json: nothing to table
    (tmp_path / "results.json").write_text("{}")
    run_recipe(Failing(1), ["run", "fashion/all"], tmp_path)
    with pytest.raises(subprocess.CalledProcessError):
        run_recipe(Failing(2), ["run", "fashion/all"], tmp_path)


def test_capacity_controls_stand_beside_the_students_of_their_size():
    """fashion/claims' capacity controls: the small networks trained as the teacher is, each
    beside the best one-step student of its size in the main run and the teacher's reference."""

    from slimstep.run import load_recipe

    _benchmark()
    from fashion import capacity, capacity_table

    _, claims = load_recipe("fashion/claims")
    by = {s.name: s for s in claims}
    _, main_stages = load_recipe("fashion/all")
    main_by = {s.name: s for s in main_stages}
    for control, student in (("capacity-4", "annealing-reflow"), ("capacity-16", "annealing-reflow-16")):
        net = by[control].cfg.to_dict()["net"]
        assert net.pop("dropout") == 0.0 and net == main_by[student].cfg.to_dict()["net"]  # the student's network
        assert by[control].kind == "teacher"
        assert by[control].cfg.to_dict()["train"] == by["teacher"].cfg.to_dict()["train"]  # the teacher's recipe

    def row(stage, fd, **kw):
        return {"stage": stage, "metrics": {"fd": fd}, "metrics_sd": {"fd": 0.1}, "params": 20_241, "nfe": 1, **kw}

    main = {"rows": [row("teacher", 4.0, reference=True, nfe=32), row("teacher", 40.0, curve=True),
                     row("annealing-reflow-16", 14.0), row("slimflow-16", 12.0), row("distill-16", 13.0)]}
    controls = {"rows": [row("capacity-16", 40.0, curve=True), row("capacity-16", 10.0, reference=True, nfe=32)]}
    c = {r["control"]: r for r in capacity(main, controls)}
    assert c["capacity-4"]["missing"]
    assert c["capacity-16"] == {"control": "capacity-16", "size": "1/16 (nf 4)", "params": 20_241, "nfe": 32,
                                "fd": 10.0, "fd_sd": 0.1, "fd_1step": 40.0, "teacher_fd": 4.0,
                                "student": "slimflow-16", "student_fd": 12.0}
    table = "\n".join(capacity_table(list(c.values())))
    assert "| 1/16 (nf 4) | 20,241 | 10 ± 0.1 (32) | 40 | 2.5x | slimflow-16 | 12 | 1.2x |" in table
    assert "| 1/4 (nf 8) | | not run |" in table


def test_inception_scores_each_row_against_the_floor_at_the_same_n(tmp_path, monkeypatch):
    """benchmarks/fashion.py --inception: a row whose kept samples are the test images scores
    exactly the floor; near-constant images score far above it; features are cached (a killed run resumes)."""

    from slimstep.eval import protocol_split
    from slimstep.files import write_npz

    _benchmark()
    from fashion import inception_scores, inception_table

    monkeypatch.setenv("SLIMSTEP_CACHE", str(tmp_path / "cache"))
    spec = f"fashion-mnist:{make_fashion(tmp_path / 'fm', n_train=30, n_test=12)}"

    class FakeInception:  # Inception's interface: 16-d features, a weights key
        key, name, dim, calls = "fake", "fake", 16, 0

        def features(self, x):
            FakeInception.calls += 1
            x = torch.as_tensor(x, dtype=torch.float32).reshape(len(x), 16, -1)
            return x.mean(-1).double()

    test = protocol_split(spec, "test")[0]
    noise = 0.9 + 0.01 * torch.rand(12, 1, 28, 28)  # the fixture's images are uniform noise: this is not
    for name, x in (("copy", test), ("noise", noise)):
        write_npz(tmp_path / f"{name}.npz", samples=x.numpy())
    write_npz(tmp_path / "short.npz", samples=noise[:5].numpy())
    results = {"rows": [{"name": name, "stage": name, "data": spec,
                         "files": {"samples": str(tmp_path / f"{name}.npz")}} for name in ("copy", "noise", "short")],
               "stages": {name: {"hash": f"h-{name}"} for name in ("copy", "noise", "short")}}
    summ = {"rows": [{"name": "copy"}, {"name": "noise"}, {"name": "short"}]}
    inc = inception_scores(results, summ, 10, tmp_path / "inc", net=FakeInception(), log=lambda *a: None)
    assert inc["rows"]["copy"] == inc["floor"]  # the same 10 test images: the same numbers
    assert inc["rows"]["noise"]["fid"] > 5 * inc["floor"]["fid"] > 0
    assert FakeInception.calls == 4  # reference, floor, two rows
    assert inc["left_out"] == ["short (5)"] and "short" not in inc["rows"]  # fewer than N kept samples
    again = inception_scores(results, summ, 10, tmp_path / "inc", net=FakeInception(), log=lambda *a: None)
    assert again == inc and FakeInception.calls == 4  # every set's features read back from the cache
    results["stages"]["noise"]["hash"] = "retrained"
    inception_scores(results, summ, 10, tmp_path / "inc", net=FakeInception(), log=lambda *a: None)
    assert FakeInception.calls == 5  # a retrained stage is scored again, not read from its old features
    table = "\n".join(inception_table(inc))
    assert "| copy | " in table and "1x |" in table


@pytest.mark.slow
def test_every_fashion_stage_kind_runs_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    """fashion/all's stage configs, shrunk to a few steps and tiny widths, through `slimstep run`
    on idx files written here: teacher -> pairs -> annealing reflow -> slimflow, GDD-I, the DiT
    teacher -> flowmap -> SLT -> realism screening, the DMD2 / ECT / sCD baselines; each row
    scored on the Fashion-MNIST protocol."""
    from slimstep.run import run

    cfg = Path(__file__).resolve().parents[1] / "src" / "slimstep" / "configs" / "fashion"
    root = make_fashion(tmp_path / "fm", n_train=48, n_test=24)
    tiny = ["train.steps=2", "train.ckpt_every=2", "train.batch_size=8", "train.log_every=1"]
    dit = ["net.hidden_size=16", "net.depth=2", "net.num_heads=2"]
    stages = {
        "teacher": {"kind": "teacher", "config": f"{cfg}/teacher.yaml", "overrides": [*tiny, "net.nf=4"]},
        "pairs": {"kind": "pairs", "teacher": "teacher", "n": 32, "solver": "euler", "steps": 2},
        "reflow": {"method": "annealing-reflow", "config": f"{cfg}/annealing-reflow.yaml", "teacher": "teacher",
                   "pairs": "pairs", "overrides": [*tiny, "net.nf=4", "method.anneal_steps=1"]},
        "slimflow": {"method": "slimflow", "config": f"{cfg}/slimflow.yaml", "teacher": "teacher",
                     "pairs": "pairs", "init": "reflow", "overrides": tiny},
        "gdd-i": {"method": "gdd-i", "config": f"{cfg}/gdd-i.yaml", "teacher": "teacher",
                  "overrides": [*tiny, "method.disc_options.conv.channels=8"]},
        "dmd2": {"method": "dmd2", "config": f"{cfg}/dmd2.yaml", "teacher": "teacher", "overrides": tiny},
        "ect": {"method": "ect", "config": f"{cfg}/ect.yaml", "teacher": "teacher", "overrides": tiny},
        "dit": {"kind": "teacher", "config": f"{cfg}/dit-teacher.yaml", "overrides": [*tiny, *dit]},
        "scd": {"method": "scd", "config": f"{cfg}/scd.yaml", "teacher": "dit", "overrides": tiny},
        "flowmap": {"method": "flowmap", "config": f"{cfg}/flowmap.yaml", "teacher": "dit", "overrides": tiny},
        "slt": {"method": "slt", "config": f"{cfg}/slt.yaml", "teacher": "flowmap",
                "overrides": [*tiny, "net.hidden_size=16", "net.num_heads=2", "method.bank=64"]},
        "screen": {"kind": "screen", "student": "slt", "candidates": 2, "scorer": "realism", "select": "resample",
                   "realism": {"steps": 2}},
    }
    body = {"title": "tiny fashion", "eval": {"n": 24, "seeds": [0], "teacher_nfes": [1], "speed_batch": 4},
            "stages": stages}
    (tmp_path / "r.yaml").write_text(json.dumps(body))
    res = run(tmp_path / "r.yaml", tmp_path / "out", jobs=1, log=lambda *a: None, data=f"fashion-mnist:{root}")
    assert not res["failed"], res["failed"]
    names = {r["stage"] for r in res["rows"]}
    assert names == {"teacher", "reflow", "slimflow", "gdd-i", "dmd2", "ect", "dit", "scd", "flowmap", "slt",
                     "screen"}
    assert all("fd" in r["metrics"] and r["floor"]["fd"] >= 0 for r in res["rows"])
    # the benchmark's tables read this results layout (one seed: no spreads)
    _benchmark()
    from fashion import best_vs_teacher, discrimination, fashion_table, headline, screening_claim, summary

    summ = summary(res)
    name = {r["stage"]: r["name"] for r in res["rows"] if not r.get("curve")}
    by = {r["name"]: r for r in summ["rows"]}
    assert by[name["slt"]]["teacher"] == "flowmap" and by[name["flowmap"]]["reference"]
    assert by[name["screen"]]["teacher"] == "flowmap"
    assert all(r["fd_sd"] is None for r in summ["rows"])
    assert len(fashion_table(res, summ)) == 2 + len(summ["rows"])
    assert "one seed only" in discrimination(summ, res)[0] and headline(summ, res)[2].startswith("- **teacher**")
    assert best_vs_teacher(res, None)["pairs_over"] == "sample seeds"
    assert screening_claim(res, screen="screen")["seeds"] == [0]
    # `fashion.py --discrimination` scores the teacher under the run's own keys: the seeds the run
    # kept are read back, nothing is drawn again (and a full run after it reuses what it scored)
    from fashion import teacher_results

    import slimstep.run.evaluate as evaluate
    from slimstep.run import load_recipe, teacher_rows

    def no_draw(*a, **k):
        raise AssertionError("a kept seed was drawn again")

    ev, recipe = load_recipe(tmp_path / "r.yaml", data=f"fashion-mnist:{root}")
    st = next(s for s in recipe if s.name == "teacher")
    ran = [r for r in res["rows"] if r["stage"] == "teacher"]
    # a curve row drawn again beside a reference read back: each row keeps its own NFE
    shutil.rmtree(tmp_path / "out" / "teacher" / "euler-1" / "seeds")
    redrawn = teacher_rows(tmp_path / "out", st, ev, [1])
    assert [r["nfe"] for r in redrawn] == [r["nfe"] for r in ran] and ran[-1]["nfe"] > 1
    monkeypatch.setattr(evaluate.samples, "draw", no_draw)
    again = teacher_results(teacher_rows(tmp_path / "out", st, ev, [1]), st)
    assert [(r["name"], r["metrics"], r["nfe"]) for r in again["rows"]] == [(r["name"], r["metrics"], r["nfe"])
                                                                             for r in ran]
    assert "one seed only" in discrimination(summary(again), again)[0]


def test_classifier_and_density_scorers_use_the_fashion_classifier(tmp_path):
    """Screening's classifier and density scorers read the model's own data set's shipped
    classifier: on Fashion-MNIST, its class probability and its k-NN density over the train
    split (a train image is its own nearest neighbour: density ranks it above noise)."""
    from slimstep.eval.features import FashionClassifier
    from slimstep.screen import ScreenError, classifier_scorer, density_scorer

    root = make_fashion(tmp_path / "fm", n_train=24, n_test=12)
    spec = f"fashion-mnist:{root}"
    x, y = load_data(spec).x[:6], torch.arange(6)
    p = classifier_scorer(spec)(x, y, None)
    expect = torch.softmax(FashionClassifier.load().logits(x), 1)[torch.arange(6), y]
    torch.testing.assert_close(p, expect)
    dens = density_scorer(spec, k=1)
    noise = torch.rand(6, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(dens(x, None, None), torch.zeros(6), atol=1e-4, rtol=0)
    assert (dens(noise, None, None) < -1e-2).all()
    with pytest.raises(ScreenError, match="evaluation classifier of digits or fashion-mnist"):
        classifier_scorer("toy2d:moons")


def test_time_error_is_the_data_prediction_error_on_shared_draws():
    """benchmarks/time_error.py: a constant velocity c predicts x_t + (1 - t) c, so its error
    in a bin is ((1 - t)(c - (x - z)))^2 on the very noises and times every model gets."""
    _benchmark()
    from time_error import time_error

    class Const(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x, t, y=None):
            return torch.full_like(x, self.c)

    x1 = torch.rand(40, 1, 4, 4) * 2 - 1
    rows = time_error({"a": Const(0.3), "b": Const(0.0)}, x1, None, seed=3, edges=(0.0, 0.5, 1.0), batch=16)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(x1.shape, generator=g)
    for r, (lo, hi) in zip(rows, ((0.0, 0.5), (0.5, 1.0)), strict=True):
        t = lo + (hi - lo) * torch.rand(len(x1), generator=g)
        tb = (1 - t).view(-1, 1, 1, 1)
        assert r["bin"] == (lo, hi)
        assert r["mse"]["a"] == pytest.approx(float(((tb * (0.3 - (x1 - z))) ** 2).mean()))
        assert r["mse"]["b"] == pytest.approx(float(((tb * (x1 - z)) ** 2).mean()))
    # --patch 2: the error's 2x2 block means carry part of it, and the same draws are made
    split = time_error({"a": Const(0.3)}, x1, None, seed=3, edges=(0.0, 0.5, 1.0), batch=16, patch=2)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(x1.shape, generator=g)
    for r, s in zip(split, rows, strict=True):
        t = r["bin"][0] + 0.5 * torch.rand(len(x1), generator=g)
        err = (1 - t).view(-1, 1, 1, 1) * (0.3 - (x1 - z))
        means = torch.nn.functional.avg_pool2d(err, 2)
        assert r["mse"]["a"] == pytest.approx(s["mse"]["a"])
        assert r["coarse"]["a"] == pytest.approx(float((means ** 2).mean())) and r["coarse"]["a"] < r["mse"]["a"]


def test_flowmap_error_is_zero_for_a_straight_flow_and_its_exact_map():
    """benchmarks/flowmap_error.py: under a constant velocity field the ODE is a straight line,
    so the teacher's Euler step and a map returning that velocity are exact; a map off by e
    per pixel is off by δ·e at δ; the map is called at t = 0 and s = κδ (κ: its rule's s)."""
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from flowmap_error import flowmap_error

    class Const(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x, t, y=None, s=None):
            return torch.full_like(x, self.c)

    info = SimpleNamespace(shape=(1, 4, 4))
    teacher = SimpleNamespace(net=Const(0.3), info=info, num_classes=0)
    exact = SimpleNamespace(net=Const(0.3), info=info, num_classes=0, sampling=SimpleNamespace(s=1.0))
    off = SimpleNamespace(net=Const(0.5), info=info, num_classes=0, sampling=SimpleNamespace(s=1.0))
    for r in flowmap_error(exact, teacher, n=8, deltas=(0.5, 1.0)):
        assert r["map"] == pytest.approx(0, abs=1e-6) and r["euler"] == pytest.approx(0, abs=1e-6)
        assert r["move"] == pytest.approx(0.3 * r["delta"])
    off_by = [r["map"] for r in flowmap_error(off, teacher, n=8, deltas=(0.5, 1.0))]
    assert off_by == pytest.approx([0.1, 0.2], rel=1e-5)

    class Gap(torch.nn.Module):  # F = 0.3 + s, exact only where s = 0: reads back t and s
        def forward(self, x, t, y=None, s=None):
            assert (t == 0).all()
            return 0.3 + s.view(-1, 1, 1, 1).expand_as(x)

    gap = SimpleNamespace(net=Gap(), info=info, num_classes=0, sampling=SimpleNamespace(s=2.0))
    # f - ODE = δ · κδ = 2 δ²
    gap_by = [r["map"] for r in flowmap_error(gap, teacher, n=8, deltas=(0.5, 1.0))]
    assert gap_by == pytest.approx([0.5, 2.0], rel=1e-5)


def test_the_readme_headline_is_filled_between_its_markers(tmp_path):
    _benchmark()
    from collect import HEADLINE, fill_headline

    start, end = HEADLINE
    readme = f"# x\n\n## Headline\n\n{start}\nold text\n{end}\n\n## More\n"
    waiting = fill_headline(readme, tmp_path)
    assert "old text" not in waiting and "has not finished yet" in waiting and waiting.endswith("\n\n## More\n")
    (tmp_path / "fashion").mkdir()
    (tmp_path / "fashion" / "headline.md").write_text("- **t**: FD 4\n")
    filled = fill_headline(waiting, tmp_path)
    assert filled == f"# x\n\n## Headline\n\n{start}\n- **t**: FD 4\n{end}\n\n## More\n"
    assert fill_headline(filled, tmp_path) == filled  # idempotent
    with pytest.raises(SystemExit, match="must hold the lines"):
        fill_headline("# x\n", tmp_path)
    real = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert real.count(start) == 1 and real.index("## Quick start") < real.index(start)
