"""An HTML page of titled sections holding paragraphs, tables and PNG figures: what report and compare write."""

import html
from dataclasses import dataclass, field

_STYLE = ("body{font-family:sans-serif;max-width:1300px;margin:auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
          "th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}.note{color:#777}.warning{color:#a40}")


@dataclass
class Section:
    title: str
    parts: list = field(default_factory=list)  # HTML fragments, in order
    files: dict = field(default_factory=dict)  # PNG name -> bytes

    def note(self, text):
        """A missing input, said in grey (a complete workdir's page has none)."""
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def paragraph(self, text, *, warning=False):
        self.parts.append(f'<p class="warning">{html.escape(text)}</p>' if warning else f"<p>{html.escape(text)}</p>")

    def figure(self, name, png, caption):
        self.files[name] = png
        self.parts.append(f'<img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                          f"<p>{html.escape(caption)}</p>")

    def table(self, header, rows):
        def cell(v):
            return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

        head = "".join(f"<th>{cell(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")


def page(header, sections, *, title="steel_tpu report"):
    """A whole HTML page: `header` (HTML) then each Section under its title."""
    body = "".join(f"<h2>{html.escape(s.title)}</h2>" + "".join(s.parts) for s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{header}{body}</body></html>\n")
