//! Plot a `benches/linear` results CSV as PNG pictures.
//!
//! `cargo run --release --features plots --example plot_results -- <results.csv> <out_dir>`
//!
//! Writes, for each element type (`dtype`) in the CSV, into `<out_dir>/<dtype>/` (created if
//! missing):
//! - `speedup_vs_sparsity.png`: one panel per N, speedup over cuBLAS against sparsity of each
//!   sparse format's kernel — `sparse` (Tiled-CSL, labelled "Tiled-CSL") and `bitmap` (the
//!   bitmap format) — one coloured line per format, geometric mean over the (m×k) shapes,
//!   `uniform` pattern only; a dashed line marks 1.0 (cuBLAS).
//! - `roofline_pct.png`: one panel per N, % of measured copy bandwidth (`pct_copy_bw`) against
//!   sparsity for `sparse`, `sparse_plain` (Tiled-CSL with its words in row order) and `bitmap`
//!   (geometric mean over shapes, `uniform` pattern), with `cublas` and `dense` as flat dashed
//!   lines (their bytes do not depend on sparsity: geometric mean over shapes of all their rows
//!   at that N).
//!
//! A kernel keeps its colour and label in both pictures. Whatever the CSV lacks is skipped: a
//! kernel without rows gets no line and no legend entry, an N without sparse rows no panel, and
//! a picture with nothing to draw is not written (older CSVs without `bitmap` rows, sweeps of
//! one N, f16 only, no `rows` pattern all work); only a CSV with nothing to draw at all is an
//! error.
//!
//! Rows whose `status` is not `ok` (i.e. `FAIL`) are left out and counted. Kernels other than
//! `cublas`, `dense`, `sparse`, `sparse_plain`, `bitmap` (e.g. the `--tune` variants such as
//! `bitmap_m2s4`) are ignored and listed. The CSV is parsed by hand: a header line naming the
//! columns (any order; extra columns are ignored), then comma-separated rows.
//! Text is drawn with the DejaVu Sans font embedded from `benches/results/fonts/` (license
//! beside it) through plotters' `ab_glyph` feature, so no system font library is needed.
//! Older CSVs without `driver` / `pattern` / `status` columns are read as "?", `uniform`, `ok`.
//!
//! Built only with the `plots` feature (`required-features` in Cargo.toml).

use anyhow::{ensure, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

static FONT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results/fonts/DejaVuSans.ttf"));
const SANS: &str = "sans-serif";

/// How a kernel is drawn; the same colour and label in both pictures.
struct KStyle {
    kernel: &'static str,
    label: &'static str,
    /// What the label stands for, shown under the title ("" for none).
    note: &'static str,
    color: RGBColor,
    /// `Some((dash, gap))`: a flat dashed line at the mean over all sparsities (dense kernels:
    /// their bytes do not depend on sparsity); different dash lengths keep cuBLAS and dense
    /// apart where they nearly coincide. `None`: a line with a dot per sparsity.
    dash: Option<(u32, u32)>,
}

/// The kernels plotted, in legend order, with distinct colour-blind-friendly (Okabe–Ito)
/// colours; rows of any other kernel are ignored.
static KSTYLES: [KStyle; 5] = [
    KStyle { kernel: "cublas", label: "cuBLAS (dense)", note: "", color: RGBColor(0, 0, 0), dash: Some((14, 8)) },
    KStyle { kernel: "dense", label: "dense (ours)", note: "", color: RGBColor(0, 114, 178), dash: Some((6, 6)) },
    KStyle {
        kernel: "sparse",
        label: "Tiled-CSL",
        note: "Tiled-CSL = kernel sparse (bank-reordered words)",
        color: RGBColor(213, 94, 0),
        dash: None,
    },
    KStyle {
        kernel: "sparse_plain",
        label: "Tiled-CSL, row order",
        note: "Tiled-CSL, row order = kernel sparse_plain",
        color: RGBColor(0, 158, 115),
        dash: None,
    },
    KStyle {
        kernel: "bitmap",
        label: "bitmap",
        note: "bitmap = kernel bitmap (the bitmap format)",
        color: RGBColor(204, 121, 167),
        dash: None,
    },
];

/// The sparse formats compared in the speedup picture: Tiled-CSL (`sparse`) and bitmap.
const FORMATS: [&str; 2] = ["sparse", "bitmap"];

/// The style of `kernel`, None if it is not plotted.
fn style(kernel: &str) -> Option<&'static KStyle> {
    KSTYLES.iter().find(|k| k.kernel == kernel)
}

/// One usable result row.
struct Row {
    device: String,
    driver: String,
    dtype: String,
    m: u64,
    k: u64,
    n: u64,
    /// Sparsity in percent, rounded to 0.1 % and stored ×10 so that it can be a map key.
    sp10: i64,
    pattern: String,
    kernel: String,
    pct_copy_bw: f64,
    speedup: f64,
}

struct Data {
    rows: Vec<Row>,
    failed: usize,
}

fn parse_csv(path: &Path) -> Result<Data> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (_, header) = lines.next().context("empty CSV")?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let need = |name: &str| col(name).with_context(|| format!("CSV header has no `{name}` column: {header}"));
    let (c_dev, c_dtype, c_m, c_k, c_n) = (need("device")?, need("dtype")?, need("m")?, need("k")?, need("n")?);
    let (c_sp, c_kern, c_pct, c_spd) = (need("sparsity")?, need("kernel")?, need("pct_copy_bw")?, need("speedup_vs_cublas")?);
    // Older result files have no driver / pattern / status columns: then "?", uniform, ok.
    let (c_drv, c_pat, c_status) = (col("driver"), col("pattern"), col("status"));

    let (mut rows, mut failed, mut bad, mut other_kernel) = (Vec::new(), 0usize, 0usize, BTreeSet::new());
    for (lineno, line) in lines {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != cols.len() {
            eprintln!("warning: line {}: {} fields, header has {}; skipped", lineno + 1, f.len(), cols.len());
            bad += 1;
            continue;
        }
        if c_status.is_some_and(|c| !f[c].eq_ignore_ascii_case("ok")) {
            failed += 1;
            continue;
        }
        if style(f[c_kern]).is_none() {
            other_kernel.insert(f[c_kern].to_string());
            continue;
        }
        let parsed = (|| -> Result<Row> {
            let sp: f64 = f[c_sp].parse()?;
            // Fractions (0.9) or percent (90) both accepted.
            let sp_pct = if sp <= 1.0 { sp * 100.0 } else { sp };
            Ok(Row {
                device: f[c_dev].to_string(),
                driver: c_drv.map_or(String::new(), |c| f[c].to_string()),
                dtype: f[c_dtype].to_string(),
                m: f[c_m].parse()?,
                k: f[c_k].parse()?,
                n: f[c_n].parse()?,
                sp10: (sp_pct * 10.0).round() as i64,
                pattern: c_pat.map_or("uniform", |c| f[c]).to_string(),
                kernel: f[c_kern].to_string(),
                pct_copy_bw: f[c_pct].parse()?,
                speedup: f[c_spd].parse()?,
            })
        })();
        match parsed {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("warning: line {}: {e}; skipped", lineno + 1);
                bad += 1;
            }
        }
    }
    println!("{}: {} rows used, {} excluded (status FAIL), {} malformed", path.display(), rows.len(), failed, bad);
    if !other_kernel.is_empty() {
        println!("ignored kernels: {}", other_kernel.into_iter().collect::<Vec<_>>().join(", "));
    }
    Ok(Data { rows, failed })
}

/// Geometric mean of the positive finite values (None if there are none).
fn geomean(xs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (mut s, mut c) = (0.0, 0usize);
    for x in xs.into_iter().filter(|x| x.is_finite() && *x > 0.0) {
        s += x.ln();
        c += 1;
    }
    (c > 0).then(|| (s / c as f64).exp())
}

/// Geometric mean over shapes of `value`, after first taking the geometric mean of repeated
/// rows of the same shape (so every shape weighs the same). Returns (mean, number of shapes).
fn mean_over_shapes<'a>(rows: impl IntoIterator<Item = &'a Row>, value: impl Fn(&Row) -> f64) -> Option<(f64, usize)> {
    let mut per_shape: BTreeMap<(u64, u64), Vec<f64>> = BTreeMap::new();
    for r in rows {
        per_shape.entry((r.m, r.k)).or_default().push(value(r));
    }
    let shape_means: Vec<f64> = per_shape.into_values().filter_map(geomean).collect();
    let n = shape_means.len();
    geomean(shape_means).map(|g| (g, n))
}

fn unique<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let set: BTreeSet<&str> = it.filter(|s| !s.is_empty()).collect();
    set.into_iter().collect::<Vec<_>>().join(" / ")
}

fn x_range(sps: &BTreeSet<i64>) -> (f64, f64) {
    let lo = *sps.first().unwrap() as f64 / 10.0;
    let hi = *sps.last().unwrap() as f64 / 10.0;
    let pad = ((hi - lo) * 0.06).max(2.0);
    (lo - pad, hi + pad)
}

/// Columns and rows of a grid of `panels` panels, at most 3 a row.
fn grid_of(panels: usize) -> (usize, usize) {
    let cols = panels.clamp(1, 3);
    (cols, panels.div_ceil(cols))
}

/// The notes of `styles` ("Tiled-CSL = kernel sparse …") joined into one line.
fn notes_line(styles: &[&KStyle]) -> String {
    styles.iter().map(|k| k.note).filter(|n| !n.is_empty()).collect::<Vec<_>>().join("  ·  ")
}

/// A legend strip centred on (`cx`, `y`): per item a line sample (dashed for flat kernels,
/// with a dot otherwise) in the kernel's colour, then the label.
fn draw_legend(area: &DrawingArea<BitMapBackend<'_>, Shift>, cx: i32, y: i32, items: &[(&str, &KStyle)]) -> Result<()> {
    const SAMPLE: i32 = 36;
    const GAP: i32 = 44;
    let font = (SANS, 19).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    let mut widths = Vec::with_capacity(items.len());
    for (label, _) in items {
        widths.push(area.estimate_text_size(label, &font)?.0 as i32);
    }
    let total = widths.iter().map(|w| SAMPLE + 10 + w).sum::<i32>() + GAP * (items.len() as i32 - 1);
    let mut x = cx - total / 2;
    for (&(label, ks), w) in items.iter().zip(&widths) {
        let st = ks.color.stroke_width(3);
        match ks.dash {
            Some((dash, gap)) => {
                for x in (x..x + SAMPLE).step_by((dash + gap) as usize) {
                    area.draw(&PathElement::new(vec![(x, y), (x + dash as i32, y)], st))?;
                }
            }
            None => {
                area.draw(&PathElement::new(vec![(x, y), (x + SAMPLE, y)], st))?;
                area.draw(&Circle::new((x + SAMPLE / 2, y), 5, ks.color.filled()))?;
            }
        }
        area.draw_text(label, &font, (x + SAMPLE + 10, y))?;
        x += SAMPLE + 10 + w + GAP;
    }
    Ok(())
}

/// One panel of a plot: the chart for token count `n`, sparsity (%) over `x` against
/// `0..y1`, its mesh drawn with `y_desc` and y labels of `y_digits` decimals.
fn panel_chart<'a, 'b>(
    cell: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    n: impl std::fmt::Display,
    x: (f64, f64),
    y1: f64,
    y_desc: &str,
    y_digits: usize,
) -> Result<ChartContext<'a, BitMapBackend<'b>, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>> {
    let mut chart = ChartBuilder::on(cell)
        .caption(format!("N = {n}"), (SANS, 22))
        .margin(12)
        .margin_right(25)
        .x_label_area_size(50)
        .y_label_area_size(65)
        .build_cartesian_2d(x.0..x.1, 0.0..y1)?;
    chart
        .configure_mesh()
        .x_desc("Sparsity (%)")
        .y_desc(y_desc)
        .axis_desc_style((SANS, 18))
        .label_style((SANS, 15))
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.y_digits$}"))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    Ok(chart)
}

/// Speedup over cuBLAS of each sparse format's kernel (`FORMATS`) vs sparsity, one panel per
/// N, one line per format.
fn plot_speedup(d: &Data, out: &Path, device: &str, dtype: &str, driver: &str) -> Result<Option<PathBuf>> {
    let rows: Vec<&Row> =
        d.rows.iter().filter(|r| FORMATS.contains(&r.kernel.as_str()) && r.pattern == "uniform" && r.sp10 > 0).collect();
    if rows.is_empty() {
        println!("speedup_vs_sparsity.png: skipped (no ok `sparse` / `bitmap` rows with pattern `uniform`)");
        return Ok(None);
    }
    let ns: BTreeSet<u64> = rows.iter().map(|r| r.n).collect();
    let sps: BTreeSet<i64> = rows.iter().map(|r| r.sp10).collect();
    let shapes: BTreeSet<(u64, u64)> = rows.iter().map(|r| (r.m, r.k)).collect();
    // The formats that have rows, in `FORMATS` order.
    let formats: Vec<&KStyle> =
        FORMATS.iter().filter(|f| rows.iter().any(|r| r.kernel == **f)).filter_map(|f| style(f)).collect();
    /// (sparsity %, geomean speedup, shapes averaged)
    type Point = (f64, f64, usize);
    // series[n] = [(format, its points)]
    let mut series: BTreeMap<u64, Vec<(&KStyle, Vec<Point>)>> = BTreeMap::new();
    for &n in &ns {
        for &ks in &formats {
            let pts: Vec<Point> = sps
                .iter()
                .filter_map(|&s| {
                    mean_over_shapes(rows.iter().copied().filter(|r| r.kernel == ks.kernel && r.n == n && r.sp10 == s), |r| {
                        r.speedup
                    })
                    .map(|(g, c)| (s as f64 / 10.0, g, c))
                })
                .collect();
            if !pts.is_empty() {
                series.entry(n).or_default().push((ks, pts));
            }
        }
    }
    if series.is_empty() {
        println!("speedup_vs_sparsity.png: skipped (no positive speedups)");
        return Ok(None);
    }

    println!("\nspeedup over cuBLAS (geomean over shapes, uniform):");
    print!("{:>10}  {:<22}", "sparsity", "format");
    for n in series.keys() {
        print!("{:>9}", format!("N={n}"));
    }
    println!();
    for &s in &sps {
        for ks in &formats {
            print!("{:>9.0}%  {:<22}", s as f64 / 10.0, ks.label);
            for lines in series.values() {
                let pt = lines
                    .iter()
                    .find(|(k, _)| k.kernel == ks.kernel)
                    .and_then(|(_, pts)| pts.iter().find(|p| (p.0 * 10.0).round() as i64 == s));
                match pt {
                    Some(p) => print!("{:>8.2}×", p.1),
                    None => print!("{:>9}", "-"),
                }
            }
            println!();
        }
    }
    let incomplete = series.values().flatten().flat_map(|(_, pts)| pts).filter(|p| p.2 < shapes.len()).count();
    if incomplete > 0 {
        println!("note: {incomplete} point(s) average fewer than all {} shapes (missing or FAIL rows)", shapes.len());
    }

    let (cols, nrows) = grid_of(series.len());
    let (w, title_h, panel_h) = ((500 * cols as u32).max(1100), 150u32, 430u32);
    let path = out.join("speedup_vs_sparsity.png");
    let root = BitMapBackend::new(&path, (w, title_h + panel_h * nrows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, grid) = root.split_vertically(title_h);
    let center = Pos::new(HPos::Center, VPos::Top);
    let cx = w as i32 / 2;
    top.draw_text(
        &format!("Sparse formats: speedup over cuBLAS — {device}"),
        &(SANS, 28).into_font().color(&BLACK).pos(center),
        (cx, 10),
    )?;
    let grey = (SANS, 16).into_font().color(&RGBColor(80, 80, 80)).pos(center);
    top.draw_text(
        &format!(
            "{dtype}, uniform sparsity, geometric mean over {} shapes (m×k); driver {driver}; {} FAIL rows excluded",
            shapes.len(),
            d.failed
        ),
        &grey,
        (cx, 48),
    )?;
    top.draw_text(&notes_line(&formats), &grey, (cx, 72))?;
    let cublas = style("cublas").expect("cublas has a style");
    let mut legend = vec![("cuBLAS (1.0×)", cublas)];
    legend.extend(formats.iter().map(|&k| (k.label, k)));
    draw_legend(&top, cx, 118, &legend)?;

    let (x0, x1) = x_range(&sps);
    let ymax = series.values().flatten().flat_map(|(_, pts)| pts).map(|p| p.1).fold(1.0f64, f64::max);
    let y1 = (ymax * 1.12).max(1.25);
    let cells = grid.split_evenly((nrows, cols));
    for ((n, lines), cell) in series.iter().zip(&cells) {
        let mut chart = panel_chart(cell, *n, (x0, x1), y1, "Speedup over cuBLAS (×)", 1)?;
        let (dash, gap) = cublas.dash.expect("cuBLAS is drawn dashed");
        chart.draw_series(DashedLineSeries::new(vec![(x0, 1.0), (x1, 1.0)], dash, gap, cublas.color.stroke_width(2)))?;
        for (ks, pts) in lines {
            chart.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), ks.color.stroke_width(3)))?;
            chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 5, ks.color.filled())))?;
        }
    }
    // A spare cell (e.g. 5 panels on a 2×3 grid) explains the metric.
    if let Some(cell) = cells.get(series.len()) {
        let notes = [
            "How to read:",
            "• speedup = cuBLAS time ÷ kernel time,",
            "  both on the same pruned weight;",
            "  above the dashed 1.0 line a format",
            "  beats dense cuBLAS.",
            "• Each point: geometric mean over shapes of",
            "  the ok rows (FAIL rows excluded).",
        ];
        for (i, line) in notes.iter().enumerate() {
            let size = if i == 0 { 21 } else { 18 };
            cell.draw_text(line, &(SANS, size).into_font().color(&RGBColor(60, 60, 60)), (40, 50 + 32 * i as i32))?;
        }
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path.clone()))
}

/// % of copy bandwidth per kernel vs sparsity, one panel per N.
fn plot_roofline(d: &Data, out: &Path, device: &str, dtype: &str) -> Result<Option<PathBuf>> {
    let sparse_rows =
        |r: &&Row| style(&r.kernel).is_some_and(|k| k.dash.is_none()) && r.pattern == "uniform" && r.sp10 > 0;
    let sps: BTreeSet<i64> = d.rows.iter().filter(sparse_rows).map(|r| r.sp10).collect();
    let ns: BTreeSet<u64> = d.rows.iter().filter(sparse_rows).map(|r| r.n).collect();
    if sps.is_empty() || ns.is_empty() {
        println!("roofline_pct.png: skipped (no ok sparse rows with pattern `uniform`)");
        return Ok(None);
    }
    let shapes: BTreeSet<(u64, u64)> = d.rows.iter().filter(sparse_rows).map(|r| (r.m, r.k)).collect();
    // Dense kernels: only shapes that also have sparse rows, so both average the same shapes.
    let in_scope = |r: &Row| shapes.contains(&(r.m, r.k));

    // For each N (that has sparse rows): kernel -> points (sparsity %, mean pct) ; flat
    // kernels: one value.
    struct Panel {
        n: u64,
        lines: Vec<(&'static KStyle, Vec<(f64, f64)>)>,
        flats: Vec<(&'static KStyle, f64)>,
    }
    let mut panels = Vec::new();
    let mut ymax = 100.0f64;
    println!("\n% of copy bandwidth (geomean over shapes; sparse kernels: uniform pattern):");
    for &n in &ns {
        let mut p = Panel { n, lines: Vec::new(), flats: Vec::new() };
        for ks in &KSTYLES {
            let of_k = || d.rows.iter().filter(move |r| r.kernel == ks.kernel && r.n == n && in_scope(r));
            if ks.dash.is_some() {
                if let Some((g, _)) = mean_over_shapes(of_k(), |r| r.pct_copy_bw) {
                    p.flats.push((ks, g));
                    ymax = ymax.max(g);
                    println!("  N={n:<3} {:<13} {g:5.1}%  (all sparsities)", ks.kernel);
                }
            } else {
                let pts: Vec<(f64, f64)> = sps
                    .iter()
                    .filter_map(|&s| {
                        mean_over_shapes(of_k().filter(|r| r.pattern == "uniform" && r.sp10 == s), |r| r.pct_copy_bw)
                            .map(|(g, _)| (s as f64 / 10.0, g))
                    })
                    .collect();
                if !pts.is_empty() {
                    ymax = pts.iter().map(|p| p.1).fold(ymax, f64::max);
                    let txt: Vec<String> = pts.iter().map(|(s, g)| format!("{s:.0}%:{g:.1}")).collect();
                    println!("  N={n:<3} {:<13} {}", ks.kernel, txt.join("  "));
                    p.lines.push((ks, pts));
                }
            }
        }
        if !p.lines.is_empty() {
            panels.push(p);
        }
    }
    if panels.is_empty() {
        println!("roofline_pct.png: skipped (no positive % of copy bandwidth)");
        return Ok(None);
    }
    // The kernels drawn in some panel, in legend order.
    let drawn: Vec<&KStyle> = KSTYLES
        .iter()
        .filter(|k| {
            panels.iter().any(|p| p.lines.iter().any(|l| l.0.kernel == k.kernel) || p.flats.iter().any(|f| f.0.kernel == k.kernel))
        })
        .collect();

    let (cols, nrows) = grid_of(panels.len());
    let (w, title_h, panel_h) = ((500 * cols as u32).max(1100), 185u32, 430u32);
    let path = out.join("roofline_pct.png");
    let root = BitMapBackend::new(&path, (w, title_h + panel_h * nrows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, grid) = root.split_vertically(title_h);
    let center = Pos::new(HPos::Center, VPos::Top);
    let cx = w as i32 / 2;
    top.draw_text(
        &format!("Bandwidth efficiency: % of measured copy bandwidth — {device}"),
        &(SANS, 28).into_font().color(&BLACK).pos(center),
        (cx, 10),
    )?;
    let grey = (SANS, 16).into_font().color(&RGBColor(80, 80, 80)).pos(center);
    top.draw_text(
        &format!(
            "{dtype}; each point/line: geometric mean over {} shapes (m×k); {} FAIL rows excluded",
            shapes.len(),
            d.failed
        ),
        &grey,
        (cx, 48),
    )?;
    top.draw_text(
        "sparse kernels: uniform pattern, per sparsity  ·  cuBLAS / dense: bytes do not depend on sparsity, \
         so a flat line at the mean over all their rows",
        &grey,
        (cx, 72),
    )?;
    top.draw_text(&notes_line(&drawn), &grey, (cx, 96))?;
    let legend: Vec<(&str, &KStyle)> = drawn.iter().map(|&k| (k.label, k)).collect();
    draw_legend(&top, cx, 150, &legend)?;

    let (x0, x1) = x_range(&sps);
    let y1 = (ymax * 1.08).ceil();
    let cells = grid.split_evenly((nrows, cols));
    for (p, cell) in panels.iter().zip(&cells) {
        let mut chart = panel_chart(cell, p.n, (x0, x1), y1, "% of copy bandwidth", 0)?;
        for &(ks, g) in &p.flats {
            let (dash, gap) = ks.dash.expect("flat kernels are dashed");
            chart.draw_series(DashedLineSeries::new(vec![(x0, g), (x1, g)], dash, gap, ks.color.stroke_width(3)))?;
        }
        for (ks, pts) in &p.lines {
            chart.draw_series(LineSeries::new(pts.iter().copied(), ks.color.stroke_width(3)))?;
            chart.draw_series(pts.iter().map(|&q| Circle::new(q, 5, ks.color.filled())))?;
        }
    }
    // A spare cell (e.g. 5 panels on a 2×3 grid) explains the metric.
    if let Some(cell) = cells.get(panels.len()) {
        let notes = [
            "How to read:".to_string(),
            "• pct_copy_bw = bytes the kernel must move ÷ time,".to_string(),
            "  as % of the measured device-to-device copy".to_string(),
            "  bandwidth (the memory roofline).".to_string(),
            format!("• Dense kernels move the full {dtype} weight;"),
            "  sparse formats move only what they store".to_string(),
            "  (non-zeros and their Tiled-CSL / bitmap index),".to_string(),
            "  so the same % means fewer bytes at higher sparsity.".to_string(),
            "• Each point: geometric mean over shapes of".to_string(),
            "  the ok rows (FAIL rows excluded).".to_string(),
        ];
        for (i, line) in notes.iter().enumerate() {
            let size = if i == 0 { 21 } else { 18 };
            cell.draw_text(line, &(SANS, size).into_font().color(&RGBColor(60, 60, 60)), (40, 50 + 32 * i as i32))?;
        }
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path.clone()))
}

/// Plots of a benchmark CSV (`cargo bench --bench linear -- --csv FILE`): speedup over cuBLAS
/// against sparsity, and the share of the copy bandwidth, one pair per element type.
#[derive(clap::Parser)]
struct Args {
    /// The benchmark's CSV.
    csv: String,
    /// Directory for the plots (`<out>/<dtype>/*.png`).
    out: String,
}

fn main() -> Result<()> {
    let Args { csv, out } = <Args as clap::Parser>::parse();
    let (csv, out) = (&csv, &out);
    plotters::style::register_font(SANS, FontStyle::Normal, FONT).map_err(|_| anyhow::anyhow!("embedded font is not a valid TTF"))?;
    let data = parse_csv(Path::new(csv))?;
    ensure!(!data.rows.is_empty(), "no usable rows in {csv}");
    let out = Path::new(out);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let device = unique(data.rows.iter().map(|r| r.device.as_str()));
    let driver = unique(data.rows.iter().map(|r| r.driver.as_str()));
    let driver = if driver.is_empty() { "?".to_string() } else { driver };
    let dtypes: BTreeSet<String> = data.rows.iter().map(|r| r.dtype.clone()).collect();

    // One pair of plots per element type, in `<out>/<dtype>/`.
    let mut written = Vec::new();
    let failed = data.failed;
    let mut rows = data.rows;
    for dtype in &dtypes {
        let (mine, rest): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|r| &r.dtype == dtype);
        rows = rest;
        let part = Data { rows: mine, failed };
        let dir = out.join(dtype);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        written.extend(plot_speedup(&part, &dir, &device, dtype, &driver)?);
        written.extend(plot_roofline(&part, &dir, &device, dtype)?);
    }
    ensure!(!written.is_empty(), "nothing to plot in {csv}");
    println!();
    for p in &written {
        println!("wrote {}", p.display());
    }
    Ok(())
}
