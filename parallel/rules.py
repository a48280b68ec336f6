"""Logical-axis -> mesh-axis rule tables, one per strategy.

Comments use scaling-book notation: a subscript names the mesh axis a dimension is split over
(X = data, Z = fsdp, Y = tensor); an unsubscripted dimension is replicated. Rules are tried in
order and a mesh axis is used at most once per array, so an activation x[B, T, D] under FSDP
puts `fsdp` on the batch and leaves D whole, while a weight W[D, F] puts `fsdp` on D.
"""

# Data parallel: parameters replicated, batch split over `data`.
DP = (
    ("batch", "data"),  # x[B_X, T, D]
)

# Fully sharded data parallel (ZeRO-3): batch over data x fsdp, weights split along D over fsdp
# and all-gathered per layer.
FSDP = (
    ("batch", ("data", "fsdp")),  # x[B_XZ, T, D]
    ("embed", "fsdp"),  # W_in[D_Z, F], W_q[D_Z, N, H], E[V, D_Z]
)

# Tensor (Megatron) parallel: heads, MLP hidden and vocab split over `tensor`; activations' D whole.
TP = (
    ("batch", "data"),  # x[B_X, T, D]
    ("heads", "tensor"),  # W_q[D, N_Y, H], W_o[N_Y, H, D], q[B, T, N_Y, H]
    ("kv_heads", "tensor"),  # W_k[D, K_Y, H]
    ("mlp", "tensor"),  # W_in[D, F_Y], W_out[F_Y, D], h[B, T, F_Y]
    ("vocab", "tensor"),  # E[V_Y, D], logits[B, T, V_Y]
)

# FSDP x TP (x DP): the general 3-D layout.
FSDP_TP = FSDP + TP[1:]

# Pipeline: stacked layers split over `stage` (added to any of the above when stage > 1).
PIPELINE = (
    ("layers", "stage"),  # W_in[L_P, D, F]
)

RULES = {"dp": DP, "fsdp": FSDP, "tp": TP, "fsdp_tp": FSDP_TP}


def get_rules(name: str, pipeline: bool = False) -> tuple:
    """The rule table named `parallel.rules`, with the pipeline rule appended when staged."""
    if name not in RULES:
        raise ValueError(f"parallel.rules={name!r} is unknown; choose one of {sorted(RULES)}")
    return RULES[name] + (PIPELINE if pipeline else ())
