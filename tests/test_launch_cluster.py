"""Cluster launchers: `--dry_run` prints complete commands and batch scripts (no gcloud/sbatch)."""

import shlex

from launch import slurm, tpu
from launch.cluster import sweep_jobs


def _lines(capsys):
    return capsys.readouterr().out.strip().splitlines()


def test_tpu_up_dry_run(capsys):
    tpu.main(
        [
            "up",
            "--name=lm",
            "--zone=us-central2-b",
            "--project=proj",
            "--accelerator_type=v4-32",
            "--config=experiments/gpt.py:size=base",
            "--workdir=runs/base",
            "--spot",
            "--delete_after",
            "--dry_run",
            "--",
            "--config.train.steps=100",
        ]
    )
    cmds = [shlex.split(line) for line in _lines(capsys)]
    verbs = [c[4] if c[0] == "gcloud" else c[0] for c in cmds]
    assert verbs == ["create", "tar", "scp", "ssh", "ssh", "ssh", "ssh", "mkdir", "scp", "delete"]
    for c in cmds:
        if c[0] == "gcloud":
            assert c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
            assert "--zone=us-central2-b" in c and "--project=proj" in c
    create = cmds[0]
    assert create[5] == "lm" and "--accelerator-type=v4-32" in create and "--spot" in create
    assert "--version=tpu-ubuntu2204-base" in create
    assert cmds[2][5:8] == ["/tmp/scalelab-lm.tgz", "lm:scalelab.tgz", "--worker=all"]
    install, start, logs = cmds[4], cmds[5], cmds[6]
    assert "--worker=all" in install and "pip install" in install[7]
    assert "jax[tpu]==0.10.2" in install[7] and "requirements.txt" in install[7]
    # The run goes to every worker, detached, with the config and overrides intact.
    assert "--worker=all" in start
    run = start[7].removeprefix("--command=")
    assert run.startswith("cd ~/scalelab && (nohup python launch/run.py ")
    assert (
        "--config=experiments/gpt.py:size=base --workdir=runs/base --config.train.steps=100"
        " > run.log 2>&1 & echo $! > run.pid)" in run
    )
    assert "--worker=0" in logs and "tail -n +1 -f run.log" in logs[7]
    assert cmds[8][5:9] == ["--recurse", "lm:scalelab/runs/base", cmds[7][2], "--worker=0"]
    assert cmds[9][4:7] == ["delete", "lm", "--quiet"]


def test_tpu_gs_workdir(capsys):
    """A pod slice's workdir in a bucket: passed to every worker as is, left there by
    --delete_after (no scp from worker 0), copied with gcloud storage by `fetch`."""
    common = ["--name=lm", "--zone=z", "--config=experiments/gpt.py", "--workdir=gs://b/runs/base"]
    tpu.main(["up", *common, "--accelerator_type=v4-32", "--delete_after", "--dry_run"])
    cmds = [shlex.split(line) for line in _lines(capsys)]
    assert "gcsfs" in cmds[4][7]  # installed with the requirements
    assert "--workdir=gs://b/runs/base" in cmds[5][7]
    assert [c[4] for c in cmds[-2:]] == ["ssh", "delete"]  # logs, then delete: nothing fetched
    tpu.main(["fetch", *common, "--dry_run"])
    assert _lines(capsys) == ["gcloud storage cp --recursive gs://b/runs/base runs"]


def test_tpu_single_actions(capsys):
    tpu.main(["delete", "--name=a", "--zone=z", "--dry_run"])
    assert _lines(capsys) == ["gcloud compute tpus tpu-vm delete a --quiet --zone=z"]
    tpu.main(["logs", "--name=a", "--zone=z", "--dry_run"])
    assert _lines(capsys)[0].startswith("gcloud compute tpus tpu-vm ssh a --worker=0 ")


SWEEP = "experiments/scaling.py:preset=smoke"


def test_sweep_jobs_group_by_trunk():
    wsd = sweep_jobs(SWEEP, [], "runs/sw")
    # smoke preset: 3 sizes x 2 token budgets; a WSD size is one job (its trunk + branches).
    assert len(wsd) == 3 and all(len(j.split(",")) == 2 for j in wsd)
    assert len({j.split(",")[0].split("@")[0] for j in wsd}) == 3
    cosine = sweep_jobs(SWEEP.replace("smoke", "smoke,schedule=cosine"), [], "runs/sw")
    assert sorted(cosine) == sorted(i for j in wsd for i in j.split(","))
    # Overrides change the grid exactly as launch/run.py would apply them.
    assert len(sweep_jobs(SWEEP, ["--config.sweep.ladder=(1,2)"], "runs/sw")) == 2


def test_tpu_sweep_dry_run(capsys):
    tpu.main(["sweep", "--name=sw", "--zone=z", f"--config={SWEEP}", "--workdir=r/sw", "--dry_run"])
    out = "\n".join(_lines(capsys))
    jobs = sweep_jobs(SWEEP, [], "r/sw")
    for i, only in enumerate(jobs):
        assert f"tpu-vm create sw-{i} " in out and f"tpu-vm delete sw-{i} " in out
        assert f"--config.sweep.only={only} > run.log" in out
    last = out.splitlines()[-1]
    assert last.endswith(f"launch/run.py --config={SWEEP} --workdir=r/sw")
    tpu.main(
        ["sweep", "--name=sw", "--zone=z", f"--config={SWEEP}", "--workdir=gs://b/sw", "--dry_run"]
    )
    out = "\n".join(_lines(capsys))
    assert "scp --recurse" not in out and out.endswith("--workdir=gs://b/sw")


def test_slurm_script_dry_run(capsys, tmp_path):
    workdir = str(tmp_path / "run")
    slurm.main(
        [
            "--config=experiments/gpt.py:size=base",
            f"--workdir={workdir}",
            "--nodes=2",
            "--gpus_per_node=4",
            "--partition=gpu",
            "--account=lab",
            "--time=02:00:00",
            "--setup=source venv/bin/activate",
            "--dry_run",
            "--config.train.steps=10",
        ]
    )
    lines = _lines(capsys)
    assert lines[0] == f"# {workdir}/slurm/scalelab.sbatch"
    script = lines[1 : lines.index("")] if "" in lines else lines[1:-1]
    assert script[0] == "#!/bin/bash"
    for opt in (
        "--job-name=scalelab",
        "--nodes=2",
        "--ntasks-per-node=4",  # one task per GPU
        "--gpus-per-node=4",
        "--time=02:00:00",
        "--partition=gpu",
        "--account=lab",
        f"--output={workdir}/slurm/%x-%j.out",
    ):
        assert f"#SBATCH {opt}" in script
    assert "source venv/bin/activate" in script
    assert script[-1] == (
        "srun --kill-on-bad-exit=1 python launch/run.py --config=experiments/gpt.py:size=base "
        f"--shared_workdir --workdir={workdir} --config.train.steps=10"  # it holds the logs too
    )
    assert lines[-1] == f"sbatch {workdir}/slurm/scalelab.sbatch"
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_slurm_sweep_array(capsys):
    slurm.main(["--sweep", f"--config={SWEEP}", "--workdir=r/sw", "--tasks=node", "--dry_run"])
    out = capsys.readouterr().out
    jobs = sweep_jobs(SWEEP, [], "r/sw")
    assert f"#SBATCH --array=0-{len(jobs) - 1}" in out and "#SBATCH --ntasks-per-node=1" in out
    assert "JOBS=(" + " ".join(jobs) + ")" in out
    assert '--workdir=r/sw "--config.sweep.only=${JOBS[$SLURM_ARRAY_TASK_ID]}"' in out
    assert "#SBATCH --job-name=scalelab-fit" in out
    assert out.strip().endswith(
        "bash -c 'ID=$(sbatch --parsable r/sw/slurm/scalelab-array.sbatch) && "
        "sbatch --dependency=afterany:$ID r/sw/slurm/scalelab-fit.sbatch'"
    )
