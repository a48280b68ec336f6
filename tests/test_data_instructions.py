"""Instruction set from source: pairs, deterministic split, response-only loss after packing."""

import jax.numpy as jnp
import numpy as np

from data import instructions
from data.tokenizer import ByteTokenizer
from objectives import causal_lm

SOURCE = '''
def add(a, b):
    """Adds two numbers."""
    return a + b


def nodoc(x):
    return x


class Box:
    @staticmethod
    def make(n):
        """Makes a box
        of size n.
        """
        return Box()

    def only_doc(self):
        """Nothing else."""
'''


def test_pairs_are_documented_functions_without_their_docstring():
    pairs = instructions.extract_pairs(SOURCE, "m.py")
    assert [p["id"] for p in pairs] == ["m.py:add", "m.py:Box.make"]
    assert pairs[0] == {
        "id": "m.py:add",
        "instruction": "Adds two numbers.",
        "response": "def add(a, b):\n    return a + b",
    }
    assert pairs[1]["instruction"] == "Makes a box\nof size n."
    assert pairs[1]["response"] == "@staticmethod\ndef make(n):\n    return Box()"
    assert instructions.extract_pairs("def broken(:\n", "x.py") == []


def test_split_is_deterministic_and_disjoint():
    files = instructions.stdlib_files("json")
    train = instructions.instruction_set(files, "train", val_percent=20)
    val = instructions.instruction_set(files, "validation", val_percent=20)
    assert train and val
    assert not {p["id"] for p in train} & {p["id"] for p in val}
    again = instructions.instruction_set(list(reversed(files)), "validation", val_percent=20)
    assert sorted(p["id"] for p in again) == sorted(p["id"] for p in val)


def test_packed_loss_counts_response_tokens_only():
    tok = ByteTokenizer()
    pairs = instructions.extract_pairs(SOURCE, "m.py")
    import grain

    from data.batching import pack_and_batch

    pieces = grain.MapDataset.source(instructions.fitting_examples(pairs, tok, 256))
    packed = pack_and_batch(pieces.to_iter_dataset(), 256, 1, extra=("loss_mask",))
    batch = next(iter(packed))
    assert batch["tokens"].shape == (1, 256)  # both fit one row, as two segments
    np.testing.assert_array_equal(np.unique(batch["segment_ids"]), [0, 1, 2])
    # the loss mask covers exactly each response and its EOS
    for s, pair in zip([1, 2], pairs, strict=True):
        seg = batch["segment_ids"][0] == s
        masked = batch["tokens"][0][seg & (batch["loss_mask"][0] == 1)]
        assert tok.decode(masked[:-1]) == pair["response"] and masked[-1] == tok.eos_id
    # with uniform logits the causal-LM loss counts exactly the masked targets
    logits = jnp.zeros((1, 256, 384))
    loss_fn = causal_lm.make_loss_fn(
        type("C", (), {"vocab_size": 384})(), lambda p, b, c, rngs=None: logits
    )
    _, aux = loss_fn(None, {k: jnp.asarray(v) for k, v in batch.items()})
    assert float(aux["tokens"]) == sum(len(tok.encode(p["response"])) + 1 for p in pairs)


def _sft_config(tmp_path, monkeypatch):
    """A data config whose 'stdlib' is one generated module of 12 documented functions."""
    from data.config import default_data_config

    source = "".join(
        f'def f{i}(x):\n    """Returns x plus {i}."""\n    y = x + {i}\n    return y\n\n'
        for i in range(12)
    )
    monkeypatch.setattr(instructions, "stdlib_files", lambda: [("m.py", source)])
    cfg = default_data_config()
    cfg.source, cfg.data_dir, cfg.seq_len, cfg.batch_size = "instructions", str(tmp_path), 192, 2
    return cfg


def test_sft_batches_mask_prompts_out_of_the_loss_and_its_gradient(tmp_path, monkeypatch):
    import jax

    from data.pipeline import batch_keys, make_train_dataset

    cfg = _sft_config(tmp_path, monkeypatch)
    assert batch_keys(cfg) == ("tokens", "segment_ids", "positions", "loss_mask")
    batch = next(iter(make_train_dataset(cfg, seed=0)))
    tok = ByteTokenizer()
    tokens, seg, mask = batch["tokens"], batch["segment_ids"], batch["loss_mask"]
    assert seg.max() >= 2  # packed: several pairs per row
    for r, s in zip(*np.nonzero(np.diff(seg, prepend=0) > 0), strict=True):  # segment starts
        piece = tokens[r][seg[r] == seg[r, s]]
        text = tok.decode(piece[1:-1])  # BOS ... EOS
        prompt, response = text.split("### Response:\n")
        assert prompt.startswith("### Instruction:\nReturns x plus")
        # exactly the response and its EOS carry the mask
        assert tok.decode(piece[mask[r][seg[r] == seg[r, s]] == 1][:-1]) == response
    logits = jax.random.normal(jax.random.key(0), (*tokens.shape, 384))
    loss_fn = causal_lm.make_loss_fn(
        type("C", (), {"vocab_size": 384})(), lambda p, b, c, rngs=None: p
    )
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    (loss, _), grad = jax.value_and_grad(loss_fn, has_aux=True)(logits, jbatch)
    # hand-computed masked cross-entropy: targets in the same segment, on response tokens
    lp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    keep = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0) & (mask[:, 1:] == 1)
    nll = -np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(loss, nll[keep].mean(), rtol=1e-5)
    # no gradient reaches the logits that predict prompt tokens
    g = np.abs(np.asarray(grad)[:, :-1]).sum(-1)
    assert (g[~keep] == 0).all() and (g[keep] > 0).all()
