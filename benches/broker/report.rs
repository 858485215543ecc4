//! The printed table and the JSON figures.

use super::*;

/// A pooled ratio of `versus_health`, with the range of the rounds' own ratios.
pub(crate) fn with_rounds(figures: &Value, name: &str) -> String {
    let rounds = &figures[format!("rounds_{name}")];
    format!(
        "{:.3}x (rounds {:.2}-{:.2})",
        figures[name].as_f64().unwrap_or(0.0),
        rounds["min"].as_f64().unwrap_or(0.0),
        rounds["max"].as_f64().unwrap_or(0.0)
    )
}

/// A phase's throughput and latency percentiles.
pub(crate) fn summary(p: &mut Phase) -> Value {
    p.latencies.sort_unstable();
    json!({
        "calls_per_second": p.calls as f64 / p.elapsed.as_secs_f64(),
        "p50_us": percentile(&p.latencies, 0.50),
        "p99_us": percentile(&p.latencies, 0.99),
    })
}

/// `measured[name] / health[name]`.
pub(crate) fn ratio(measured: &Value, health: &Value, name: &str) -> f64 {
    measured[name].as_f64().unwrap_or(0.0) / health[name].as_f64().unwrap_or(1.0)
}

/// Rows of the printed table: scenario, measured, target, met.
pub(crate) struct Table(pub(crate) Vec<(String, String, String, bool)>);

impl Table {
    pub(crate) fn row(&mut self, scenario: &str, measured: String, target: &str, met: bool) {
        self.0.push((scenario.into(), measured, target.into(), met));
    }

    pub(crate) fn print(&self) {
        println!(
            "\n{:<62} {:<28} {:<14} met",
            "scenario", "measured", "target"
        );
        for (s, m, t, ok) in &self.0 {
            println!("{s:<62} {m:<28} {t:<14} {}", if *ok { "yes" } else { "NO" });
        }
    }
}
