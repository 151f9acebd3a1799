"""A 5×7 bitmap font, so the simulator can write a prompt's words on its clips with no imaging library.

Each glyph is seven rows of five pixels (``#`` on, ``.`` off). Letters are capitals only, which is
all a label on a test pattern needs; ``wrap`` breaks a prompt into the few lines that fit, and
``render`` turns a line into rows of luma bytes, each pixel scaled up to a square of ``scale``
pixels, with one blank column between characters.
"""

from __future__ import annotations

import unicodedata

GLYPH_WIDTH, GLYPH_HEIGHT = 5, 7
CELL_WIDTH = GLYPH_WIDTH + 1  # one blank column between characters

_GLYPHS = {
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# #...# .#.#. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    " ": "..... ..... ..... ..... ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    ";": "..... .##.. .##.. ..... .##.. ..#.. .#...",
    "-": "..... ..... ..... ##### ..... ..... .....",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "'": "..#.. ..#.. .#... ..... ..... ..... .....",
    '"': ".#.#. .#.#. .#.#. ..... ..... ..... .....",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "&": ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    "=": "..... ..... ##### ..... ##### ..... .....",
    "#": ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
}
# Per glyph, per row: which of the five columns are lit.
_BITS = {ch: [[c == "#" for c in row] for row in rows.split()] for ch, rows in _GLYPHS.items()}


def printable(text: str) -> str:
    """The text as this font can draw it: accents dropped, capitals, '?' for anything unknown."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().upper()
    return "".join(ch if ch in _BITS else "?" for ch in " ".join(folded.split()))


def render(text: str, *, scale: int, fg: int, bg: int) -> list[bytes]:
    """The ``GLYPH_HEIGHT * scale`` rows of ``text``, each ``len(text) * CELL_WIDTH * scale`` bytes."""
    on, off = bytes([fg]) * scale, bytes([bg]) * scale
    glyphs = [_BITS[ch] for ch in printable(text)]
    rows = []
    for y in range(GLYPH_HEIGHT):
        row = b"".join(b"".join(on if lit else off for lit in g[y]) + off for g in glyphs)
        rows.extend([row] * scale)
    return rows


def wrap(text: str, *, cols: int, lines: int) -> list[str]:
    """Up to ``lines`` lines of at most ``cols`` characters, by words; '...' if text was cut."""
    words, out, line = printable(text).split(), [], ""
    for i, word in enumerate(words):
        word = word[:cols]
        if line and len(line) + 1 + len(word) > cols:
            out.append(line)
            line = ""
            if len(out) == lines:
                last = out[-1]
                while len(last) + 3 > cols and " " in last:  # drop whole words for the dots
                    last = last.rsplit(" ", 1)[0]
                out[-1] = last[: cols - 3] + "..."
                return out
        line = f"{line} {word}" if line else word
        if i == len(words) - 1:
            out.append(line)
    return out or [""]
