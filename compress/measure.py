"""Measuring arbitrary (compressed) parameter trees, and reading and writing them.

A compressed tree (int8 leaves, low-rank factors) no longer matches what `model.init` builds, so the
loop's eval step (sharded like the model's tree) cannot take it: `Evaluator` replicates it over the
run's mesh, shards the batches as in training and applies the causal-LM objective through
`compress.quant.wrap_apply` (int8 leaves dequantized inside the jitted step). `measure` gives a
report line's numbers (docs/compression.md).
"""

import contextlib
import os
import shutil
import subprocess
import tempfile

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import objectives
from compress.quant import dequantize_params, wrap_apply
from data.pipeline import BATCH_KEYS, make_eval_batches, make_train_iterator, tokenizer_from_config
from models import get_model
from models.counting import count_tree
from parallel.mesh import make_mesh
from parallel.rules import get_rules
from parallel.sharding import batch_shardings
from train.loop import read_run_config
from train.step import make_eval_step


class Evaluator:
    """Mesh, eval batches and steps for one data/parallel config (any model config)."""

    def __init__(self, config, *, eval_batches: int | None = None):
        self.config = config
        self.mesh = make_mesh(config.parallel.mesh)
        self.rules = get_rules(config.parallel.rules)
        self.tokenizer = tokenizer_from_config(config.data)
        self.batch_shardings = batch_shardings(BATCH_KEYS, self.mesh, self.rules)
        n = config.train.eval_batches if eval_batches is None else eval_batches
        local = make_eval_batches(config.data, num_batches=n)
        self.eval_batches = [self.global_batch(b) for b in local]

    @contextlib.contextmanager
    def activate(self):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def global_batch(self, local: dict) -> dict:
        return {
            k: jax.device_put(np.asarray(v), self.batch_shardings[k])
            for k, v in local.items()
            if k in self.batch_shardings
        }

    def loss_fn(self, model_cfg, act_bits: int = 0):
        apply = wrap_apply(get_model(model_cfg.family), model_cfg, act_bits=act_bits)
        return objectives.get_loss_fn("causal_lm")(
            model_cfg, apply, bytes_per_token=self.tokenizer.bytes_per_token
        )

    def replicate(self, tree):
        return jax.device_put(tree, NamedSharding(self.mesh, P()))

    def evaluate(self, params, model_cfg, act_bits: int = 0) -> dict[str, float]:
        """Held-out loss (nats/token) and bits/byte of `params` on the fixed eval batches."""
        step = jax.jit(make_eval_step(self.loss_fn(model_cfg, act_bits)))
        params = self.replicate(params)
        with self.activate():
            outs = jax.device_get([step(params, b) for b in self.eval_batches])
        return objectives.summarize(
            {k: sum(float(aux[k]) for aux in outs) for k in ("nll_sum", "tokens", "bytes")}
        )

    def grads(self, params, model_cfg, n_batches: int = 4) -> list:
        """Gradients of the training loss on the first `n_batches` training batches (host)."""
        grad_fn = jax.jit(jax.grad(lambda p, b: self.loss_fn(model_cfg)(p, b, None)[0]))
        it = make_train_iterator(self.config.data, seed=self.config.seed)
        params = self.replicate(params)
        with self.activate():
            return [
                jax.device_get(grad_fn(params, self.global_batch(next(it))))
                for _ in range(n_batches)
            ]


def save_params(path: str, params) -> None:
    """Writes a parameter tree with Orbax (replacing `path`: Orbax commits by rename)."""
    if os.path.exists(path):
        shutil.rmtree(path)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(path), jax.device_get(params))


def restore_params(path: str):
    """The tree `save_params` wrote."""
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.abspath(path))


def save_checkpoint(workdir: str, params) -> None:
    """Writes `params` as step 0 of `workdir/checkpoints`, the layout `init_from` loads."""
    path = os.path.abspath(os.path.join(workdir, "checkpoints"))
    with ocp.CheckpointManager(path) as manager:
        state = ocp.args.StandardSave({"params": jax.device_get(params)})
        manager.save(0, args=ocp.args.Composite(state=state), force=True)


def dir_bytes(path: str) -> int:
    """Bytes of every file under `path`."""
    return int(subprocess.check_output(["du", "-sb", path]).split()[0])


def measure(params, model_cfg, evaluator: Evaluator, act_bits: int = 0) -> dict:
    """Held-out loss, checkpoint bytes (Orbax), parameters and FLOPs per token of a (compressed)
    tree (models/counting.py `count_tree`: unstructured sparsity only lowers the `_nonzero`s)."""
    out = evaluator.evaluate(params, model_cfg, act_bits)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "params")
        save_params(path, params)
        out["ckpt_bytes"] = dir_bytes(path)
    out["param_bytes"] = sum(x.nbytes for x in jax.tree.leaves(jax.device_get(params)))
    seq_len = evaluator.config.data.seq_len
    out.update(count_tree(dequantize_params(params), model_cfg, seq_len))
    return out


def load_compressed(out: str):
    """(config, params) of a compressed checkpoint (compress/study.py): evaluate with
    `Evaluator.evaluate(params, config.model, config.quant.act_bits)`."""
    return read_run_config(out), restore_params(os.path.join(out, "params"))
