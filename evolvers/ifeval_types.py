"""Which IFEval instruction type, if any, a constraint restates (SPEC §3.1).

AutoIF's seeds and augmented constraints are training data for a model evaluated on IFEval; a seed
that is one of IFEval's 25 checker types trains on the test's instruction types. `ifeval_overlap`
flags such a constraint by its wording. It is a screen, not a proof: the patterns follow IFEval's
own phrasings and their common paraphrases, and err towards flagging.
"""

from __future__ import annotations

import re

_NUM = (
    r"(?:\d+|a single|single|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve"
    r"|fifteen|twenty|thirty|forty|fifty|hundred|a hundred|n)"
)
_BOUND = (
    r"(?:at least|at most|no more than|no fewer than|no less than|not more than|fewer than"
    r"|less than|more than|exactly|up to|under|over|maximum of|minimum of|between|only)"
)
_WHOLE = r"(?:your|the)\s+(?:entire\s+|whole\s+)?(?:response|answer|reply|output|text)"
_LANGUAGES = (
    "english|french|spanish|german|italian|portuguese|russian|chinese|mandarin|japanese|korean"
    "|arabic|hindi|bengali|urdu|swahili|thai|vietnamese|turkish|persian|farsi|dutch|polish|greek"
    "|hebrew|indonesian|tamil|telugu|marathi|gujarati|kannada|malayalam|punjabi|nepali|finnish"
    "|swedish|norwegian|danish|czech|hungarian|romanian|bulgarian|ukrainian"
)

# Checked in this order: the first match names the type (a "two responses separated by ******"
# constraint is not a paragraph divider, "highlight 2 sections" is not a multiple-sections one).
IFEVAL_TYPES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        (
            "combination:two_responses",
            r"\btwo\s+(?:different\s+|distinct\s+|separate\s+)?(?:responses|answers|replies)\b"
            r"|\*{6}|six asterisks",
        ),
        (
            "combination:repeat_prompt",
            r"\brepeat\s+(?:the|this|my|your)?\s*(?:request|prompt|question|query|instruction)"
            r"|word for word|verbatim",
        ),
        (
            "detectable_format:constrained_response",
            r"\bmy answer is\b|\bone of (?:the|these) (?:following )?options\b",
        ),
        ("detectable_format:json_format", r"\bjson\b"),
        ("detectable_format:title", r"<<|>>|\btitle\b|double angular brackets"),
        ("detectable_content:postscript", r"\bp\.\s?(?:p\.\s?)?s\b|\bpostscript\b"),
        (
            "detectable_content:number_placeholders",
            r"\bplaceholders?\b|square brackets|\[[^\]]+\]",
        ),
        (
            "detectable_format:number_highlighted_sections",
            r"\bhighlight\w*|\bitalic\w*|\bbold\b|\bemphasi[sz]\w*",
        ),
        (
            "detectable_format:multiple_sections",
            rf"\bsections?\s+(?:\d+|x|n|[ivx]+)\b|\"section\"|\b{_NUM}\s+sections\b",
        ),
        (
            "detectable_format:number_bullet_lists",
            rf"\bbullet\w*|\b{_BOUND}\s+{_NUM}\s+(?:list\s+)?(?:items|points)\b"
            rf"|\blist\s+(?:with|of)\s+{_BOUND}?\s*{_NUM}\s+(?:items|points|entries)\b",
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            rf"\b(?:start|begin)\w*\s+{_WHOLE}\s+with\s+the\s+(?:word|phrase)\b"
            r"|\bparagraph\b.{0,60}\b(?:start|begin)\w*\s+with\b|\bfirst word\b",
        ),
        ("length_constraints:number_paragraphs", r"\bparagraphs?\b|\*\*\*|markdown divider"),
        (
            "length_constraints:number_sentences",
            rf"\b{_BOUND}\s+{_NUM}\s+sentences?\b|\b{_NUM}\s+sentences?\s+(?:or|at)\s+(?:fewer|"
            r"less|more|most|least)\b|\bin\s+(?:exactly\s+)?(?:one|a single)\s+sentence\b",
        ),
        (
            "change_case:capital_word_frequency",
            r"\bwords?\b[^.]{0,40}\b(?:capital letters|capitals|all caps|upper[\s-]?case)\b"
            r"|\b(?:capital|capitali[sz]ed|all[\s-]caps|upper[\s-]?case)\s+words\b",
        ),
        (
            "length_constraints:number_words",
            rf"\b{_BOUND}\s+{_NUM}\s+words\b|\b{_NUM}\s+words\s+or\s+(?:fewer|less|more)\b"
            rf"|\bword (?:count|limit)\b|\b{_NUM}-word\s+(?:response|answer|reply|limit)\b",
        ),
        (
            "startend:quotation",
            r"quotation marks?|double quotes?|\b(?:wrap|enclose|surround)\w*\b.{0,40}\bquotes\b",
        ),
        (
            "startend:end_checker",
            rf"\b(?:end|finish|conclude|close)\w*\s+{_WHOLE}\s+with\b"
            r"|no other words? should follow|nothing (?:else )?(?:should )?(?:come )?after",
        ),
        ("change_case:english_lowercase", r"\blower[\s-]?case\b|\bsmall letters\b"),
        (
            "change_case:english_capital",
            r"\bcapital letters\b|\bcapitals\b|\ball[\s-]caps\b|\bupper[\s-]?case\b|\bcapitali[sz]",
        ),
        ("punctuation:no_comma", r"\bcommas?\b"),
        (
            "keywords:letter_frequency",
            r"\bletter\s+['\"]?[a-z]['\"]?(?![a-z]).{0,40}\b(?:times|appear|occur|at least|"
            r"at most|fewer|less|more|exactly|once|twice)\b"
            r"|\b(?:without|avoid\w*|never use|do not use|don't use|no)\b.{0,20}\bletter\s+"
            r"['\"]?[a-z]['\"]?(?![a-z])",
        ),
        (
            "keywords:frequency",
            r"\b(?:word|keyword|phrase|term)\s+['\"][^'\"]+['\"].{0,40}\b(?:at least|at most|"
            r"exactly|fewer|less|more|times|twice|once|thrice)\b|\btwice\b|\bthrice\b"
            r"|\bexactly once\b|\b\d+\s+times\b",
        ),
        (
            "keywords:forbidden_words",
            r"\b(?:do not|don't|never|avoid|without|must not|should not)\b.{0,30}\b(?:words?|"
            r"keywords?|terms?|phrases?)\s+['\"]|\bforbidden\b",
        ),
        (
            "keywords:existence",
            r"\bkeywords?\b|\b(?:include|mention|contain|use)\w*\b.{0,30}\b(?:the\s+)?(?:words?"
            r"|terms?|phrases?)\s+['\"]",
        ),
        (
            "language:response_language",
            rf"\b(?:in|into|using)\s+(?:the\s+)?(?:{_LANGUAGES})\b|\blanguage\b",
        ),
    )
)


def _normal(text: str) -> str:
    """Lowercase, curly quotes made straight, single spaces."""
    table = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
    return " ".join(text.translate(table).lower().split())


def ifeval_overlap(constraint: str) -> str | None:
    """The IFEval instruction type (e.g. "punctuation:no_comma") `constraint` restates; None
    when it matches none of the 25."""
    text = _normal(constraint)
    for name, pattern in IFEVAL_TYPES:
        if pattern.search(text):
            return name
    return None
