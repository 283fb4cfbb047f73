"""``overlaysim animate``: a run's story drawn on its topology, as a GIF or one HTML page.

The topology is laid out with NetworkX (switches by Kamada-Kawai, each switch's hosts
around it: a *site*, shaded), hosts are coloured by their state in the story
(:mod:`overlaysim.report.story`), impaired links are dashed and labelled, and a clock,
a timeline with the scenario's steps and the convergence so far run underneath.

Made for a projector: large fonts and the Okabe-Ito palette (distinguishable with the
common colour-vision deficiencies), with state also spelled out in the legend. The GIF is
written by matplotlib's Pillow writer; the HTML page by ``Animation.to_jshtml`` with every
frame embedded, so it needs no network (no external script, style or image).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib as mpl
import networkx as nx
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Patch, Rectangle

from overlaysim.errors import UserError
from overlaysim.metrics.atomic import atomic_write_bytes
from overlaysim.report.story import Story
from overlaysim.scenario.topology import Topology

#: Okabe-Ito colours per state (colour-blind safe); light grey / dark grey for the rest.
COLOURS = {
    "holds": "#0072B2",  # blue
    "knows": "#0072B2",
    "waiting": "#E69F00",  # orange
    "suspect": "#E69F00",
    "dead": "#D55E00",  # vermillion
    "alive": "#56B4E9",  # sky blue
    "subject": "#000000",
    "unaware": "#E8E8E8",
    "off": "#E8E8E8",
    "down": "#777777",
}
IMPAIRED = "#CC79A7"  # reddish purple
FIGSIZE = (12.8, 7.2)  # inches
DPI = {"gif": 75, "html": 80}
FPS = 4
#: The last frame is held this many seconds before the GIF loops.
HOLD_END_S = 3.0
#: More impaired links than this are dashed without a label each.
MAX_LINK_LABELS = 12
STYLE = {"font.size": 18, "axes.titlesize": 24, "legend.fontsize": 16}


# --- layout ---------------------------------------------------------------------------


def sites(topology: Topology) -> dict[str, list[str]]:
    """Switch -> hosts linked to it directly (a host on several switches: the first)."""
    out: dict[str, list[str]] = {s: [] for s in topology.switches}
    placed: set[str] = set()
    hosts = set(topology.hosts)
    for lk in topology.links:
        for h, s in ((lk.a, lk.b), (lk.b, lk.a)):
            if h in hosts and s in out and h not in placed:
                out[s].append(h)
                placed.add(h)
    return out


def layout(topology: Topology) -> dict[str, tuple[float, float]]:
    """Positions of every node: switches by Kamada-Kawai, each site's hosts in a ring
    around its switch (opening away from the centre); hosts on no switch by spring."""
    groups = sites(topology)
    sw = nx.Graph()
    sw.add_nodes_from(topology.switches)
    for lk in topology.links:
        if lk.a in groups and lk.b in groups:
            sw.add_edge(lk.a, lk.b)
    pos: dict[str, tuple[float, float]] = {}
    if len(sw) == 1:
        pos[topology.switches[0]] = (0.0, 0.0)
    elif len(sw) > 1:
        if nx.is_connected(sw):
            raw = nx.kamada_kawai_layout(sw, scale=2.2)
        else:
            raw = nx.spring_layout(sw, seed=0, scale=2.2)
        pos.update({n: (float(x), float(y)) for n, (x, y) in raw.items()})
    n_sites = sum(1 for hs in groups.values() if hs)
    for s, hosts in groups.items():
        if not hosts:
            continue
        cx, cy = pos[s]
        if n_sites == 1:
            radius, start, spread = 1.0, math.pi / 2, 2 * math.pi
        else:
            radius = 0.45 + 0.03 * len(hosts)
            away = math.atan2(cy, cx) if (cx, cy) != (0.0, 0.0) else math.pi / 2
            spread = min(2 * math.pi, 0.5 * len(hosts) + 1.5)
            start = away + spread / 2
        n = len(hosts)
        full = spread >= 2 * math.pi - 1e-9
        for i, h in enumerate(hosts):
            frac = i / n if full else (i + 0.5) / n
            a = start - frac * spread
            pos[h] = (cx + radius * math.cos(a), cy + radius * math.sin(a))
    loose = [h for h in topology.hosts if h not in pos]
    if loose:
        g = topology.graph()
        raw = nx.spring_layout(g, pos=pos or None, fixed=list(pos) or None, seed=0)
        pos.update({h: (float(raw[h][0]), float(raw[h][1])) for h in loose})
    return pos


# --- drawing --------------------------------------------------------------------------


class _Drawing:
    """The figure and the artists each frame updates."""

    def __init__(self, story: Story, dpi: int):
        topo = story.topology
        self.story = story
        self.fig = Figure(figsize=FIGSIZE, dpi=dpi)
        FigureCanvasAgg(self.fig)
        ax = self.fig.add_axes((0.01, 0.2, 0.70, 0.68))
        ax.set_axis_off()
        ax.set_aspect("equal")
        pos = layout(topo)
        self.pos = pos
        groups = sites(topo)
        if sum(1 for hs in groups.values() if hs) > 1:
            for s, hosts in groups.items():
                if hosts:
                    cx, cy = pos[s]
                    r = max(math.dist(pos[s], pos[h]) for h in hosts) + 0.35
                    ax.add_patch(Circle((cx, cy), r, color="#F2F2F2", zorder=0))
                    ax.text(cx, cy + r + 0.05, f"site {s}", ha="center", va="bottom", fontsize=16)
        self.edges = [tuple(sorted((lk.a, lk.b))) for lk in topo.links]
        segs = [(pos[a], pos[b]) for a, b in self.edges]
        self.lines = LineCollection(segs, colors="#999999", linewidths=2.5, zorder=1)
        ax.add_collection(self.lines)
        self.edge_text = {
            e: ax.text(
                (pos[e[0]][0] + pos[e[1]][0]) / 2,
                (pos[e[0]][1] + pos[e[1]][1]) / 2,
                "",
                ha="center",
                va="center",
                fontsize=15,
                color="#6A2C55",
                zorder=4,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
            )
            for e in self.edges
        }
        xs = [p[0] for p in pos.values()]
        ys = [p[1] for p in pos.values()]
        if topo.switches:
            ax.scatter(
                [pos[s][0] for s in topo.switches],
                [pos[s][1] for s in topo.switches],
                s=900,
                marker="s",
                c="#BBBBBB",
                edgecolors="#444444",
                zorder=2,
            )
            for s in topo.switches:
                ax.text(*pos[s], s, ha="center", va="center", fontsize=14, zorder=3)
        self.hosts = list(topo.hosts)
        size = 2200 if len(self.hosts) <= 12 else max(350, 26000 // len(self.hosts))
        self.dots = ax.scatter(
            [pos[h][0] for h in self.hosts],
            [pos[h][1] for h in self.hosts],
            s=size,
            c=["#FFFFFF"] * len(self.hosts),
            edgecolors="#222222",
            linewidths=2,
            zorder=3,
        )
        font = 20 if len(self.hosts) <= 12 else 12
        self.labels = [
            ax.text(*pos[h], h, ha="center", va="center", fontsize=font, zorder=5, weight="bold")
            for h in self.hosts
        ]
        pad = 0.6
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_ylim(min(ys) - pad, max(ys) + pad)

        self.fig.text(0.01, 0.96, story.title, fontsize=26, weight="bold", va="top")
        self.clock = self.fig.text(0.99, 0.96, "", fontsize=26, ha="right", va="top")
        self.banner = self.fig.text(0.01, 0.885, "", fontsize=17, va="top", color="#6A2C55")
        self.status = self.fig.text(0.01, 0.19, "", fontsize=18, va="top")
        self.fig.legend(
            handles=[
                Patch(facecolor=COLOURS[k], edgecolor="#222222", label=text)
                for k, text in story.legend
            ]
            + [Patch(facecolor="white", edgecolor=IMPAIRED, hatch="//", label="impaired link")],
            loc="upper left",
            bbox_to_anchor=(0.72, 0.86),
            frameon=False,
            fontsize=16,
        )
        # Timeline: the story's window, its scenario steps, and a cursor.
        tl = self.fig.add_axes((0.08, 0.06, 0.86, 0.035))
        tl.set_xlim(story.t_start, story.t_end)
        tl.set_yticks([])
        tl.tick_params(labelsize=13)
        tl.text(
            -0.01, 0.5, "time (s)", transform=tl.transAxes, ha="right", va="center", fontsize=13
        )
        for t, text in story.markers:
            tl.axvline(t, color="#444444", lw=1.5)
            tl.text(t, 1.15, text, transform=tl.get_xaxis_transform(), fontsize=12, ha="center")
        self.cursor = Rectangle(
            (story.t_start, 0), 0, 1, transform=tl.get_xaxis_transform(), color="#0072B2", alpha=0.6
        )
        tl.add_patch(self.cursor)

    def update(self, i: int) -> list:
        fr = self.story.frames[min(i, len(self.story.frames) - 1)]
        self.dots.set_facecolors([COLOURS[fr.states[h]] for h in self.hosts])
        dark = {"holds", "knows", "dead", "subject", "down"}
        for h, label in zip(self.hosts, self.labels, strict=True):
            label.set_color("white" if fr.states[h] in dark else "black")
        colours, styles = [], []
        show = len(fr.link_labels) <= MAX_LINK_LABELS  # else only dashed, text in the banner
        for e in self.edges:
            text = fr.link_labels.get(e, "")
            self.edge_text[e].set_text(text)
            self.edge_text[e].set_visible(bool(text) and show)
            colours.append(IMPAIRED if text else "#999999")
            styles.append("--" if text else "-")
        self.lines.set_colors(colours)
        self.lines.set_linestyles(styles)
        self.clock.set_text(_clock(fr.t))
        self.banner.set_text(fr.banner)
        self.status.set_text(fr.status)
        self.cursor.set_width(fr.t - self.story.t_start)
        return []


def _clock(t: float) -> str:
    return f"t = {t:7.3f} s"


def _animation(story: Story, dpi: int, fps: int) -> tuple[_Drawing, FuncAnimation]:
    drawing = _Drawing(story, dpi)
    n = len(story.frames) + int(HOLD_END_S * fps)
    anim = FuncAnimation(
        drawing.fig, drawing.update, frames=n, interval=1000 / fps, blit=False, repeat=True
    )
    return drawing, anim


def write_animation(story: Story, out: Path, *, fps: int = FPS) -> Path:
    """Draw ``story`` into ``out`` (.gif or .html); returns ``out``."""
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("gif", "html"):
        raise UserError(f"--out {out}: expected a file name ending in .gif or .html")
    if fps < 1 or fps > 30:
        raise UserError(f"--fps {fps}: expected a number of frames per second from 1 to 30")
    out.parent.mkdir(parents=True, exist_ok=True)
    with mpl.rc_context(STYLE):
        _, anim = _animation(story, DPI[fmt], fps)
        if fmt == "gif":
            tmp = out.with_name(f".{out.name}.tmp.gif")
            try:
                anim.save(tmp, writer=PillowWriter(fps=fps))
                tmp.replace(out)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            page = _html_page(
                story, anim.to_jshtml(fps=fps, embed_frames=True, default_mode="once")
            )
            atomic_write_bytes(out, page.encode())
    return out


#: matplotlib's player draws its buttons with a web font fetched from a CDN; the page
#: must need no network, so that link goes and each icon becomes a plain character.
_ICONS = {
    "fa fa-minus": "\u2212",
    "fa fa-fast-backward": "\u23ee",
    "fa fa-step-backward": "\u23f4\u2759",
    "fa fa-play fa-flip-horizontal": "\u25c0",
    "fa fa-pause": "\u23f8",
    "fa fa-play": "\u25b6",
    "fa fa-step-forward": "\u2759\u23f5",
    "fa fa-fast-forward": "\u23ed",
    "fa fa-plus": "+",
}


def _offline(html: str) -> str:
    html = re.sub(r"<link\b[^>]*>", "", html)
    for cls, char in _ICONS.items():
        html = html.replace(f'<i class="{cls}"></i>', char)
    if re.search(r"https?://|<i class=\"fa", html):
        raise RuntimeError("animation page still refers to something outside it")
    return html


def _html_page(story: Story, body: str) -> str:
    body = _offline(body)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>overlaysim: {story.title}</title>"
        "<style>body{font-family:sans-serif;font-size:20px;margin:1em}</style>"
        f"</head><body><h1>{story.title}</h1>\n{body}\n</body></html>\n"
    )
