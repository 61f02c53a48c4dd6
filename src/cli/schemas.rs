//! `udo-stream schemas check` and `schemas register`.

use crate::codec::registry::Compatibility;
use crate::codec::{Catalog, SchemaRegistry};
use crate::config::CommonArgs;
use crate::error::{Error, Result};
use crate::registry::HttpRegistry;
use crate::topics::TopicCatalog;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Every schema parses, every topic references existing schemas, the
    /// build matches the directory, and (with SCHEMA_REGISTRY_URL) every
    /// topic's schema is compatible with its registry subject.
    Check {
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
        #[arg(long, default_value = "topics")]
        topics_dir: PathBuf,
    },
    /// Register every topic's value schema as `<topic>-value`.
    Register,
}

fn load_dir(dir: &Path) -> Result<Catalog> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Config(format!("cannot read schemas dir {}: {e} (use --dir)", dir.display())))?;
    let mut sources = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::Io { op: "read schemas dir".into(), source: e })?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("avsc") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::Io { op: format!("read {}", path.display()), source: e })?;
            let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            sources.push((stem, text));
        }
    }
    Catalog::from_sources(sources).map_err(|e| Error::Config(e.to_string()))
}

pub async fn run(common: CommonArgs, cmd: SchemasCommand) -> Result<()> {
    tokio::task::spawn_blocking(move || match cmd {
        SchemasCommand::Check { dir, topics_dir } => check(&common, &dir, &topics_dir),
        SchemasCommand::Register => register(&common),
    })
    .await
    .map_err(|e| Error::Internal(format!("schemas task: {e}")))?
}

fn check(common: &CommonArgs, dir: &Path, topics_dir: &Path) -> Result<()> {
    let mut problems = Vec::new();
    let catalog = load_dir(dir)?;
    let mut names: Vec<&str> = catalog.names().collect();
    names.sort();
    println!("ok      {} schemas parse: {}", names.len(), names.join(", "));
    let builtin = Catalog::builtin();
    for name in &names {
        match builtin.get(name) {
            Some(b) if b.fingerprint == catalog.get(name).expect("listed").fingerprint => {}
            Some(_) => problems.push(format!("{name}: differs from the schema compiled into this binary (rebuild)")),
            None => problems.push(format!("{name}: not compiled into this binary (add it to codec::catalog::BUILTIN)")),
        }
    }
    let topics = TopicCatalog::load_dir(topics_dir).map_err(Error::Config)?;
    for spec in topics.specs() {
        for r in spec.records() {
            if catalog.get(r).is_none() {
                problems.push(format!("topic {}: value schema {r} has no {}/{r}.avsc", spec.name, dir.display()));
            }
        }
    }
    println!("ok      {} topics checked for schema references", topics.specs().len());
    if let Some(url) = common.schema_registry_url.as_deref().filter(|u| !u.is_empty()) {
        let registry = HttpRegistry::new(url);
        for spec in topics.specs().iter().filter(|s| !s.records().is_empty()) {
            let subject = format!("{}-value", common.topic(&spec.name));
            let Some(text) = catalog.topic_schema_text(spec.records()) else { continue };
            match registry.check_compatibility(&subject, &text)? {
                Compatibility::Compatible => println!("ok      {subject}: compatible with the registry"),
                Compatibility::NewSubject => println!("ok      {subject}: not registered yet"),
                Compatibility::Incompatible(mut msgs) => {
                    if msgs.is_empty() {
                        // Some registries (Apicurio's ccompat API) say no
                        // more than "incompatible": name the field ourselves.
                        let registered = registry.latest_schema(&subject)?;
                        let why =
                            registered.and_then(|old| crate::codec::catalog::backward_incompatibility(&old, &text));
                        msgs.push(why.unwrap_or_else(|| "the registry gave no reason".into()));
                    }
                    problems.push(format!(
                        "{subject}: incompatible with the registry ({}): give a new field a default, keep the \
                         removed or renamed ones, or register a new subject",
                        msgs.join("; ")
                    ))
                }
            }
        }
    } else {
        println!("skip    registry compatibility (SCHEMA_REGISTRY_URL not set)");
    }
    if problems.is_empty() {
        println!("schemas check passed");
        Ok(())
    } else {
        for p in &problems {
            println!("FAIL    {p}");
        }
        Err(Error::Config(format!("schemas check: {} problem(s)", problems.len())))
    }
}

fn register(common: &CommonArgs) -> Result<()> {
    let url =
        common.schema_registry_url.as_deref().filter(|u| !u.is_empty()).ok_or_else(|| {
            Error::Config("schemas register needs SCHEMA_REGISTRY_URL (or --schema-registry-url)".into())
        })?;
    let registry = HttpRegistry::new(url);
    let catalog = Catalog::builtin();
    for spec in crate::topics::TopicCatalog::builtin().specs().iter().filter(|s| !s.records().is_empty()) {
        let subject = format!("{}-value", common.topic(&spec.name));
        let text = catalog
            .topic_schema_text(spec.records())
            .ok_or_else(|| Error::Config(format!("topic {} references unknown schemas", spec.name)))?;
        let id = registry.register(&subject, &text)?;
        println!("registered {subject} id {id}");
    }
    Ok(())
}
