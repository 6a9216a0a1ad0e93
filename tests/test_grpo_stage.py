"""`run.py grpo` end to end from a tiny pretrain: TRL's metric names, μ = 1 clips nothing,
sampler and trainer log-probs agree, dynamic sampling replaces groups, and SIGKILL after
a checkpoint + resume is bitwise the uninterrupted run (sampling keys in the state, the
prompt iterator in the checkpoint, resampled prompts included)."""
import math

import pytest

from tests.cli_helpers import assert_same_saved_state, deterministic_metrics, kill_at_checkpoint, restore_state, run_cli
from tests.grpo_helpers import GRPO, by_step, grpo_start

pytestmark = pytest.mark.slow
STEPS = 4
RUN = [*GRPO, f'--config.train.steps={STEPS}', '--config.checkpoint.save_every_steps=1',
       '--config.checkpoint.keep=10', '--config.grpo.drop_zero_std_groups=true']
METRICS = ('reward', 'reward_std', 'frac_reward_zero_std', 'rewards/f1/mean', 'rewards/f1/std',
           'rewards/language/mean', 'rewards/no_repeat/std', 'completions/mean_length',
           'completions/min_length', 'completions/max_length', 'completions/clipped_ratio',
           'completions/mean_terminated_length', 'entropy', 'clip_ratio/low_mean',
           'clip_ratio/high_mean', 'clip_ratio/region_mean', 'loss', 'grad_norm', 'lr',
           'time/rollout_s', 'time/training_s', 'sampling/logprob_diff_max',
           'sampling/resampled_groups')


@pytest.fixture(scope='module')
def start(tiny_workdir, tmp_path_factory):
  return grpo_start(tiny_workdir, tmp_path_factory)


@pytest.fixture(scope='module')
def straight(start):
  workdir = start['root'] / 'straight'
  result = run_cli('grpo', *RUN, f'--workdir={workdir}', f'--init_from={start["p"]}')
  return workdir, result


def test_run_logs_trl_metrics_and_mu_1_clips_nothing(straight):
  workdir, result = straight
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'grpo: full, rewards f1:1,language:1,no_repeat:0.5, dapo loss' in result.stdout
  assert '4 per step × 4 answers' in result.stdout and f'grpo: step {STEPS} done' in result.stdout
  steps = by_step(workdir)
  assert sorted(steps) == list(range(1, STEPS + 1))
  missing = [m for m in METRICS if m not in steps[1]]
  assert not missing, (missing, sorted(steps[1]))
  assert 'kl' not in steps[1]  # beta = 0: no reference, no KL
  for record in steps.values():
    for name in METRICS:
      assert math.isfinite(record[name]), (record['step'], name)
    # μ = 1: the ratio is exactly 1, so nothing is clipped.
    assert record['clip_ratio/low_mean'] == record['clip_ratio/high_mean'] == 0.0
    assert record['clip_ratio/region_mean'] == 0.0
    # The sampler and the trainer run the same float32 model: their log-probs agree.
    assert record['sampling/logprob_diff_max'] <= 1e-4
    assert 1 <= record['completions/min_length'] <= record['completions/mean_length']
    assert record['completions/mean_length'] <= record['completions/max_length'] <= 8
    assert 0 <= record['frac_reward_zero_std'] <= 1 and record['entropy'] > 0
    for name in ('time/rollout_s', 'time/training_s'):
      assert record[name] > 0
  # A barely trained model gives many groups with equal rewards: some were replaced.
  assert sum(r['sampling/resampled_groups'] for r in steps.values()) > 0
  state = restore_state(workdir, STEPS)
  assert sorted(state) == ['extra', 'opt_state', 'params', 'step']
  assert sorted(state['extra']) == ['rng'] and int(state['step']) == STEPS


def test_sigkill_then_resume_is_bitwise_identical(start, straight, tmp_path):
  a_dir, a_result = straight
  assert a_result.returncode == 0, a_result.stderr[-3000:]
  killed = tmp_path / 'killed'
  args = [*RUN, f'--workdir={killed}', f'--init_from={start["p"]}']
  done = kill_at_checkpoint('grpo', args, killed, 1)
  assert STEPS not in done, done
  resumed = run_cli('grpo', *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from step' in resumed.stdout
  a, b = by_step(a_dir), by_step(killed)
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    da, db = deterministic_metrics(a[step]), deterministic_metrics(b[step])
    assert da == db, (step, {k: (da.get(k), db.get(k)) for k in set(da) | set(db)
                             if da.get(k) != db.get(k)})
  assert_same_saved_state(a_dir, killed, STEPS)


def test_lora_keeps_the_base_frozen_and_its_kl_starts_at_exactly_0(start, tmp_path):
  """grpo.method=lora: only adapters train and the reference is the base with them off
  (no copy), so at step 1 the policy is the reference and the KL is exactly 0."""
  workdir = tmp_path / 'lora'
  result = run_cli('grpo', *GRPO, '--config.train.steps=2', '--config.grpo.method=lora',
                   '--config.grpo.beta=0.04', '--config.checkpoint.save_every_steps=2',
                   f'--workdir={workdir}', f'--init_from={start["p"]}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'grpo: lora' in result.stdout
  steps = by_step(workdir)
  assert steps[1]['kl'] == 0.0 and steps[2]['kl'] > 0.0
  import jax
  params = restore_state(workdir, 2)['params']
  names = {str(p[-1]) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert names <= {"['a']", "['b']"}, names  # adapters only: the base is frozen, not saved


def test_reward_model_reward_scores_answers_with_reward_from(tiny_workdir, tmp_path_factory,
                                                             tmp_path):
  """grpo.rewards=reward_model:1 with --reward_from (the PPO tests' reward model, built
  once a session): its score is the reward, logged as rewards/reward_model/*, and the
  groups' rewards differ (a score is continuous), so every group carries a signal."""
  from tests.ppo_helpers import ppo_roles
  roles = ppo_roles(tiny_workdir, tmp_path_factory)
  workdir = tmp_path / 'rm'
  result = run_cli('grpo', *GRPO, '--config.train.steps=1', '--config.grpo.rewards=reward_model:1',
                   f'--workdir={workdir}', f'--init_from={roles["p"]}',
                   f'--reward_from={roles["r"]}')
  assert result.returncode == 0, result.stderr[-3000:]
  record = by_step(workdir)[1]
  assert math.isfinite(record['rewards/reward_model/mean'])
  assert record['rewards/reward_model/std'] > 0 and record['frac_reward_zero_std'] == 0.0
  assert record['reward'] == pytest.approx(record['rewards/reward_model/mean'], abs=1e-5)
