"""`run.py report`: (re)builds WORKDIR/report/ (index.html, report.md, report.json and
the curves) from a pipeline workdir's stage folders, evaluating what is not cached."""
import os
import sys

from commands import common

ON_STOP = ('the evaluations finished so far are cached in report/cache/; run the same '
           'command again to finish the report')


def main(config, workdir):
  import jax
  from evaluation.report import build_report
  from evaluation.report import tables
  # Without --config the report settings the pipeline used (pipeline.json) are kept.
  explicit = any(arg.startswith('--config') for arg in sys.argv[2:])
  report = build_report(workdir, config if explicit else None)
  if jax.process_index() != 0:
    return
  for title, _, headers, rows in tables.all_tables(report)[:1]:
    print(title)
    print('  '.join(headers))
    for row in rows:
      print('  '.join(cell.replace('\n', ' ') for cell in row))
  print(f'report: {os.path.join(workdir, "report", "index.html")} '
        f'(built in {report["build_seconds"]:.0f} s)')
  if common.JSON.value:
    common.print_json(report)
