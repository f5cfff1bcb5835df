"""Parse LLM completions into candidate passages, and validate candidates as hard negatives.

The parser is tolerant of what instruction-tuned models actually write around the answer: `<think>`
blocks (closed or cut off), Markdown code fences, a JSON array or object (also one cut off at the
token limit, whose complete strings are kept), numbered lists (`1.`, `1)`, `Passage 1:`,
`**Negative 1:**`), bullets, preambles ("Here are five passages:") and trailing commentary.

Validation rejects, with one reason each (`REASONS`): empty or very short passages, text that is not
prose (gibberish has almost no function words), degenerate repetition, copies of the query or of the
positive (near-duplicates by word overlap), and duplicates of a passage already kept for the pair.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hnr_assets.lib.mining.negatives import normalize_text

# ------------------------------------------------------------------------------------------ parsing

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>.*", re.DOTALL | re.IGNORECASE)
_THINK_CLOSE = re.compile(r"^.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_STRING_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"')
# An item marker at the start of a line: "1.", "1)", "(1)", "Passage 1:", "**Negative 2:**", "#1", "- ", "* ".
_ITEM = re.compile(
    r"""^[ \t]*(?:[>#]+[ \t]*)?(?:\*\*|__)?[ \t]*
    (?:
        (?P<label>(?:hard[ \t]+)?(?:negative[ \t]+)?(?:passage|negative|example|text|paragraph|option)s?)
            [ \t]*\#?[ \t]*(?P<lnum>\d{1,2})[ \t]*[.:)\-–—]?
      | \(?\#?(?P<num>\d{1,2})[ \t]*[.):\]]
      | \(?(?P<letter>[A-J])[.):](?=[ \t]+\S)
      | (?P<bullet>[-*•])(?=[ \t])
    )
    [ \t]*(?:\*\*|__)?[ \t]*:?[ \t]*""",
    re.IGNORECASE | re.VERBOSE,
)
_LABEL_PREFIX = re.compile(
    r"^(?:\*\*|__)?[ \t]*(?:hard[ \t]+)?(?:negative[ \t]+)?(?:passage|negative|paragraph|answer|text)[ \t]*"
    r"(?:\d{1,2})?[ \t]*(?:\*\*|__)?[ \t]*:[ \t]*(?:\*\*|__)?",
    re.IGNORECASE,
)
_PREAMBLE = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|here(?:'s| is| are)|below (?:is|are)|the following)\b",
    re.IGNORECASE,
)
_COMMENTARY = re.compile(
    r"^(?:\(?note|explanation|these (?:passages|paragraphs|texts|examples)|this (?:passage|paragraph|text)"
    r"|each (?:passage|of these)|i hope|let me know|in (?:these|this) (?:passages?|paragraphs?))\b",
    re.IGNORECASE,
)
_TEXT_KEYS = ("passage", "text", "negative", "hard_negative", "content", "paragraph", "body")
_LIST_KEYS = ("passages", "negatives", "hard_negatives", "hard negatives", "results", "items", "texts", "paragraphs")
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")


@dataclass(frozen=True)
class ParsedOutput:
    """Candidate passages found in one completion.

    Attributes:
        passages: Candidates in the order written (not yet validated).
        form: How they were found: `json`, `json-partial`, `numbered`, `bullets`, `text`, or `none`.
    """

    passages: tuple[str, ...]
    form: str


def strip_thinking(text: str) -> str:
    """Remove `<think>...</think>` blocks; an unclosed `<think>` swallows the rest; a stray `</think>`
    drops what precedes it (templates that open the block in the prompt)."""
    text = _THINK_BLOCK.sub("", text or "")
    if re.search(r"</think>", text, re.IGNORECASE):
        text = _THINK_CLOSE.sub("", text)
    return _THINK_OPEN.sub("", text).strip()


def _texts_from_json(value: object) -> list[str] | None:
    """Strings of a parsed JSON value shaped like a list of passages, else None."""
    if isinstance(value, dict):
        lowered = {str(k).strip().lower(): v for k, v in value.items()}
        for key in _LIST_KEYS:
            if key in lowered:
                return _texts_from_json(lowered[key])
        for key in _TEXT_KEYS:
            if isinstance(lowered.get(key), str):
                return [lowered[key]]
        if value and all(isinstance(v, str) for v in value.values()):  # {"passage_1": "...", ...}
            return list(value.values())
        return None
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict):
                texts = _texts_from_json(item)
                if texts:
                    out.extend(texts)
        return out if value else []
    if isinstance(value, str):
        return [value]
    return None


def _json_passages(text: str) -> tuple[list[str], str] | None:
    """The first JSON array/object in `text` that holds passages; a cut-off array keeps its complete strings."""
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"[\[{]", text)]
    for start in starts:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        texts = _texts_from_json(value)
        if texts:
            return texts, "json"
    if starts:  # truncated (token limit) or malformed: keep the complete string literals after the opening bracket
        tail = text[starts[0] :]
        strings = []
        for literal in _STRING_LITERAL.findall(tail):
            after = tail[tail.find(literal) + len(literal) :].lstrip()
            if after.startswith(":"):  # a key of an object, not a passage
                continue
            try:
                strings.append(json.loads(literal))
            except json.JSONDecodeError:
                continue
        strings = [s for s in strings if len(s.split()) >= 3]
        if strings:
            return strings, "json-partial"
    return None


def _clean(passage: str) -> str:
    """Strip labels, Markdown emphasis, quotes and whitespace around one passage."""
    text = passage.strip()
    for _ in range(3):
        nested = _ITEM.match(text)  # "1. A: text" or "- 1. text"
        if nested and nested.end() < len(text):
            text = text[nested.end() :]
        text = _LABEL_PREFIX.sub("", text).strip()
        text = text.strip("*_").strip()
        if len(text) >= 2 and text[0] in "\"'“‘" and text[-1] in "\"'”’":
            text = text[1:-1].strip()
        elif text and text[0] in '"“' and text.count(text[0]) % 2 == 1:  # an opening quote never closed
            text = text[1:].strip()
        elif text and text[-1] in '"”' and text.count(text[-1]) % 2 == 1:
            text = text[:-1].strip()
        text = text.rstrip(",").strip()
    return " ".join(text.split())


def _listed_passages(text: str) -> tuple[list[str], str] | None:
    """Items of a numbered or bulleted list; text before the first item and commentary after a blank line
    are dropped."""
    items: list[list[str]] = []
    kinds: list[str] = []
    closed = False  # a blank line after the current item's text: later unmarked lines are commentary
    for line in text.splitlines():
        match = _ITEM.match(line)
        if match and (match.group("bullet") is None or match.end() < len(line)):
            kinds.append("bullets" if match.group("bullet") else "numbered")
            items.append([line[match.end() :]])
            closed = False
        elif items:
            if not line.strip():
                closed = closed or any(part.strip() for part in items[-1])
            elif not closed:
                items[-1].append(line)
    passages = [_clean(" ".join(parts)) for parts in items]
    passages = [p for p in passages if p]
    if not passages:
        return None
    form = "numbered" if "numbered" in kinds else "bullets"
    return passages, form


def _plain_passage(text: str) -> list[str]:
    """One passage from unstructured text: preamble and trailing commentary paragraphs dropped."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    # Drop leading preamble lines ("Here is a passage:", "The passage that does not answer the query is:").
    while paragraphs:
        first_lines = paragraphs[0].splitlines()
        head = first_lines[0].strip()
        short = len(head.split()) <= 25
        if not ((head.endswith(":") and short) or (_PREAMBLE.match(head) and len(head.split()) <= 12)):
            break
        rest = "\n".join(first_lines[1:]).strip()
        if not rest and len(paragraphs) == 1:
            break  # nothing after it: keep the line, validation judges it
        paragraphs = ([rest] if rest else []) + paragraphs[1:]
    kept: list[str] = []
    for paragraph in paragraphs:
        if kept and _COMMENTARY.match(_clean(paragraph)):
            break
        kept.append(paragraph)
    passage = _clean(" ".join(kept))
    return [passage] if passage else []


def drop_unfinished_sentence(text: str) -> str:
    """Cut a passage that stopped at the token limit back to its last complete sentence (if it has one)."""
    ends = list(_SENTENCE_END.finditer(text))
    if not ends or ends[-1].end() == len(text.rstrip()):
        return text.strip()
    return text[: ends[-1].end()].strip()


def parse_completion(text: str, output: str = "list", truncated: bool = False) -> ParsedOutput:
    """Candidate passages of one completion.

    Args:
        text: The raw completion.
        output: The template's output kind: `list` (several passages expected) or `single` (one).
        truncated: The completion stopped at the token limit; a trailing unfinished sentence is dropped.

    Returns:
        The candidates (maybe none) and the form they were found in.
    """
    body = strip_thinking(text)
    fences = [(lang.lower(), inner) for lang, inner in _FENCE.findall(body)]
    sources = [inner for lang, inner in fences if lang in ("json", "")] + [body]
    found: tuple[list[str], str] | None = None
    for source in sources:
        found = _json_passages(source) if ("[" in source or "{" in source) else None
        if found:
            break
    if found is None:
        unfenced = _FENCE.sub(lambda m: m.group(2), body)
        found = _listed_passages(unfenced)
        if found is None or (output == "single" and len(found[0]) == 1 and found[1] == "bullets"):
            plain = _plain_passage(unfenced)
            found = (plain, "text") if plain else None
    if found is None:
        return ParsedOutput((), "none")
    passages, form = found
    passages = [_clean(p) for p in passages if isinstance(p, str)]
    if truncated and passages and form in ("text", "numbered", "bullets"):
        passages[-1] = drop_unfinished_sentence(passages[-1])
    return ParsedOutput(tuple(passages), form)


# ------------------------------------------------------------------------------------------ validation

# Function words of English: real prose is 25-50% function words, random token strings almost none.
_STOPWORD_TEXT = (
    "a about above after again against all also although am an and any are as at be because been before being "
    "below between both but by can could did do does doing down during each either few for from further had has "
    "have having he her here hers him his how however i if in into is it its itself may might more most much "
    "must my neither no nor not of off on once only or other our ours out over own same several she should so "
    "some such than that the their theirs them then there these they this those though through thus to too "
    "under until up upon very was we were what when where whether which while who whom whose why will with "
    "within without would yet you your"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"\w+", re.UNICODE)
_JUNK = {"Cc", "Cs", "Co", "Cn"}  # control, surrogate, private-use and unassigned code points
# An assistant talking about the task rather than writing a passage: "the query", "these passages",
# "JSON", first person ("I'm ready to assist"), "here are".
_META = re.compile(
    r"\b(?:the|this|your|above|following|given|relevant|these|those|five|5)\s+(?:query|queries|passages?|prompt)\b"
    r"|\bjson\b|\b(?:I am|I'm|I will|I'll|I can|I have|I hope)\b|\bhere (?:is|are)\b|\bas an ai\b",
    re.IGNORECASE,
)

REASONS = {
    "no_passage": "the parser found no passage in the completion",
    "empty": "empty after cleaning",
    "too_short": "fewer words than `min_words`",
    "too_long": "more words than `max_words`",
    "not_prose": "control or undecodable characters, or too few English function words (gibberish, code, lists)",
    "repetitive": "degenerate repetition (few distinct word trigrams)",
    "meta": "talks about the task (the query, the passages, JSON, 'I am ...') instead of being a passage",
    "copies_query": "near-duplicate of the query",
    "copies_positive": "near-duplicate of (or copied from) the positive",
    "duplicate": "near-duplicate of a passage already kept for this pair",
    "surplus": "valid, but the pair already has its negatives",
}


@dataclass(frozen=True)
class ValidationRules:
    """Thresholds of `validate_candidates`.

    Attributes:
        min_words: Fewer words is `too_short`.
        max_words: More words is `too_long` (None: no limit).
        min_stopword_share: Share of function words below which text is `not_prose` (0 disables).
        min_distinct_trigrams: Share of distinct word trigrams below which text is `repetitive`.
        max_positive_overlap: Containment of the candidate's word trigrams in the positive (or word-set
            Jaccard) at or above which it `copies_positive`.
        max_query_overlap: Word-set Jaccard with the query at or above which it `copies_query`.
        max_duplicate_overlap: Word-trigram Jaccard with a kept passage at or above which it is a `duplicate`.
    """

    min_words: int = 8
    max_words: int | None = 400
    min_stopword_share: float = 0.12
    min_distinct_trigrams: float = 0.5
    max_positive_overlap: float = 0.6
    max_query_overlap: float = 0.7
    max_duplicate_overlap: float = 0.7


@dataclass
class Verdict:
    """The fate of one candidate."""

    text: str
    reason: str | None  # None: accepted
    detail: str = ""


def words(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode letters and digits)."""
    return _WORD.findall(text.lower())


def trigrams(tokens: Sequence[str]) -> set[tuple[str, ...]]:
    """Word trigrams (the tokens themselves for texts under three words)."""
    if len(tokens) < 3:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def containment(a: set, b: set) -> float:
    """Share of `a` found in `b`."""
    return len(a & b) / len(a) if a else 0.0


@dataclass
class PairValidator:
    """Validates the candidates of one (query, positive) pair across all its attempts.

    Args:
        query: Query text.
        positive: Positive passage text.
        rules: Thresholds.
        wanted: Negatives to keep; further valid candidates are `surplus`.
    """

    query: str
    positive: str
    rules: ValidationRules
    wanted: int
    kept: list[str] = field(default_factory=list)
    _kept_grams: list[set] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        q_words = words(self.query)
        p_words = words(self.positive)
        self._q_set, self._q_norm = set(q_words), normalize_text(self.query)
        self._p_set, self._p_grams, self._p_norm = set(p_words), trigrams(p_words), normalize_text(self.positive)

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.wanted

    def check(self, text: str) -> Verdict:
        """Judge one candidate; an accepted one is added to `kept`."""
        rules = self.rules
        tokens = words(text)
        norm = normalize_text(text)
        if not norm:
            return Verdict(text, "empty")
        n = len(tokens)
        if n < rules.min_words:
            return Verdict(text, "too_short", f"{n} words < {rules.min_words}")
        if rules.max_words is not None and n > rules.max_words:
            return Verdict(text, "too_long", f"{n} words > {rules.max_words}")
        junk = sum(1 for ch in text if ch == "\ufffd" or (unicodedata.category(ch) in _JUNK and ch not in "\n\t\r"))
        if junk:
            return Verdict(text, "not_prose", f"{junk} control or undecodable characters")
        share = sum(t in STOPWORDS for t in tokens) / n
        if share < rules.min_stopword_share:
            return Verdict(text, "not_prose", f"function words {share:.0%} < {rules.min_stopword_share:.0%}")
        meta = _META.search(text)
        if meta:
            return Verdict(text, "meta", f"says {meta.group(0)!r}")
        grams = trigrams(tokens)
        distinct = len(grams) / max(n - 2, 1)
        if n >= 12 and distinct < rules.min_distinct_trigrams:
            return Verdict(text, "repetitive", f"distinct trigrams {distinct:.0%}")
        words_set = set(tokens)
        q_overlap = jaccard(words_set, self._q_set)
        if norm == self._q_norm or q_overlap >= rules.max_query_overlap:
            return Verdict(text, "copies_query", f"word Jaccard with the query {q_overlap:.2f}")
        p_contain = containment(grams, self._p_grams)
        p_jaccard = jaccard(words_set, self._p_set)
        if norm == self._p_norm or max(p_contain, p_jaccard) >= rules.max_positive_overlap:
            return Verdict(
                text,
                "copies_positive",
                f"trigrams in the positive {p_contain:.2f}, word Jaccard {p_jaccard:.2f}",
            )
        if norm in self._seen:
            return Verdict(text, "duplicate", "same text as a kept passage")
        for kept_grams in self._kept_grams:
            overlap = jaccard(grams, kept_grams)
            if overlap >= rules.max_duplicate_overlap:
                return Verdict(text, "duplicate", f"trigram Jaccard with a kept passage {overlap:.2f}")
        if self.full:
            return Verdict(text, "surplus")
        self.kept.append(text)
        self._kept_grams.append(grams)
        self._seen.add(norm)
        return Verdict(text, None)


def validate_candidates(
    candidates: Iterable[str], query: str, positive: str, rules: ValidationRules, wanted: int
) -> list[Verdict]:
    """Judge candidates of one pair in order (convenience over `PairValidator`)."""
    validator = PairValidator(query, positive, rules, wanted)
    return [validator.check(c) for c in candidates]
