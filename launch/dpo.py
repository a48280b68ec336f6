r"""Instruction tuning then DPO, end to end, with the table of held-out parse fractions:

  python launch/dpo.py --workdir runs/dpo [--pre_args steps=600] [--sft_args steps=300] \
      [--dpo_args beta=0.1,steps=100]

Stages (each reused when its workdir already holds a finished run): `pretrain` (experiments/gpt.py,
size=tiny on the stdlib corpus), `sft` (experiments/sft.py from it), `dpo` (experiments/dpo.py
from the SFT run; prefs/dpo.py samples, judges, pairs, caches the reference, trains and
compares). Prints and writes `<workdir>/report.md` (the table plus each stage's wall time and the
load average) and `<workdir>/dpo/report.json`.
"""

import os
import time

from absl import app, flags, logging

from common import atomic

_WORKDIR = flags.DEFINE_string("workdir", "runs/dpo", "Directory of the three stages.")
_SIZE = flags.DEFINE_string("size", "tiny", "Model size of all three stages.")
_PRE = flags.DEFINE_string("pre_args", "", "Extra experiments/gpt.py arguments (k=v,...).")
_SFT = flags.DEFINE_string("sft_args", "", "Extra experiments/sft.py arguments.")
_DPO = flags.DEFINE_string("dpo_args", "", "Extra experiments/dpo.py arguments.")


def _arg(*parts: str) -> str:
    return ",".join(p for p in parts if p)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from experiments import dpo, gpt, sft
    from prefs.dpo import dpo_and_evaluate, report_table
    from studies.recipes import recipe_for
    from train.loop import train_and_evaluate

    root = os.path.abspath(_WORKDIR.value)
    size = f"size={_SIZE.value}"
    walls = {}
    t = time.perf_counter()
    pre = os.path.join(root, "pretrain")
    train_and_evaluate(gpt.get_config(_arg(size, _PRE.value)), pre, desc="pretrain")
    walls["pretrain"] = time.perf_counter() - t
    t = time.perf_counter()
    sft_dir = os.path.join(root, "sft")
    sft_config = sft.get_config(_arg(size, f"base={pre}", _SFT.value))
    summary = train_and_evaluate(sft_config, sft_dir, desc="sft", recipe=recipe_for(sft_config))
    walls["sft"] = time.perf_counter() - t
    t = time.perf_counter()
    report = dpo_and_evaluate(
        dpo.get_config(_arg(size, f"sft={sft_dir}", _DPO.value)), f"{root}/dpo"
    )
    walls["dpo"] = time.perf_counter() - t
    load = os.getloadavg()
    text = "\n".join(
        [
            report_table(report),
            "",
            f"SFT held-out loss {summary['eval/loss']:.4f} nats/token "
            f"({summary['eval/bits_per_byte']:.4f} bits/byte on the response tokens).",
            "Wall time (s, this call; a reused stage is near 0): "
            + ", ".join(f"{k} {v:.0f}" for k, v in walls.items())
            + f"; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
        ]
    )
    print(text)
    atomic.write_text(os.path.join(root, "report.md"), text + "\n")


if __name__ == "__main__":
    app.run(main)
