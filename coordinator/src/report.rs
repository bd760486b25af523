//! `report.html`: one self-contained page (figures embedded as inline SVG
//! drawn with plotters, CT overlays as base64 PNG) with the confusion
//! matrix, ROC curves, the Bland–Altman plot of lesion volume, the
//! distribution of lung involvement, overlays of the predicted and true
//! masks for the best, median and worst scans by Dice, and the failed scans.
//! It is built from result rows alone (plus, for the overlays, the images
//! the manifest names and the masks under the run's folder), so `multir
//! report` on collected Parquet tables gives the same page as the run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::anyhow;
use base64::Engine;
use multir_common::io;
use multir_common::manifest::Manifest;
use multir_common::metrics::cohort::roc_curve;
use multir_common::results::store::mask_path;
use multir_common::results::summary::{CohortSummary, Distribution};
use multir_common::results::{LesionRow, ScanRow, Status};
use multir_common::volume::Volume;
use plotters::prelude::*;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// Series colours (colour-blind safe, Okabe–Ito).
const COLOURS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a figure: {e:?}")
}

/// One-vs-rest ROC curve of every class.
fn roc_svg(scans: &[ScanRow], classes: &[String]) -> anyhow::Result<Option<String>> {
    let rows: Vec<&ScanRow> = scans
        .iter()
        .filter(|r| r.label.is_some() && r.probabilities.len() == classes.len())
        .collect();
    let mut curves = Vec::new();
    for (c, name) in classes.iter().enumerate() {
        let scores: Vec<f64> = rows.iter().map(|r| r.probabilities[c]).collect();
        let pos: Vec<bool> = rows
            .iter()
            .map(|r| r.label.as_deref() == Some(name))
            .collect();
        if let Some(points) = roc_curve(&scores, &pos)? {
            curves.push((name.clone(), points));
        }
    }
    if curves.is_empty() {
        return Ok(None);
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (420, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("ROC, one class against the rest", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("false-positive rate")
            .y_desc("true-positive rate")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                &RGBColor(180, 180, 180),
            ))
            .map_err(plot_err)?;
        for (i, (name, points)) in curves.into_iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(Some(svg))
}

/// Bland–Altman plot of predicted against true lesion volume.
fn bland_altman_svg(scans: &[ScanRow], summary: &CohortSummary) -> anyhow::Result<Option<String>> {
    let Some(ba) = summary
        .segmentation
        .as_ref()
        .and_then(|s| s.volume_agreement.as_ref())
    else {
        return Ok(None);
    };
    let points: Vec<(f64, f64)> = scans
        .iter()
        .filter_map(|r| {
            let (t, p) = (r.volume_truth_ml?, r.lesion_volume_ml?);
            Some(((t + p) / 2.0, p - t))
        })
        .collect();
    let xmax = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let ylim = points
        .iter()
        .map(|p| p.1.abs())
        .chain([ba.loa_low.abs(), ba.loa_high.abs()])
        .fold(1.0, f64::max)
        * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (480, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Bland–Altman, lesion volume", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..xmax, -ylim..ylim)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("mean of predicted and true volume (mL)")
            .y_desc("predicted − true (mL)")
            .draw()
            .map_err(plot_err)?;
        // Lines without a legend box, which would hide points; the page
        // says what they are.
        for (y, colour) in [
            (ba.bias, COLOURS[0]),
            (ba.loa_low, COLOURS[1]),
            (ba.loa_high, COLOURS[1]),
        ] {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, y), (xmax, y)],
                    colour.stroke_width(1),
                ))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, 3, COLOURS[2].filled())),
            )
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(Some(svg))
}

/// Histogram of the percent of lung involved.
fn involvement_svg(scans: &[ScanRow]) -> anyhow::Result<Option<String>> {
    let values: Vec<f64> = scans
        .iter()
        .filter_map(|r| r.lung_involvement_pct)
        .collect();
    if values.is_empty() {
        return Ok(None);
    }
    let max = values.iter().cloned().fold(1.0, f64::max);
    let bins = 20usize;
    let width = max / bins as f64;
    let mut counts = vec![0u32; bins];
    for v in &values {
        counts[((v / width) as usize).min(bins - 1)] += 1;
    }
    let top = *counts.iter().max().unwrap_or(&1) + 1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (480, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Lung involvement", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..max, 0u32..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("lesion volume in the lungs (% of lung volume)")
            .y_desc("scans")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(counts.iter().enumerate().map(|(b, &n)| {
                let x0 = b as f64 * width;
                Rectangle::new([(x0, 0), (x0 + width, n)], COLOURS[0].mix(0.7).filled())
            }))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(Some(svg))
}

/// An axial slice of a CT (lung window) with the true mask outlined in
/// green and the predicted one in red, as PNG bytes. The slice is the one
/// with the most truth (else prediction) voxels, shown in the radiological
/// convention: patient's right on the left, anterior at the top.
fn overlay_png(ct: &Volume, truth: &Volume, pred: &Volume) -> anyhow::Result<(Vec<u8>, usize)> {
    let (ct, _) = ct.to_canonical();
    let (truth, _) = truth.to_canonical();
    let (pred, _) = pred.to_canonical();
    let [ni, nj, nk] = ct.dims();
    let area = |v: &Volume, k: usize| {
        v.data()[k * ni * nj..(k + 1) * ni * nj]
            .iter()
            .filter(|&&x| x > 0.5)
            .count()
    };
    let mut best = (0, 0usize);
    for k in 0..nk {
        let a = area(&truth, k) * 2 + area(&pred, k);
        if a > best.1 {
            best = (k, a);
        }
    }
    let k = if best.1 == 0 { nk / 2 } else { best.0 };
    // Small scans are enlarged (whole pixels) to at least 256 pixels.
    let scale = 256usize.div_ceil(ni.max(nj)).max(1);
    let (w, h) = (ni * scale, nj * scale);
    let inside = |v: &Volume, i: isize, j: isize| {
        i >= 0
            && j >= 0
            && (i as usize) < ni
            && (j as usize) < nj
            && v.get(i as usize, j as usize, k) > 0.5
    };
    let edge = |v: &Volume, i: usize, j: usize| {
        let (i, j) = (i as isize, j as isize);
        inside(v, i, j)
            && !(inside(v, i - 1, j)
                && inside(v, i + 1, j)
                && inside(v, i, j - 1)
                && inside(v, i, j + 1))
    };
    let mut rgb = vec![0u8; w * h * 3];
    for r in 0..nj {
        for c in 0..ni {
            let (i, j) = (ni - 1 - c, nj - 1 - r);
            let hu = ct.get(i, j, k);
            let g = (((hu + 1350.0) / 1500.0).clamp(0.0, 1.0) * 255.0) as u8;
            let px = match (edge(&truth, i, j), edge(&pred, i, j)) {
                (true, true) => [255, 220, 0],
                (true, false) => [0, 220, 80],
                (false, true) => [255, 40, 40],
                _ => [g, g, g],
            };
            for dy in 0..scale {
                for dx in 0..scale {
                    let o = ((r * scale + dy) * w + c * scale + dx) * 3;
                    rgb[o..o + 3].copy_from_slice(&px);
                }
            }
        }
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&rgb)?;
    }
    Ok((png_bytes, k))
}

/// Overlays shown for scans without a truth mask.
const OVERLAYS_WITHOUT_TRUTH: usize = 4;

/// The overlay figure of one scan, or why there is none.
fn overlay_html(row: &ScanRow, what: &str, manifest: &Manifest, root: &Path) -> String {
    let caption = format!(
        "{what}: {} (Dice {}, truth {} mL, predicted {} mL)",
        esc(&row.scan_id),
        num(row.dice, 3),
        num(row.volume_truth_ml, 1),
        num(row.lesion_volume_ml, 1)
    );
    let picture = (|| -> anyhow::Result<String> {
        let entry = manifest
            .get(&row.scan_id)
            .ok_or_else(|| anyhow!("not in the manifest"))?;
        let opts = io::LoadOptions::default();
        let ct = io::load_path(entry.image_path(manifest), &opts)?.volume;
        let pred = io::load_path(mask_path(root, &row.scan_id), &opts)?.volume;
        // Without a truth mask the overlay shows the prediction alone.
        let truth = match entry.mask_path(manifest) {
            Some(p) => io::load_path(p, &opts)?.volume,
            None => pred.with_data(vec![0.0; pred.len()])?,
        };
        let (png, k) = overlay_png(&ct, &truth, &pred)?;
        Ok(format!(
            "<img alt=\"{}\" src=\"data:image/png;base64,{}\"><br><small>axial slice {k}; \
             green: truth, red: prediction, yellow: both</small>",
            esc(&row.scan_id),
            base64::engine::general_purpose::STANDARD.encode(png)
        ))
    })();
    let body = picture.unwrap_or_else(|e| format!("<p>no overlay: {}</p>", esc(&format!("{e:#}"))));
    format!("<figure><figcaption>{caption}</figcaption>{body}</figure>")
}

fn dist_row(name: &str, d: &Option<Distribution>) -> String {
    match d {
        Some(d) => format!(
            "<tr><td>{name}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            d.n, d.mean, d.min, d.median, d.q75, d.max
        ),
        None => format!("<tr><td>{name}</td><td>0</td><td colspan=5>–</td></tr>"),
    }
}

/// The whole page.
pub fn render(
    summary: &CohortSummary,
    scans: &[ScanRow],
    lesions: &[LesionRow],
    manifest: Option<&Manifest>,
    root: &Path,
) -> anyhow::Result<String> {
    let mut h = String::new();
    let w = &mut h;
    writeln!(
        w,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>multir cohort report</title><style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th{{background:#f3f3f3}}td:first-child{{text-align:left}}figure{{display:inline-block;margin:1em}}\
         .figs svg{{margin:0.5em}}.note{{color:#666}}</style></head><body>"
    )?;
    writeln!(w, "<h1>Cohort report</h1>")?;
    writeln!(
        w,
        "<p>{} scans: {} ok, {} errors; {} lesions in {} scans. Classes: {}. \
         <span class=note>multir {}; synthetic-phantom model, not for clinical use unless \
         you trained and validated your own.</span></p>",
        summary.scans,
        summary.ok,
        summary.errors,
        lesions.len(),
        scans
            .iter()
            .filter(|r| r.n_lesions.unwrap_or(0) > 0)
            .count(),
        esc(&summary.classes.join(", ")),
        env!("CARGO_PKG_VERSION")
    )?;

    if let Some(c) = &summary.classification {
        writeln!(w, "<h2>Classification</h2>")?;
        writeln!(
            w,
            "<p>{} labelled scans; accuracy {}, macro F1 {}, macro ROC AUC {}.</p>",
            c.n,
            num(c.accuracy, 3),
            num(c.macro_f1, 3),
            num(c.macro_roc_auc, 3)
        )?;
        write!(
            w,
            "<h3>Confusion matrix</h3><table><tr><th>true \\ predicted</th>"
        )?;
        for name in &c.confusion.classes {
            write!(w, "<th>{}</th>", esc(name))?;
        }
        writeln!(w, "</tr>")?;
        for (t, row) in c.confusion.counts.iter().enumerate() {
            write!(w, "<tr><td>{}</td>", esc(&c.confusion.classes[t]))?;
            for n in row {
                write!(w, "<td>{n}</td>")?;
            }
            writeln!(w, "</tr>")?;
        }
        writeln!(w, "</table>")?;
        writeln!(
            w,
            "<table><tr><th>class</th><th>support</th><th>recall</th><th>precision</th><th>F1</th><th>ROC AUC</th></tr>"
        )?;
        for s in &c.per_class {
            writeln!(
                w,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.class),
                s.support,
                num(s.recall, 3),
                num(s.precision, 3),
                num(s.f1, 3),
                num(s.roc_auc, 3)
            )?;
        }
        writeln!(w, "</table>")?;
        if let Some(svg) = roc_svg(scans, &summary.classes)? {
            writeln!(w, "<div class=figs>{svg}</div>")?;
        }
    }

    if let Some(s) = &summary.segmentation {
        writeln!(w, "<h2>Segmentation</h2>")?;
        writeln!(
            w,
            "<p>{} scans with a truth mask, {} with lesions. Means over those with lesions: \
             Dice {}, Jaccard {}, ASSD {} mm, HD95 {} mm, surface Dice at {} mm {}. \
             Lesion-free truths: {} scans, mean false-positive volume {} mL.</p>",
            s.scans_with_truth,
            s.scans_with_lesions,
            num(s.mean_dice, 3),
            num(s.mean_jaccard, 3),
            num(s.mean_assd_mm, 2),
            num(s.mean_hd95_mm, 2),
            num(s.tolerance_mm, 1),
            num(s.mean_surface_dice, 3),
            s.lesion_free_scans,
            num(s.mean_false_positive_ml_on_lesion_free_scans, 2)
        )?;
        if let Some(svg) = bland_altman_svg(scans, summary)? {
            let ba = s.volume_agreement.as_ref().expect("drawn from it");
            writeln!(
                w,
                "<div class=figs>{svg}<br><small>blue: bias {:.1} mL; orange: limits of \
                 agreement {:.1} to {:.1} mL (bias ± 1.96 SD); {} scans</small></div>",
                ba.bias, ba.loa_low, ba.loa_high, ba.n
            )?;
        }
    }

    writeln!(w, "<h2>Lesion burden</h2>")?;
    writeln!(
        w,
        "<table><tr><th>per scan</th><th>n</th><th>mean</th><th>min</th><th>median</th><th>75th pct</th><th>max</th></tr>"
    )?;
    let q = &summary.quantification;
    for (name, d) in [
        ("lesion volume (mL)", &q.lesion_volume_ml),
        ("lung involvement (%)", &q.lung_involvement_pct),
        ("severity score (0-30)", &q.severity_score),
        ("lesion outside the lungs (mL)", &q.lesion_outside_lungs_ml),
    ] {
        writeln!(w, "{}", dist_row(name, d))?;
    }
    writeln!(w, "</table>")?;
    if let Some(svg) = involvement_svg(scans)? {
        writeln!(w, "<div class=figs>{svg}</div>")?;
    }

    let mut ranked: Vec<&ScanRow> = scans
        .iter()
        .filter(|r| r.dice.is_some() && r.volume_truth_ml.unwrap_or(0.0) > 0.0)
        .collect();
    // Scans without ground truth (real cohorts): the largest predicted
    // lesion loads, where a false lesion would show.
    let mut untruthed: Vec<&ScanRow> = scans
        .iter()
        .filter(|r| r.error.is_none() && r.volume_truth_ml.is_none())
        .collect();
    if !untruthed.is_empty() {
        untruthed.sort_by(|a, b| {
            b.lesion_volume_ml
                .unwrap_or(0.0)
                .total_cmp(&a.lesion_volume_ml.unwrap_or(0.0))
        });
        writeln!(
            w,
            "<h2>Scans without a truth mask, largest predicted lesion volume first</h2>"
        )?;
        match manifest {
            Some(m) => {
                for (n, row) in untruthed.iter().take(OVERLAYS_WITHOUT_TRUTH).enumerate() {
                    writeln!(w, "{}", overlay_html(row, &format!("#{}", n + 1), m, root))?;
                }
            }
            None => writeln!(
                w,
                "<p class=note>No overlays: give the manifest (multir report --manifest) to show CT slices.</p>"
            )?,
        }
    }
    if !ranked.is_empty() {
        ranked.sort_by(|a, b| b.dice.unwrap_or(0.0).total_cmp(&a.dice.unwrap_or(0.0)));
        writeln!(w, "<h2>Best, median and worst segmentations</h2>")?;
        match manifest {
            Some(m) => {
                let picks = [
                    ("best", ranked[0]),
                    ("median", ranked[ranked.len() / 2]),
                    ("worst", ranked[ranked.len() - 1]),
                ];
                for (what, row) in picks {
                    writeln!(w, "{}", overlay_html(row, what, m, root))?;
                }
            }
            None => writeln!(
                w,
                "<p class=note>No overlays: give the manifest (multir report --manifest) to show CT slices.</p>"
            )?,
        }
    }

    let failed: Vec<&ScanRow> = scans.iter().filter(|r| r.status == Status::Error).collect();
    if !failed.is_empty() {
        writeln!(
            w,
            "<h2>Scans with errors ({})</h2><table><tr><th>scan</th><th>error</th></tr>",
            failed.len()
        )?;
        for r in failed.iter().take(200) {
            writeln!(
                w,
                "<tr><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
                esc(&r.scan_id),
                esc(r.error.as_deref().unwrap_or(""))
            )?;
        }
        writeln!(w, "</table>")?;
        if failed.len() > 200 {
            writeln!(
                w,
                "<p class=note>… and {} more in scans.parquet.</p>",
                failed.len() - 200
            )?;
        }
    }
    writeln!(w, "</body></html>")?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use multir_common::volume::Affine;

    #[test]
    fn overlays_are_pngs_of_the_busiest_slice_in_radiological_view() {
        let dims = [8, 6, 4];
        let n = dims.iter().product();
        let ct = Volume::new(vec![-1000.0; n], dims, Affine::identity()).unwrap();
        let mut t = vec![0.0; n];
        // A 3x3 block in slice 2 at high i: the patient's right in RAS+,
        // so the left of the screen in the radiological view.
        for j in 1..4 {
            for i in 4..7 {
                t[i + 8 * (j + 6 * 2)] = 1.0;
            }
        }
        let truth = Volume::new(t, dims, Affine::identity()).unwrap();
        let empty = Volume::new(vec![0.0; n], dims, Affine::identity()).unwrap();
        let (png_bytes, k) = overlay_png(&ct, &truth, &empty).unwrap();
        assert_eq!(k, 2);
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.width, info.height),
            (256, 192),
            "small scans are enlarged"
        );
        // Voxel (i=5, j=2) is inside the block; its neighbour i=4 is an
        // edge: on screen at column 7 - 4 = 3, row 5 - 2 = 3 (x32).
        let px = |c: usize, r: usize| {
            let o = (r * 32 * 256 + c * 32) * 3;
            [buf[o], buf[o + 1], buf[o + 2]]
        };
        let air = (350.0f32 / 1500.0 * 255.0) as u8;
        assert_eq!(px(3, 3), [0, 220, 80], "truth edge in green");
        assert_eq!(px(2, 3), [air; 3], "the block's centre is no edge");
        assert_eq!(
            px(1, 2),
            [0, 220, 80],
            "a corner of the block at i = 6, j = 3"
        );
        assert_eq!(
            px(6, 3),
            [air; 3],
            "i = 1 is empty: the block is on the screen's left"
        );
        assert_eq!(px(7, 0), [air; 3], "air at -1000 HU in the lung window");
    }

    #[test]
    fn html_escapes_scan_ids_and_errors() {
        assert_eq!(esc("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
