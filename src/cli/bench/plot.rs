//! `bench --plot`: latency percentiles against throughput, as a PNG.

use anyhow::{bail, Context};

use super::*;

/// Latency percentiles against achieved throughput, one line per target and
/// percentile.
pub(super) fn plot(path: &std::path::Path, runs: &[RunResult]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no font to label the plot with (install fonts-dejavu-core)")?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("the font could not be loaded"))?;
    let open: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.offered_per_sec.is_some())
        .collect();
    if open.is_empty() {
        bail!("--plot needs --rate (latency against throughput)");
    }
    let max_x = open.iter().map(|r| r.per_sec).fold(0.0, f64::max) * 1.05;
    let max_y = open.iter().map(|r| r.p999_ms).fold(0.0, f64::max).max(10.0) * 1.5;
    let min_y = 0.1;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ack latency against throughput (open loop, log scale)",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("acknowledged events/s")
        .y_desc("latency (ms)")
        .label_style(("sans-serif", 14))
        .draw()?;
    /// Which runs, which percentile, the legend, the colour.
    type Series = (&'static str, fn(&RunResult) -> f64, &'static str, RGBColor);
    let series: [Series; 6] = [
        ("service", |r| r.p50_ms, "service p50", BLUE),
        ("service", |r| r.p99_ms, "service p99", RED),
        ("service", |r| r.p999_ms, "service p99.9", MAGENTA),
        ("roof", |r| r.p50_ms, "no-op roof p50", CYAN),
        ("roof", |r| r.p99_ms, "no-op roof p99", GREEN),
        ("roof", |r| r.p999_ms, "no-op roof p99.9", BLACK),
    ];
    for (target, value, label, color) in series {
        let points: Vec<(f64, f64)> = open
            .iter()
            .filter(|r| r.target == target)
            .map(|r| (r.per_sec, value(r).clamp(min_y, max_y)))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
