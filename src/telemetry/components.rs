//! Per-component gauges for the domain dashboard (`dashboards/udo-components.json`):
//! the latest closed window's P50/P95/P99 and error rate, the latest
//! uncertainty, and the health state of each component. `component` is a
//! label, so its values are capped: the first [`MAX_COMPONENTS`] components
//! seen get gauges, later ones are counted in
//! `udo_component_gauges_dropped_total` (their windows still go to Kafka and
//! the stores; only the gauges are skipped).

use metrics::{counter, gauge};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use udo_domain::WindowStats;

/// Distinct components with gauges (series: 5 per component).
pub const MAX_COMPONENTS: usize = 200;

/// Components admitted so far, with their health (degraded or not).
#[derive(Default)]
struct Admitted {
    degraded: HashMap<String, bool>,
}

impl Admitted {
    /// Whether `component` has gauges (admitting it while there is room).
    fn admit(&mut self, component: &str, cap: usize) -> bool {
        if self.degraded.contains_key(component) {
            return true;
        }
        if self.degraded.len() >= cap {
            return false;
        }
        self.degraded.insert(component.to_string(), false);
        true
    }
}

fn admitted() -> &'static Mutex<Admitted> {
    static A: OnceLock<Mutex<Admitted>> = OnceLock::new();
    A.get_or_init(Default::default)
}

fn dropped() {
    counter!("udo_component_gauges_dropped_total").increment(1);
}

/// A closed window of one component (a per-endpoint window is left out:
/// endpoints would multiply the series).
pub fn window(w: &WindowStats) {
    if w.endpoint.is_some() {
        return;
    }
    let degraded = {
        let mut a = admitted().lock().expect("component gauges lock");
        if !a.admit(&w.component, MAX_COMPONENTS) {
            drop(a);
            return dropped();
        }
        a.degraded[&w.component]
    };
    let c = w.component.clone();
    if let Some(l) = &w.latency {
        for (q, v) in [("0.5", l.p50_ms), ("0.95", l.p95_ms), ("0.99", l.p99_ms)] {
            gauge!("udo_component_latency_ms", "component" => c.clone(), "quantile" => q).set(v);
        }
        gauge!("udo_component_error_rate", "component" => c.clone()).set(l.error_rate);
    }
    if let Some(u) = &w.uncertainty {
        // The latest uncertainty window of the component, whichever project.
        gauge!("udo_component_uncertainty", "component" => c.clone()).set(u.uncertainty);
    }
    gauge!("udo_component_degraded", "component" => c).set(if degraded { 1.0 } else { 0.0 });
}

/// A component degraded or recovered.
pub fn health(component: &str, degraded: bool) {
    {
        let mut a = admitted().lock().expect("component gauges lock");
        if !a.admit(component, MAX_COMPONENTS) {
            drop(a);
            return dropped();
        }
        a.degraded.insert(component.to_string(), degraded);
    }
    gauge!("udo_component_degraded", "component" => component.to_string()).set(if degraded { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::Admitted;

    #[test]
    fn components_beyond_the_cap_get_no_gauges_and_the_admitted_keep_theirs() {
        let mut a = Admitted::default();
        assert!(a.admit("a", 2));
        assert!(a.admit("b", 2));
        assert!(!a.admit("c", 2), "a third component is over the cap");
        assert!(a.admit("a", 2), "an admitted component stays admitted");
        assert_eq!(a.degraded.len(), 2);
    }
}
