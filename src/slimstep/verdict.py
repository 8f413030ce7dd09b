"""The verdict: which one-step model to take, per data set, in two lines.

* **Best one-step model**: the student (a trained stage, NFE 1) with the lowest
  headline metric (FD / FID / SWD / W2 / MMD, all lower-is-better), with its ratios
  to its teacher at the teacher's reference sampler: quality, parameters,
  samples/s.
* **Within noise**: the other one-step students whose mean ± sd over the
  protocol's seeds overlaps the best's (``mean - best_mean <= sd + best_sd``).
  With one seed there is no spread, and the verdict says so rather than
  calling a 1 % difference a win.
* **Best small model**: the same among students with at most 1/4 of their
  teacher's parameters (SlimFlow's question), or a line saying none is that small.

Pure functions of the result rows of :func:`slimstep.run.run`; the report
and ``slimstep run``'s summary print the same lines.
"""

from __future__ import annotations

SMALL = 0.25  # a "small" student has at most this fraction of its teacher's parameters
HEADLINES = ("fd", "fid", "swd", "w2", "mmd")  # the first a row has is its headline


def _key(rows: list[dict]) -> str | None:
    return next((k for r in rows for k in HEADLINES if k in r.get("metrics", {})), None)


def candidates(rows: list[dict]) -> list[dict]:
    """One-step students with a headline metric, best first."""
    key = _key(rows)
    if key is None:
        return []
    pool = [r for r in rows if r.get("kind") == "distill" and r.get("nfe") == 1 and key in r["metrics"]]
    return sorted(pool, key=lambda r: r["metrics"][key])


def _within(rows: list[dict], best: dict, key: str) -> list[dict]:
    sd = best.get("metrics_sd", {}).get(key, 0.0)
    return [r for r in rows if r is not best and
            r["metrics"][key] - best["metrics"][key] <= sd + r.get("metrics_sd", {}).get(key, 0.0)]


def verdict(rows: list[dict]) -> dict:
    """``{"key", "seeds", "best", "within", "small", "small_within"}`` for one data set's
    rows (rows, not names; ``best``/``small`` None when there is none)."""
    key = _key(rows)
    pool = candidates(rows)
    seeds = max((len(r.get("per_seed") or [None]) for r in pool), default=0)
    out = {"key": key, "seeds": seeds, "best": None, "within": [], "small": None, "small_within": []}
    if not pool:
        return out
    out["best"] = pool[0]
    out["within"] = _within(pool, pool[0], key) if seeds > 1 else []
    small = [r for r in pool if r.get("params_ratio") is not None and r["params_ratio"] <= SMALL]
    if small:
        out["small"] = small[0]
        out["small_within"] = _within(small, small[0], key) if seeds > 1 else []
    return out


def _describe(r: dict, key: str, refs: dict[str, dict]) -> str:
    from slimstep.report import fmt

    ref = refs.get(r.get("teacher"))
    parts = [f"{key.upper()} {fmt(r['metrics'][key])}"]
    if r.get("quality_ratio") is not None and ref is not None:
        parts.append(f"{r['quality_ratio']:.3g}x its teacher's ({ref['name']}: {fmt(ref['metrics'][key])})")
    if r.get("params_ratio") is not None:
        parts.append(f"{r['params_ratio']:.3g}x the teacher's parameters")
    if r.get("speedup") is not None:
        parts.append(f"{r['speedup']:.3g}x the teacher's samples/s")
    badges = "".join(f" [{f['badge']}]" for f in r.get("flags", []))
    return f"{r['name']}{badges}: " + ", ".join(parts)


def verdict_lines(rows: list[dict]) -> list[str]:
    """The verdict as sentences (plain text with `code` for names)."""
    v = verdict(rows)
    key = v["key"]
    if v["best"] is None:
        return ["No one-step student was scored on this data set."]
    refs = {r["stage"]: r for r in rows if r.get("reference")}
    ties = ("one seed: no spread to tell near-ties apart (give eval.seeds several seeds)" if v["seeds"] < 2
            else "within the seed spread of it: " + (", ".join(r["name"] for r in v["within"]) or "none"))
    lines = [f"Best one-step model: {_describe(v['best'], key, refs)}; {ties}."]
    if v["small"] is None:
        lines.append(f"No one-step student has at most 1/{round(1 / SMALL)} of its teacher's parameters.")
    elif v["small"] is v["best"]:
        lines.append(f"It is also the best small model (at most 1/{round(1 / SMALL)} of its teacher's "
                     "parameters).")
    else:
        small_ties = ("" if v["seeds"] < 2 else "; within the seed spread of it: "
                      + (", ".join(r["name"] for r in v["small_within"]) or "none"))
        lines.append(f"Best small model (at most 1/{round(1 / SMALL)} of its teacher's parameters): "
                     f"{_describe(v['small'], key, refs)}{small_ties}.")
    return lines
