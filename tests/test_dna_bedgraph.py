"""bedGraph text: the array-built lines are the text Python's %-format writes, value for value."""

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from biollm_engine.analysis.dna_tracks import read_bedgraph
from biollm_engine.analysis.tracks import BedGraphWriter, bedgraph_lines


def percent_format(chrom, starts, ends, vals) -> str:
    line = chrom.replace("%", "%%") + "\t%d\t%d\t%.6g\n"
    return (line * len(vals)) % tuple(itertools.chain.from_iterable(
        zip(np.asarray(starts).tolist(), np.asarray(ends).tolist(),
            np.asarray(vals, np.float64).tolist())))


def check(vals, chrom="chr1") -> None:
    vals = np.asarray(vals)
    starts = np.arange(len(vals), dtype=np.int64) * 1013
    ends = starts + np.arange(1, len(vals) + 1)
    with np.errstate(invalid="ignore"):  # signalling NaN payloads cast to float64
        assert bedgraph_lines(chrom, starts, ends, vals) == \
            percent_format(chrom, starts, ends, vals)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(width=32), max_size=50))
def test_float32_values_print_as_percent_g(vals):
    check(np.asarray(vals, np.float32))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(), max_size=50))
def test_float64_values_print_as_percent_g(vals):
    check(np.asarray(vals, np.float64))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=200))
def test_any_float32_bit_pattern_prints_as_percent_g(bits):
    check(np.asarray(bits, np.uint32).view(np.float32))


def test_extremes_ties_and_decade_edges():
    f32 = np.finfo(np.float32)
    vals = [0.0, -0.0, np.nan, np.inf, -np.inf, f32.max, -f32.max, f32.tiny, f32.smallest_subnormal,
            5e-324, 1.7976931348623157e308, 1e-280, 1e280, 1e-281, 1e281,
            123456.5, 123457.5, 1234565.0, 999999.5, 999999.4, 9999995.0, 99999.95,
            1e-5, 1e-4, 0.00099999, 0.000999999, 0.0001, 0.5, 1.0, 10.0, 1e5, 1e6, 1e-100, 1e100]
    vals += [10.0 ** k for k in range(-30, 30)] + [np.nextafter(10.0 ** k, 0) for k in range(-30, 30)]
    check(np.asarray(vals, np.float64))
    with np.errstate(over="ignore"):  # past float32's range: inf
        check(np.asarray(vals, np.float32))
    rng = np.random.default_rng(0)
    check(rng.random(20000).astype(np.float32))
    check((rng.standard_normal(20000) * 10.0 ** rng.integers(-40, 38, 20000)).astype(np.float32))


def test_large_positions_and_unusual_chromosome_names():
    vals = np.asarray([0.25, 3.5], np.float32)
    for chrom in ("chr%1", "scaffold_1|x", "chrÅ"):
        starts, ends = np.asarray([0, 10**11]), np.asarray([9, 10**11 + 1])
        assert bedgraph_lines(chrom, starts, ends, vals) == \
            percent_format(chrom, starts, ends, vals)


def test_writer_runs_across_blocks_read_back(tmp_path):
    rng = np.random.default_rng(1)
    track = np.repeat(rng.random(300).astype(np.float32), rng.integers(1, 9, 300))
    track[rng.random(len(track)) < 0.3] = 0
    path = tmp_path / "t.bedgraph"
    with BedGraphWriter(path, name="t") as w:
        for start in range(0, len(track), 97):
            w.write("chr1", start, track[start:start + 97])
    back = read_bedgraph(path, "chr1", len(track))
    np.testing.assert_allclose(back, track, rtol=1e-5)
    lines = path.read_text().splitlines()[1:]
    starts = [int(x.split("\t")[1]) for x in lines]
    ends = [int(x.split("\t")[2]) for x in lines]
    values = np.asarray([float(x.split("\t")[3]) for x in lines])
    # one line per run of equal values: neighbours that touch differ
    touching = np.asarray(starts[1:]) == np.asarray(ends[:-1])
    assert np.all(values[1:][touching] != values[:-1][touching])
