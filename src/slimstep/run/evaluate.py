"""Evaluating the stages of a run: one protocol for every model, one row each (a
teacher's also its Euler NFE curve), kept in ``DIR/<stage>/result.json``.

**One protocol.** Every model is sampled from the same seeds (``eval.seeds``,
``eval.n`` samples from each) and scored by :func:`slimstep.eval.evaluate`; the
table shows the mean over seeds (and their spread). Speed is measured after all
training, one model at a time, at batch 256 (a worker that scores a stage while others
train leaves speed to the run's own pass: :func:`measure_speed`). An evaluation is kept under its stage's
hash and the protocol's (:data:`~slimstep.run.recipe.PROTOCOL_VERSION`), so a killed
run, rerun, redoes only what had not finished.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slimstep.data import loader_options
from slimstep.data.vae import as_images
from slimstep.eval import EvalError, evaluate
from slimstep.eval.speed import bench_generator, sample_macs
from slimstep.files import FileFormatError, read_samples, write_bytes, write_json
from slimstep.flags import compare_to_init, initialisation
from slimstep.generator import load
from slimstep.realism import realism_for_stage
from slimstep.run import samples
from slimstep.run.execute import model_dir, stage_dir
from slimstep.run.recipe import PROTOCOL_VERSION, Stage, default_n, digest
from slimstep.screen import make_scorer
from slimstep.spec.sampling import VelocityRule


def _mean_metrics(results: list[dict]) -> tuple[dict, dict]:
    keys = [k for k, v in results[0]["metrics"].items() if isinstance(v, (int, float))]
    mean, sd = {}, {}
    for k in keys:
        vals = torch.tensor([float(r["metrics"][k]) for r in results], dtype=torch.float64)
        mean[k] = float(vals.mean())
        sd[k] = float(vals.std()) if len(vals) > 1 else 0.0
    return mean, sd


def score_samples(make, spec: str, ev: dict, name: str, keep: Path | None,
                  data_options: dict | None = None, model: str | None = None) -> dict:
    """``make(seed, n) -> Drawn`` (:func:`slimstep.run.samples.draw`; or the tuple ``(x, y,
    seconds, extra arrays)``); score on every protocol seed, keep the first seed's samples
    (``samples.npz`` + ``samples.png``) under ``keep``. A seed whose samples cannot be
    scored (NaN, ...) is left out and listed in ``failed_seeds``; when every seed fails the
    row cannot exist and the evaluation error is raised. ``data_options``: the model's
    image loader options (:func:`slimstep.data.loader_options`).

    ``model`` (with ``keep``): what was sampled (the stage's hash and the row), so that each
    scored seed (or its evaluation error) is kept in ``keep/seeds/<seed>.json`` and reused: a
    killed evaluation resumes at the seed it was on, and adding protocol seeds scores only
    the new ones (a Fashion-MNIST teacher's Euler curve and Heun-16 reference at N = 10,000
    are 63 calls a sample, ~1 h of one thread a seed at the 5-7 ms a sample-call measured
    beside two training jobs). The kept samples carry the first seed's key (``scored_as``):
    samples another model left in the stage's folder are drawn again, not reused."""
    n = int(ev["n"] if ev["n"] is not None else default_n(spec))
    data_options = data_options or {}
    results, failed, secs = [], [], 0.0
    for i, seed in enumerate(ev["seeds"]):
        seed = int(seed)
        memo = _SeedMemo(keep / "seeds" / f"{seed}.json", model, spec, n, seed) if keep and model else None
        got = memo.read() if memo is not None else None
        keeps = i == 0 and keep is not None  # the first seed's samples are kept, and must be this model's
        if got is None or (keeps and _scored_as(keep / "samples.npz") != memo.key):
            drawn = _drawn(make(seed, n), seed)
            if keeps:  # kept before scoring: a broken model's samples are evidence too
                arrays = samples.npz_fields(drawn, spec, data_options, temperature=False)
                if memo is not None:
                    arrays["scored_as"] = memo.key
                samples.save(keep / "samples.npz", arrays, keep / "samples.png",
                             picture=as_images(drawn.x[:100], spec), title=name)
            if got is None:
                got = _score_seed(drawn, spec, seed, data_options)
                if memo is not None:
                    memo.write(got)
        secs += got["seconds"]
        if "error" in got:  # stored too: the same samples fail the same way
            failed.append({"seed": seed, "error": got["error"]})
        else:
            results.append(got)
    if not results:
        raise EvalError(f"no seed could be scored ({failed[0]['error']})")
    mean, sd = _mean_metrics(results)
    first = results[0]
    floor, floor_note = first["floor"], None
    if spec.partition(":")[0] == "toy2d":  # a toy floor is one noisy draw per seed: their mean
        floor = {k: float(torch.tensor([float(r["floor"][k]) for r in results],
                                       dtype=torch.float64).mean()) for k in first["floor"]}
        floor_note = f"mean of the {len(results)} scored seeds' real/real draws"
    return {"name": name, "data": spec, "n": n, "seeds": list(ev["seeds"]), "metrics": mean,
            "metrics_sd": sd, "per_seed": [r["metrics"] for r in results], "floor": floor,
            "per_seed_floor": [r["floor"] for r in results], "floor_note": floor_note,
            "notes": first["notes"], "sample_seconds": secs,  # notes of the first scored seed
            "failed_seeds": failed,
            "files": ({"samples": str(keep / "samples.npz"), "picture": str(keep / "samples.png")}
                      if keep is not None else {})}


def _score_seed(drawn: samples.Drawn, spec: str, seed: int, data_options: dict) -> dict:
    """One seed's scores (what :class:`_SeedMemo` keeps), or its evaluation error."""
    try:
        r = evaluate(drawn.x, spec, labels=drawn.labels, seed=seed, data_options=data_options)
    except EvalError as e:
        return {"error": str(e), "seconds": drawn.seconds}
    return {"metrics": r["metrics"], "floor": r["floor"], "notes": r["notes"], "seconds": drawn.seconds}


def _scored_as(samples_file: Path) -> str | None:
    """The memo key a kept samples file was drawn under (``scored_as``); the stage's folder
    is shared by every model the stage has had, so kept samples are reused only under it."""
    try:
        key = read_samples(samples_file).get("scored_as")
    except (FileFormatError, OSError, ValueError):
        return None
    return None if key is None else str(key)


def _memo(path: Path) -> dict:
    """A kept seed's file (``{"key", "model", "result"}``); {} when absent, torn or not ours."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) and "key" in saved else {}


class _SeedMemo:
    """One scored protocol seed of one model, kept beside the row's samples. Keyed by the
    model, data, N, seed and :data:`~slimstep.run.recipe.PROTOCOL_VERSION`: a file that
    does not match (a retrained stage, another N) is scored again and replaced."""

    def __init__(self, path: Path, model: str, spec: str, n: int, seed: int):
        self.path, self.model = path, model
        self.key = digest({"model": model, "data": spec, "n": n, "seed": seed, "version": PROTOCOL_VERSION})

    def read(self) -> dict | None:
        saved = _memo(self.path)
        return saved["result"] if saved.get("key") == self.key else None  # else: score the seed again

    def write(self, result: dict) -> None:
        write_json(self.path, {"key": self.key, "model": self.model, "result": result})


def copy_scored_seeds(src: Path, dst: Path, model: str) -> None:
    """A stage folder's kept per-seed scores (``[euler-K/]seeds/<seed>.json``) and kept
    samples into another run's folder for the same model (``model``: its stage hash): only
    those scored from that model, replacing what ``dst`` holds from any other. Another run
    of the same stage (a claims recipe reusing a main run's teacher) then scores nothing again."""
    for seeds in src.glob("**/seeds"):
        row, to_row = seeds.parent, dst / seeds.parent.relative_to(src)
        keys = set()
        for f in seeds.glob("*.json"):
            saved = _memo(f)
            if str(saved.get("model", "")).split(" ")[0] != model:
                continue  # scored from another model the stage once had
            keys.add(saved["key"])
            if _memo(to_row / "seeds" / f.name).get("key") != saved["key"]:
                write_bytes(to_row / "seeds" / f.name, f.read_bytes())
        kept = _scored_as(row / "samples.npz")
        if kept in keys and _scored_as(to_row / "samples.npz") != kept:
            for name in ("samples.npz", "samples.png"):
                if (row / name).is_file():
                    write_bytes(to_row / name, (row / name).read_bytes())


def _drawn(got, seed: int) -> samples.Drawn:
    """``make``'s answer as a :class:`~slimstep.run.samples.Drawn` (a tuple's ``nfe`` entry
    is its NFE)."""
    if isinstance(got, samples.Drawn):
        return got
    x, y, secs, extra = got
    extra = dict(extra)
    return samples.Drawn(x, y, seed, extra.pop("nfe", None), secs, extra=extra)


def score(gen, spec: str, name: str, n: int | None = None, seed: int = 0) -> dict:
    """One protocol row for a generator at one seed (the benchmark scripts' unit)."""
    n = n or default_n(spec)
    drawn = samples.draw(gen, n, seed)
    res = evaluate(drawn.x, spec, labels=drawn.labels, seed=seed, data_options=_options(gen))
    res.update(name=name, nfe=gen.nfe, macs=sample_macs(gen), params=gen.params,
               samples_per_s=round(n / drawn.seconds, 1))
    return res


def _options(gen) -> dict:
    return loader_options(gen.info.options)


def _speed(gen, ev: dict) -> dict:
    r = bench_generator(gen, batch_size=int(ev["speed_batch"]), iters=3)
    return {"samples_per_s": r["samples_per_s"], "macs": r["macs"], "latency_s": r["latency_s"]}


def _generate(gen):
    return lambda seed, n: samples.draw(gen, n, seed)


class _TeacherDraws:
    """A teacher's samplers for :func:`score_samples`: through ``torch.compile`` when asked
    (:meth:`~slimstep.generator.Generator.compiled`), and plain from the first compile failure
    on — a run's start-up probe shows only that kernels can be built, not that every network
    compiles (an unsupported op, an inductor bug) — said once in the log, never fatal."""

    def __init__(self, gen, compile: bool, name: str, log):
        self.plain, self.name, self.log = gen, name, log
        self.compiled = gen.compiled() if compile else None
        self.nfe = 0  # NFE per sample of the latest sampler's draws (0 until it draws)

    def of(self, **sampling):
        # a new sampler (a new row): a row whose seeds are all read back has no NFE of its own,
        # not the previous row's
        self.nfe = 0
        def make(seed: int, n: int) -> samples.Drawn:
            drawn = None
            if self.compiled is not None:
                from torch._dynamo.exc import TorchDynamoException  # only where compiling: a slow import

                try:
                    drawn = samples.draw(self.compiled.with_sampling(**sampling), n, seed)
                except TorchDynamoException as e:
                    why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    self.log(f"[eval] {self.name}: torch.compile failed ({why}); drawing plain")
                    self.compiled = None
            if drawn is None:
                drawn = samples.draw(self.plain.with_sampling(**sampling), n, seed)
            self.nfe = drawn.nfe or 0
            return drawn

        return make


def _protocol(ev: dict) -> str:
    return digest({**{k: ev[k] for k in ("n", "seeds", "teacher_nfes", "speed_batch")}, "version": PROTOCOL_VERSION})


def is_scored(out: Path, st: Stage, ev: dict) -> bool:
    """Does the stage's evaluation cache hold this model's rows under this protocol?"""
    return _cached(stage_dir(out, st) / "result.json", st, ev) is not None


def _cached(cache: Path, st: Stage, ev: dict) -> dict | None:
    if not cache.is_file():
        return None
    saved = json.loads(cache.read_text())
    return saved if saved.get("hash") == st.hash and saved.get("protocol") == _protocol(ev) else None


def teacher_rows(out: Path, st: Stage, ev: dict, nfes, log=print, compile: bool = False) -> list[dict]:
    """A teacher stage's rows: one Euler row per NFE in ``nfes`` (``curve``), then its reference
    sampler (``reference``). Each seed is kept under the run's own key, so a later
    :func:`evaluate_stage` (``nfes`` = the protocol's ``teacher_nfes``) reuses what this scored."""
    sdir = stage_dir(out, st)
    gen = load(model_dir(out, st))
    draws = _TeacherDraws(gen, compile, st.name, log)
    rows = []
    for k in nfes:
        g = gen.with_sampling(solver="euler", steps=int(k))
        r = score_samples(draws.of(solver="euler", steps=int(k)), st.spec, ev, f"{st.name} euler-{k}",
                          sdir / f"euler-{k}", _options(gen), f"{st.hash} euler-{k}")
        rows.append({**r, "curve": True, "nfe": g.nfe, "params": g.params, "macs": sample_macs(g)})
    s = gen.sampling
    r = score_samples(draws.of(), st.spec, ev, f"{st.name} {s.solver}-{s.steps} (reference)", sdir,
                      _options(gen), f"{st.hash} reference")
    # an adaptive (dopri5) reference knows its NFE only from a draw; MACs: the plain network
    rows.append({**r, "reference": True, "nfe": draws.nfe or gen.nfe, "params": gen.params,
                 "macs": sample_macs(gen)})
    return rows


def evaluate_stage(out: Path, st: Stage, by_name: dict[str, Stage], ev: dict, log=print,
                   speed: bool = True, compile: bool = False) -> list[dict]:
    """Rows for one stage: a teacher gives its reference sampler and its Euler
    NFE curve; a student one row; screening one row. Reused when unchanged.

    ``speed``: also measure samples/s and latency (:func:`measure_speed`). A worker that
    scores a stage while others train passes False: a speed taken beside training is the
    load's, not the model's, so the run's own pass measures it after all training, one
    model at a time, and keeps it in the same cache.

    ``compile``: draw a teacher's samples (its Euler curve and reference sampler, 63 calls a
    sample on Fashion-MNIST) through :meth:`~slimstep.generator.Generator.compiled`; the
    one-call rows gain less than the compiling costs. Not part of the protocol's key: the
    samples differ by float summation order only."""
    sdir = stage_dir(out, st)
    proto = _protocol(ev)
    cache = sdir / "result.json"
    saved = cached_evaluation(out, st, ev)
    if saved is not None:
        log(f"[reuse] evaluation of {st.name}")
        rows = saved["rows"]
        changed = False
        if st.kind == "distill" and "init_check" not in rows[0]:  # a result from before the check
            rows[0]["init_check"] = _init_check(out, st, by_name, ev, rows[0])
            changed = True
        if speed and not saved.get("speed_alone"):  # scored in a worker, or before speed was kept apart
            log(f"[speed] {st.name}")
            saved["speed_alone"] = _timed(out, st, by_name, ev, rows, log)
            changed = True
        if changed:
            write_json(cache, {**saved, "rows": rows})
        return rows
    log(f"[eval] {st.name}")
    rows = []
    if st.kind == "teacher":
        rows = teacher_rows(out, st, ev, ev["teacher_nfes"], log, compile)
    elif st.kind == "distill":
        gen = load(model_dir(out, st))
        r = score_samples(_generate(gen), st.spec, ev, st.name, sdir, _options(gen), st.hash)
        rows.append({**r, "nfe": gen.nfe, "params": gen.params, "macs": sample_macs(gen)})
        rows[0]["init_check"] = _init_check(out, st, by_name, ev, rows[0])
    elif st.kind == "screen":
        rows.append(_evaluate_screen(out, st, by_name, ev, sdir))
    for row in rows:
        row.update(stage=st.name, kind=st.kind, method=st.cfg.method.name if st.cfg else st.kind)
    alone = _timed(out, st, by_name, ev, rows, log) if speed else False
    write_json(cache, {"hash": st.hash, "protocol": proto, "rows": rows, "speed_alone": alone})
    return rows


def cached_evaluation(out: Path, st: Stage, ev: dict) -> dict | None:
    """The stage's evaluation cache (``{"rows", "speed_alone", ...}``) when it holds this
    model under this protocol, its kept files pointed into the stage's folder; else None.
    Reads only: what an interim report may do while workers train."""
    sdir = stage_dir(out, st)
    saved = _cached(sdir / "result.json", st, ev)
    if saved is not None:
        for r in saved["rows"]:  # kept files live in this stage's folder, wherever the run now is
            if r.get("files"):
                r["files"] = {k: str(sdir / Path(v).name) for k, v in r["files"].items()}
    return saved


def _timed(out: Path, st: Stage, by_name: dict[str, Stage], ev: dict, rows: list[dict], log) -> bool:
    """:func:`measure_speed`; a failure costs the speed columns, not the rows (nor, at the end
    of a day-long run, its report): logged, and tried again by the next run."""
    try:
        measure_speed(out, st, by_name, ev, rows)
        return True
    except Exception as e:  # noqa: BLE001 - a measurement; the quality rows stand without it
        log(f"[speed] {st.name}: not measured ({type(e).__name__}: {e})")
        return False


def measure_speed(out: Path, st: Stage, by_name: dict[str, Stage], ev: dict, rows: list[dict]) -> None:
    """Samples/s and latency of a stage's rows, in place, at ``ev["speed_batch"]``: a teacher's
    reference sampler and its one-step Euler map (its other curve points: none, the same
    network at proportional cost), a student's one-step map, a screened sample (every
    candidate, the scorer and the final call, timed as one batch)."""
    if st.kind == "teacher":
        gen = load(model_dir(out, st))
        for row in rows:
            row["samples_per_s"] = None
        rows[-1].update(_speed(gen, ev))
        one = next((row for row in rows if row.get("nfe") == 1), None)
        if one is not None:
            one.update(_speed(gen.with_sampling(solver="euler", steps=1), ev))
    elif st.kind == "distill":
        rows[0].update(_speed(load(model_dir(out, st)), ev))
    elif st.kind == "screen":
        student, scr = _screening(out, st, by_name)
        n = int(ev["speed_batch"])
        samples.draw(student, n, 0, screening=scr)  # warm-up: first calls allocate
        secs = samples.draw(student, n, 1, screening=scr).seconds
        rows[0]["samples_per_s"] = round(n / secs, 1)


def _init_check(out: Path, st: Stage, by_name: dict[str, Stage], ev: dict, row: dict) -> dict | None:
    """Did the student move from its initialisation? Its kept samples (first protocol seed)
    against the initialisation's one-step samples from the same seeds (:mod:`slimstep.flags`).
    None for a student trained from scratch."""
    init = initialisation(st.cfg.method.name, st.cfg.method.to_dict(), st.deps)
    if init is None or not row.get("files", {}).get("samples"):
        return None
    gen, name = load(model_dir(out, by_name[init])), init
    if isinstance(gen.sampling, VelocityRule) and gen.nfe != 1:  # its student's one-step map starts at its Euler step
        gen, name = gen.with_sampling(solver="euler", steps=1), f"{init} euler-1"
    x = torch.from_numpy(read_samples(row["files"]["samples"])["samples"])
    x0, _ = gen.generate(len(x), seed=int(ev["seeds"][0]))
    return compare_to_init(x, x0, st.spec, row["floor"], name)


def _screening(out: Path, st: Stage, by_name: dict[str, Stage]):
    """A screen stage's student and its :class:`~slimstep.run.samples.Screening`."""
    p = st.params
    student_dir = model_dir(out, by_name[st.deps["student"]])
    student = load(student_dir)
    teacher = load(model_dir(out, by_name[st.deps["teacher"]])) if "teacher" in st.deps else None
    disc = (realism_for_stage(student_dir, st.spec, model_dir(out, st) / "realism", p.get("realism"))
            if p["scorer"] == "realism" else None)
    n_c, select = int(p["candidates"]), p.get("select", "argmax")  # defaults kept out of the hash
    scr = samples.Screening(n_c, make_scorer(p["scorer"], student, teacher, disc, student_dir), p["scorer"],
                            p["final"], teacher, select, p.get("temperature"))
    return student, scr


def _evaluate_screen(out: Path, st: Stage, by_name: dict[str, Stage], ev: dict, sdir: Path) -> dict:
    p = st.params
    student, scr = _screening(out, st, by_name)
    teacher, n_c, select = scr.teacher, scr.candidates, scr.select
    scorer, nfe, macs = scr.scorer, scr.nfe(student), scr.macs(student)

    def make(seed, n):
        return samples.draw(student, n, seed, screening=scr)

    how = p["scorer"] if select == "argmax" else f"{p['scorer']} resample T={p.get('temperature', 1.0):g}"
    name = f"{st.name} ({st.deps['student']} x{n_c}, {how}, final {p['final']})"
    r = score_samples(make, st.spec, ev, name, sdir, _options(student), st.hash)
    final = teacher if p["final"] == "teacher" else student
    params = student.params + (teacher.params if teacher is not None and p["final"] == "teacher" else 0)
    scoring = f" + {n_c * scorer.nfe} scorer" if getattr(scorer, "nfe", 0) else ""
    return {**r, "nfe": nfe, "nfe_note": f"{n_c * student.nfe} student{scoring} + "
            f"{'1 teacher' if p['final'] == 'teacher' else '0'} calls", "params": params,
            "macs": macs, "final_params": final.params}
