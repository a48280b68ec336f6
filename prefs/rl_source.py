"""The on-policy data source of RL runs, and the held-out probe of every RL evaluation.

`data_source(run, index, count)` (the recipe's `data` hook) returns an `OnPolicyIterator` and
held-out rollout batches. The loop hands an iterator that has a `see(state)` method the current
train state before each `next` (train/loop.py); this one samples a fresh rollout from
`state.params` every `rl.epochs` batches (prefs/rollout.py, one jitted call: sampling, scoring
by the frozen reference and reward model, advantages) and yields it `rl.epochs` times, so PPO
takes several clipped steps per rollout. Rollout r uses the prompts and sampling key of
(config.seed, r), so it is a function of the parameters it sees: a run resumed from a checkpoint
samples what the uninterrupted run sampled. The iterator's checkpointed state is the number of
batches yielded and, between two rollouts, the current rollout's rows (this process's block).

The frozen models (reference = `rl.reference`, reward model = `rl.reward_model`, finished runs'
workdirs; the reward model at its best validation step, prefs/critic.py) are loaded once and
placed by their logical axes under the run's rules and mesh. The held-out batches
(`train.eval_batches`) are rollouts of the reference on validation prompts, so `eval/approx_kl`
estimates KL(reference || policy). `probe(run, params)` adds, on the first
`rl.heldout_prompts` validation prompts x `rl.heldout_samples` with fixed keys: the reward
model's mean score, the graded judge's mean score (the held-out truth, never trained on), the
mean sequence KL to the reference and the mean response length.
"""

import base64
import io
import json

import flax.linen as nn
import jax
import numpy as np

from data.instructions import load_pairs
from models import get_model
from models.generate import pad_prompts
from prefs import judge, rollout
from prefs.critic import critic_step
from prefs.heads import SCORE_HEAD, WithHead, lm_outputs
from prefs.sampling import make_prompts


def place(run, model, model_cfg, params):
    """Host `params` of `model` placed with its logical shardings under the run's rules."""
    from parallel.sharding import named_shardings

    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), model_cfg))
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), run.rules)
    return jax.device_put(params, named_shardings(specs, run.mesh))


def frozen_model(workdir: str, head: str = "", step: int | None = None):
    """(model, model config, host params) of a finished run (`head`: its scalar head's name) at
    checkpoint `step` (None: the newest)."""
    from train.checkpoint import load_params
    from train.loop import read_run_config

    cfg = read_run_config(workdir).model
    model = get_model(cfg.family)
    return (WithHead(model, head) if head else model), cfg, load_params(workdir, step)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order."""
    if jax.process_count() == 1:
        return np.asarray(x)
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def all_rows(x: jax.Array) -> np.ndarray:
    """Every row of a batch-sharded global array, on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Rollouts:
    """What rollouts and evaluations share: frozen models, prompts, the jitted sampler."""

    def __init__(self, run, index: int = 0, count: int = 1):
        config, rl = run.config, run.config.rl
        self.run, self.rl, self.tok = run, rl, run.tokenizer
        self.index, self.count = index, count
        ref_model, ref_cfg, ref = frozen_model(rl.reference)
        rm_step = critic_step(rl.reward_model)
        rm_model, rm_cfg, rm = frozen_model(rl.reward_model, SCORE_HEAD, rm_step)
        self.ref = place(run, ref_model, ref_cfg, ref)
        self.rm = place(run, rm_model, rm_cfg, rm)
        policy_outputs = run.model.outputs if rl.algo == "ppo" else lm_outputs(run.apply_fn)
        settings = rollout.settings_of(rl, self.tok.eos_id, self.tok.pad_id)
        args = (config.model, settings, policy_outputs, ref_model.apply, ref_cfg)
        args += (rm_model.outputs, rm_cfg)
        self.sample = jax.jit(rollout.make_sample_fn(rl, *args))
        self.rollout = jax.jit(rollout.make_rollout_fn(rl, *args))
        train = load_pairs(config.data, "train")
        self.train_prompts = make_prompts(train, self.tok, rl.max_prompt_tokens)
        held = make_prompts(load_pairs(config.data, "validation"), self.tok, rl.max_prompt_tokens)
        self.heldout = held[: rl.heldout_prompts]
        if len(self.train_prompts) < config.data.batch_size // rl.group or not self.heldout:
            raise ValueError(
                f"rl.max_prompt_tokens={rl.max_prompt_tokens} leaves {len(self.train_prompts)} "
                f"train and {len(held)} held-out prompts; raise it or lower data.batch_size"
            )

    def _inputs(self, prompts: list[dict]):
        """Global (prompts [B, P], pad [B]) arrays of a global list of B prompts."""
        rows = len(prompts) // self.count
        mine = prompts[self.index * rows : (self.index + 1) * rows]
        tokens_BP, pad_B = pad_prompts(
            [p["tokens"] for p in mine], self.tok.pad_id, length=self.rl.max_prompt_tokens
        )
        # placed as a batch's rows: [B, P] like `tokens`, [B] like the per-row `score`
        arrays = self.run.global_batch({"tokens": tokens_BP, "score": pad_B})
        return arrays["tokens"], arrays["score"]

    def train_batch(self, params, r: int) -> dict:
        """Rollout `r` from `params`: this process's rows (host arrays)."""
        config, rl = self.run.config, self.rl
        B, k = config.data.batch_size, rl.group
        pick = np.random.default_rng([config.seed, r]).choice(
            len(self.train_prompts), B // k, replace=False
        )
        prompts = [self.train_prompts[i] for i in pick for _ in range(k)]
        tokens_BP, pad_B = self._inputs(prompts)
        key = jax.random.fold_in(jax.random.key(config.seed), r)
        out = self.rollout(params, self.ref, self.rm, tokens_BP, pad_B, key)
        return {k: local_rows(v) for k, v in out.items()}

    def flat_heldout(self) -> list[dict]:
        k = self.rl.heldout_samples
        return [p for p in self.heldout for _ in range(k)]

    def _batches(self, prompts: list[dict]):
        """`prompts` in global batches of B (the last filled with copies of its last prompt)."""
        B = self.run.config.data.batch_size
        for i, start in enumerate(range(0, len(prompts), B)):
            chunk = prompts[start : start + B]
            yield i, chunk, chunk + [chunk[-1]] * (B - len(chunk))

    def eval_batches(self, params, num: int, seed: int) -> list[dict]:
        """Rollouts of `params` (the initial policy: the reference, plus a zero value head for
        PPO) on the held-out prompts (`group` samples each)."""
        prompts = [p for p in self.heldout for _ in range(self.rl.group)]
        out = []
        for i, _, full in list(self._batches(prompts))[:num]:
            tokens_BP, pad_B = self._inputs(full)
            key = jax.random.fold_in(jax.random.key(seed + 1), i)
            batch = self.rollout(params, self.ref, self.rm, tokens_BP, pad_B, key)
            out.append({k: local_rows(v) for k, v in batch.items()})
        return out

    def evaluate(self, params, seed: int) -> dict[str, float]:
        """Held-out means (module docstring): `rm_score`, `judge_score`, `kl_ref`, `length`."""
        sums = dict.fromkeys(("rm_score", "judge_score", "kl_ref", "length"), 0.0)
        prompts = self.flat_heldout()
        for i, chunk, full in self._batches(prompts):
            tokens_BP, pad_B = self._inputs(full)
            key = jax.random.fold_in(jax.random.key(seed + 2), i)
            out = self.sample(params, self.ref, self.rm, tokens_BP, pad_B, key)
            # every process judges every row (the figures are the same on every host)
            out = {k: all_rows(out[k]) for k in ("tokens", "score", "kl", "length")}
            P = tokens_BP.shape[1]
            for b, p in enumerate(chunk):
                row = out["tokens"][b, P:].tolist()
                cut = next((j for j, t in enumerate(row) if t == self.tok.eos_id), None)
                v = judge.judge(self.tok, p["header"], row[:cut], cut is not None, p["doc"])
                sums["judge_score"] += v["score"]
                sums["rm_score"] += float(out["score"][b])
                sums["kl_ref"] += float(out["kl"][b])
                sums["length"] += float(out["length"][b])
        return {k: v / len(prompts) for k, v in sums.items()}


class OnPolicyIterator:
    """Rollouts from the parameters the loop shows it (module docstring)."""

    def __init__(self, rollouts: Rollouts, epochs: int):
        self.rollouts, self.epochs = rollouts, epochs
        self.step, self.batch, self.state = 0, None, None

    def __iter__(self):
        return self

    def see(self, state) -> None:
        self.state = state

    def __next__(self) -> dict:
        if self.step % self.epochs == 0:
            if self.state is None:
                raise RuntimeError(
                    "an on-policy source samples only after the loop shows it a state"
                )
            r = self.step // self.epochs
            self.batch = self.rollouts.train_batch(self.state.params, r)
        self.step, self.state = self.step + 1, None  # never keep a state the step will donate
        return self.batch

    def get_state(self) -> bytes:
        state = {"step": self.step, "batch": None}
        if self.step % self.epochs:
            buf = io.BytesIO()
            np.savez(buf, **self.batch)
            state["batch"] = base64.b64encode(buf.getvalue()).decode()
        return json.dumps(state).encode()

    def set_state(self, raw: bytes) -> None:
        state = json.loads(raw)
        self.step, self.batch = state["step"], None
        if state["batch"] is not None:
            with np.load(io.BytesIO(base64.b64decode(state["batch"]))) as z:
                self.batch = {k: z[k] for k in z.files}

    def start_prefetch(self) -> None:
        pass


def data_source(run, index: int, count: int, keep: dict | None = None):
    """The RL recipe's `data` hook: (on-policy iterator, held-out reference rollouts); the
    `Rollouts` are left in `keep['rollouts']` for the probe."""
    config = run.config
    rollouts = Rollouts(run, index, count)
    if keep is not None:
        keep["rollouts"] = rollouts
    with run.activate():
        evals = rollouts.eval_batches(run.state.params, config.train.eval_batches, config.seed)
    return OnPolicyIterator(rollouts, config.rl.epochs), evals
