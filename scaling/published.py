"""Published scaling-law fits, for comparison in the report.

Absolute E, A, B and N_c, D_c depend on the tokenizer and the data (ours: nats per byte-level token
on Python source), so only the exponents and a, b compare across setups.
"""

KAPLAN_2020 = {
    "source": "Kaplan et al. 2020",
    "alpha_N": 0.076,
    "alpha_D": 0.095,
    "N_c": 8.8e13,
    "D_c": 5.4e13,
}

HOFFMANN_2022 = {
    "source": "Hoffmann et al. 2022 (approach 3)",
    "E": 1.69,
    "A": 406.4,
    "B": 410.7,
    "alpha": 0.34,
    "beta": 0.28,
}

BESIROGLU_2024 = {
    "source": "Besiroglu et al. 2024 (Epoch AI replication of approach 3)",
    "E": 1.82,
    "A": 482.01,
    "B": 2085.43,
    "alpha": 0.3478,
    "beta": 0.3658,
}

# (a, b) with N_opt ~ C^a and D_opt ~ C^b, as Hoffmann et al. 2022 report them (their table 2).
HOFFMANN_2022_AB = {
    "approach 1": (0.50, 0.50),
    "approach 2": (0.49, 0.51),
    "approach 3": (0.46, 0.54),
}
