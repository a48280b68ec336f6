"""Scaling-law fits of a sweep's results (plain numpy/scipy/matplotlib; never imports JAX).

`python -m scaling.fit results.jsonl --out DIR` or `scaling.fit.analyze(rows, out_dir)`. Modules:
rows (reading results), parametric (Chinchilla approach 3), isoflop (approach 2), kaplan
(single-variable laws), bootstrap, allocation, extrapolation, analysis (all fits together),
plots, report, published (reference values), synthetic (rows from a known law), atomic, blas,
verify (a prediction beyond the sweep, scored once its run is trained), plan (a budget to N, D,
a ladder shape and the predicted loss; launch/plan.py).
"""
