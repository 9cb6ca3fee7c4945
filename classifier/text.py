"""Turn a ticket (a string or a record of fields) into the text the model reads.

Training, evaluation, the predictor and the service all call :func:`ticket_text`
so that a ticket is cleaned the same way everywhere. Standard library only: the
serving path imports this module.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from classifier.errors import UserError

FIELD_SEPARATOR = "\n"
"""Non-empty fields are joined in the configured order with this separator."""

# What cleaning makes of a ticket, versioned: raise it with every change that cleans some ticket otherwise.
# Training records it (manifest.versions["cleaning"]). A model served tickets cleaned otherwise than those it
# learnt from loses accuracy without any error, so loading such a bundle says so. Version 2: mail forwards,
# Outlook headers, legal disclaimers, table cells (2026-12-07); bundles trained before record none.
CLEANING_VERSION = "2"

# How much text can matter: the one place these limits are set. A word piece is 4 characters on average, so
# cleaned text past max_length times CHARS_PER_TOKEN_CAP reaches the window only through words of over 100
# characters, which WordPiece reads as one unknown token each: the predictor cuts there before tokenising
# (window_chars), and cuts a text that did not fill the window four times longer, until it does. A file's text cell is
# cut at MAX_CELL_CHARS when it is read, before cleaning, so that no cell costs more memory or time than one
# the largest window could read, with room for the HTML, quoted replies and signatures cleaning removes.
CHARS_PER_TOKEN_CAP = 64
MAX_WINDOW_TOKENS = 512  # the longest window training chooses, and what BERT-family encoders read at most
_MARKUP_ROOM = 16  # a raw cell may be this many times the cleaned text that reaches the window


def window_chars(max_length: int = MAX_WINDOW_TOKENS) -> int:
    """The characters of cleaned text that can reach a window of ``max_length`` tokens (4,096 for 64)."""
    return max_length * CHARS_PER_TOKEN_CAP


MAX_CELL_CHARS = _MARKUP_ROOM * window_chars()  # 524,288: a longer text cell is cut to this when read

# The text columns of common helpdesk exports, in the order loading tries them; the service also
# knows a ticket key among them that a model does not read for text sent under the wrong name.
TEXT_COLUMN_GUESSES: tuple[tuple[str, ...], ...] = (
    ("subject", "body"),
    ("subject", "description"),
    ("title", "body"),
    ("title", "description"),
    ("subject", "message"),
    ("summary", "description"),  # Jira
    ("short_description", "description"),  # ServiceNow, by field name and by label
    ("short description", "description"),
    ("betreff", "beschreibung"),  # German, French and Spanish exports
    ("betreff", "nachricht"),
    ("objet", "description"),
    ("objet", "message"),
    ("asunto", "descripción"),
    ("asunto", "mensaje"),
    ("text",),
    ("body",),
    ("description",),
    ("message",),
    ("content",),
    ("beschreibung",),
    ("nachricht",),
)

# Elements that helpdesk and mail-client HTML uses. Only these are markup: "<Connection refused>",
# "<john@example.com>" or "<https://...>" in a plain-text ticket are words, and stay.
_HTML_TAGS = frozenset(
    "a abbr address article aside b base bdi bdo big blockquote body br button caption center cite code col "
    "colgroup dd del details dfn div dl dt em figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header "
    "hr html i img input ins kbd label legend li link main mark meta nav noscript ol p pre q s samp section "
    "small span strike strong style sub summary sup table tbody td tfoot th thead title tr tt u ul var wbr "
    "o:p script".split())  # o:p: Outlook's paragraph
_HTML_HINT = re.compile(r"<\s*(?:/\s*)?(?:" + "|".join(sorted(_HTML_TAGS, key=len, reverse=True))
                        + r")(?=[\s/>])[^<>]*>"
                        r"|&(?:[a-zA-Z]+|#\d+|#x[0-9a-fA-F]+);", re.IGNORECASE)
_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6",
               "blockquote", "pre", "hr"}
_CELL_TAGS = {"td", "th", "dt", "dd"}  # a word apart ("Requested for" "Anna"), a table row one line
_SKIPPED_TAGS = {"script", "style", "head", "title"}
_SKIPPED_TAG_END = re.compile(r"<\s*/\s*(" + "|".join(sorted(_SKIPPED_TAGS)) + r")\s*>", re.IGNORECASE)
_SKIPPED_END = {tag: re.compile(rf"<\s*/\s*{tag}\s*>", re.IGNORECASE) for tag in _SKIPPED_TAGS}
# A tag, a comment's start, or a declaration; none reaches past the next "<", which keeps a pass linear.
# The tag name is taken whole (no retrying shorter names); quoted attribute values may hold ">"
# (title="a>b"), and a stray quote (title=it's) falls back to reading up to the first ">".
_MARKUP = re.compile(r"<(?:(?P<end>/)?(?P<tag>[a-zA-Z][^\s/<>]*)(?![^\s/<>])"
                     r"(?P<attributes>(?:\"[^\"<]*\"|'[^'<]*'|[^<>\"'])*|[^<>]*)>"
                     r"|(?P<comment>!--)|![^<>]*>|\?[^<>]*>)")

# "On Tue, 3 Mar 2026 at 10:14, Support <s@example.com> wrote:" (mail clients may wrap it
# over two lines), Outlook's "-----Original Message-----" and "From: ... Sent: ..." headers.
# No pattern crosses more than one line break or starts with a run of blank lines, so a
# request made of 500,000 newlines cleans in linear time.
#
# German, French and Spanish mail clients write a clock time and then the sender: "Am 03.12.2026 um 10:14
# schrieb Max Mustermann <max@example.de>:", "Le 3 déc. 2026 à 10h14, Marie <m@example.fr> a écrit :",
# "El 3 dic 2026 a las 10:14, Juan (<j@example.es>) escribió:". A date's number, the clock and a sender are
# required, and a sender starts with no pronoun or article, so that a customer's "Am Freitag um 14:30 schrieb
# Max Weber:", "Am 5.12. schrieb mir Ihr Kollege folgendes:", "Le 3 mars à 10:14, votre technicien a écrit :"
# or "Le livreur a écrit :" is message, not a header.
_CLOCK = r"\d{1,2}[:h]\d{2}"
_DATED = r"\b[^\n\d]{0,40}\d+[^\d\n:][^\n]{0,80}?"  # up to the clock: a day's number first, not the clock's own
_GAP = r"[^\S\n]?"  # before a colon: nothing, a space, or French typography's no-break space
_ADDRESS = r"[(<]{0,2}\s?[^\s<>()@]{1,100}@[^\s<>()]{1,100}[)>]{0,2}"  # "<max@example.de>", bare, or wrapped
_NOT_A_SENDER = (r"(?!(?:ich|er|sie|es|wir|mir|uns|ihr|ihre|ihnen|mein|meine|unser|unsere|der|die|das|ein|eine"
                 r"|je|il|elle|nous|vous|votre|vos|notre|mon|ma|le|la|les|un|une"
                 r"|yo|él|ella|usted|su|sus|mi|nuestro|nuestra|el|los|las|una)\b)")
# A display name: a few words (initials, "Last, First", "von"), maybe quoted, then maybe the address.
_SENDER = (_NOT_A_SENDER + r"(?:[\"']?[^\s,:;!?<>()\"']{1,60}[\"']?,?[^\S\n]{1,3}){0,6}?"
           r"(?:" + _ADDRESS + r"|[\"']?[^\s,:;!?<>()\"']{1,60}[\"']?)")
_GERMAN = (r"Am" + _DATED + _CLOCK + r"(?:[ \t]+Uhr)?,?\s{1,3}schrieb[^\S\n]{1,3}" + _SENDER
           + r"(?:\s{1,3}" + _ADDRESS + r")?" + _GAP + ":")
_FRENCH = (r"Le" + _DATED + _CLOCK + r"[^\n,]{0,10},\s{1,3}" + _SENDER + r"(?:\s{1,3}" + _ADDRESS + r")?"
           r"\s{1,3}a\s{1,3}écrit" + _GAP + ":")
_SPANISH = (r"El" + _DATED + _CLOCK + r"[^\n,]{0,10},\s{1,3}" + _SENDER + r"(?:\s{1,3}" + _ADDRESS + r")?"
            r"\s{1,3}escribió" + _GAP + ":")
# Outlook's "From: ... Sent: ..." in the same languages ("Von: ... Gesendet:", "De : ... Envoyé :", "De: ...
# Enviado el:"), and Outlook for Mac's "Von: ... Datum: ... An:"; not "Von: ... Datum:" alone, which contact
# forms write.
_OUTLOOK = (r"(?:From:[ \t][^\n]+\n[ \t]*(?:Sent|Date):"
            r"|(?:Von|De)" + _GAP + r":[ \t][^\n]+\n[ \t]*(?:Gesendet|Envoyé|Enviado(?:[ \t]el)?)" + _GAP + ":"
            r"|(?:Von|De)" + _GAP + r":[ \t][^\n]+\n[ \t]*(?:Datum|Date|Fecha)" + _GAP + r":[^\n]+\n[ \t]*"
            r"(?:An|À|Para)" + _GAP + r":)[^\S\n]")
# A forward's marker line (Gmail and Thunderbird, Apple Mail), in the same languages: what follows its header
# block is the ticket, not a quote to cut. Outlook forwards as it replies ("From: ... Sent: ..."): only the
# ticket's subject tells (_FORWARD_SUBJECT).
_FORWARD = (r"-{2,}[ \t]*(?:Forwarded message|Weitergeleitete Nachricht|Message transféré|Mensaje reenviado)"
            r"[ \t]*-{2,}|(?:Begin forwarded message|Anfang der weitergeleiteten Nachricht|Début du message réexpédié"
            r"|Inicio del mensaje reenviado)" + _GAP + r":(?=[ \t]*$)")
_REPLY_HEADER = re.compile(
    r"^[ \t]*(?:(?P<on>On\b[^\n]{0,300}(?:\n[^\n]{0,300})?\bwrote:|" + "|".join((_GERMAN, _FRENCH, _SPANISH))
    + r")[ \t]*$"
    r"|(?P<outlook>-{2,}[ \t]*(?:Original Message|Ursprüngliche Nachricht|Message d'origine|Mensaje original)"
    r"[ \t]*-{2,}|(?:_{8,}[ \t]*\n[ \t]*)?" + _OUTLOOK + r")"  # Outlook draws a line of underscores above its header
    r"|(?P<forward>" + _FORWARD + r"))",
    re.IGNORECASE | re.MULTILINE,
)
# A forward's subject ("FW:", "Fwd:", German "WG:", French "TR:", Spanish "RV:", as mail clients write them):
# Outlook's first header in its body then heads the message forwarded, not a quote; an "On ... wrote:" still
# heads a quote. "RE: FW:" is a reply.
_FORWARD_SUBJECT = re.compile(r"[ \t]*(?:[Ff][Ww][Dd]?|WG|TR|RV)[ \t]*:[ \t]*\S")
# One line of the header block a quoted or forwarded message starts with ("To: ...", "Betreff: ...").
_HEADER_FIELD = re.compile(
    r"[ \t]*(?P<name>From|Sent|Date|To|Cc|Bcc|Reply-To|Subject|Importance|Attachments|Von|Gesendet|Datum|An|Betreff"
    r"|Wichtigkeit|Anlagen|De|Envoyé|À|Objet|Pièces jointes|Para|Enviado(?:[ \t]el)?|Fecha|Asunto|Importancia"
    r"|Adjuntos)" + _GAP + r":(?:[^\S\n](?P<value>[^\n]*))?",
    re.IGNORECASE,
)
_SUBJECT_FIELDS = frozenset(("subject", "betreff", "objet", "asunto"))
# A header's value wrapped onto the next line: indented, or more addresses ("Eve <eve@acme.com>; Dan <d@a.com>").
_HEADER_CONTINUED = re.compile(r"[ \t]+\S[^\n]*|(?:[^\n:@;,]{0,80}<?[^\s<>@;,]+@[^\s<>;,]+>?[;,]?[ \t]*)+")
# An "On ... wrote:" header names a date or an address; "On Monday I upgraded ...\nAnna wrote:"
# is the customer's own message.
_HEADER_DETAIL = re.compile(r"\d|@")
_DEVICE = r"(?:iphone|ipad|android|outlook|mail|samsung|galaxy|mobile|blackberry|smartphone)\b"
_SIGNATURE_START = re.compile(
    r"^(?:--\s*|get outlook for \w+.*|sent from (?:my )?" + _DEVICE + ".*"
    r"|(?:gesendet von|envoyé de|enviado desde) (?:meinem |mon |mi )?" + _DEVICE + ".*"
    r"|von meinem " + _DEVICE + ".*gesendet)$",
    re.IGNORECASE
)
_SIGN_OFF = re.compile(
    r"^(?:thanks?(?: you| again| in advance)?|many thanks|thx|cheers|best|best regards|"
    r"kind regards|regards|warm regards|sincerely|br|__+"
    # German, French and Spanish
    r"|(?:(?:mit )?(?:freundliche[nm]?|besten?|viele|liebe|herzliche|schöne) )?gr(?:ü|ue|u)(?:ß|ss)(?:en|e)?|"
    r"mfg|lg|vg|danke(?: schön| sehr| im voraus)?|vielen dank(?: im voraus)?|"
    r"(?:bien )?cordialement|bien à vous|merci(?: beaucoup| d'avance| par avance)?|salutations|"
    r"bonne journée|un saludo|saludos(?: cordiales)?|atentamente|(?:muchas )?gracias(?: de antemano)?)[ ,.!]*$",
    re.IGNORECASE,
)
# "Thanks, Bob" or "Mit freundlichen Grüßen - Anna Schmidt": a sign-off and a name on one line.
_SIGN_OFF_AND_NAME = re.compile(
    r"^(?P<sign_off>[^,\n]{1,40}?)[ \t]*(?:,|[ \t][-\u2013\u2014])[ \t]*(?P<name>[^\n]{1,60})$")
# A mail's legal disclaimer, a paragraph of its own at the end: how it starts, a phrase only disclaimers use
# ("... If you are not the intended recipient"), and confidentiality ("This email and any attachments are
# confidential"). A ticket's "This email is confidential" or "The confidential contract never reached the intended
# recipient" stays, and so does what follows a paragraph like a disclaimer.
_DISCLAIMER_START = re.compile(
    r"[ \t]*(?:this|the|any|if|diese[rs]?|der|die|das|wenn|ce|cette|le|la|les|si|este|esta|el|los|las"
    r"|confidential(?:ity)?|privileged|disclaimer|notice|important|haftungsausschluss|vertraulich(?:keit)?"
    r"|avertissement|aviso)\b", re.IGNORECASE)
_DISCLAIMER_PHRASE = re.compile(
    r"if you (?:are not|have received|received) |intended (?:solely |only |exclusively )?for the (?:sole |exclusive )?"
    r"use of|(?:sole|exclusive) use of the (?:intended|named) (?:recipient|addressee)|intended (?:solely|only"
    r"|exclusively) for the (?:person|entity|individual|addressee|named)|wenn sie (?:nicht der|diese)"
    r"|si vous (?:n'êtes pas|avez reçu)|si (?:usted )?(?:no es|ha recibido)", re.IGNORECASE)
_CONFIDENTIAL = re.compile(r"\b(?:confidential|privileged|vertraulich|confidentiel|confidencial)", re.IGNORECASE)
# What a disclaimer tells the wrong recipient to do, or forbids: a customer's own paragraph seldom says it.
_DISCLAIMER_ACTION = re.compile(
    r"\b(?:notify|delete|destroy|prohibited|disclos|unauthori[sz]ed|copying|distribut|löschen|vernichten|absender"
    r"|weitergabe|untersagt|détrui|supprim|expéditeur|interdit|b[oó]rr|elimin|destru|remitente|prohibid)",
    re.IGNORECASE)
# A note that trails a disclaimer ("Please consider the environment before printing this e-mail").
_AFTER_DISCLAIMER = re.compile(r"[^\n]{0,40}(?:before printing|think before you print|an die umwelt|avant d'imprimer"
                               r"|antes de imprimir)", re.IGNORECASE)
_DISCLAIMER_READ = 600  # characters of a paragraph (up to its end) searched for a disclaimer's phrase
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# After "Thanks, Bob" only contact details are signature: a phone number, an address, a link. A log, steps or an
# order number after it ("Thanks, Bob\nOrder number: 4471") is what the ticket is about.
_CONTACT_LINE = re.compile(
    r"^[ \t]*(?:(?:tel|phone|mobile|mob|cell|fax|direct|office|[tmpfe]|e-?mail|web)[ \t]*[.:]?[ \t]*)?"
    r"(?:\+?[\d(][\d \t().\-/]{5,40}|[^\s@]{1,64}@[^\s@]{1,255}|(?:https?://|www\.)\S{1,200})[ \t]*$",
    re.IGNORECASE)
# A stack trace or an error pasted after the name is what the ticket is about, not signature.
_CODE_LINE = re.compile(r"\b(?:traceback|exception|error)\b|^\s*at [\w$.<>]+\(|^\s*file \"", re.IGNORECASE)
_SIGNATURE_MAX_LINES = 6  # a sign-off further up than this is part of the message
# Details after a "Thanks" are message: a labelled value or a label ("Browser: Chrome 120", "Steps:") other than a
# contact's, and, below the name ("- J." is one), a list item.
_LABEL_LINE = re.compile(r"[ \t]*[^\s:][^:\n]{0,30}:(?:[ \t]|$)")
_LIST_ITEM = re.compile(r"[ \t]*(?:\d{1,2}[.)]|[-*\u2022])[ \t]")
_SIGNATURE_MAX_WORDS = 10  # a longer line after a sign-off is message, not signature
_NAME_MAX_WORDS = 5  # the line right after a sign-off is a name, or the message goes on
_TITLE_SEPARATOR = re.compile(r"\s+[-|\u2013\u2014]\s+")  # "John Smith - Head of IT", "Sam Lee | Acme"
_NAME_MAX_LOWERCASE_WORDS = 3  # "also the app crashes" after "thanks" is message; "chen van dijk" a name
# Control characters, zero-width spaces and unpaired surrogates (a JSON "\ud800" escape) become spaces.
_CONTROL_CHARS = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b\ud800-\udfff]")
# Direction marks and stray byte-order marks go; the zero-width (non-)joiners U+200C/U+200D stay:
# they are part of words (Persian "نمی‌توانم") and of emoji sequences.
_INVISIBLE_MARKS = re.compile(r"[\u200e\u200f\ufeff]")
# Jira's wiki markup (descriptions and comments of Jira Server, Data Center and CSV exports): block markers,
# heading and quote prefixes, user mentions, embedded images and link targets are no words of the ticket.
# What {code} and {quote} hold stays: a stack trace or a pasted e-mail is what the ticket is about.
_HELPDESK_MARKUP = re.compile(
    r"(?P<block>\{(?:code|noformat|quote|panel|color)(?::[^}\n]{0,200})?\})"
    r"|^[ \t]*(?:h[1-6]|bq)\.[ \t]+"
    r"|\[~[^\]\s]{1,100}\]"
    r"|![^!\s|]{1,200}\.(?:png|jpe?g|gif|bmp|svg|webp)(?:\|[^!\n]{0,100})?!"
    r"|\[(?P<link>[^\[\]|\n]{1,200})\|(?:https?://|mailto:)[^\[\]\s]{1,2000}\]"
    # Who wrote an entry, and when: a Jira CSV comment's "03/Dec/26 9:14 PM;557058:f3a1...;" and a ServiceNow
    # journal's "2026-12-03 10:14:00 - Jane Doe (Work notes)" line. An agent's name teaches the model who
    # handles a queue, not what the ticket is about.
    r"|^[ \t]*\d{1,2}/[a-z]{3}/\d{2,4} \d{1,2}:\d{2}(?: [ap]m)?;[^;\n]{1,200};"
    r"|^[ \t]*\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} - [^\n]{1,100} \((?:work notes|additional comments|comments)\)"
    r"[ \t]*$",
    re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class TextOptions:
    """Which record fields make the model text and how it is cleaned.

    Stored in the bundle manifest so prediction repeats training exactly.
    """

    fields: tuple[str, ...] = ()  # empty: a record's "text" field (or, when loading data, detect)
    strip_html: bool = True
    strip_quoted_replies: bool = True
    strip_signatures: bool = True

    @property
    def record_fields(self) -> tuple[str, ...]:
        """The fields read from a record: the configured ones, or ``text``."""
        return self.fields or ("text",)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fields"] = list(self.fields)
        return data


def ticket_text(ticket: str | Mapping[str, Any], options: TextOptions = TextOptions()) -> str:
    """Return the cleaned model text of one ticket.

    A string is taken as the whole ticket. A record contributes each configured field
    that is present and not empty, cleaned, in order, joined by :data:`FIELD_SEPARATOR`.
    """
    if isinstance(ticket, str):
        return clean_text(ticket, options)
    if not isinstance(ticket, Mapping):  # None or NaN: a gap in a pandas column, so no text
        if ticket is None or (isinstance(ticket, float) and ticket != ticket):
            return ""
        raise UserError(f"a ticket is a string or a record of fields, not {type(ticket).__name__} ({ticket!r:.40})")
    values = [_as_str(_field(ticket, name), name) for name in options.record_fields]
    forwarded = any(_FORWARD_SUBJECT.match(value) and "\n" not in value.strip() for value in values[:-1])
    parts = (clean_text(value, options, forwarded) for value in values)
    joined = FIELD_SEPARATOR.join(part for part in parts if part)
    if not joined and "text" not in options.record_fields:  # {"text": ...}: the whole ticket, as the service takes it
        return clean_text(_as_str(_field(ticket, "text"), "text"), options)
    return joined


def into_fields(sent: Mapping[str, str], fields: Sequence[str]) -> dict[str, str]:
    """A ticket's text as feedback stored it (by field, or whole as ``text``) in a file's ``fields``, matched
    without case. A whole text goes to the last field, the body, unless that was sent too: the model then
    reads it as the service read it (:func:`ticket_text` joins the fields that are not empty)."""
    row = {name: field_value(sent, name, "") for name in fields}
    whole = field_value(sent, "text")
    if fields and whole is not None and not row[fields[-1]]:
        row[fields[-1]] = whole
    return row


def clean_text(raw: str, options: TextOptions = TextOptions(), forwarded: bool = False) -> str:
    """Clean one field: HTML to text, cut quoted replies and signatures, fold whitespace. ``forwarded``: the
    ticket's subject says it is a forward (its first header heads the message, see
    :func:`strip_quoted_replies`)."""
    text = unicodedata.normalize("NFC", raw).replace("\r\n", "\n").replace("\r", "\n")
    if options.strip_html and _HTML_HINT.search(text):
        text = html_to_text(text)
    if options.strip_html:
        text = helpdesk_markup_to_text(text)
    text = _INVISIBLE_MARKS.sub("", _CONTROL_CHARS.sub(" ", text))
    # A forward's note and the message forwarded each end with their own signature and disclaimer.
    parts = message_parts(text, forwarded) if options.strip_quoted_replies else [text]
    if options.strip_signatures:
        parts = [strip_signature(strip_disclaimer(part)) for part in parts]
    return " ".join("\n".join(parts).split())


def helpdesk_markup_to_text(markup: str) -> str:
    """Jira wiki markup read as text: "h2. Steps" is "Steps", "[status page|https://...]" is "status page", a
    {code} block its lines; mentions, images and the author-and-time prefixes of Jira comments and ServiceNow
    journal entries go."""
    return _HELPDESK_MARKUP.sub(lambda match: "\n" if match["block"] else match["link"] or "", markup)


def html_to_text(markup: str) -> str:
    """Extract readable text from an HTML fragment, one line per block element.

    One pass over the markup with regular expressions that never look past the next ``<``, so
    the time is linear in the input whatever it holds (the standard library's ``HTMLParser``
    takes quadratic time on unclosed tags before Python 3.11.13 and raises on some malformed
    declarations). Helpdesk HTML is simple: tags, comments, declarations and entities.
    """
    chunks: list[str] = []
    # "Where do I paste the <style> snippet?" is text that names a tag: only a closed <style> hides
    # what it holds, or one word would silence the rest of the ticket.
    skippable = {tag.lower() for tag in _SKIPPED_TAG_END.findall(markup)}
    comments_close = True  # False once no "-->" is left: later "<!--" are text
    pos = 0
    while (match := _MARKUP.search(markup, pos)) is not None:
        chunks.append(markup[pos:match.start()])
        pos = match.end()
        if match["comment"]:
            end = markup.find("-->", pos) if comments_close else -1
            if end >= 0:
                pos = end + 3
            else:
                comments_close = False
                chunks.append(match[0])
            continue
        tag = (match["tag"] or "").lower()
        if not tag:
            continue  # <!DOCTYPE ...>, <![CDATA[ ...]]>, <?xml ...?>: nothing to read
        if tag not in _HTML_TAGS or (tag in _SKIPPED_TAGS and tag not in skippable):
            chunks.append(match[0])  # "<Connection refused>" in an HTML ticket is text
        elif match["end"]:
            chunks.append("\n" if tag in _BLOCK_TAGS else " " if tag in _CELL_TAGS else "")
        elif tag in _SKIPPED_TAGS:
            closing = _SKIPPED_END[tag].search(markup, pos)
            if closing is None:
                skippable.discard(tag)  # its only closing tag came before: the rest is text to read
            else:
                pos = closing.end()
        elif tag in _BLOCK_TAGS:
            self_closing = match["attributes"].rstrip().endswith("/")
            chunks.append("\n\n" if self_closing else "\n")  # <br/>: a start and an end tag
    chunks.append(markup[pos:])
    return html.unescape("".join(chunks))


_LEADING_HEADERS = 3  # headers a message may start with, or forwards, one after the other: each search reads it


def strip_quoted_replies(text: str, forwarded: bool = False) -> str:
    """Drop the quoted previous conversation: a reply header and everything after, ``>`` lines. A forward keeps
    the forwarded message, as does a message that is only a quote, without the header and its header block
    ("On ... wrote:" or "From: ... Sent: ... To: ..." says nothing of the ticket). A forward is told by its
    marker ("---------- Forwarded message ---------"), or, as Outlook marks none, by its subject: ``forwarded``,
    or a whole ticket's first line ("FW: ...")."""
    return "\n".join(message_parts(text, forwarded))


def message_parts(text: str, forwarded: bool = False) -> list[str]:
    """:func:`strip_quoted_replies`' text in its parts: a forward's note, then the message forwarded."""
    kept = []  # text above a forward's marker: the forwarder's note
    forwarded = forwarded or bool(_FORWARD_SUBJECT.match(text))
    for _ in range(_LEADING_HEADERS):
        match = next((m for m in _REPLY_HEADER.finditer(text) if not m["on"] or _HEADER_DETAIL.search(m["on"])), None)
        if match is None:
            break
        above = text[: match.start()]
        if above.strip() and not (match["forward"] or (forwarded and match["outlook"])):
            text = above  # a reply above its quote
            break
        kept.append(above)
        text = _after_header_block(text[match.end():])
        forwarded = False  # the message forwarded may quote a reply of its own
    return ["\n".join(line for line in part.split("\n") if not line.lstrip().startswith(">"))
            for part in [*kept, text] if part.strip()]


def _after_header_block(rest: str) -> str:
    """What follows a header (``rest`` starts right after it): not the rest of its line (Outlook's date after
    "Sent:"), nor the header fields below it (their values wrapped onto lines of their own too). A forward of a
    message with no text (an alert, a scan) keeps its subject, all it says."""
    lines = rest.split("\n")[1:]
    start = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    subject, in_block = "", False  # a wrapped value's line counts once a field has started the block
    while start < len(lines):
        field = _HEADER_FIELD.fullmatch(lines[start])
        if field is None and not (in_block and _HEADER_CONTINUED.fullmatch(lines[start])):
            break
        if field is not None and field["name"].lower() in _SUBJECT_FIELDS:
            subject = field["value"] or ""
        in_block = True
        start += 1
    message = "\n".join(lines[start:])
    return message if message.strip() or not subject.strip() else subject


def strip_disclaimer(text: str) -> str:
    """Cut a mail's legal disclaimers at its end: paragraphs after the message (after a blank line) that start
    as disclaimers do, speak of confidentiality and of what the wrong recipient must do, the first naming a
    phrase only they use (maybe followed by a note not to print the mail)."""
    text = text.rstrip()
    breaks = list(_PARAGRAPH_BREAK.finditer(text))
    cut = None  # where the disclaimers that end the text start
    for paragraph, after in reversed(list(zip(breaks, [*breaks[1:], None]))):
        start, end = paragraph.end(), min(after.start() if after else len(text), paragraph.end() + _DISCLAIMER_READ)
        if cut is None and _AFTER_DISCLAIMER.match(text, start):
            continue  # the environment note after a disclaimer
        if not (_DISCLAIMER_START.match(text, start) and _CONFIDENTIAL.search(text, start, end)
                and _DISCLAIMER_ACTION.search(text, start, end)):
            break
        if _DISCLAIMER_PHRASE.search(text, start, end):
            cut = start
    return text[:cut] if cut is not None and text[:cut].strip() else text


def strip_signature(text: str) -> str:
    """Cut a trailing signature: a ``--`` delimiter, "Sent from my ...", or a closing sign-off.

    Only the last few lines are searched, and a sign-off ("Thanks,") counts only when what
    follows it looks like a signature (short lines), so a "thanks" inside the message stays.
    """
    lines = text.rstrip().split("\n")
    for index in range(max(1, len(lines) - _SIGNATURE_MAX_LINES), len(lines)):
        line = lines[index].strip()
        if _SIGNATURE_START.match(line) or (_SIGN_OFF.match(line) and _signature_like(lines[index + 1:])):
            return "\n".join(lines[:index])
        if _signed_with_name(line) and all(_CONTACT_LINE.match(rest) for rest in lines[index + 1:] if rest.strip()):
            return "\n".join(lines[:index])
    return "\n".join(lines)


def _signed_with_name(line: str) -> bool:
    """A sign-off and a capitalised name on one line ("Thanks, Bob", "Kind regards - Anna Smith"); not
    "Thanks, but it still fails" nor "thanks, refund please", whose words go on with the message."""
    match = _SIGN_OFF_AND_NAME.match(line)
    if match is None or not _SIGN_OFF.match(match["sign_off"]):
        return False
    words = match["name"].rstrip(" .!").split()
    return 0 < len(words) <= _NAME_MAX_WORDS - 1 and all(word[0].isupper() for word in words) \
        and not any(char.isdigit() for char in match["name"])


def _signature_like(lines: list[str]) -> bool:
    """A name first ("Maria Lopez"), then titles, phone numbers, addresses: no sentences, no long lines, no
    stack trace, no details ("OS: macOS 14", a list).

    "Thanks!\nAlso the app crashes" is a message going on, so its last line stays.
    """
    first = next((line for line in lines if line.strip()), None)
    if first is not None and not (_name_like(first) or _SIGN_OFF.match(first.strip())
                                  or _SIGNATURE_START.match(first.strip())):
        return False
    for line in lines:
        words = line.split()
        if len(words) > _SIGNATURE_MAX_WORDS or (len(words) >= 4 and line.rstrip().endswith((".", "?", "!"))) \
                or _CODE_LINE.search(line) or (_LABEL_LINE.match(line) and not _CONTACT_LINE.match(line)) \
                or (line is not first and _LIST_ITEM.match(line)):
            return False
    return True


def _name_like(line: str) -> bool:
    """A short line ("sam", "- J.", "chen van dijk", "王伟"), or a few words that do not start
    in lower case ("Dr. Maria Lopez Garcia"), maybe followed by a title ("John Smith - Head of IT",
    "Sam Lee | Support Lead"). Tickets are often typed all in lower case."""
    # Whitespace folded first: the separator pattern then never scans a long run of spaces twice.
    name = _TITLE_SEPARATOR.split(" ".join(line.split()).strip(" -\u2013\u2014~,"), maxsplit=1)[0]
    words = name.split()
    if not 0 < len(words) <= _NAME_MAX_WORDS:
        return False
    return len(words) <= _NAME_MAX_LOWERCASE_WORDS or not any(word[0].islower() for word in words)


def _field(ticket: Mapping[str, Any], name: str) -> Any:
    """A record's field by name, ignoring case: exports and API clients capitalise differently.
    A dotted name ("ticket.subject", from a nested export) also reads the nested record."""
    value = field_value(ticket, name)
    if value is None and "." in name:
        value = field_value(nested_fields(ticket), name)
    return value


class SpelledTwice(UserError):
    """A record holds one field under two spellings (any case), each with a value: reading either would
    lose the other."""

    def __init__(self, keys: list[str], name: str) -> None:
        self.keys, self.name = keys, name
        super().__init__(f"{' and '.join(map(repr, keys))} are one field in any case: give {name!r} once")

    def __reduce__(self) -> tuple[type, tuple[list[str], str]]:  # across processes, as errors of a batch travel
        return SpelledTwice, (self.keys, self.name)


def canonical_keys(record: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``record`` with ``names`` given in any case ("Subject") under their own spelling, for tickets sent as
    records (the service, the Python API; a file's columns are found once, by :mod:`classifier.columns`). Two
    spellings of one name both holding a value (None counts as absent) raise :class:`SpelledTwice`; the
    other spellings of a name are dropped."""
    spellings: dict[str, list[str]] = {}
    for key in record:
        if isinstance(key, str):
            spellings.setdefault(name_key(key), []).append(key)
    renamed: dict[str, str] = {}
    dropped: set[str] = set()
    for name in dict.fromkeys(names):
        keys = spellings.get(name_key(name), [])
        given = [key for key in keys if record[key] is not None]
        if len(given) > 1:
            raise SpelledTwice(sorted(given), name)
        kept = given[0] if given else name if name in keys else keys[0] if keys else None
        dropped.update(key for key in keys if key != kept)
        if kept is not None and kept != name:
            renamed[kept] = name
    if not renamed and not dropped:  # the record itself: callers canonicalise every ticket of a batch
        return record if isinstance(record, dict) else dict(record)
    return {renamed.get(key, key): value for key, value in record.items() if key not in dropped}


def field_key(record: Collection[Any], name: str) -> Any:
    """The key under which ``record`` (a mapping, or a file's column names) holds field ``name``: spelled
    exactly, else in any case; None if absent. Exports and API clients capitalise differently."""
    if name in record:
        return name
    wanted = name_key(name)
    return next((key for key in record if isinstance(key, str) and name_key(key) == wanted), None)


def name_key(name: str) -> str:
    """What two spellings of one field or column name share: any case, and any Unicode form (a Mac writes "é"
    as "e" and a combining accent)."""
    return unicodedata.normalize("NFC", name).lower()


_WHOLE_FLOAT = re.compile(r"([-+]?\d+)\.0+")  # "3.0": how floats spell a whole-number label


def label_key(label: str) -> str:
    """What two spellings of one label share: case folded ("Straße" is "STRASSE") in any Unicode form, and "3.0"
    read as "3" (a numeric label column that passed through pandas or a spreadsheet with an empty cell is floats)."""
    whole_number = _WHOLE_FLOAT.fullmatch(label)
    return whole_number.group(1) if whole_number else unicodedata.normalize("NFC", label).casefold()


def field_value(record: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """``record``'s value for field ``name``, found as :func:`field_key` finds it; ``default`` if absent."""
    key = field_key(record, name)
    return default if key is None else record[key]


def nested_fields(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The record with each nested object's fields also under dotted names: helpdesk exports
    nest them (``{"custom_fields": {"queue": "billing"}}`` gives ``custom_fields.queue``). A list
    of ``{"id": ..., "value": ...}`` objects, Zendesk's custom fields, gives one field per id
    (``custom_fields.360001``). A key written with a dot wins over a nested field of the same name."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        flat[f"{prefix}{key}"] = value
        if _is_id_value_list(value):
            value = {str(item["id"]): item["value"] for item in value}
        if isinstance(value, Mapping):
            for name, inner in nested_fields(value, f"{prefix}{key}.").items():
                flat.setdefault(name, inner)
    return flat


def _is_id_value_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(item, Mapping) and "id" in item and "value" in item and not isinstance(item["id"], (dict, list))
        for item in value)


def _as_str(value: Any, name: str) -> str:
    if isinstance(value, (Mapping, list)):  # its Python spelling ("['a', 'b']") is not the ticket's text
        kind = "an object" if isinstance(value, Mapping) else "a list"
        raise UserError(f"field {name!r} holds {kind}, not text")
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from a spreadsheet's empty cell
        return ""
    return str(value)


__all__ = [
    "CHARS_PER_TOKEN_CAP", "FIELD_SEPARATOR", "MAX_CELL_CHARS", "MAX_WINDOW_TOKENS", "TEXT_COLUMN_GUESSES",
    "SpelledTwice", "TextOptions", "canonical_keys", "clean_text", "field_key", "field_value", "html_to_text",
    "label_key", "name_key", "nested_fields", "strip_quoted_replies", "strip_signature", "ticket_text", "window_chars",
]
