"""Bad command lines fail fast with one line naming the value (table-driven).

Every bad-config case also points ``data.dir`` at a folder that does not exist: getting the
config's error, not the dataset's, shows the config is checked before any data is read.
"""

import pytest

from tests.helpers import run_cli

SMOKE = "--config=experiments/configs/smoke.py"
NO_DATA = "--config.data.dir=/nonexistent/fashion-mnist"

CASES = [
    ("run", ["--config=experiments/configs/nope.py", "--workdir={tmp}/w"],
     "--config file 'experiments/configs/nope.py' does not exist"),
    ("run", [SMOKE, "--workdir={tmp}/afile", NO_DATA], "--workdir='{tmp}/afile' is a file"),
    ("run", [SMOKE, "--workdir={tmp}/w", NO_DATA, "--config.sparsity.pattern=3:2"],
     "sparsity.pattern='3:2' is set but sparsity.method='none'"),
    ("run", [SMOKE, "--workdir={tmp}/w", NO_DATA, "--config.sparsity.sparsity=0.5"],
     "sparsity.sparsity=0.5 is set but sparsity.method='none'"),
    ("run", [SMOKE, "--workdir={tmp}/w", NO_DATA, "--config.sparsity.method=one_shot",
             "--config.sparsity.pattern=3:2"], "pattern='3:2'"),
    ("run", [SMOKE, "--workdir={tmp}/w", NO_DATA, "--config.sparsity.method=gradual",
             "--config.sparsity.sparsity=-0.5"], "sparsity=-0.5"),
    ("run", [SMOKE, "--workdir={tmp}/w", NO_DATA, "--config.sparsity.method=prune"],
     "sparsity.method='prune' is not valid"),
    ("run", [SMOKE, "--workdir={tmp}/w", NO_DATA, "--config.distill.alpha=0.5"],
     "distill.alpha=0.5 needs distill.teacher"),
    ("study", ["--config=experiments/configs/study_smoke.py", "--workdir={tmp}/afile"],
     "--workdir='{tmp}/afile' is a file"),
    ("run", [SMOKE, "--workdir={tmp}/w", NO_DATA, "--config.mode=serve"],
     "config.mode='serve' is not valid"),
    ("study", ["--config=experiments/configs/nope.py", "--workdir={tmp}/s"],
     "--config file 'experiments/configs/nope.py' does not exist"),
    ("study", ["--config=experiments/configs/study_smoke.py", "--workdir={tmp}/w",
               "--config.mode=fast"], "config.mode='fast' is not valid"),
    ("study", ["--config=experiments/configs/speed_resnet50.py", "--workdir={tmp}/w",
               "--config.speed.backend=cuda"], "backend='cuda' is not valid"),
    # An unwritable workdir: one line before anything is compiled.
    ("run", [SMOKE, "--workdir=/proc/x", NO_DATA], "--workdir='/proc/x' cannot be written"),
    ("study", ["--config=experiments/configs/study_smoke.py", "--workdir=/proc/x"],
     "--workdir='/proc/x' cannot be written"),
    ("run", [SMOKE, "--workdir={tmp}/w", NO_DATA, "--config.model.pretrained={tmp}/no.st"],
     "model.pretrained='{tmp}/no.st': no such file"),
    # The error names the field the user typed.
    ("study", ["--config=experiments/configs/study_smoke.py", "--workdir={tmp}/w",
               "--config.base.train.batch_size=-8"], "base.train.batch_size=-8 must be >= 1"),
    ("study", ["--config=experiments/configs/study_smoke.py", "--workdir={tmp}/w",
               "--config.sweep.sparsities=(1.5,)"],
     "sweep.sparsities=(1.5,): sparsity 1.5 is not in (0, 1)"),
]


@pytest.mark.parametrize("entry,args,expected", CASES)
def test_one_line_error(tmp_path, entry, args, expected):
    (tmp_path / "afile").write_text("not a folder")
    fill = lambda s: s.replace("{tmp}", str(tmp_path))  # noqa: E731
    proc = run_cli(["-m", f"experiments.{entry}", *map(fill, args)], timeout=60)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and fill(expected) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout.strip(), proc.stderr
    assert not (tmp_path / "w").exists()


def test_default_sparsity_block_is_pruning_off():
    from experiments.configs import default
    from jaxsparse.training.methods import SPARSITY_OFF

    s = default.get_config().sparsity.to_dict()
    assert s == {"method": "none", **SPARSITY_OFF}


def test_hparams_show_the_pattern_and_sparsity_used():
    from experiments.configs import default
    from jaxsparse.training.train import run_hparams

    c = default.get_config()
    assert run_hparams(c)["sparsity"]["pattern"] == "dense"
    c.sparsity.method, c.sparsity.pattern = "one_shot", "2:4"
    assert run_hparams(c)["sparsity"]["sparsity"] == 0.5


def test_batch_that_does_not_split_over_the_devices_fails_before_any_data(tmp_path):
    """The device count is known before data: 8 (virtual) devices and a batch of 12 fail in
    the up-front validation, with the data folder missing (so no data was read)."""
    proc = run_cli(["-m", "experiments.run", SMOKE, f"--workdir={tmp_path}/w", NO_DATA,
                    "--config.train.batch_size=12"],
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, timeout=60)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert errors == ["error: train.batch_size=12 is not divisible by the 8 devices; use a "
                      "multiple of 8."], proc.stderr
