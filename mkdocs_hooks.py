"""MkDocs hook: docstrings use Sphinx roles (:class:`~rvcfast.Converter`), which mkdocstrings'
Google-style renderer leaves as text (":class:~rvcfast.Converter"). Show them as code: the
last dotted part for ``~name`` and ``title <target>`` forms, the whole name otherwise."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):<code>(~?)([^<]*)</code>")


def _name(match: re.Match[str]) -> str:
    tilde, text = match.group(1), match.group(2)
    titled = re.fullmatch(r"(.*?)\s*&lt;[^&]*&gt;", text)
    if titled:
        text = titled.group(1)
    elif tilde:
        text = text.rsplit(".", 1)[-1]
    return f"<code>{text}</code>"


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub(_name, html)
