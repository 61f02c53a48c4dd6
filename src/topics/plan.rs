//! Compares declared topics with what the broker reports. Pure: the admin
//! module gathers the observations and carries out the creations; drift is
//! only reported, never "fixed" by deleting or recreating (that loses data).

use super::spec::TopicSpec;
use std::collections::BTreeMap;
use std::fmt;

/// What the broker has for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub partitions: i32,
    pub replication: i32,
    /// Configs as described by the broker; `None` when it cannot describe them.
    pub configs: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    FewerPartitions { declared: i32, actual: i32 },
    MorePartitions { declared: i32, actual: i32 },
    Replication { declared: i32, actual: i32 },
    Config { key: String, declared: String, actual: Option<String> },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::FewerPartitions { declared, actual } => write!(
                f,
                "has {actual} partitions, {declared} declared: consumers cannot scale to the declared parallelism \
                 (adding partitions remaps keys; do it deliberately with the broker's tools)"
            ),
            Drift::MorePartitions { declared, actual } => {
                write!(
                    f,
                    "has {actual} partitions, {declared} declared (partitions cannot be removed; update the yaml)"
                )
            }
            Drift::Replication { declared, actual } => write!(f, "replication {actual}, {declared} declared"),
            Drift::Config { key, declared, actual } => {
                write!(f, "config {key} = {}, {declared} declared", actual.as_deref().unwrap_or("(unset)"))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create { topic: String },
    Unchanged { topic: String, configs_verified: bool },
    Drifted { topic: String, drifts: Vec<Drift> },
}

/// Decides per declared topic: create it, leave it, or report its drift.
/// `observe(name)` is what the broker has under the (prefixed) name.
pub fn plan(
    specs: &[TopicSpec],
    prefix: &str,
    observe: impl Fn(&str) -> Option<Observed>,
) -> Result<Vec<Action>, String> {
    let mut actions = Vec::new();
    for spec in specs {
        let topic = format!("{prefix}{}", spec.name);
        let Some(obs) = observe(&topic) else {
            actions.push(Action::Create { topic });
            continue;
        };
        let mut drifts = Vec::new();
        if obs.partitions < spec.partitions {
            drifts.push(Drift::FewerPartitions { declared: spec.partitions, actual: obs.partitions });
        } else if obs.partitions > spec.partitions {
            drifts.push(Drift::MorePartitions { declared: spec.partitions, actual: obs.partitions });
        }
        if obs.replication != spec.replication {
            drifts.push(Drift::Replication { declared: spec.replication, actual: obs.replication });
        }
        if let Some(actual) = &obs.configs {
            for (key, declared) in spec.broker_configs()? {
                let got = actual.get(&key);
                if got != Some(&declared) {
                    drifts.push(Drift::Config { key, declared, actual: got.cloned() });
                }
            }
        }
        actions.push(if drifts.is_empty() {
            Action::Unchanged { topic, configs_verified: obs.configs.is_some() }
        } else {
            Action::Drifted { topic, drifts }
        });
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::TopicCatalog;

    fn obs(partitions: i32, configs: Option<&[(&str, &str)]>) -> Observed {
        Observed {
            partitions,
            replication: 1,
            configs: configs.map(|c| c.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        }
    }

    #[test]
    fn missing_topics_are_created_and_matching_ones_left_alone() {
        let cat = TopicCatalog::builtin();
        let specs = &cat.specs()[..2];
        let first = format!("x.{}", specs[0].name);
        let configs: Vec<(String, String)> = specs[0].broker_configs().unwrap().into_iter().collect();
        let actions = plan(specs, "x.", |t| {
            (t == first).then(|| Observed {
                partitions: specs[0].partitions,
                replication: 1,
                configs: Some(configs.iter().cloned().collect()),
            })
        })
        .unwrap();
        assert_eq!(actions[0], Action::Unchanged { topic: first, configs_verified: true });
        assert_eq!(actions[1], Action::Create { topic: format!("x.{}", specs[1].name) });
    }

    #[test]
    fn drift_is_reported_not_repaired() {
        let cat = TopicCatalog::builtin();
        let spec = cat.get("udo.windows.v1").unwrap();
        let actions =
            plan(std::slice::from_ref(spec), "", |_| Some(obs(2, Some(&[("cleanup.policy", "delete")])))).unwrap();
        let Action::Drifted { drifts, .. } = &actions[0] else { panic!("{actions:?}") };
        assert_eq!(drifts[0], Drift::FewerPartitions { declared: spec.partitions, actual: 2 });
        assert!(drifts.contains(&Drift::Config {
            key: "cleanup.policy".into(),
            declared: "compact".into(),
            actual: Some("delete".into())
        }));
        assert!(drifts[0].to_string().contains("2 partitions, 6 declared"));
    }

    #[test]
    fn unverifiable_configs_are_said_so() {
        let cat = TopicCatalog::builtin();
        let spec = cat.get("udo.alerts.v1").unwrap();
        let actions = plan(std::slice::from_ref(spec), "", |_| Some(obs(spec.partitions, None))).unwrap();
        assert_eq!(actions[0], Action::Unchanged { topic: "udo.alerts.v1".into(), configs_verified: false });
    }
}
