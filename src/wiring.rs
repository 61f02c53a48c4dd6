//! What commands build from their arguments: the codec (with the schema
//! registry's client when `--schema-registry-url` is set) and the decoder of
//! every topic's records. Kept out of `config`, which is plain data.

use crate::codec::{Catalog, Codec, OutputFormat, SchemaRegistry};
use crate::config::CommonArgs;
use crate::pipeline::batch::Decoder;
use crate::registry::HttpRegistry;
use crate::topics::TopicCatalog;
use std::sync::Arc;

/// The registry client, when one is configured.
pub fn registry(common: &CommonArgs) -> Option<Arc<dyn SchemaRegistry>> {
    common
        .schema_registry_url
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(|u| Arc::new(HttpRegistry::new(u)) as Arc<dyn SchemaRegistry>)
}

/// The codec of this build's schemas, writing `format`.
pub fn codec(common: &CommonArgs, format: OutputFormat) -> Codec {
    Codec::new(Arc::new(Catalog::builtin()), common.limits(), registry(common), format)
}

/// The codec with every topic's records declared (under the prefix).
pub fn decoder(common: &CommonArgs, format: OutputFormat) -> Decoder {
    Decoder::new(codec(common, format), &TopicCatalog::builtin(), &common.topic_prefix)
}
