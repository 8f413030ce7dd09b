"""``slimstep run RECIPE --out DIR``: every method of a recipe, one evaluation protocol, one report.

A run reads a recipe (:mod:`~slimstep.run.recipe`: the stages, their schema and their
hashes), trains the stages not yet done with ``jobs`` worker processes
(:mod:`~slimstep.run.schedule`, each stage by :mod:`~slimstep.run.execute`), evaluates
every model with one protocol (:mod:`~slimstep.run.evaluate`, its samples drawn and kept
by :mod:`~slimstep.run.samples`, as ``slimstep sample`` draws them) and writes
``DIR/results.json`` and the report (:mod:`~slimstep.run.results`).

A trained model lives in ``DIR/<stage>/model-<hash>`` and its evaluation in
``DIR/<stage>/result.json``: a killed run, rerun, redoes only what had not finished.
"""

from slimstep.run.evaluate import evaluate_stage, score, score_samples, teacher_rows
from slimstep.run.execute import is_done, model_dir, root_teacher, stage_dir
from slimstep.run.recipe import PROTOCOL_VERSION, RecipeError, Stage, config_hash, default_n, load_recipe
from slimstep.run.results import demo, run
from slimstep.run.schedule import run_stages

__all__ = ["PROTOCOL_VERSION", "RecipeError", "Stage", "config_hash", "default_n", "demo", "evaluate_stage",
           "is_done", "load_recipe", "model_dir", "root_teacher", "run", "run_stages", "score",
           "score_samples", "stage_dir", "teacher_rows"]
