"""What the offline drafter writes: one short answer per question, from the passage that fits it.

The customer's questions are found in their message (sentences ending with "?", requests
such as "can I ..." or "how ...", and two questions joined by "and" count as two); the
drafter searches the knowledge base once per question. Each question is answered with
one or two sentences of the passage that fits it best, quoted as plain text; a question
nothing fits is handed to a colleague. A message without a question is answered as one.

Fit is word overlap, deterministic and without a model: the words of the question in a
sentence count most, in the heading of its section or the title of its document less; the
document's title sharing words with the whole message marks it as being about what the
customer writes about (a parcel sent back is a return, even when the question only says
"shipping"); rare words weigh more than common ones. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .plain_text import sections, split_sentences, without_leading

MAX_QUESTIONS = 5
# A question whose best sentence covers less of its (weighted) words than this goes to a colleague.
MIN_COVERAGE = 0.45
_ANSWER_CHARS = 320  # one or two short sentences, not a paragraph

_GREETING = re.compile(r"^\s*(?:hello|hi|hey|dear [^,\n]*|good (?:morning|afternoon|evening))\b[^,.!\n]*[,.!]?\s*", re.I)
_SIGN_OFF = re.compile(r"\n\s*(?:thanks|thank you|many thanks|best|regards|kind regards|best regards|cheers)\b.*\Z",
                       re.I | re.S)
_LEAD = re.compile(r"^(?:also|and|so|but|plus|one more thing)\b[,:]?\s*", re.I)
_REQUEST = re.compile(r"^(?:please\s+)?(?:can|could|would|will|may|when|how|what|where|why|which|who|is|are|do|does|"
                      r"did|should|please let me know|let me know|i would like to know|i'd like to know)\b", re.I)
# "When will I get my refund, and will the shipping be refunded too?" asks two things.
_JOINED = re.compile(r",?\s+(?:and|or|also)\s+(?=(?:can|could|would|will|may|when|how|what|where|why|which|is|are|do|"
                     r"does|did|should)\b)", re.I)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Ways customers say "return" and "refund" without the words the policies use.
_PHRASES = (
    (re.compile(r"\b(?:sent|send|sending|posted|post|mailed|brought|bring|ship(?:ped)?|took|take)\b(?:\s+\w+){0,3}?\s+back\b",
                re.I), "return"),
    (re.compile(r"\bmoney back\b|\breimburse\w*", re.I), "refund"),
)
_STOP = frozenset("""
a about above after again against ago all also am an and any are as at be because been before being below between
both but by can could did do does doing done down during each either else ever few for from further get gets getting
got had has have having he hello her here hers hi how i i'd i'm if in into is it it's its just know let like ll made
make many may me might more most much must my myself need no nor not now of off on once only or other our out over
own please re same say see she should so some still such than thank thanks that the their them then there these they
this those through to too two under until up us very want was way we well were what when where whether which while
who whom why will with would yes yet you your yours
""".split())
_CONDITION = re.compile(r"^(?:if|when|where|unless)\b([^,:;]+)[,:;]", re.I)
# Words that point back to what the customer said before: "is that covered", "refunded too".
_PRONOUN = re.compile(r"\b(?:it|that|this|they|them|those|these|one|too|also|as well|either)\b", re.I)
_TIMING = frozenset({"day", "week", "hour", "month", "year", "within", "after"})
_AMOUNT = frozenset({"eur", "cost", "free", "price", "pay", "refund", "full"})


@dataclass(frozen=True, slots=True)
class Found:
    """A passage a search returned: its document's title and its raw text."""

    title: str
    location: str
    text: str
    rank: int  # 1 = the retriever's first


@dataclass(frozen=True, slots=True)
class Answer:
    question: str
    text: str | None  # None: nothing in the knowledge base answers it
    location: str | None = None


@dataclass(frozen=True, slots=True)
class _Unit:
    """One sentence of a passage, with the words it and its surroundings are about."""

    sentence: str
    location: str
    rank: int
    order: int
    words: frozenset[str]
    condition: frozenset[str]  # "If <condition>, ...": what the customer must have said for it to apply
    heading: frozenset[str]
    title: frozenset[str]
    section: int


def questions(request: str) -> list[Question]:
    """The questions a customer's message asks, in order; the whole message when it asks none."""
    body = _SIGN_OFF.sub("", request.strip())
    found: list[Question] = []
    before = ""
    for sentence in split_sentences(body.replace("\n", " ")):
        sentence = _LEAD.sub("", _GREETING.sub("", sentence)).strip()
        if not sentence:
            continue
        if sentence.endswith("?") or _REQUEST.match(sentence):
            # The parts of "When will it arrive, and can I get a refund?" share what came before.
            found += [Question(part, before) for part in (p.strip(" ,") for p in _JOINED.split(sentence)) if part]
        before = sentence
    if not found:
        whole = _GREETING.sub("", body).strip()
        return [Question(whole)] if _content(whole) else []
    return found[:MAX_QUESTIONS]


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    before: str = ""  # the sentence before it, which "it" or "that" in the question may refer to

    def words(self) -> frozenset[str]:
        return _content(self.text)

    def context(self) -> frozenset[str]:
        """The words of the sentence before, when the question leans on it ("How do I reset it?")."""
        own = self.words()
        if self.before and (len(own) < 2 or _PRONOUN.search(self.text)):
            return _content(self.before) - own
        return frozenset()


def _stem(word: str) -> str:
    # Enough to make refunds/refunded/refund and shipping/shipped/ship the same word.
    word = word.removesuffix("'s")
    for suffix in ("ments", "ment", "ions", "ion", "ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]
    return word.removesuffix("e") if len(word) > 3 else word


def _content(text: str) -> frozenset[str]:
    words = {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP}
    words |= {word for phrase, word in _PHRASES if phrase.search(text)}
    return frozenset(w for w in words if w and w not in _STOP)


def _units(found: Iterable[Found]) -> list[_Unit]:
    units: list[_Unit] = []
    seen: set[str] = set()
    for passage in found:
        title = _content(passage.title)
        for number, section in enumerate(sections(passage.text)):
            heading = _content(section.heading)
            for sentence in section.sentences:
                sentence = without_leading(passage.title, without_leading(section.heading, sentence))
                if sentence in seen or not _content(sentence):
                    continue  # overlapping chunks and several searches return the same sentence
                seen.add(sentence)
                condition = _CONDITION.match(sentence)
                units.append(_Unit(sentence, passage.location, passage.rank, len(units), _content(sentence),
                                   _content(condition.group(1)) if condition else frozenset(), heading, title, number))
    return units


class _Scorer:
    def __init__(self, units: Sequence[_Unit], message: frozenset[str]) -> None:
        count = len(units)
        frequency: dict[str, int] = {}
        for unit in units:
            for word in unit.words | unit.heading:
                frequency[word] = frequency.get(word, 0) + 1
        self._idf = {w: math.log(1 + (count + 1) / (n + 0.5)) for w, n in frequency.items()}
        # A word no passage has ("headphones") says nothing for or against a passage; it weighs
        # like the commonest word, so that "Can I return my headphones?" still finds the returns policy.
        self._unknown = min(self._idf.values(), default=1.0)
        self.message = message

    def idf(self, word: str) -> float:
        return self._idf.get(word, self._unknown)

    def weight(self, words: Iterable[str]) -> float:
        return sum(self.idf(w) for w in words)

    def score(self, unit: _Unit, question: Question) -> tuple[float, float]:
        """(score, coverage): how well the sentence answers, and how much of the question it covers."""
        asked, context = question.words(), question.context()
        if not asked:  # "What should I do?" asks about the sentence before it
            asked, context = context, frozenset()
        in_sentence = asked & unit.words
        around = (asked & (unit.heading | unit.title)) - in_sentence
        topic = (self.message - asked) & (unit.title | unit.heading | unit.words)
        score = (2 * self.weight(in_sentence) + self.weight(around) + self.weight(context & unit.words)
                 + 0.5 * self.weight(topic) + 1.5 * self.weight(self.message & unit.title)
                 + 0.5 * len(_cues(question.text) & unit.words))
        # How much of the question the sentence speaks to; the words it leans on may add to
        # that (at half weight), never take from it.
        own = self.weight(in_sentence) + self.weight(around)
        leaned = 0.5 * self.weight(context & (unit.words | unit.title))
        total = self.weight(asked)
        coverage = max(own / total, (own + leaned) / (total + 0.5 * self.weight(context))) if total else 0.0
        if unit.condition and not (self.message & unit.condition):
            # "If an item arrives damaged, ..." answers nobody who did not say so.
            score *= 0.5
        return score, coverage


def _cues(question: str) -> frozenset[str]:
    lowered = question.lower()
    if re.search(r"\b(?:when|how long|how soon|how many days|by what date)\b", lowered):
        return _TIMING
    if re.search(r"\b(?:how much|cost|price|fee|charge)\b", lowered):
        return _AMOUNT
    return frozenset()


def answer(request: str, found_per_question: Sequence[Sequence[Found]], asked: Sequence[Question]) -> list[Answer]:
    """One answer per question; every passage any search found may answer any question,
    but the question's own words decide which."""
    units = _units(f for found in found_per_question for f in found)
    scorer = _Scorer(units, _content(request))
    used: set[int] = set()
    answers: list[Answer] = []
    for question in asked:
        words = question.words() or question.context()
        scored = ((scorer.score(u, question), u) for u in units)
        ranked = sorted(((score, u) for score, u in scored
                         if score[1] >= MIN_COVERAGE and words & (u.words | u.heading)),
                        key=lambda item: (-item[0][0], item[1].rank, item[1].order))
        if not ranked:
            answers.append(Answer(question.text, None))
            continue
        (_, _), best = ranked[0]
        if best.order in used:
            continue  # an earlier answer quoted it already: the question is answered, not twice
        chosen = [best]
        # A second sentence only from the same section, when it says something about the question too.
        for (score, _), unit in ranked[1:]:
            if (unit.order not in used and unit.location == best.location and unit.section == best.section and words & unit.words
                    and len(best.sentence) + len(unit.sentence) < _ANSWER_CHARS and score > 0):
                chosen.append(unit)
                break
        chosen.sort(key=lambda u: u.order)  # in the passage's own order, so it reads as written
        used.update(u.order for u in chosen)
        answers.append(Answer(question.text, " ".join(u.sentence for u in chosen), best.location))
    return answers


def body(name: str | None, answers: Sequence[Answer], label: str) -> str:
    """The email: greeting, the answers, what a colleague follows up on, a closing, the label."""
    lines = [f"Hello {name}," if name else "Hello,", "", "Thank you for your message."]
    answered = [a for a in answers if a.text]
    open_questions = [a.question for a in answers if not a.text]
    for a in answered:
        lines += ["", a.text or ""]
    if open_questions and answered:
        quoted = "; ".join(f"“{_short(q)}”" for q in open_questions)
        lines += ["", f"A colleague will follow up on your other question{'s' if len(open_questions) > 1 else ''} "
                      f"({quoted}) shortly."]
    elif open_questions or not answered:
        lines += ["", "A colleague will look into your question and get back to you shortly."]
    if answered:
        lines += ["", "If anything is still unclear, just reply to this email."]
    lines += ["", "Kind regards,", "Customer support", "", "--", label]
    return "\n".join(lines)


def _short(question: str, limit: int = 90) -> str:
    question = " ".join(question.split())
    return question if len(question) <= limit else question[: limit - 1].rsplit(" ", 1)[0] + "…"
