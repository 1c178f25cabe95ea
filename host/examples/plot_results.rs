//! Plot a `benches/linear` results CSV as PNG pictures.
//!
//! `cargo run --release --features plots --example plot_results -- <results.csv> <out_dir>`
//!
//! Writes into `<out_dir>` (created if missing):
//! - `speedup_vs_sparsity.png`: speedup of the `sparse` kernel over cuBLAS against sparsity,
//!   one line per N, geometric mean over the (m×k) shapes, `uniform` pattern only; a dashed
//!   line marks 1.0 (cuBLAS).
//! - `roofline_pct.png`: one panel per N, % of measured copy bandwidth (`pct_copy_bw`) against
//!   sparsity for `sparse` and `sparse_plain` (geometric mean over shapes, `uniform` pattern),
//!   with `cublas` and `dense` as flat dashed lines (their bytes do not depend on sparsity:
//!   geometric mean over shapes of all their rows at that N).
//!
//! Rows whose `status` is not `ok` (i.e. `FAIL`) are left out and counted. Kernels other than
//! `cublas`, `dense`, `sparse`, `sparse_plain` are ignored. The CSV is parsed by hand: a header
//! line naming the columns (any order; extra columns are ignored), then comma-separated rows.
//! Text is drawn with the DejaVu Sans font embedded from `benches/results/fonts/` (license
//! beside it) through plotters' `ab_glyph` feature, so no system font library is needed.
//! Older CSVs without `driver` / `pattern` / `status` columns are read as "?", `uniform`, `ok`.
//!
//! Built only with the `plots` feature (`required-features` in Cargo.toml).

use anyhow::{ensure, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

static FONT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results/fonts/DejaVuSans.ttf"));
const SANS: &str = "sans-serif";

const KERNELS: [&str; 4] = ["cublas", "dense", "sparse", "sparse_plain"];

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
        if !KERNELS.contains(&f[c_kern]) {
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

/// Distinct, colour-blind-friendly line colours (Okabe–Ito, then a few extra).
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(0, 0, 0),
];

fn x_range(sps: &BTreeSet<i64>) -> (f64, f64) {
    let lo = *sps.first().unwrap() as f64 / 10.0;
    let hi = *sps.last().unwrap() as f64 / 10.0;
    let pad = ((hi - lo) * 0.06).max(2.0);
    (lo - pad, hi + pad)
}

/// Speedup of `sparse` over cuBLAS vs sparsity, one line per N.
fn plot_speedup(d: &Data, out: &Path, device: &str, dtype: &str, driver: &str) -> Result<Option<PathBuf>> {
    let rows: Vec<&Row> = d.rows.iter().filter(|r| r.kernel == "sparse" && r.pattern == "uniform" && r.sp10 > 0).collect();
    if rows.is_empty() {
        println!("speedup_vs_sparsity.png: skipped (no ok `sparse` rows with pattern `uniform`)");
        return Ok(None);
    }
    let ns: BTreeSet<u64> = rows.iter().map(|r| r.n).collect();
    let sps: BTreeSet<i64> = rows.iter().map(|r| r.sp10).collect();
    let shapes: BTreeSet<(u64, u64)> = rows.iter().map(|r| (r.m, r.k)).collect();
    // series[n] = [(sparsity %, geomean speedup, shapes averaged)]
    let mut series: BTreeMap<u64, Vec<(f64, f64, usize)>> = BTreeMap::new();
    for &n in &ns {
        for &s in &sps {
            if let Some((g, c)) = mean_over_shapes(rows.iter().copied().filter(|r| r.n == n && r.sp10 == s), |r| r.speedup) {
                series.entry(n).or_default().push((s as f64 / 10.0, g, c));
            }
        }
    }

    println!("\nsparse speedup over cuBLAS (geomean over shapes, uniform):");
    print!("{:>10}", "sparsity");
    for n in &ns {
        print!("{:>9}", format!("N={n}"));
    }
    println!();
    for &s in &sps {
        print!("{:>9.0}%", s as f64 / 10.0);
        for n in &ns {
            match series[n].iter().find(|p| (p.0 * 10.0).round() as i64 == s) {
                Some(p) => print!("{:>8.2}×", p.1),
                None => print!("{:>9}", "-"),
            }
        }
        println!();
    }
    let incomplete = series.values().flatten().filter(|p| p.2 < shapes.len()).count();
    if incomplete > 0 {
        println!("note: {incomplete} point(s) average fewer than all {} shapes (missing or FAIL rows)", shapes.len());
    }

    let path = out.join("speedup_vs_sparsity.png");
    let root = BitMapBackend::new(&path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(78);
    let center = Pos::new(HPos::Center, VPos::Top);
    top.draw_text(
        &format!("Sparse kernel speedup over cuBLAS — {device}"),
        &(SANS, 28).into_font().color(&BLACK).pos(center),
        (550, 10),
    )?;
    top.draw_text(
        &format!(
            "{dtype}, uniform sparsity, geometric mean over {} shapes (m×k); driver {driver}; {} FAIL rows excluded",
            shapes.len(),
            d.failed
        ),
        &(SANS, 17).into_font().color(&RGBColor(80, 80, 80)).pos(center),
        (550, 48),
    )?;

    let (x0, x1) = x_range(&sps);
    let ymax = series.values().flatten().map(|p| p.1).fold(1.0f64, f64::max);
    let y1 = (ymax * 1.12).max(1.25);
    let mut chart = ChartBuilder::on(&body)
        .margin_left(20)
        .margin_right(30)
        .margin_top(10)
        .margin_bottom(15)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, 0.0..y1)?;
    chart
        .configure_mesh()
        .x_desc("Sparsity (%)")
        .y_desc("Speedup over cuBLAS (×)")
        .axis_desc_style((SANS, 21))
        .label_style((SANS, 17))
        .x_labels(12)
        .y_labels(12)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;

    let base = BLACK.mix(0.75).stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(vec![(x0, 1.0), (x1, 1.0)], 10, 7, base))?
        .label("cuBLAS (1.0×)")
        .legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(-4, 0), (4, 0)], base)
                + PathElement::new(vec![(9, 0), (17, 0)], base)
        });
    for (i, (n, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line = color.stroke_width(3);
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), line))?
            .label(format!("N = {n}"))
            .legend(move |(x, y)| PathElement::new(vec![(x - 4, y), (x + 16, y)], line));
        chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 5, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .margin(15)
        .legend_area_size(30)
        .label_font((SANS, 18))
        .background_style(WHITE.mix(0.92))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path.clone()))
}

/// How each kernel is drawn in the roofline picture.
struct KStyle {
    kernel: &'static str,
    label: &'static str,
    color: RGBColor,
    /// Flat dashed line at the mean over all sparsities (dense kernels) or a line per sparsity.
    flat: bool,
}

const KSTYLES: [KStyle; 4] = [
    KStyle { kernel: "cublas", label: "cuBLAS (dense)", color: RGBColor(0, 0, 0), flat: true },
    KStyle { kernel: "dense", label: "dense (ours)", color: RGBColor(0, 114, 178), flat: true },
    KStyle { kernel: "sparse", label: "sparse", color: RGBColor(213, 94, 0), flat: false },
    KStyle { kernel: "sparse_plain", label: "sparse_plain", color: RGBColor(0, 158, 115), flat: false },
];

/// % of copy bandwidth per kernel vs sparsity, one panel per N.
fn plot_roofline(d: &Data, out: &Path, device: &str, dtype: &str) -> Result<Option<PathBuf>> {
    let sparse_rows = |r: &&Row| !(KSTYLES.iter().any(|k| k.flat && k.kernel == r.kernel)) && r.pattern == "uniform" && r.sp10 > 0;
    let sps: BTreeSet<i64> = d.rows.iter().filter(sparse_rows).map(|r| r.sp10).collect();
    let ns: BTreeSet<u64> = d.rows.iter().map(|r| r.n).collect();
    if sps.is_empty() || ns.is_empty() {
        println!("roofline_pct.png: skipped (no ok sparse rows with pattern `uniform`)");
        return Ok(None);
    }
    let shapes: BTreeSet<(u64, u64)> = d.rows.iter().filter(sparse_rows).map(|r| (r.m, r.k)).collect();
    // Dense kernels: only shapes that also have sparse rows, so both average the same shapes.
    let in_scope = |r: &Row| shapes.contains(&(r.m, r.k));

    // For each N: kernel -> points (sparsity %, mean pct) ; flat kernels: one value.
    struct Panel {
        n: u64,
        lines: Vec<(usize, Vec<(f64, f64)>)>,
        flats: Vec<(usize, f64)>,
    }
    let mut panels = Vec::new();
    let mut ymax = 100.0f64;
    println!("\n% of copy bandwidth (geomean over shapes; sparse kernels: uniform pattern):");
    for &n in &ns {
        let mut p = Panel { n, lines: Vec::new(), flats: Vec::new() };
        for (ki, ks) in KSTYLES.iter().enumerate() {
            let of_k = || d.rows.iter().filter(move |r| r.kernel == ks.kernel && r.n == n && in_scope(r));
            if ks.flat {
                if let Some((g, _)) = mean_over_shapes(of_k(), |r| r.pct_copy_bw) {
                    p.flats.push((ki, g));
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
                    p.lines.push((ki, pts));
                }
            }
        }
        panels.push(p);
    }

    let cols = panels.len().min(3);
    let nrows = panels.len().div_ceil(cols);
    let (w, title_h, panel_h) = ((500 * cols as u32).max(1100), 160u32, 430u32);
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
    // Legend strip, centred.
    let item_w = 230i32;
    let lx0 = cx - item_w * KSTYLES.len() as i32 / 2;
    for (i, ks) in KSTYLES.iter().enumerate() {
        let x = lx0 + i as i32 * item_w;
        let y = 130;
        if ks.flat {
            let (dash, step) = if ks.kernel == "cublas" { (14, 22) } else { (6, 12) };
            for x in (x..x + 36).step_by(step) {
                top.draw(&PathElement::new(vec![(x, y), (x + dash, y)], ks.color.stroke_width(3)))?;
            }
        } else {
            top.draw(&PathElement::new(vec![(x, y), (x + 36, y)], ks.color.stroke_width(3)))?;
            top.draw(&Circle::new((x + 18, y), 5, ks.color.filled()))?;
        }
        top.draw_text(ks.label, &(SANS, 19).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center)), (x + 46, y))?;
    }

    let (x0, x1) = x_range(&sps);
    let y1 = (ymax * 1.08).ceil();
    let cells = grid.split_evenly((nrows, cols));
    for (p, cell) in panels.iter().zip(&cells) {
        let mut chart = ChartBuilder::on(cell)
            .caption(format!("N = {}", p.n), (SANS, 22))
            .margin(12)
            .margin_right(25)
            .x_label_area_size(50)
            .y_label_area_size(65)
            .build_cartesian_2d(x0..x1, 0.0..y1)?;
        chart
            .configure_mesh()
            .x_desc("Sparsity (%)")
            .y_desc("% of copy bandwidth")
            .axis_desc_style((SANS, 18))
            .label_style((SANS, 15))
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(BLACK.mix(0.04))
            .draw()?;
        for &(ki, g) in &p.flats {
            let st = KSTYLES[ki].color.stroke_width(3);
            // Different dash lengths keep cuBLAS and dense apart where they nearly coincide.
            let (dash, gap) = if KSTYLES[ki].kernel == "cublas" { (14, 8) } else { (6, 6) };
            chart.draw_series(DashedLineSeries::new(vec![(x0, g), (x1, g)], dash, gap, st))?;
        }
        for (ki, pts) in &p.lines {
            let c = KSTYLES[*ki].color;
            chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(3)))?;
            chart.draw_series(pts.iter().map(|&q| Circle::new(q, 5, c.filled())))?;
        }
    }
    // A spare cell (e.g. 5 panels on a 2×3 grid) explains the metric.
    if let Some(cell) = cells.get(panels.len()) {
        let notes = [
            "How to read:",
            "• pct_copy_bw = bytes the kernel must move ÷ time,",
            "  as % of the measured device-to-device copy",
            "  bandwidth (the memory roofline).",
            "• Dense kernels move the full f16 weight;",
            "  sparse kernels move only the stored non-zeros,",
            "  so the same % means fewer bytes at higher sparsity.",
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
