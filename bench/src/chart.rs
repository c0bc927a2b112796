//! A hand-written SVG line chart: latency (log scale) against offered load (log scale),
//! one colour per peer, p50 solid and p99 dashed.

use std::fmt::Write as _;

/// One series point: offered load (ops/s), p50 and p99 (µs).
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Offered load.
    pub offered: f64,
    /// Achieved throughput.
    pub achieved: f64,
    /// Median latency (µs).
    pub p50_us: f64,
    /// 99th percentile (µs).
    pub p99_us: f64,
}

fn colour(i: usize) -> &'static str {
    [
        "#d62728", "#1f77b4", "#2ca02c", "#7f7f7f", "#9467bd", "#ff7f0e",
    ][i % 6]
}

fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut v = Vec::new();
    let mut d = 10f64.powf(lo.log10().floor());
    while d <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let t = d * m;
            if t >= lo * 0.9999 && t <= hi * 1.0001 {
                v.push(t);
            }
        }
        d *= 10.0;
    }
    v
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Renders the chart. `series` is (name, points sorted by offered load).
pub fn render(title: &str, subtitle: &str, series: &[(String, Vec<Point>)]) -> String {
    let (w, h) = (900.0, 560.0);
    let (l, r, t, b) = (80.0, 170.0, 70.0, 60.0);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in pts {
        xmin = xmin.min(p.offered);
        xmax = xmax.max(p.offered);
        ymin = ymin.min(p.p50_us.max(0.1));
        ymax = ymax.max(p.p99_us.max(0.1));
    }
    if xmin > xmax {
        (xmin, xmax, ymin, ymax) = (1.0, 10.0, 1.0, 10.0);
    }
    let xmin = 10f64.powf(xmin.log10().floor());
    let xmax = 10f64.powf(xmax.log10().ceil()).max(xmin * 10.0);
    let ymin = 10f64.powf(ymin.log10().floor());
    let ymax = 10f64.powf(ymax.log10().ceil()).max(ymin * 10.0);
    let px = |x: f64| l + (x.log10() - xmin.log10()) / (xmax.log10() - xmin.log10()) * (w - l - r);
    let py =
        |y: f64| h - b - (y.log10() - ymin.log10()) / (ymax.log10() - ymin.log10()) * (h - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="16" font-weight="bold">{}</text>"#,
        l,
        esc(title)
    );
    for (i, line) in subtitle.lines().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#555">{}</text>"##,
            l,
            40 + 15 * i,
            esc(line)
        );
    }
    for x in log_ticks(xmin, xmax) {
        let xx = px(x);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{t}" x2="{xx:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            h - b,
            h - b + 16.0,
            human(x)
        );
    }
    for y in log_ticks(ymin, ymax) {
        let yy = py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - r,
            l - 6.0,
            yy + 4.0,
            human(y)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{l}" y="{t}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
        w - l - r,
        h - t - b
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered load (requests/s, log)</text>"#,
        l + (w - l - r) / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20,{:.1}) rotate(-90)" text-anchor="middle">latency (µs, log)</text>"#,
        t + (h - t - b) / 2.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let c = colour(i);
        for (dash, pick) in [("", 0), (r#" stroke-dasharray="6,4""#, 1)] {
            let path: Vec<String> = points
                .iter()
                .map(|p| {
                    let y = if pick == 0 { p.p50_us } else { p.p99_us };
                    format!("{:.1},{:.1}", px(p.offered), py(y.max(ymin)))
                })
                .collect();
            if path.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{}"/>"#,
                path.join(" ")
            );
            for p in points {
                let y = if pick == 0 { p.p50_us } else { p.p99_us };
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"><title>{name}: offered {:.0}/s, achieved {:.0}/s, p50 {:.1} µs, p99 {:.1} µs</title></circle>"#,
                    px(p.offered),
                    py(y.max(ymin)),
                    p.offered,
                    p.achieved,
                    p.p50_us,
                    p.p99_us
                );
            }
        }
        let ly = t + 16.0 + i as f64 * 20.0;
        let lx = w - r + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            esc(name)
        );
    }
    let ly = t + 16.0 + series.len() as f64 * 20.0 + 10.0;
    let lx = w - r + 14.0;
    let _ = writeln!(
        s,
        r##"<text x="{lx}" y="{ly}" fill="#555">solid: p50</text><text x="{lx}" y="{:.1}" fill="#555">dashed: p99</text>"##,
        ly + 16.0
    );
    s.push_str("</svg>\n");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
