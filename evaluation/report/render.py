"""Writes the report: index.html (one page, inline CSS, images beside it, nothing
fetched from elsewhere), report.md (the same tables) and report.json (everything)."""
import html
import json
import os
import re

from evaluation.report import tables

CSS = """
body{font-family:sans-serif,'Noto Sans CJK SC','PingFang SC','Microsoft YaHei';
margin:24px auto;max-width:1200px;color:#222;line-height:1.4}
h1{font-size:24px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 7px;vertical-align:top;text-align:left}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;tab-size:4;
font-family:monospace,'Noto Sans Mono CJK SC'}
.note{color:#555;font-size:13px;max-width:1000px}img{max-width:100%;border:1px solid #eee}
table.answers{table-layout:fixed;width:100%}table.answers th:first-child{width:110px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto}
"""
CONTROL = re.compile(r'[\x00-\x08\x0b-\x1f\x7f]')


def clean(text):
  """Model output as shown: control characters made visible (they are not valid HTML)."""
  return CONTROL.sub(lambda m: f'\\x{ord(m.group()):02x}', str(text))


def is_number(cell):
  return bool(re.fullmatch(r'[-+]?[\d,.]+( / -?[\d.]+| ± [\d.]+)?[a-zA-Z%]*( MiB| s| min)?', cell))


def html_table(headers, rows, text_columns=(), css_class=None):
  head = ''.join(f'<th>{html.escape(h)}</th>' for h in headers)
  body = []
  for row in rows:
    cells = []
    for i, cell in enumerate(row):
      kind = 'text' if i in text_columns else 'num' if is_number(cell) else ''
      cells.append(f'<td class="{kind}">{html.escape(clean(cell))}</td>')
    body.append('<tr>' + ''.join(cells) + '</tr>')
  opening = f'<table class="{css_class}">' if css_class else '<table>'
  return f'{opening}<tr>{head}</tr>{"".join(body)}</table>'


def prompt_rows(report, item):
  rows = []
  for stage, name in tables.MODEL_NAMES.items():
    answers = item['answers'].get(stage)
    if answers:
      rows.append([name, answers['greedy'], answers['sampled']])
  return rows


def write_html(path, report):
  settings = report['prompt_settings']
  parts = [f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Report card</title>'
           f'<style>{CSS}</style></head><body>',
           '<h1>Report card</h1>',
           f'<p class="note">Workdir <code>{html.escape(report["workdir"])}</code>; commit '
           f'<code>{html.escape(str(report["commit"]))}</code>'
           f'{" (" + html.escape(report["commit_source"]) + ")" if report["commit_source"] else ""}'
           f'; built in {report["build_seconds"]:.0f} s'
           f'{"" if report["evaluated_now"] else " (every evaluation from the cache)"}.</p>']
  for title, note, headers, rows in tables.all_tables(report):
    parts += [f'<h2>{html.escape(title)}</h2>', f'<p class="note">{html.escape(note)}</p>',
              html_table(headers, rows)]
    if title == 'Bits per byte' and report['images'].get('bits_per_byte'):
      parts.append(f'<p><img src="{report["images"]["bits_per_byte"]}" '
                   'alt="bits per byte: model and xz"></p>')
  parts.append('<h2>Training curves</h2>')
  for stage, name in tables.STAGE_NAMES.items():
    curve = report['curves'].get(stage)
    if curve:
      parts.append(f'<p><img src="{curve["image"]}" alt="{html.escape(name)} curves"></p>')
    else:
      status = report['stages'].get(stage, {}).get('status', 'not run')
      parts.append(f'<p class="note">{html.escape(name)}: '
                   f'{"not run" if status == "not run" else "no metrics logged"}.</p>')
  parts.append('<h2>Fixed prompts</h2><p class="note">Every model answers the same prompts: '
               f'greedy, and sampled at temperature {settings["temperature"]} (seed '
               f'{settings["seed"]}), at most {settings["max_new_tokens"]} new tokens.</p>')
  for item in report['prompts']:
    rows = prompt_rows(report, item)
    parts.append(f'<h3>{html.escape(item["prompt"])}</h3>')
    parts.append(html_table(['model', 'greedy', f'temperature {settings["temperature"]}'],
                            rows, text_columns=(1, 2), css_class='answers') if rows else
                 '<p class="note">no model evaluated.</p>')
  parts.append('<h2>Config</h2><details><summary>resolved config</summary><pre>'
               + html.escape(json.dumps(report['config'], indent=1, ensure_ascii=False))
               + '</pre></details></body></html>')
  with open(path, 'w') as f:
    f.write('\n'.join(parts))


def md_cell(text):
  return clean(text).replace('|', '\\|').replace('\n', '<br>') or ' '


def md_table(headers, rows):
  lines = ['| ' + ' | '.join(md_cell(h) for h in headers) + ' |',
           '|' + '---|' * len(headers)]
  lines += ['| ' + ' | '.join(md_cell(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def write_markdown(path, report):
  settings = report['prompt_settings']
  lines = ['# Report card', '', f'Workdir `{report["workdir"]}`, commit `{report["commit"]}`.',
           '']
  for title, note, headers, rows in tables.all_tables(report):
    lines += [f'## {title}', '', note, '', md_table(headers, rows), '']
  lines += ['## Training curves', '']
  lines += [f'![{stage}]({c["image"]})\n' for stage, c in report['curves'].items()]
  lines += ['', '## Fixed prompts', '',
            f'Greedy, and sampled at temperature {settings["temperature"]} (seed '
            f'{settings["seed"]}).', '']
  for item in report['prompts']:
    lines += [f'### {md_cell(item["prompt"])}', '',
              md_table(['model', 'greedy', f'T={settings["temperature"]}'],
                       prompt_rows(report, item)), '']
  lines += ['## Config', '', '<details><summary>resolved config</summary>', '', '```json',
            json.dumps(report['config'], indent=1, ensure_ascii=False), '```', '</details>']
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def write_all(out_dir, report):
  os.makedirs(out_dir, exist_ok=True)
  write_html(os.path.join(out_dir, 'index.html'), report)
  write_markdown(os.path.join(out_dir, 'report.md'), report)
  tmp = os.path.join(out_dir, 'report.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(report, f, indent=1, ensure_ascii=False, default=float)
  os.replace(tmp, os.path.join(out_dir, 'report.json'))
