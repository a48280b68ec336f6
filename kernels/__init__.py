"""Device kernels the models call through one dispatch (`models/blocks.py`).

Everything that knows about devices, meshes or Pallas lives here, so `models/` keeps naming only
logical axes. One concern per file:
  attention.py  the fused-attention dispatch (`attention(..., impl=)`) and what each kernel supports
  placement.py  the target platform (interpret mode on CPU) and `jax.shard_map` over batch and heads
  splash.py     Pallas TPU splash attention (block-sparse causal / local masks, segment ids, GQA)
  flash.py      Pallas TPU flash attention (causal, segment ids; GQA by repeating kv heads)
  cudnn.py      cuDNN flash attention through `jax.nn.dot_product_attention` (NVIDIA GPUs)
"""
