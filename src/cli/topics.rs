//! `udo-stream topics apply`.

use crate::config::CommonArgs;
use crate::error::{Error, Result};
use crate::topics::TopicCatalog;
use crate::topics::plan::Action;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create missing topics with their declared partitions and configs;
    /// report drift of existing ones (never deletes or recreates).
    Apply {
        /// Read topic specs from this directory instead of the built-in ones.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Only show what would be done.
        #[arg(long)]
        dry_run: bool,
        /// Exit with status 3 when any topic drifted from its spec.
        #[arg(long)]
        fail_on_drift: bool,
        /// Replication factor for every topic, instead of each spec's (the
        /// specs say 1 for a one-node development broker; a cluster wants 3).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        replication: Option<i32>,
    },
}

pub async fn run(common: CommonArgs, cmd: TopicsCommand) -> Result<()> {
    let TopicsCommand::Apply { dir, dry_run, fail_on_drift, replication } = cmd;
    let mut catalog = match &dir {
        Some(d) => TopicCatalog::load_dir(d).map_err(Error::Config)?,
        None => crate::topics::TopicCatalog::builtin(),
    };
    if let Some(r) = replication {
        catalog = catalog.with_replication(r);
    }
    let actions = crate::topics::admin::apply(&common.kafka, catalog.specs(), &common.topic_prefix, dry_run).await?;
    let (mut created, mut drifted) = (0, 0);
    for a in &actions {
        match a {
            Action::Create { topic } => {
                created += 1;
                let spec = catalog.specs().iter().find(|s| topic.ends_with(&s.name)).expect("planned from specs");
                let cfg = spec.broker_configs().map_err(Error::Config)?;
                let cfg: Vec<String> = cfg.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{} {topic}: {} partitions, replication {}, {}",
                    if dry_run { "would create" } else { "created" },
                    spec.partitions,
                    spec.replication,
                    cfg.join(" ")
                );
            }
            Action::Unchanged { topic, configs_verified } => println!(
                "ok      {topic}{}",
                if *configs_verified { "" } else { " (broker does not describe configs; partitions checked)" }
            ),
            Action::Drifted { topic, drifts } => {
                drifted += 1;
                for d in drifts {
                    println!("DRIFT   {topic}: {d}");
                }
            }
        }
    }
    if created == 0 && drifted == 0 {
        println!("no changes ({} topics as declared)", actions.len());
    } else {
        println!(
            "{created} {}, {drifted} drifted, {} unchanged",
            if dry_run { "to create" } else { "created" },
            actions.len() - created - drifted
        );
    }
    if drifted > 0 && fail_on_drift {
        std::process::exit(3);
    }
    Ok(())
}
