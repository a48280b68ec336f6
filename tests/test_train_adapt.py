"""Adapting a checkpoint in the real loop: init_from loads, only adapter/prompt params change,
frozen parameters hold no optimizer state."""

import jax
import numpy as np
import pytest

from adapt import wrap as adapt
from data.pipeline import make_train_iterator
from studies.recipes import recipe_for
from tests.helpers import small_config
from train.checkpoint import load_state
from train.loop import Run, train_and_evaluate


def _flat(tree):
    return {adapt.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    config = small_config(tmp, steps=2)
    config.train.eval_every = 100
    train_and_evaluate(config, str(tmp / "base"))
    return tmp, str(tmp / "base"), _flat(load_state(str(tmp / "base" / "checkpoints"))["params"])


def _adapted_run(tmp, base_dir, method, **adapt_kw):
    config = small_config(tmp, steps=3)
    config.init_from = base_dir
    config.adapt.method = method
    config.adapt.update(adapt_kw)
    config.adapt.prompt.length = 4
    config.train.lr = 1e-2
    config.train.warmup_steps = 0
    return config, Run(config, recipe=recipe_for(config))


def _train(run, config, steps):
    it = make_train_iterator(config.data, seed=0)
    state = run.state
    with run.activate():
        for _ in range(steps):
            state, _ = run.train_step(state, run.global_batch(next(it)), run.schedule_args)
    return state


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_only_adapter_parameters_change(pretrained, method):
    tmp, base_dir, saved = pretrained
    config, run = _adapted_run(tmp, base_dir, method)
    before = _flat(run.state.params)
    for name, value in saved.items():  # init_from put the checkpoint under base/
        np.testing.assert_array_equal(before[f"base/{name}"], value)
    state = _train(run, config, 3)
    after = _flat(state.params)
    extra = [n for n in after if not n.startswith("base/")]
    assert extra and all(n.startswith(f"{method}/") for n in extra)
    for name in after:
        if name.startswith("base/"):
            np.testing.assert_array_equal(after[name], before[name])
    changed = [n for n in extra if not np.array_equal(after[n], before[n])]
    assert changed, "the adapters did not train"
    # frozen leaves have no optimizer state: Adam's moments cover the trainable leaves only
    trainable, total = adapt.count_trainable(state.params, config.adapt)
    opt_floats = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert opt_floats == 2 * trainable
    assert trainable < 0.05 * total


@pytest.mark.slow
def test_full_finetune_with_a_frozen_subset_and_adapters_saved_alone(pretrained):
    tmp, base_dir, saved = pretrained
    config, run = _adapted_run(tmp, base_dir, "full", freeze=r"embed|layers/.*")
    state = _train(run, config, 2)
    after = _flat(state.params)
    for name, value in saved.items():
        frozen = name == "embed" or name.startswith("layers/")
        assert np.array_equal(after[name], value) == frozen, name
    # adapters alone round-trip
    config2, run2 = _adapted_run(tmp, base_dir, "lora")
    path = adapt.save_adapters(str(tmp / "adapters"), jax.device_get(run2.state.params))
    back = _flat(adapt.load_adapters(path))
    assert back and all(n.startswith("lora/") for n in back)
    for n, v in back.items():
        np.testing.assert_array_equal(v, _flat(run2.state.params)[n])


def test_load_reports_new_heads_and_rejects_shape_mismatch(tmp_path):
    """A subset load: leaves the checkpoint lacks stay initialised; another shape is an error."""
    import orbax.checkpoint as ocp

    ckpt = str(tmp_path / "ckpt")
    with ocp.CheckpointManager(ckpt) as m:
        m.save(
            0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": {"w": np.ones(3)}}))
        )
        m.wait_until_finished()
    cfg = adapt.default_adapt_config()
    target = {"w": jax.numpy.zeros(3), "head": jax.numpy.zeros(2)}
    params, report = adapt.load_pretrained(target, ckpt, cfg)
    assert report == {"loaded": ["w"], "initialised": ["head"]}
    np.testing.assert_array_equal(params["w"], np.ones(3))
    with pytest.raises(ValueError, match="w has shape"):
        adapt.load_pretrained({"w": jax.numpy.zeros(4)}, ckpt, cfg)
    cfg.load = "head"  # excluded by adapt.load: the mismatched leaf keeps its initialisation
    _, report = adapt.load_pretrained({"w": jax.numpy.zeros(4)}, ckpt, cfg)
    assert report == {"loaded": [], "initialised": ["w"]}


@pytest.mark.slow
def test_sample_loads_a_workdir_and_generates_greedy_tokens(pretrained):
    from launch.sample import load_for_sampling
    from models import decoder
    from models.generate import SampleSettings, generate

    _, base_dir, saved = pretrained
    params, model_cfg, tokenizer = load_for_sampling(base_dir)
    assert _flat(params).keys() == saved.keys()
    prompt = [tokenizer.bos_id, *tokenizer.encode("def ").tolist()]
    [out] = generate(params, [prompt], model_cfg, SampleSettings(max_new_tokens=3))
    logits = decoder.apply(params, {"tokens": np.array([prompt + out[:2]], np.int32)}, model_cfg)
    assert out == [int(i) for i in np.asarray(logits[0, -3:]).argmax(-1)]
