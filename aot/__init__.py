"""Ahead-of-time compilation for real TPU slices and GPU nodes from any machine (launch/aot.py).

`slices` names the targets and makes their compile-only devices, `chips` holds each chip's
published figures, `compile` builds a run abstractly and compiles its steps, `collectives` reads
the compiled HLO, `roofline` turns the counts into a step time, `search` ranks meshes, `report`
prints.
"""
