"""Draw many cells as an RGBA image with numpy: fast enough to recolour a million cells.

Each cell becomes a small disk of pixels. Per view range we compute, once, which pixels every
cell covers; per recolour each cell gets an integer key (priority, then colour) and each pixel
keeps the largest key (`np.maximum.at`), so what is drawn on top is decided by the key:
selected cells over the rest, active cells over grey ones. A colour look-up turns keys into pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..state.colouring import GREY, LEVELS, Colouring

MAX_SPLATS = 6_000_000  # pixel writes per redraw; bounds the disk radius when many cells show
ORDER_BUCKETS = 1024  # categorical draw order: a fixed random order, so no category hides another


def hex_rgba(colours, alpha: int = 255) -> np.ndarray:
    out = np.empty((len(colours), 4), dtype=np.uint8)
    for i, c in enumerate(colours):
        c = str(c).lstrip("#")
        out[i] = (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), alpha)
    return out


def disk_offsets(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(r, r)
    inside = dx ** 2 + dy ** 2 <= radius ** 2 + radius * 0.6
    return np.stack([dx[inside], dy[inside]], axis=1)


def point_radius(n_visible: int, width: int, height: int, scale: float = 1.0) -> int:
    """Disks shrink as cells crowd the view, as scanpy's default point size does."""
    if n_visible == 0:
        return 0
    r = int(round(0.2 * np.sqrt(width * height / n_visible)))
    r = min(r, int(5 * scale))
    while r > 0 and n_visible * len(disk_offsets(r)) > MAX_SPLATS:
        r -= 1
    return r


@dataclass
class Footprint:
    """Which pixels each visible cell covers, for one view range and image size."""

    width: int
    height: int
    pix: np.ndarray   # int32 pixel index (row * width + col), one per (cell, disk offset)
    cell: np.ndarray  # int32 cell index for each entry of `pix`
    radius: int
    touched: np.ndarray = None  # the distinct pixels any cell covers
    slot: np.ndarray = None     # for each entry of `pix`, its index into `touched`

    def __post_init__(self):
        # per recolour only the covered pixels are worked on, in a compact array
        covered = np.bincount(self.pix, minlength=self.width * self.height)
        self.touched = np.flatnonzero(covered).astype(np.int32)
        remap = np.empty(self.width * self.height, dtype=np.int32)
        remap[self.touched] = np.arange(len(self.touched), dtype=np.int32)
        self.slot = remap[self.pix]


def footprint(xy: np.ndarray, x_range, y_range, width: int, height: int,
              scale: float = 1.0) -> Footprint:
    x0, x1 = x_range
    y0, y1 = y_range
    sx = width / (x1 - x0) if x1 > x0 else 1.0
    sy = height / (y1 - y0) if y1 > y0 else 1.0
    col = np.floor((xy[:, 0] - x0) * sx).astype(np.int32)
    row = np.floor((xy[:, 1] - y0) * sy).astype(np.int32)
    margin = 8
    near = np.flatnonzero((col >= -margin) & (col < width + margin)
                          & (row >= -margin) & (row < height + margin)).astype(np.int32)
    inside = int(np.count_nonzero((col[near] >= 0) & (col[near] < width)
                                  & (row[near] >= 0) & (row[near] < height)))
    radius = point_radius(inside, width, height, scale)
    offs = disk_offsets(radius)
    c, r = col[near], row[near]
    pix_parts, cell_parts = [], []
    for dx, dy in offs:
        cc, rr = c + dx, r + dy
        ok = (cc >= 0) & (cc < width) & (rr >= 0) & (rr < height)
        pix_parts.append((rr[ok] * width + cc[ok]).astype(np.int32))
        cell_parts.append(near[ok])
    pix = np.concatenate(pix_parts) if pix_parts else np.empty(0, np.int32)
    cell = np.concatenate(cell_parts) if cell_parts else np.empty(0, np.int32)
    return Footprint(width, height, pix, cell, radius)


@dataclass
class Palette:
    """Keys per cell and the colour of each key, for one colouring and selection."""

    keys: np.ndarray     # int32 per cell
    lut: np.ndarray      # uint8 [n_colours, 4]
    n_colours: int
    faded_below: int     # keys under this belong to unselected cells while a selection exists


def palette(colouring: Colouring, n_cells: int, cmap_lut: np.ndarray,
            selection: np.ndarray | None = None) -> Palette:
    """`cmap_lut`: [LEVELS, 4] uint8 colours of the continuous colour map."""
    grey = hex_rgba([GREY])
    if colouring.kind == "categorical":
        colours = np.concatenate([grey, hex_rgba(colouring.colours)])
        codes = colouring.codes.astype(np.int32) + 1  # 0 = missing, grey
        order = np.random.default_rng(0).permutation(n_cells).astype(np.int64)
        bucket = (order * ORDER_BUCKETS // max(n_cells, 1)).astype(np.int32)
        bucket[codes == 0] = 0
        n = len(colours)
        keys = bucket * n + codes
        top = ORDER_BUCKETS * n
    elif colouring.kind == "continuous":
        colours = np.concatenate([grey, cmap_lut[:LEVELS]])
        n = len(colours)
        keys = colouring.levels.astype(np.int32)  # larger values drawn on top, grey beneath
        top = n
    else:
        colours = hex_rgba(["#4c72b0"])
        n = 1
        keys = np.zeros(n_cells, dtype=np.int32)
        top = 1
    faded_below = 0
    if selection is not None and len(selection):
        keys = keys.copy()
        keys[selection] += top
        faded_below = top
    return Palette(keys, colours, n, faded_below)


def render(fp: Footprint, pal: Palette) -> np.ndarray:
    """RGBA image [height, width, 4], row 0 at the bottom of the view."""
    best = np.full(len(fp.touched), -1, dtype=np.int32)
    np.maximum.at(best, fp.slot, pal.keys[fp.cell])
    n = pal.n_colours
    # look-up table: washed-out colours (unselected while a selection exists), then colours
    faded = pal.lut.copy()
    faded[:, :3] = (pal.lut[:, :3].astype(np.uint16) + 3 * 235) // 4
    lut = np.concatenate([faded, pal.lut]).view(np.uint32).ravel()
    idx = best % n
    if pal.faded_below:
        idx += n * (best >= pal.faded_below)
    else:
        idx += n
    img = np.zeros(fp.width * fp.height, dtype=np.uint32)  # transparent background
    img[fp.touched] = lut[idx]
    return img.view(np.uint8).reshape(fp.height, fp.width, 4)


def winners(fp: Footprint, pal: Palette) -> np.ndarray:
    """Cell index drawn at each pixel (-1 for background), for hover and click."""
    best = np.full(len(fp.touched), -1, dtype=np.int32)
    keys = pal.keys[fp.cell]
    np.maximum.at(best, fp.slot, keys)
    won = keys == best[fp.slot]
    out = np.full(fp.width * fp.height, -1, dtype=np.int32)
    out[fp.pix[won]] = fp.cell[won]
    return out
