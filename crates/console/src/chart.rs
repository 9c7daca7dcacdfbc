//! The overview's activity chart: claims and results per hour, as SVG drawn by plotters.

use alchemiscale_store::console::Activity;
use plotters::prelude::*;

use crate::layout::status_colour;

fn rgb(hex: &str) -> RGBColor {
    let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
    RGBColor(c(1), c(3), c(5))
}

/// Claims, successful and failed results per hour, oldest hour on the left.
pub fn activity_svg(activity: &Activity) -> Result<String, String> {
    let hours = activity.claims.len().max(1) as i32;
    let top = activity.claims.iter().chain(&activity.results_ok).chain(&activity.results_failed).copied().max().unwrap_or(0).max(4) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (860, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(56)
            .build_cartesian_2d(-(hours - 1)..0, 0.0..top * 1.1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("hours ago")
            .y_desc("per hour")
            .x_label_formatter(&|h| format!("{}", -h))
            .y_labels(5)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(|e| e.to_string())?;
        let series: [(&str, &[i64], RGBColor); 3] = [
            ("claims", &activity.claims, rgb(status_colour("running"))),
            ("results", &activity.results_ok, rgb(status_colour("complete"))),
            ("failures", &activity.results_failed, rgb(status_colour("error"))),
        ];
        for (label, values, colour) in series {
            let points = values.iter().enumerate().map(|(i, v)| (i as i32 - (hours - 1), *v as f64));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_svg_with_a_line_per_series() {
        let activity = Activity { start: 0, claims: vec![0, 5, 10, 2], results_ok: vec![0, 3, 8, 2], results_failed: vec![0, 1, 0, 0] };
        let svg = activity_svg(&activity).expect("chart");
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.matches("<polyline").count() >= 3, "one polyline per series");
        assert!(svg.contains("hours ago"));
    }
}
