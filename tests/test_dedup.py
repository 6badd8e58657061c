"""Fuzzy transcript dedup (stages/dedup.py): the pure phases, run here in plain Python as the Ray plan runs them."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from itertools import permutations

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash

from pipeline.schema import CUE_TYPE, RejectReason, table_from_rows
from pipeline.stage import Stage, run_stages
from pipeline.io.sources import duplicate_reject
from pipeline.text import normalize_for_comparison
from stages.dedup import find_duplicates as dedup_find_duplicates
from stages.dedup import key_rows
from stages.dedup import (
    DedupOptions,
    DuplicateDecisions,
    compute_signatures,
    exclusion_rows,
    lsh_params,
    mark_duplicates,
    resolve_duplicates,
    shingle_bytes,
    shingles,
)

OPTIONS = DedupOptions()


def source_table(texts: list[str], ids: list[str] | None = None, cues: list[list[tuple[int, int]] | None] | None = None) -> pa.Table:
    ids = ids or [f"s{i:05d}" for i in range(len(texts))]
    cue_rows = [None if c is None else [{"start_ms": a, "end_ms": b, "text": "x"} for a, b in c] for c in (cues or [None] * len(texts))]
    return pa.table(
        {
            "source_id": pa.array(ids, pa.string()),
            "transcript_text": pa.array(texts, pa.string()),
            "transcript_format": pa.array(["txt" if c is None else "srt" for c in cue_rows], pa.string()),
            "cues": pa.array(cue_rows, pa.list_(CUE_TYPE)),
        }
    )


class InProcessPlan:
    """``stages.dedup.GroupingPlan`` without Ray: a dataset is a list of batches, keys counted in this process."""

    def by_key(self, dataset, explode, reduce, extra=None, expected_rows=0, distinct_by=None):
        keyed = pa.concat_tables([explode(batch) for batch in dataset] + ([extra] if extra is not None and extra.num_rows else []))
        return reduce(keyed)  # one partition: every row of a key in it

    def gather(self, dataset, column, values, columns, reduce, *args):
        wanted = set(values.tolist())
        found = [t.filter(pa.array([v in wanted for v in t[column].to_pylist()], pa.bool_())).select(columns) for t in dataset if t.num_rows]
        return reduce(pa.concat_tables(found) if found else pa.table({c: [] for c in columns}), *args)

    def columns(self, dataset):
        return dataset[0].column_names if dataset else []


def with_refs(table: pa.Table) -> pa.Table:
    return table if "ref" in table.column_names else table.append_column("ref", pa.array(range(table.num_rows), pa.int64()))


def find_duplicates(table: pa.Table, options: DedupOptions = OPTIONS, batch_size: int | None = None) -> dict[str, str]:
    """The corpus job's dedup (``stages.dedup.find_duplicates``) on an in-process plan: signatures per batch, then
    the global step (evaluation texts from ``options.exclude_texts``, as the job reads them)."""
    table = with_refs(table)
    batches = [table] if batch_size is None else [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)]
    signed = [compute_signatures(batch, options) for batch in batches]
    return dict(dedup_find_duplicates(InProcessPlan(), signed, options, duplicate_reject).keeper)


def is_duplicate(a: str, b: str, options: DedupOptions = OPTIONS) -> bool:
    return bool(find_duplicates(source_table([a, b]), options))


SENTENCE_20 = "the committee met on tuesday to discuss the new budget and agreed that the school should hire three more teachers"
SENTENCE_20_CHANGED = SENTENCE_20.replace("discuss", "review")
ZH = "今天我们在这里讨论城市交通的问题，政府计划明年在市中心修建三条新的地铁线路，以减少道路拥堵和空气污染。"
ZH_CHANGED = ZH.replace("三条", "四条")


@pytest.mark.parametrize(
    "a, b, duplicate",
    [
        # punctuation, case, spacing and Unicode width differences only: the same text
        (
            "Hello, everyone! Welcome back to the show. Today we're talking about gardening in small spaces.",
            "hello everyone welcome back to the show today we're talking about gardening in small spaces",
            True,
        ),
        (
            "HELLO EVERYONE, WELCOME BACK TO THE SHOW; TODAY WE'RE TALKING ABOUT GARDENING IN SMALL SPACES!",
            "Hello everyone -- welcome back to the show. Today we’re talking about gardening in small spaces…",
            True,
        ),
        ("don't stop believing, hold on to that feeling, streetlight people", "dont stop believing hold on to that feeling streetlight people", True),
        ("Ｆｕｌｌ ｗｉｄｔｈ letters are the same letters after NFKC normalisation here", "Full width letters are the same letters after NFKC normalisation here", True),
        # one word changed in the middle of a 20-word sentence: 15 of 21 word 3-grams shared (J = 0.714)
        (SENTENCE_20, SENTENCE_20_CHANGED, True),
        # different sentences
        (SENTENCE_20, "the weather today is sunny with a light breeze from the west and temperatures around twenty degrees in the afternoon", False),
        # same words, different order: different shingles
        (SENTENCE_20, " ".join(reversed(SENTENCE_20.split())), False),
        # below min_tokens (8 words): never judged, even when identical
        ("Thank you very much.", "thank you very much", False),
        ("Yes. No. Maybe so!", "Yes. No. Maybe so!", False),
        # Chinese: character 5-grams; punctuation removed, one character changed
        (ZH, ZH_CHANGED.replace("，", " ").replace("。", ""), True),
        (ZH, "我昨天去商店买了很多新鲜的水果和蔬菜，然后回家给全家人做了一顿丰盛的晚饭。", False),
        ("谢谢大家。", "谢谢大家", False),  # 4 characters: too short
        # Japanese (kanji + kana) and Thai: scripts without spaces, spacing differences ignored
        ("今日はとても良い天気ですね。明日も晴れるといいですね。", "今日は とても 良い 天気ですね 明日も 晴れると いいですね", True),
        ("วันนี้อากาศดีมากเราจะไปเที่ยวทะเลกันที่หัวหิน", "วันนี้อากาศดีมาก เราจะไปเที่ยวทะเลกัน ที่หัวหิน", True),
        # Korean is written with spaces: word shingles
        ("오늘은 날씨가 정말 좋아서 우리는 공원에 가서 산책을 하기로 했습니다.", "오늘은 날씨가 정말 좋아서, 우리는 공원에 가서 산책을 하기로 했습니다!", True),
        ("오늘은 날씨가 정말 좋아서 우리는 공원에 가서 산책을 하기로 했습니다.", "내일은 비가 많이 온다고 해서 우리는 집에서 영화를 보기로 했습니다.", False),
    ],
)
def test_pairs(a, b, duplicate):
    assert is_duplicate(a, b) is duplicate


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", "hello world"),
        ("  many   spaces\tand\nlines ", "many spaces and lines"),
        ("well-known $5 50% #tag", "well known 5 50 tag"),
        ("I’m here, aren't I?", "im here arent i"),
        ("Straße ＡＢＣ ﬁne", "strasse abc fine"),
        ("你好，世界！", "你好 世界"),
        ("♪ music ♪ [applause]", "music applause"),
    ],
)
def test_normalize_for_comparison(text, expected):
    assert normalize_for_comparison(text) == expected


def test_shingles_by_script():
    assert shingles("one two three four five six seven eight", OPTIONS)[:2] == ["one two three", "two three four"]
    assert shingles("one two three four five six seven", OPTIONS) is None  # 7 words < min_tokens
    assert shingles("a b a b a b a b a b", OPTIONS) == ["a b a", "b a b"]  # distinct, in order
    assert shingles("我们今天在这里讨论", OPTIONS)[:2] == ["我们今天在", "们今天在这"]  # spaces would not matter
    assert shingles("我们 今天 在这里 讨论", OPTIONS) == shingles("我们今天在这里讨论", OPTIONS)
    assert shingles("我们用Python写了很多代码", OPTIONS)[0] == "我们用py"  # mostly Chinese: characters
    assert shingles("오늘은 날씨가 정말 좋아서 우리는 공원에 가서 산책을", OPTIONS)[0] == "오늘은 날씨가 정말"  # Korean: words
    assert shingles("ภาษาไทยไม่มีช่องว่าง", OPTIONS)[0] == "ภาษาไ"


@pytest.mark.parametrize(
    "text",
    [SENTENCE_20, ZH, "Straße — ÉTÉ, naïve café; ﬁne Ｆｕｌｌ!", "a b a b a b a b a b", "오늘은 날씨가 정말 좋아서 우리는 공원에 가서 산책을", "short text", "", "..."],
)
@pytest.mark.parametrize("options", [OPTIONS, DedupOptions(ngram_words=1, ngram_chars=2, min_tokens=2), DedupOptions(ngram_words=5, min_tokens=9)])
def test_shingle_bytes_are_the_shingles(text, options):
    """compute_signatures hashes byte slices of the encoded text: the same set as shingles()."""
    expected = shingles(text, options)
    found = shingle_bytes(text, options)
    assert (found is None) == (expected is None)
    if expected is not None:
        assert set(found) == {s.encode("utf-8") for s in expected}


def test_options_are_validated():
    for bad in ({"threshold": 0.0}, {"threshold": 1.5}, {"num_perm": 8}, {"min_tokens": 2}, {"ngram_words": 0}, {"false_negative_weight": 1.0}):
        with pytest.raises(ValueError):
            DedupOptions(**bad)


def test_lsh_params():
    assert lsh_params(OPTIONS) == (20, 6)
    assert lsh_params(DedupOptions(false_negative_weight=0.5)) == (14, 9)  # datasketch MinHashLSH's own choice
    for threshold, num_perm in ((0.5, 64), (0.8, 256), (0.9, 128)):
        bands, rows = lsh_params(DedupOptions(threshold=threshold, num_perm=num_perm))
        assert bands >= 2 and bands * rows <= num_perm


@pytest.mark.parametrize("num_perm, seed", [(128, 1), (64, 7)])
def test_signatures_equal_datasketch(num_perm, seed):
    options = DedupOptions(num_perm=num_perm, seed=seed)
    texts = [SENTENCE_20, ZH, "Hello, everyone! Welcome back to the show. Today we talk.", "too short", "", "a b a b a b a b a b"]
    table = source_table(texts)
    table = table.set_column(1, "transcript_text", pa.array(texts[:-2] + [None, texts[-1]], pa.string()))
    signed = compute_signatures(table, options)
    assert signed.column_names == table.column_names + ["minhash", "dedup_quality"]
    for text, value in zip(texts, signed["minhash"].to_pylist()):
        items = shingles(text, options) if text else None
        if items is None:
            assert value is None
            continue
        reference = MinHash(num_perm=num_perm, seed=seed)
        for item in items:
            reference.update(item.encode("utf-8"))
        assert np.array_equal(np.frombuffer(value, dtype="<u4"), reference.hashvalues)
    # batches give the same values as one call
    halves = pa.concat_tables([compute_signatures(table.slice(0, 3), options), compute_signatures(table.slice(3), options)])
    assert halves.equals(signed)


def test_long_transcripts_span_several_hash_slices():
    """An hour-long transcript has thousands of shingles: it is permuted in several slices, next to short ones."""
    rng = random.Random(3)
    words = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choices(words, k=k)) for k in (12, 5000, 9, 30, 2100, 2046, 8)]
    signed = compute_signatures(source_table(texts), OPTIONS)
    for text, value in zip(texts, signed["minhash"].to_pylist()):
        reference = MinHash(num_perm=OPTIONS.num_perm, seed=OPTIONS.seed)
        reference.update_batch([s.encode("utf-8") for s in shingles(text, OPTIONS)])
        assert np.array_equal(np.frombuffer(value, dtype="<u4"), reference.hashvalues)


def test_key_rows_and_candidate_pairs():
    from stages.dedup import _signature_rows, _verified, candidate_pairs, key_rows

    signed = with_refs(compute_signatures(source_table([SENTENCE_20, SENTENCE_20.upper(), "too short"], ids=["b", "a", "c"]), OPTIONS))
    keys = key_rows(signed, OPTIONS)
    bands, _ = lsh_params(OPTIONS)
    assert keys.num_rows == 3 + 2 * bands  # an id key per row, band keys for the two with a signature (not the short text)
    assert keys.column_names == ["key", "ref"] and keys.schema.field("key").type == pa.int64()
    assert len(set(keys["key"].to_pylist())) == 3 + bands  # identical texts share every band key; bands never collide
    assert key_rows(signed, None).num_rows == 3  # dedup off: ids only
    assert candidate_pairs(keys).tolist() == [[0, 1]]  # shared by 20 band keys, one pair
    signatures, valid = _signature_rows(signed["minhash"], OPTIONS.num_perm)
    assert valid.tolist() == [True, True, False] and _verified(signatures, np.array([0]), np.array([1]), OPTIONS).tolist() == [True]


def test_candidate_pairs_are_bounded_and_deterministic():
    from stages.dedup import candidate_pairs

    group = pa.table({"key": pa.array([7] * 200, pa.int64()), "ref": pa.array(range(200), pa.int64())})
    pairs = candidate_pairs(group)
    # beyond 64 members: each member against the first 16 by ref (120 head pairs + 184 x 16)
    assert len(pairs) == 16 * 15 // 2 + 184 * 16 and (pairs[:, 0] < pairs[:, 1]).all()
    shuffled = group.take(np.random.default_rng(0).permutation(200))
    assert candidate_pairs(shuffled).tolist() == pairs.tolist()
    assert len(candidate_pairs(group.slice(0, 10))) == 45 and len(candidate_pairs(group.slice(0, 1))) == 0
    repeated = pa.table({"key": pa.array([1, 1, 2, 2], pa.int64()), "ref": pa.array([3, 4, 4, 3], pa.int64())})
    assert candidate_pairs(repeated).tolist() == [[3, 4]]  # one pair, however many keys it shares


def test_recall_at_the_threshold():
    """One word changed in the middle: 20 words sit at J = 0.714, right at 0.7, so only some are caught (the
    MinHash estimate has a standard deviation of 0.04 at 128 permutations); 40 words (J = 0.85) always are."""
    rng = random.Random(5)
    vocabulary = [f"w{i}" for i in range(5000)]
    caught = {}
    for words in (20, 40):
        texts, ids = [], []
        for k in range(150):
            base = rng.sample(vocabulary, words)
            changed = list(base)
            changed[words // 2] = "changed"
            texts += [" ".join(base), " ".join(changed)]
            ids += [f"{k:03d}a", f"{k:03d}b"]
        caught[words] = len(find_duplicates(source_table(texts, ids))) / 150
    assert 0.5 <= caught[20] <= 0.9
    assert caught[40] == 1.0


def keep(texts_and_cues: list[tuple[str, list[tuple[int, int]] | None]], ids: list[str]) -> str:
    """The keeper of a cluster of copies (every other id maps to it)."""
    table = source_table([t for t, _ in texts_and_cues], ids, [c for _, c in texts_and_cues])
    duplicate_of = find_duplicates(table)
    keepers = set(duplicate_of.values())
    assert len(keepers) == 1 and set(duplicate_of) | keepers == set(ids)
    return keepers.pop()


def test_keeper_preference():
    text = "Hello, everyone. Welcome back to the show! Today we're talking about gardening in small spaces."
    plain = "hello everyone welcome back to the show today were talking about gardening in small spaces"
    # punctuated over unpunctuated, whatever the ids and the audio
    assert keep([(plain, [(0, 90000)]), (text, None)], ["a", "b"]) == "b"
    # cased over all lower case and all upper case (both punctuated)
    assert keep([(text.lower(), None), (text.upper(), None), (text, None)], ["a", "b", "c"]) == "c"
    # longer audio (cue span) among equal texts
    assert keep([(text, [(0, 4000), (4000, 9000)]), (text, [(1000, 21000)]), (text, None)], ["a", "b", "c"]) == "b"
    # then longer text
    assert keep([(text, None), (text + " Thanks.", None)], ["a", "b"]) == "b"
    # tie: the smallest source id
    assert keep([(text, None), (text, None), (text, None)], ["m", "c", "x"]) == "c"


def test_keeper_prefers_finer_timing_then_better_audio(tmp_path):
    """Copies of one recording that tie on text and cue span: the millisecond-timed transcript over the one timed
    to whole seconds, then the lossless original over a 24 kb/s Opus re-upload, then the higher bit rate."""
    from pipeline.io.media import decode_audio
    from support.data import JFK, ffmpeg

    text = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    original = tmp_path / "original.flac"
    original.write_bytes(JFK.read_bytes())
    for name, rate in (("reupload_24k.opus", "24k"), ("reupload_64k.opus", "64k")):
        ffmpeg("-i", str(JFK), "-c:a", "libopus", "-b:a", rate, str(tmp_path / name))
    assert len(decode_audio(tmp_path / "reupload_24k.opus")) > 0

    def table(names_and_cues, ids):
        t = source_table([text] * len(ids), ids, [c for _, c in names_and_cues])
        return t.append_column("audio_path", pa.array([str(tmp_path / n) for n, _ in names_and_cues], pa.string()))

    def keeper(names_and_cues, ids):
        duplicate_of = find_duplicates(table(names_and_cues, ids))
        return (set(duplicate_of.values()) | set(ids) - set(duplicate_of)).pop()

    ms = [(230, 10230)]
    # equal spans (10 s), one timed to the millisecond, one to whole seconds: the finer one, whatever the ids
    assert keeper([("reupload_24k.opus", [(1000, 11000)]), ("reupload_24k.opus", ms)], ["a", "b"]) == "b"
    assert keeper([("reupload_24k.opus", ms), ("original.flac", ms)], ["a", "b"]) == "b"  # lossless over lossy
    assert keeper([("reupload_24k.opus", ms), ("reupload_64k.opus", ms)], ["a", "b"]) == "b"  # the higher bit rate
    assert keeper([("original.flac", ms), ("reupload_64k.opus", ms)], ["b", "a"]) == "b"  # not the id: the audio


def test_resolve_duplicates_is_order_independent():
    edges = [("a", "b"), ("c", "d"), ("b", "c"), ("e", "f"), ("g", "eval:2"), ("h", "eval:10"), ("g", "h"), ("eval:2", "eval:10")]
    quality = {"a": "1", "b": "3", "c": "3", "d": "2", "e": "0.5", "f": "0.25", "g": "9", "h": "9"}
    expected = {"a": "b", "c": "b", "d": "b", "f": "e", "g": "eval:2", "h": "eval:2"}
    for order in list(permutations(edges))[::997]:
        assert resolve_duplicates(order, quality) == expected
        assert resolve_duplicates([(b, a) for a, b in order], quality) == expected
    assert resolve_duplicates([("p", "q")], {}) == {"q": "p"}  # no quality known: the smallest id
    assert resolve_duplicates([], {}) == {}


def _reference_clusters(edges, quality):
    """The rule written plainly (clusters by repeated merging, keeper by sorting): what resolve_arrays must equal."""
    clusters = []
    for a, b in edges:
        joined = [c for c in clusters if a in c or b in c]
        clusters = [c for c in clusters if c not in joined] + [set().union({a, b}, *joined)]
    result = {}
    for members in clusters:
        evals = sorted((int(m[5:]), m) for m in members if m.startswith("eval:"))
        ranked = sorted(members)  # then greatest quality first, unknown last (stable sorts keep the smaller id first)
        ranked.sort(key=lambda m: quality.get(m) or "", reverse=True)
        ranked.sort(key=lambda m: quality.get(m) is None)
        keeper = evals[0][1] if evals else ranked[0]
        result.update({m: keeper for m in members if m != keeper and not m.startswith("eval:")})
    return dict(sorted(result.items()))


def test_resolve_arrays_matches_the_rule_on_random_graphs():
    rng = random.Random(7)
    for _ in range(200):
        nodes = [f"s{i:02d}" for i in range(rng.randint(2, 30))] + [f"eval:{i}" for i in range(rng.randint(0, 2))]
        edges = [tuple(rng.sample(nodes, 2)) for _ in range(rng.randint(1, 40))]
        quality = {n: rng.choice(["1", "2", "3", "10"]) for n in nodes if rng.random() < 0.8}
        assert resolve_duplicates(edges, quality) == _reference_clusters(edges, quality)


def generated_corpus(seed: int = 7) -> tuple[list[str], list[str], list[set[str]]]:
    """300 different base texts (40-120 words of a random vocabulary, with sentences), each with 5-15 noisy
    copies: a word swapped, punctuation changed or removed, case changed."""
    rng = random.Random(seed)
    letters = "bcdfghjklmnprstvwz"
    vocabulary = sorted({"".join(rng.choice(letters) + rng.choice("aeiou") for _ in range(rng.randint(1, 4))) for _ in range(8000)})
    ids, texts, groups = [], [], []
    for g in range(300):
        words = rng.sample(vocabulary, rng.randint(40, 120))
        sentences, i = [], 0
        while i < len(words):
            n = rng.randint(4, 12)
            chunk = words[i : i + n]
            sentences.append(chunk[0].capitalize() + " " + ", ".join([" ".join(chunk[1:3])] + chunk[3:]) + rng.choice(".?!"))
            i += n
        base = " ".join(sentences)
        members = [(f"g{g:03d}-00", base)]
        for v in range(1, rng.randint(6, 16)):
            variant = base
            if rng.random() < 0.7:  # one word swapped for another
                tokens = variant.split(" ")
                tokens[rng.randrange(len(tokens))] = rng.choice(vocabulary)
                variant = " ".join(tokens)
            change = rng.choice(["none", "strip", "swap", "lower", "upper"])
            if change == "strip":
                variant = variant.replace(",", "").replace(".", "").replace("?", "").replace("!", "")
            elif change == "swap":
                variant = variant.replace(",", ";").replace(".", "!")
            elif change == "lower":
                variant = variant.lower()
            elif change == "upper":
                variant = variant.upper()
            members.append((f"g{g:03d}-{v:02d}", variant))
        groups.append({m for m, _ in members})
        ids += [m for m, _ in members]
        texts += [t for _, t in members]
    return ids, texts, groups


def clusters(duplicate_of: dict[str, str], ids: list[str]) -> set[frozenset[str]]:
    by_keeper = defaultdict(set)
    for source_id in ids:
        by_keeper[duplicate_of.get(source_id, source_id)].add(source_id)
    return {frozenset(members) for members in by_keeper.values()}


def test_thousands_of_generated_near_duplicates():
    ids, texts, groups = generated_corpus()
    assert len(ids) > 3000
    table = source_table(texts, ids)
    decisions = find_duplicates(table, batch_size=500)
    assert clusters(decisions, ids) == {frozenset(g) for g in groups}  # every copy found, no two groups merged
    # the same decisions whatever the order of the rows and the block sizes
    order = np.random.default_rng(1).permutation(len(ids))
    assert find_duplicates(table.take(order), batch_size=97) == decisions
    assert find_duplicates(table.take(order[::-1])) == decisions
    # keepers are punctuated and cased when such a copy exists
    text_of = dict(zip(ids, texts))
    for keeper in set(decisions.values()):
        assert any(mark in text_of[keeper] for mark in ".?!;") and text_of[keeper] not in (text_of[keeper].lower(), text_of[keeper].upper())


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_eval_overlap(tmp_path, suffix):
    eval_texts = [
        "and so my fellow americans ask not what your country can do for you ask what you can do for your country",
        "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm windowsill",
    ]
    path = tmp_path / f"eval{suffix}"
    lines = eval_texts if suffix == ".txt" else [json.dumps({"text": t, "id": i}) for i, t in enumerate(eval_texts)]
    path.write_text(lines[0] + "\n\n" + lines[1] + "\n", encoding="utf-8")  # line 2 is blank
    options = DedupOptions(exclude_texts=str(path))
    extra = exclusion_rows(options)
    assert extra["source_id"].to_pylist() == ["eval:1", "eval:3"]
    assert extra["transcript_format"].to_pylist() == ["txt", "txt"] and extra["cues"].null_count == 2
    sources = source_table(
        [
            "And so, my fellow Americans: ask not what your country can do for you; ask what you can do for your country.",
            "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country!",
            "The quick brown fox jumps over the lazy dog, while the cat sleeps on the warm windowsill.",
            "An unrelated talk about the history of bread making in medieval european monasteries and villages.",
        ],
        ["jfk-1", "jfk-2", "fox", "bread"],
    )
    decisions = find_duplicates(sources, options)
    assert decisions == {"fox": "eval:3", "jfk-1": "eval:1", "jfk-2": "eval:1"}

    signed = compute_signatures(sources, options)
    stage = Stage("remove_duplicates", mark_duplicates, DuplicateDecisions.from_mapping(decisions, options))
    marked = run_stages([stage], signed)
    assert "minhash" not in marked.column_names
    rows = {r["source_id"]: r for r in marked.to_pylist()}
    assert rows["bread"]["reject_reason"] is None
    assert rows["fox"]["reject_reason"] == RejectReason.EVAL_OVERLAP.value
    assert rows["fox"]["duplicate_of"] == "eval:3" and rows["fox"]["reject_stage"] == "remove_duplicates"
    assert f"line 3 of eval{suffix}" in rows["fox"]["reject_detail"]


def test_exclusion_rows_without_file_and_bad_jsonl(tmp_path):
    empty = exclusion_rows(OPTIONS)
    assert empty.num_rows == 0 and empty.column_names == ["source_id", "transcript_text", "transcript_format", "cues"]
    assert compute_signatures(empty, OPTIONS).num_rows == 0
    assert key_rows(with_refs(compute_signatures(empty, OPTIONS)), OPTIONS).num_rows == 0
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"sentence": "no text key"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="eval.jsonl:1"):
        exclusion_rows(DedupOptions(exclude_texts=str(bad)))


def test_mark_duplicates():
    text = "Hello, everyone. Welcome back to the show! Today we're talking about gardening in small spaces."
    batch = table_from_rows(
        [{"source_id": s, "transcript_text": text, "language": "en", "cues": None} for s in ("a", "b", "c")]
    )
    signed = compute_signatures(batch, OPTIONS)
    decisions = DuplicateDecisions.from_mapping({"b": "a", "zz": "a"}, OPTIONS)
    assert decisions == DuplicateDecisions(pa.array(["b", "zz"]), pa.array(["a", "a"]), 0.7) and len(decisions) == 2
    marked = mark_duplicates(signed, decisions)
    assert "minhash" not in marked.column_names and "dedup_quality" in marked.column_names
    rows = marked.to_pylist()
    assert [r.get("reject_reason") for r in rows] == [None, "duplicate", None]
    assert rows[1]["duplicate_of"] == "a" and rows[1]["reject_detail"] == "near-duplicate of a (Jaccard ≥ 0.7)"
    assert rows[0]["language"] == "en"
    untouched = mark_duplicates(signed, DuplicateDecisions.from_mapping({"zz": "a"}, OPTIONS))
    assert untouched.equals(signed.drop_columns(["minhash"]))


def test_sources_sharing_an_id_keep_the_first_and_become_duplicate_source_rows():
    """Two manifest lines (or two inputs) that give one id: the global step keeps the first by ref and turns the
    others into the reject rows discovery in one process makes (``replace_copies``), wherever they are."""
    from stages.dedup import replace_copies

    texts = ["A talk about rivers and the boats that sail on them, every day of the year.", "Something else entirely, said once."]
    table = source_table([texts[0], texts[1], texts[1]], ["same", "other", "same"])
    table = table.append_column("ref", pa.array([5, 7, 9], pa.int64()))
    table = table.append_column("manifest", pa.array(["m.jsonl", "m.jsonl", "m.jsonl"]))
    table = table.append_column("manifest_line", pa.array([1, 2, 3], pa.int64()))
    table = table.append_column("source", pa.array(["a", "b", "c"]))
    for name in ("reject_stage", "reject_reason", "reject_detail"):
        table = table.append_column(name, pa.nulls(3, pa.string()))
    decisions = dedup_find_duplicates(InProcessPlan(), [compute_signatures(table, OPTIONS)], OPTIONS, duplicate_reject)
    assert [ref for ref, _ in decisions.same_id] == [9]  # the later line with id "same"
    assert decisions.keeper == {}  # text near-duplicates of each other among distinct ids only: none here
    replaced = {r["ref"]: r for r in replace_copies(table, decisions).to_pylist()}
    assert replaced[5]["source_id"] == "same" and replaced[5]["reject_reason"] is None
    copy = replaced[9]
    assert copy["reject_reason"] == "duplicate_source" and copy["reject_stage"] == "discover_sources"
    assert copy["reject_detail"] == "line 3: same source id 'same' as line 1" and copy["source"] == "m.jsonl:3"
    assert copy["source_id"] != "same" and copy["transcript_text"] is None


def test_accounting_from_keys():
    from pipeline.io.commit import stale_keys, without_keys
    from pipeline.sinks.accounting import check_keys

    assert check_keys(np.array([0, 1, 2, 3]), np.array([3, 1, 2, 0]), kept=3, rejected=1)["ok"]
    doubled = check_keys(np.array([0, 1, 2, 3]), np.array([3, 1, 1, 2, 0]), kept=4, rejected=1)
    assert not doubled["ok"] and doubled["counted_twice"] == ["key 0000000000000001"]
    missing = check_keys(np.array([0, 1, 2, 3, 4]), np.array([0, 1, 2, 3]), kept=3, rejected=1)  # found, never committed
    assert not missing["ok"] and missing["missing"] == 1
    gone = check_keys(np.array([0, 1, 2]), np.array([0, 1, 2, 9]), kept=3, rejected=1, name=lambda keys: {9: "removed-source"})
    assert not gone["ok"] and gone["unexpected"] == ["removed-source"]
    assert check_keys(np.array([5, 5]), np.array([5, 5]), kept=1, rejected=1)["ok"]  # one input repeated: committed twice
    assert stale_keys(np.array([1, 2, 5, 5]), np.array([1, 5, 9])).tolist() == [5, 9]  # 5 found twice, once committed; 9 gone
    batch = pa.table({"key": pa.array([1, 2, 3, 4], pa.int64())})
    assert without_keys(batch, np.array([2, 4], np.int64))["key"].to_pylist() == [1, 3]
    assert without_keys(batch, np.zeros(0, np.int64)).num_rows == 4