"""Task metrics of generated answers against reference answers.

- exact match after normalisation (case, surrounding space and punctuation);
- F1 over characters for Chinese (no word boundaries to trust) and over words
  for English (SQuAD-style);
- answer language: the share of CJK among letters decides zh vs en;
- repeated 4-gram: any 4 consecutive tokens appearing twice in one answer (the
  greedy-decoding loop the seeds name as a failure mode).
"""
import collections
import re
import string
import unicodedata

_PUNCT = set(string.punctuation) | set('，。！？；：、“”‘’《》（）【】—…·「」『』')


def _is_cjk(ch):
  return '\u4e00' <= ch <= '\u9fff' or '\u3400' <= ch <= '\u4dbf'


def normalize(text):
  text = unicodedata.normalize('NFKC', text).lower().strip()
  text = ''.join(ch for ch in text if ch not in _PUNCT)
  return re.sub(r'\s+', ' ', text).strip()


def units(text, lang):
  text = normalize(text)
  return [ch for ch in text if not ch.isspace()] if lang == 'zh' else text.split()


def f1(prediction, reference, lang):
  pred, ref = units(prediction, lang), units(reference, lang)
  if not pred or not ref:
    return float(pred == ref)
  common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred), common / len(ref)
  return 2 * precision * recall / (precision + recall)


def exact_match(prediction, reference):
  return float(normalize(prediction) == normalize(reference))


def language_of(text):
  letters = [ch for ch in text if ch.isalpha()]
  if not letters:
    return None
  cjk = sum(_is_cjk(ch) for ch in letters)
  return 'zh' if cjk / len(letters) >= 0.5 else 'en'


def has_repeated_ngram(ids, n=4):
  seen = set()
  for i in range(len(ids) - n + 1):
    gram = tuple(ids[i:i + n])
    if gram in seen:
      return True
    seen.add(gram)
  return False


def summarize(answers):
  """answers: [{'task', 'lang', 'text', 'reference', 'ids', 'ended'}] → metrics dict."""
  def mean(values):
    values = list(values)
    return sum(values) / len(values) if values else 0.0

  scored = [dict(a, em=exact_match(a['text'], a['reference']),
                 f1=f1(a['text'], a['reference'], a['lang'])) for a in answers]
  tasks = {}
  for task in sorted({a['task'] for a in scored}):
    mine = [a for a in scored if a['task'] == task]
    tasks[task] = {'count': len(mine), 'lang': mine[0]['lang'],
                   'exact_match': mean(a['em'] for a in mine), 'f1': mean(a['f1'] for a in mine)}
  by_lang = {lang: {'count': len(mine), 'exact_match': mean(a['em'] for a in mine),
                    'f1': mean(a['f1'] for a in mine)}
             for lang in ('zh', 'en') for mine in [[a for a in scored if a['lang'] == lang]]
             if mine}
  return {'exact_match': mean(a['em'] for a in scored), 'f1': mean(a['f1'] for a in scored),
          'tasks': tasks, 'languages': by_lang,
          'end_of_turn_rate': mean(float(a['ended']) for a in scored),
          'language_ok_rate': mean(float(language_of(a['text']) == a['lang']) for a in scored),
          'repeat_4gram_rate': mean(float(has_repeated_ngram(a['ids'])) for a in scored),
          'answers': len(scored)}
