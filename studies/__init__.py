"""Studies: how runs are composed (recipes), and the runners of grids (sweeps) and stages."""
