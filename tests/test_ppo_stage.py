"""`run.py ppo` end to end (tiny pretrain → tiny reward model → PPO): the metrics PPO
users know with KL exactly 0 at iteration 0, and a bitwise resume after SIGKILL.
In-process checks of the stage are in test_ppo_inprocess.py, bad input in test_ppo_cli.py."""
import math

import pytest

from tests.cli_helpers import assert_same_saved_state, deterministic_metrics, kill_at_checkpoint, restore_state, run_cli
from tests.ppo_helpers import PPO, by_step, ppo_roles

pytestmark = pytest.mark.slow
STEPS = 6
RUN = [*PPO, f'--config.train.steps={STEPS}', '--config.checkpoint.save_every_steps=1',
       '--config.checkpoint.keep=10']
METRICS = ('objective/scores', 'objective/kl', 'objective/entropy',
           'objective/non_score_reward', 'objective/rlhf_reward', 'policy/approxkl_avg',
           'policy/clipfrac_avg', 'loss/policy_avg', 'loss/value_avg', 'val/clipfrac_avg',
           'val/ratio', 'response_length', 'end_of_turn_rate', 'time/rollout_s',
           'time/scoring_s', 'time/training_s')


@pytest.fixture(scope='module')
def roles(tiny_workdir, tmp_path_factory):
  return ppo_roles(tiny_workdir, tmp_path_factory)


@pytest.fixture(scope='module')
def straight(roles):
  """One uninterrupted PPO run, saving every iteration."""
  workdir = roles['root'] / 'straight'
  result = run_cli('ppo', *RUN, f'--workdir={workdir}', f'--init_from={roles["p"]}',
                   f'--reward_from={roles["r"]}')
  return workdir, result


# --- (a) a run and its metrics ---------------------------------------------------------------

def test_run_exits_0_with_ppo_metrics_and_zero_kl_at_iteration_0(straight):
  workdir, result = straight
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ppo: actor full, critic from reward' in result.stdout
  assert f'ppo: iteration {STEPS} done' in result.stdout
  steps = by_step(workdir)
  assert sorted(steps) == list(range(1, STEPS + 1))
  first = steps[1]
  missing = [name for name in METRICS if name not in first]
  assert not missing, (missing, sorted(first))
  for record in steps.values():
    for name in METRICS:
      assert math.isfinite(record[name]), (record['step'], name, record[name])
  # Iteration 0: the actor is the reference, so the sampled tokens' KL is exactly 0 and
  # so is the KL penalty; the RLHF reward is the score alone.
  assert first['objective/kl'] == 0.0
  assert first['objective/non_score_reward'] == 0.0
  assert first['objective/rlhf_reward'] == first['objective/scores']
  assert first['kl_coef'] == pytest.approx(0.05)  # base.py's default, fixed controller
  # The actor trains: the KL is no longer exactly 0 afterwards.
  assert any(steps[s]['objective/kl'] != 0.0 for s in range(2, STEPS + 1))
  for record in steps.values():
    assert 0 < record['response_length'] <= 8
    assert 0 <= record['end_of_turn_rate'] <= 1
    assert 0 <= record['policy/clipfrac_avg'] <= 1 and 0 <= record['val/clipfrac_avg'] <= 1
    assert record['policy/approxkl_avg'] >= 0 and record['loss/value_avg'] >= 0
    assert record['objective/entropy'] > 0
    for name in ('time/rollout_s', 'time/scoring_s', 'time/training_s'):
      assert record[name] > 0
  # Every iteration is a checkpoint (save_every_steps=1) holding actor, critic, both
  # optimizers' states and the sampling key + KL coefficient.
  state = restore_state(workdir, STEPS)
  assert sorted(state) == ['extra', 'opt_state', 'params', 'step']
  assert sorted(state['params']) == ['actor', 'critic']
  assert sorted(state['params']['critic']) == ['head', 'lm']
  assert sorted(state['extra']) == ['kl_coef', 'rng']
  assert int(state['step']) == STEPS


# --- (b) SIGKILL + resume --------------------------------------------------------------------

def test_sigkill_then_resume_is_bitwise_identical(roles, straight, tmp_path):
  a_dir, a_result = straight
  assert a_result.returncode == 0, a_result.stderr[-3000:]
  killed = tmp_path / 'killed'
  args = [*RUN, f'--workdir={killed}', f'--init_from={roles["p"]}',
          f'--reward_from={roles["r"]}']
  done = kill_at_checkpoint('ppo', args, killed, 1)
  assert STEPS not in done, done  # killed mid-run
  print(f'SIGKILL with checkpoints {done} written')
  resumed = run_cli('ppo', *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from step' in resumed.stdout
  a, b = by_step(a_dir), by_step(killed)  # the file holds each step once after a resume
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    da, db = deterministic_metrics(a[step]), deterministic_metrics(b[step])
    assert da == db, (step, {k: (da.get(k), db.get(k)) for k in set(da) | set(db)
                             if da.get(k) != db.get(k)})
  # Params, both optimizer states, the RNG key and the KL coefficient: bitwise.
  assert_same_saved_state(a_dir, killed, STEPS)

