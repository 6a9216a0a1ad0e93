"""`run.py grpo` in 2 real processes × 2 devices against 1 process × 4 devices: the same
prompts, answers, rewards and losses at every step (every process computes the rewards
of all rows from the gathered prompt indices); step 2's numbers come from step 1's
update, so they check the params too."""
import pytest

from tests.cli_helpers import deterministic_metrics
from tests.cli_helpers import run_cli
from tests.grpo_helpers import GRPO, by_step, grpo_start

pytestmark = pytest.mark.slow
STEPS = 2
# data.num_shards fixed: the prompt stream is the same for any process count.
ARGS = ['grpo', *GRPO, f'--config.train.steps={STEPS}', '--config.data.num_shards=2',
        '--config.checkpoint.save_every_steps=2']


def test_two_processes_match_one_process(tiny_workdir, tmp_path_factory, tmp_path):
  start = grpo_start(tiny_workdir, tmp_path_factory)
  one, two = tmp_path / 'one', tmp_path / 'two'
  single = run_cli(*ARGS, f'--workdir={one}', f'--init_from={start["p"]}',
                   env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert single.returncode == 0, single.stderr[-3000:]
  multi = run_cli('launch', '--num_processes=2', '--devices_per_process=2', '--', *ARGS,
                  f'--workdir={two}', f'--init_from={start["p"]}')
  assert multi.returncode == 0, (multi.stdout + multi.stderr)[-3000:]
  a, b = by_step(one), by_step(two)
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  for step in a:
    for name, x in deterministic_metrics(a[step]).items():
      y = b[step][name]
      if name.startswith(('rewards/', 'completions/')) or name in ('reward', 'reward_std',
                                                                   'frac_reward_zero_std'):
        assert x == y, (step, name, x, y)  # the same answers, scored by the same code
      else:
        assert abs(x - y) <= 1e-4 * abs(x) + 1e-6, (step, name, x, y)
