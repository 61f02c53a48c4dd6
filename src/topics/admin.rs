//! `topics apply`: observes the broker, plans, creates what is missing.

use super::plan::{Action, Observed, plan};
use super::spec::TopicSpec;
use crate::error::{Error, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(15);

pub fn admin_client(kafka: &crate::config::KafkaConfig) -> Result<AdminClient<DefaultClientContext>> {
    kafka.client(|_| {}).create().map_err(Error::kafka("create admin client"))
}

/// Partitions and replication of every topic on the broker.
fn observe_layout(admin: &AdminClient<DefaultClientContext>) -> Result<HashMap<String, (i32, i32)>> {
    let md = admin.inner().fetch_metadata(None, TIMEOUT).map_err(Error::kafka("fetch metadata"))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            let replication = t.partitions().first().map_or(0, |p| p.replicas().len() as i32);
            (t.name().to_string(), (t.partitions().len() as i32, replication))
        })
        .collect())
}

/// Topic configs as the broker describes them; `None` if it cannot.
async fn observe_configs(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Option<BTreeMap<String, String>> {
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let results = admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts).await.ok()?;
    let resource = results.into_iter().next()?.ok()?;
    Some(resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect())
}

/// Applies `specs` under `prefix`; returns the actions taken or reported.
pub async fn apply(
    kafka: &crate::config::KafkaConfig,
    specs: &[TopicSpec],
    prefix: &str,
    dry_run: bool,
) -> Result<Vec<Action>> {
    let admin = admin_client(kafka)?;
    let layout = observe_layout(&admin)?;
    let mut configs = HashMap::new();
    for spec in specs {
        let topic = format!("{prefix}{}", spec.name);
        if layout.contains_key(&topic) {
            configs.insert(topic.clone(), observe_configs(&admin, &topic).await);
        }
    }
    let actions = plan(specs, prefix, |t| {
        layout.get(t).map(|&(partitions, replication)| Observed {
            partitions,
            replication,
            configs: configs.get(t).cloned().flatten(),
        })
    })
    .map_err(Error::Config)?;
    if dry_run {
        return Ok(actions);
    }
    type Creation<'a> = (&'a TopicSpec, String, Vec<(String, String)>);
    let to_create: Vec<Creation<'_>> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { topic } => {
                let spec = specs.iter().find(|s| format!("{prefix}{}", s.name) == *topic)?;
                Some(spec.broker_configs().map(|c| (spec, topic.clone(), c.into_iter().collect())))
            }
            _ => None,
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(Error::Config)?;
    if !to_create.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = to_create
            .iter()
            .map(|(spec, topic, cfg)| {
                cfg.iter().fold(
                    NewTopic::new(topic, spec.partitions, TopicReplication::Fixed(spec.replication)),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        let results = admin.create_topics(&new_topics, &opts).await.map_err(Error::kafka("create topics"))?;
        for r in results {
            match r {
                Ok(_) => {}
                // Another `apply` won the race: the topic exists, which is the goal.
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(Error::Unavailable(format!("create topic {topic}: {code}"))),
            }
        }
    }
    Ok(actions)
}
