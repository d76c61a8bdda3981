"""The report as one section model, and its two renderers: ``report.md`` and a self-contained ``report.html``.

:func:`report_document` turns a :class:`~raypriv.report.build.Report` into
sections (:class:`Section`) of blocks (:class:`Paragraph`, :class:`BulletList`,
:class:`Table`, :class:`Figure`, :class:`Grid`, and nested sections), once;
:func:`to_markdown` and :func:`to_html` each walk it.  ``report.html`` is
self-contained (CSS inline, plots as base64 PNG, no script); ``report.md``
has the same tables, with the plots as PNG files beside it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING

from raypriv.report.build import Report
from raypriv.report.tables import (
    NO_RELEASE,
    attack_rows,
    comparison_note,
    comparison_rows,
    cost_rows,
    release_rows,
    runs_lines,
    summary_footnote,
    summary_rows,
    vulnerable_rows,
)
from raypriv.report.verdicts import MAX_UNDETECTED_MULTIPLE, MIN_MODELS
from raypriv.run.store import RunStore

if TYPE_CHECKING:
    import pandas as pd

# ------------------------------------------------------------ the section model
#
# Two quirks of how the files have always been laid out are kept, so that they
# stay the same text: an optional note that is absent leaves an empty line in
# the HTML (and nothing in Markdown), and an empty list leaves a blank line in
# the Markdown (and nothing in the HTML).


@dataclass(frozen=True)
class Code:
    """Inline code: a name the reader may type (``--attack``)."""

    text: str


@dataclass(frozen=True)
class Paragraph:
    """A short paragraph; every paragraph of the report is a note (``<p class="note">``).

    Empty, it holds the place of an optional note.  A ``tight`` paragraph has
    no blank line after it in Markdown (the dataset notes run on into the
    next heading).
    """

    parts: tuple[str | Code, ...]
    tight: bool = False


@dataclass(frozen=True)
class Item:
    """One bullet: its text, optionally a bold label before it and an HTML class (a verdict's kind)."""

    text: str
    label: str = ""
    kind: str = ""


@dataclass(frozen=True)
class BulletList:
    """Bullets; ``style`` is the list's HTML class (runs, verdicts, note, notes)."""

    items: tuple[Item, ...]
    style: str


@dataclass(frozen=True)
class Table:
    """A table of display strings; ``text_columns`` are left-aligned and may wrap in HTML."""

    header: list[str]
    rows: list[list[str]]
    text_columns: tuple[int, ...] = ()


@dataclass(frozen=True)
class Figure:
    """A plot: ``name`` is its key in ``Report.figures`` and names its PNG file beside report.md.

    Markdown shows ``caption`` as alt text and again in italics below, or,
    where ``alt`` is given, only ``alt`` as the alt text.
    """

    name: str
    png: bytes = field(repr=False)
    caption: str
    alt: str = ""


@dataclass(frozen=True)
class Grid:
    """Figures side by side in HTML (one after the other in Markdown)."""

    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class Section:
    """A heading (``level`` 1 to 3) and its blocks, which may be sections themselves."""

    title: str
    blocks: tuple[Block, ...]
    level: int = 2


Block = Paragraph | BulletList | Table | Figure | Grid | Section


@dataclass(frozen=True)
class Document:
    """The whole report: the HTML page's title and the sections in order."""

    title: str
    sections: tuple[Section, ...]


METHOD_NOTES = [
    "Each attack scores every (target model, audit sample) pair leave-one-out: every model in turn is the target, "
    "all others its shadows. Chance is TPR = FPR.",
    "95% CIs in the summary and the comparisons: percentile bootstrap over audit samples ({n_boot} resamples with "
    "replacement; each resampled sample keeps all its models' scores; the models are held fixed). The threshold "
    "for each FPR is chosen again on every resample, on the same data it is scored on, so the interval includes "
    "the threshold's own noise. Pairs of one sample are correlated (a memorable canary is caught in every model "
    "it is IN), which this interval respects.",
    "CP (all-attacks table): exact Clopper–Pearson interval for the count round(TPR·n_in) out of n_in IN pairs at "
    "the threshold chosen at that FPR. It treats pairs as independent and the threshold as given, so it is "
    "narrower than the bootstrap; read it as the precision of the operating point, not of the audit.",
    "ε lower bound: the smallest ε any (ε, δ)-DP training could have and still give these attack scores, valid "
    "at 95% (δ the paradigm's own, or 0), for the headline attack only (a maximum over attacks would not be a 95% "
    "bound). It uses every (model, sample) pair: for a fixed grid of 24 counts k of OUT pairs (and of IN pairs, "
    "for the complementary test), the threshold just above the (k+1)-th highest OUT score; at each, an exact test "
    "of TPR ≤ e^ε·FPR + δ that accounts for the noise in both counts; Bonferroni over the grid. No split and no "
    "seed. Pooling pairs is valid because every sample is IN for exactly half the models, so a sample's "
    "difficulty weighs equally on TPR and FPR; correlation through shared models is checked by simulation, not "
    "proven. For the loss attack, metrics.json also holds one-run bounds, each model audited alone and the "
    "median taken (eps_one_run, after Steinke et al. 2023; eps_gdp_bound, after Mahloujifar et al. 2024, valid "
    "for a Gaussian trade-off curve). It sits beside the accounted ε of a DP paradigm; above it, the training or "
    "its accounting is wrong.",
    "Paired comparison: both paradigms are recomputed on the same resample of audit samples; the difference's "
    "95% interval and p (twice the smaller share of resampled differences on either side of zero) test 'no "
    "difference'. Different runs pair only when their audit samples, labels and keep matrix are identical.",
    "Attack success of a sample: the share of the models that trained on it (IN) in which the attack flags it at "
    "the paradigm's global 1%-FPR threshold; ties broken by the mean score margin (IN minus OUT). Nearest "
    "synthetic neighbour: L2 distance in pixel space (0..1) over the synthetic sets of the models where the "
    "sample was IN; 'nearest other real' is the distance to the closest other training-pool image, for scale.",
    "Verdicts: 'leaks' when the 95% interval of TPR at 0.1% or 1% FPR lies above chance at a level the OUT pairs "
    "can measure; 'too few models to conclude' when nothing is detected but the audit has under {min_models} "
    "models or cannot exclude a {max_multiple:.0f}× leak; otherwise 'no leakage detected above chance at this "
    "audit's power'. Only a paradigm with an accounted ε is called DP, and nothing is called private.",
]


def _notes(report: Report) -> list[str]:
    return [
        note.format(n_boot=report.n_boot, min_models=MIN_MODELS, max_multiple=MAX_UNDETECTED_MULTIPLE)
        for note in METHOD_NOTES
    ]


FIGURE_CAPTIONS = {
    "roc": "ROC curves of all paradigms ({attack}), log-log: the low-FPR end is what matters.",
    "privacy_utility": (
        "Privacy–utility: TPR at 0.1% FPR ({attack}, 95% bootstrap CI) against test accuracy (± std over models); "
        "the dashed line is chance, and a TPR of 0 is drawn at 10⁻⁴."
    ),
    "scores": "Per-sample {histogram_attack} scores of IN and OUT (model, sample) pairs, one panel per paradigm.",
}


def figure_file(name: str) -> str:
    """File name of a figure (``vulnerable:run:real`` -> ``vulnerable-run-real.png``)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)
    return f"{safe}.png"


def _items(lines: list[str]) -> tuple[Item, ...]:
    return tuple(Item(line) for line in lines)


def _vulnerable_section(report: Report, label: str) -> Section:
    """One paradigm's most vulnerable samples: the search note, the neighbour figure, the table."""
    return Section(label, _neighbour_blocks(
        report, f"neighbours:{label}", "Nearest synthetic neighbours", f"vulnerable:{label}",
        f"{label}: each vulnerable sample (left; class → trained label, attack success) beside its nearest "
        "synthetic training image (right; L2 distance, source model and label).",
        f"{label}: samples beside their nearest synthetic neighbours", report.vulnerable[label],
    ), level=3)


def _neighbour_blocks(report: Report, note_key: str, note_title: str, figure_key: str, caption: str, alt: str,
                      samples: pd.DataFrame) -> tuple[Block, ...]:
    """A vulnerable-samples section's blocks: the neighbour search's note, the figure (when drawn), the table."""
    blocks: list[Block] = []
    note = report.figure_notes.get(note_key)
    if note:
        blocks.append(Paragraph((f"{note_title}: {note}.",)))
    png = report.figures.get(figure_key)
    if png is not None:
        blocks.append(Figure(figure_key, png, caption, alt=alt))
    blocks.append(Table(*vulnerable_rows(samples)))
    return tuple(blocks)


def _release_section(report: Report) -> Section | None:
    """Model threat against release threat, per paradigm: the two-column table, both verdicts, both ROC curves and the
    release attack's most vulnerable samples beside their nearest synthetic record; None when nothing is released."""
    released = [r for r in report.results if r.release is not None]
    if not released:
        return None
    intro = Paragraph((
        "The same shadow pipelines, the same keep matrix, two attackers: one queries the model trained on the "
        "synthetic data (", Code(report.attack), "), the other reads only the synthetic set the pipeline released "
        "(raypriv.release: distances to the closest record and DOMIAS's density ratio, calibrated per audit sample "
        "over the shadow pipelines). Each release verdict uses the paradigm's first release attack of ",
        Code("release_lira, release_rmia, release_density, release_dcr"), ", fixed in advance.",
    ))
    items = []
    for r in report.results:
        items.append(Item(r.verdict, f"{r.label}, model threat", r.verdict_kind))
        if r.release is not None:
            items.append(Item(r.release.verdict, f"{r.label}, release threat", r.release.verdict_kind))
        else:
            items.append(Item(NO_RELEASE, f"{r.label}, release threat"))
    blocks: list[Block] = [intro, Table(*release_rows(report), text_columns=(0, 1, 2)), BulletList(tuple(items), "verdicts"),
                           Figure("release_roc", report.figures["release_roc"],
                                  "ROC curves per paradigm, log-log: the model attack and the release attack on the same pairs.")]
    for r in released:
        blocks.append(Section(f"{r.label}: most vulnerable to {r.release.attack}", _neighbour_blocks(
            report, f"release_neighbours:{r.label}", "Nearest synthetic records", f"release_vulnerable:{r.label}",
            f"{r.label}: the samples {r.release.attack} finds most often (left) beside their nearest released "
            "synthetic record (right; L2 distance, source model and label).",
            f"{r.label}: samples beside their nearest released records", r.release.vulnerable,
        ), level=3))
    return Section("Model threat vs release threat", tuple(blocks))


def report_document(report: Report) -> Document:
    """The report as sections of blocks: what both report.md and report.html show, in order."""

    def figure(name: str) -> Figure:
        caption = FIGURE_CAPTIONS[name].format(attack=report.attack, histogram_attack=report.histogram_attack)
        return Figure(name, report.figures[name], caption)

    if report.comparisons:
        paired: list[Block] = [Paragraph((comparison_note(report),)), Table(*comparison_rows(report), text_columns=(0, 4))]
    else:
        paired = [Paragraph(("No pair of paradigms shares its audit samples.",))]
    samples: list[Block] = [_vulnerable_section(report, r.label) for r in report.results]
    samples += [Paragraph((note,), tight=True) for key, note in report.figure_notes.items() if key.startswith("dataset:")]
    attack_note = Paragraph((
        "Attack: ", Code(report.attack), " (chosen before looking at the scores; ", Code("--attack"),
        " picks another). 95% intervals: bootstrap over audit samples.",
    ))
    verdicts = BulletList(tuple(Item(r.verdict, r.label, r.verdict_kind) for r in report.results), "verdicts")
    judged = [r for r in report.results if r.frontier]
    frontier_note = Paragraph((
        "Each paradigm against the DP-SGD points of its run (", Code(report.attack), " TPR at the lowest FPR the "
        "run can measure, with at least 5 expected false positives; test accuracy): dominated only when a DP-SGD "
        "point is shown at least as accurate (Welch t over models) and the paradigm shown to leak at least as much "
        "(two-way bootstrap over models and audit samples, paired), each at one-sided 2.5%, Holm-corrected over the "
        "points; not dominated when it is shown more accurate or less leaky than every point; otherwise undecided.",
    ))
    frontier = BulletList(tuple(Item(r.frontier, r.label, r.frontier_kind) for r in judged), "verdicts")
    sections = (
        Section("raypriv report", (BulletList(_items(runs_lines(report)), "runs"),), level=1),
        Section("Verdicts", (attack_note, verdicts)),
        *((Section("Against the DP-SGD frontier", (frontier_note, frontier)),) if judged else ()),
        Section("Privacy, utility, cost", (
            Table(*summary_rows(report)),
            Paragraph((summary_footnote(report),)),
            Grid((figure("roc"), figure("privacy_utility"))),
            figure("scores"),
        )),
        *((release,) if (release := _release_section(report)) is not None else ()),
        Section("Paired comparisons", (*paired, BulletList(_items(report.skipped_comparisons), "note"))),
        Section("All attacks", (Table(*attack_rows(report), text_columns=(0, 1)),)),
        Section("Cost", (Table(*cost_rows(report), text_columns=(0, 7)),)),
        Section(f"Most vulnerable audit samples ({report.attack})", tuple(samples)),
        Section("How to read this", (BulletList(_items(_notes(report)), "notes"),)),
    )
    return Document(f"raypriv report: {', '.join(run.name for run in report.runs)}", sections)


# ------------------------------------------------------------ the renderers


def to_markdown(document: Document) -> str:
    """``report.md``: each block, then a blank line; plots as the PNG files written beside it."""
    return "\n".join(line for section in document.sections for line in _markdown(section))


def _markdown(block: Block) -> list[str]:
    match block:
        case Section(title, blocks, level):
            return [f"{'#' * level} {_md_text(title)}", ""] + [line for inner in blocks for line in _markdown(inner)]
        case Paragraph(parts, tight):
            text = "".join(_md_text(part) if isinstance(part, str) else f"`{part.text}`" for part in parts)
            return [] if not text else [text] if tight else [text, ""]
        case BulletList(items):
            return [f"- **{_md_text(item.label)}**: {_md_text(item.text)}" if item.label else f"- {_md_text(item.text)}"
                    for item in items] + [""]
        case Table(header, rows):
            return [_md_table(header, rows), ""]
        case Grid(figures):
            return [line for figure in figures for line in _markdown(figure)]
        case Figure(name, _, caption, alt):
            if alt:
                return [f"![{_md_text(alt)}]({figure_file(name)})", ""]
            return [f"![{_md_text(caption)}]({figure_file(name)})", "", f"*{_md_text(caption)}*", ""]
    raise TypeError(f"not a report block: {block!r}")


_HTML_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_HTML_ENTITY = re.compile(r"&(?=#?\w+;)")


def _md_text(text: str) -> str:
    """``text`` with what Markdown would pass through as raw HTML (a tag, an entity) escaped.

    Run names come from the user's paths; ``p<0.002`` and ``a < b`` are left as they are.
    """
    return _HTML_TAG_START.sub("&lt;", _HTML_ENTITY.sub("&amp;", str(text)))


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return _md_text(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def to_html(document: Document) -> str:
    """``report.html``: one self-contained page (inline CSS, plots as base64 PNG, no script)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(document.title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
    ]
    for section in document.sections:
        parts += _html(section)
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _html(block: Block) -> list[str]:
    match block:
        case Section(title, blocks, level):
            return [f"<h{level}>{escape(title)}</h{level}>"] + [part for inner in blocks for part in _html(inner)]
        case Paragraph(parts):
            text = "".join(escape(part) if isinstance(part, str) else f"<code>{escape(part.text)}</code>" for part in parts)
            return [f'<p class="note">{text}</p>' if text else ""]
        case BulletList(items, style):
            if not items:
                return []
            return [f'<ul class="{style}">' + "".join(_html_item(item) for item in items) + "</ul>"]
        case Table(header, rows, text_columns):
            return [_html_table(header, rows, text_columns)]
        case Grid(figures):
            return ['<div class="grid">', *(_html_figure(figure.png, figure.caption) for figure in figures), "</div>"]
        case Figure(_, png, caption):
            return [_html_figure(png, caption)]
    raise TypeError(f"not a report block: {block!r}")


def _html_item(item: Item) -> str:
    kind = f' class="{item.kind}"' if item.kind else ""
    label = f"<b>{escape(item.label)}:</b>" if item.label else ""
    return f"<li{kind}>{label}{escape(item.text)}</li>"


def _html_table(header: list[str], rows: list[list[str]], text_columns: tuple[int, ...] = ()) -> str:
    def cls(i: int) -> str:
        return ' class="text"' if i in text_columns else ""

    head = "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html_figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2330;
       background: #f6f7f9; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #dde1e7; }
h3 { font-size: 16px; margin: 22px 0 8px; }
p, li { max-width: 92ch; }
.runs { color: #4a5263; font-size: 13px; padding-left: 18px; overflow-wrap: anywhere; }
.verdicts { list-style: none; padding: 0; }
.verdicts li { margin: 6px 0; padding: 8px 12px; border-left: 5px solid #8a93a6; background: #f3f4f7; max-width: none; }
.verdicts li.leaks { border-color: #c0392b; background: #fbeeee; }
.verdicts li.too-few { border-color: #d68910; background: #fdf5e6; }
.verdicts li.no-leak-detected { border-color: #5d6d7e; }
.verdicts li.dominated { border-color: #7d3c98; background: #f5eef8; }
.verdicts li.not-dominated { border-color: #1e8449; }
.verdicts li.undecided { border-color: #d68910; }
.verdicts b { margin-right: 6px; }
.scroll { overflow-x: auto; max-width: 100%; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 9px; border-bottom: 1px solid #e3e6ec; text-align: right; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; white-space: normal; vertical-align: bottom; min-width: 7ch; }
td:first-child, th:first-child { text-align: left; }
td.text, th.text { text-align: left; white-space: normal; min-width: 14ch; }
figure { margin: 16px 0 22px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e3e6ec; }
figcaption { font-size: 13px; color: #4a5263; margin-top: 4px; max-width: 92ch; }
.grid { display: flex; flex-wrap: wrap; gap: 18px; }
.grid figure { flex: 1 1 460px; min-width: 0; margin: 0; }
.note { font-size: 13px; color: #4a5263; }
.notes li { font-size: 13px; color: #39404f; margin: 4px 0; }
"""


def render_markdown(report: Report) -> str:
    """``report.md``: verdicts and every table; plots as the PNG files written beside it."""
    return to_markdown(report_document(report))


def render_html(report: Report) -> str:
    """``report.html``: one self-contained page (inline CSS, plots as base64 PNG, no script)."""
    return to_html(report_document(report))


def write_report(report: Report, out_dir: str) -> dict[str, str]:
    """Write report.html, report.md and the plots as PNG; returns the paths written by name."""
    store = RunStore(str(out_dir))
    paths = {}
    document = report_document(report)
    store.write_bytes("report.html", to_html(document).encode())
    paths["html"] = store.path("report.html")
    store.write_bytes("report.md", to_markdown(document).encode())
    paths["md"] = store.path("report.md")
    for name, png in report.figures.items():
        file = figure_file(name)
        store.write_bytes(file, png)
        paths[name] = store.path(file)
    return paths


def format_verdicts(report: Report) -> str:
    """The verdict lines, for the terminal."""
    lines = [f"attack: {report.attack}"]
    lines += [f"{r.label}: {r.verdict}" for r in report.results]
    if any(r.release is not None for r in report.results):  # the release threat model, one line per paradigm
        lines += [f"{r.label}, release threat: {r.release.verdict if r.release is not None else NO_RELEASE}"
                  for r in report.results]
    lines += [f"{r.label} against the DP-SGD frontier: {r.frontier}" for r in report.results if r.frontier]
    return "\n".join(lines) + "\n"
