"""In-process checks of the reliability pieces: fingerprints, metrics.jsonl after a
resume, the workdir lock, the storage error text, long tokenizer lines."""
import errno
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs.errors import UserError
from data_pipeline.tokenizer import split_long_line
from engine import integrity
from engine import metrics
from engine import storage
from engine.workdir_lock import WorkdirLock


def _tree():
  return {'w': jax.random.normal(jax.random.key(1), (8, 16, 32)),
          'n': jnp.arange(10, dtype=jnp.int32), 'key': jax.random.key(3),
          'h': jnp.ones((3, 5), jnp.bfloat16), 'step': jnp.int32(7),
          'mask': jnp.array([True, False])}


def test_fingerprint_is_the_same_on_device_on_host_and_under_any_sharding():
  tree = _tree()
  host = integrity.fingerprint(tree)  # numpy: CPU arrays
  device = {k: [int(v) for v in np.asarray(s)] for k, s in
            zip(host, jax.device_get(integrity._sums_jit(jax.tree.leaves(tree))))}
  assert device == host
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ('a', 'b'))
  sharded = dict(tree, w=jax.device_put(tree['w'], NamedSharding(mesh, PartitionSpec(None, 'a',
                                                                                      'b'))))
  assert integrity.fingerprint(sharded) == host
  on_device = {k: [int(v) for v in np.asarray(s)] for k, s in
               zip(host, jax.device_get(integrity._sums_jit(jax.tree.leaves(sharded))))}
  assert on_device == host


def test_fingerprint_sees_one_changed_bit_and_swapped_rows():
  w = np.asarray(_tree()['w'])
  base = integrity.fingerprint(w)
  flipped = w.copy()
  flipped.view(np.uint32)[3, 4, 5] ^= 1  # the lowest mantissa bit of one element
  swapped = w.copy()
  swapped[[1, 2]] = swapped[[2, 1]]
  assert integrity.fingerprint(flipped) != base
  assert integrity.fingerprint(swapped) != base
  with pytest.raises(integrity.DamagedCheckpoint, match='1 array'):
    integrity.verify({'w': flipped}, {"['w']": base['']}, 'checkpoint 5')
  integrity.verify({'w': w}, {"['w']": base['']}, 'checkpoint 5')
  integrity.verify({'w': flipped}, {}, 'a checkpoint saved before fingerprints')


def test_metrics_after_resume_hold_each_step_once(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  lines = [json.dumps({'step': s, 'loss': 1.0}) for s in (0, 1, 2, 3, 4, 5)]
  path.write_text('\n'.join(lines) + '\n{"step": 6, "lo')  # a line cut short by a kill
  assert metrics.drop_lines_after(str(path), 3) == 3
  assert [json.loads(l)['step'] for l in path.read_text().splitlines()] == [0, 1, 2, 3]
  assert metrics.drop_lines_after(str(path), 3) == 0
  writer = metrics.MetricsWriter(str(tmp_path), start_step=2)
  writer.write(3, {'loss': 2.0})
  writer.close()
  assert [json.loads(l)['step'] for l in path.read_text().splitlines()] == [0, 1, 2, 3]


def test_lock_names_its_holder_and_goes_with_it(tmp_path):
  first = WorkdirLock(str(tmp_path), 'pretrain')
  with pytest.raises(UserError, match=f'pretrain, pid {os.getpid()} on host'):
    WorkdirLock(str(tmp_path), 'sft')
  first.release()
  assert not (tmp_path / '.lock').exists()
  second = WorkdirLock(str(tmp_path), 'sft')  # free again
  second.release()


def test_storage_errors_name_the_cause_and_the_fix(tmp_path):
  assert storage.cause(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))[0] == (
      'no space left on the device')
  wrapped = ValueError('RESOURCE_EXHAUSTED: Error writing "a": Failed to write 1871872 bytes '
                       "to file 21: No space left on device [os_error_code='28']")
  assert storage.cause(wrapped)[0] == 'no space left on the device'
  assert 'read-only' in storage.cause(OSError(errno.EROFS, 'Read-only file system'))[0]
  message = str(storage.save_failed(20, '/w/checkpoints', OSError(errno.EROFS, os.strerror(errno.EROFS))))
  assert message.startswith('saving checkpoint 20 to /w/checkpoints failed: the file system '
                            'is read-only; remount it read-write')
  a_file = tmp_path / 'f'
  a_file.write_text('')
  with pytest.raises(storage.StorageError, match='is a file, not a directory'):
    storage.require_writable_dir(str(a_file))
  storage.require_writable_dir(str(tmp_path / 'new' / 'dir'))
  assert os.listdir(tmp_path / 'new' / 'dir') == []  # the probe leaves nothing behind
  (tmp_path / 'ckpt' / '10').mkdir(parents=True)
  (tmp_path / 'ckpt' / '10' / 'big').write_bytes(b'\0' * 1000)
  storage.check_free_space(str(tmp_path / 'ckpt'), str(tmp_path / 'ckpt' / '10'))


def test_long_lines_train_the_tokenizer_in_pieces():
  line = 'word ' * 3000 + 'é' * 5000  # 15 KB of words, then 10 KB without a space
  pieces = list(split_long_line(line))
  assert max(len(p.encode('utf-8')) for p in pieces) <= 4096
  assert ''.join(pieces).replace(' ', '') == line.replace(' ', '')
  assert list(split_long_line('short line')) == ['short line']
