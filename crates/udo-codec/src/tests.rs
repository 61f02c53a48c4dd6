use super::*;
use proptest::prelude::*;
use udo_domain::*;

const T0: i64 = 1_767_225_600_000;
const DIM: usize = 8;

fn limits() -> Limits {
    Limits { embedding_dim: DIM, max_record_bytes: 64 * 1024 }
}

fn codec(format: OutputFormat) -> Codec {
    Codec::new(Arc::new(Catalog::builtin()), limits(), None, format)
}

fn confluent() -> Codec {
    Codec::new(Arc::new(Catalog::builtin()), limits(), Some(Arc::new(MemoryRegistry::default())), OutputFormat::Avro)
}

fn topic(records: &[&str]) -> Vec<String> {
    records.iter().map(|s| s.to_string()).collect()
}

fn id(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

/// One valid event of every record type.
fn samples() -> Vec<Event> {
    udo_synth::one_of_each(DIM, T0)
}

fn roundtrip(codec: &Codec) {
    for event in samples() {
        let allowed = topic(&[event.record_name()]);
        let bytes = codec.encode("t", &allowed, &event).unwrap();
        let back = codec.decode(&allowed, &bytes).unwrap_or_else(|e| panic!("{}: {e}", event.record_name()));
        assert_eq!(back, event);
    }
}

#[test]
fn every_record_type_round_trips_as_single_object() {
    let c = codec(OutputFormat::Avro);
    roundtrip(&c);
    let e = &samples()[0];
    let bytes = c.encode("t", &topic(&[e.record_name()]), e).unwrap();
    assert_eq!(&bytes[..2], &SINGLE_OBJECT_MAGIC);
    assert_eq!(&bytes[2..10], &c.catalog().get(e.record_name()).unwrap().fingerprint);
}

#[test]
fn every_record_type_round_trips_as_json() {
    roundtrip(&codec(OutputFormat::Json));
}

#[test]
fn every_record_type_round_trips_with_confluent_framing() {
    let c = confluent();
    roundtrip(&c);
    let e = &samples()[0];
    let bytes = c.encode("t", &topic(&[e.record_name()]), e).unwrap();
    assert_eq!(bytes[0], CONFLUENT_MAGIC);
}

#[test]
fn multi_record_topic_round_trips_in_every_format() {
    let writes = topic(&["ContextChunk", "DecisionLog"]);
    let events: Vec<Event> =
        samples().into_iter().filter(|e| matches!(e, Event::ContextChunk(_) | Event::DecisionLog(_))).collect();
    assert_eq!(events.len(), 2);
    for c in [codec(OutputFormat::Avro), codec(OutputFormat::Json), confluent()] {
        for e in &events {
            let bytes = c.encode("udo.writes.v1", &writes, e).unwrap();
            assert_eq!(&c.decode(&writes, &bytes).unwrap(), e);
        }
    }
    // Both records share one registry subject (the union schema).
    let c = confluent();
    let a = c.encode("udo.writes.v1", &writes, &events[0]).unwrap();
    let b = c.encode("udo.writes.v1", &writes, &events[1]).unwrap();
    assert_eq!(a[1..5], b[1..5]);
}

#[test]
fn hand_written_json_with_defaults_decodes() {
    let json = br#"{"event_id":"6f1c64e4-7d55-4b8a-9a57-0d2f7b1f3c11","occurred_at":1767225600000,
        "source":"kcat","component":"checkout","endpoint":"GET /x","latency_ms":12.5,"outcome":"OK"}"#;
    let e = codec(OutputFormat::Avro).decode(&topic(&["LatencySample"]), json).unwrap();
    let Event::LatencySample(s) = e else { panic!("{e:?}") };
    assert_eq!(s.status_code, None);
    assert_eq!(s.latency_ms, 12.5);
}

fn latency() -> LatencySample {
    LatencySample {
        event_id: id(10),
        occurred_at: T0,
        source: "test".into(),
        component: "checkout".into(),
        endpoint: "GET /x".into(),
        latency_ms: 10.0,
        outcome: Outcome::Ok,
        status_code: None,
    }
}

/// Encodes with the real codec (which does not validate), then decodes.
fn reject(event: Event) -> DecodeError {
    let allowed = topic(&[event.record_name()]);
    let c = codec(OutputFormat::Avro);
    let bytes = c.encode("t", &allowed, &event).unwrap();
    c.decode(&allowed, &bytes).expect_err("must be rejected")
}

fn assert_invalid(err: DecodeError, field: &str, needle: &str) {
    assert_eq!(err.class, DecodeClass::Invalid, "{err}");
    assert_eq!(err.field.as_deref(), Some(field), "{err}");
    assert!(err.message.contains(needle), "{err} lacks {needle:?}");
}

#[test]
fn rejects_nan_infinite_and_negative_latencies() {
    for (v, needle) in [(f64::NAN, "finite"), (f64::INFINITY, "finite"), (f64::NEG_INFINITY, "finite"), (-0.5, ">= 0")]
    {
        assert_invalid(
            reject(Event::LatencySample(LatencySample { latency_ms: v, ..latency() })),
            "latency_ms",
            needle,
        );
    }
}

#[test]
fn rejects_ratings_other_than_plus_minus_one() {
    for rating in [0, 2, -2, i32::MAX] {
        let e = Event::FeedbackRating(FeedbackRating {
            event_id: id(11),
            occurred_at: T0,
            source: "t".into(),
            project_id: "p".into(),
            component: "c".into(),
            decision_id: id(12),
            rating,
            correction: None,
        });
        assert_invalid(reject(e), "rating", "+1 or -1");
    }
}

#[test]
fn rejects_scores_outside_0_100() {
    for score in [-1, 101, 1000] {
        let e = Event::DecisionLog(DecisionLog {
            event_id: id(13),
            occurred_at: T0,
            source: "t".into(),
            project_id: "p".into(),
            component: "c".into(),
            decision: "d".into(),
            uncertainty_score: score,
            rationale: None,
        });
        assert_invalid(reject(e), "uncertainty_score", "0..=100");
    }
}

fn chunk(embedding: Vec<f32>) -> Event {
    Event::ContextChunk(ContextChunk {
        event_id: id(14),
        occurred_at: T0,
        source: "t".into(),
        project_id: "p".into(),
        file_path: "a.rs".into(),
        chunk_index: 0,
        op: ChunkOp::Upsert,
        content: "x".into(),
        embedding: Some(embedding),
    })
}

#[test]
fn rejects_wrong_embedding_dimension_and_nan_in_vector() {
    assert_invalid(reject(chunk(vec![0.1; DIM + 1])), "embedding", "dimension 9");
    assert_invalid(reject(chunk(vec![0.1; 3])), "embedding", "configured dimension is 8");
    let mut v = vec![0.1; DIM];
    v[5] = f32::NAN;
    assert_invalid(reject(chunk(v)), "embedding[5]", "finite");
}

#[test]
fn rejects_bad_headers() {
    assert_invalid(
        reject(Event::LatencySample(LatencySample { event_id: uuid::Uuid::nil(), ..latency() })),
        "event_id",
        "nil",
    );
    // Seconds instead of milliseconds is the classic producer bug.
    assert_invalid(
        reject(Event::LatencySample(LatencySample { occurred_at: T0 / 1000, ..latency() })),
        "occurred_at",
        "milliseconds",
    );
    assert_invalid(
        reject(Event::LatencySample(LatencySample { component: " ".into(), ..latency() })),
        "component",
        "empty",
    );
}

/// Avro bytes written with a schema that differs from ours in one place, but
/// framed with our fingerprint: how a misbehaving producer looks on the wire.
fn forged(schema_text: &str, value: apache_avro::types::Value) -> Vec<u8> {
    let schema = Schema::parse_str(schema_text).unwrap();
    let mut out = SINGLE_OBJECT_MAGIC.to_vec();
    out.extend(Catalog::builtin().get("LatencySample").unwrap().fingerprint);
    out.extend(apache_avro::to_avro_datum(&schema, value).unwrap());
    out
}

fn forged_latency(outcome_symbols: &str, source_type: &str, outcome: &str, source: Value) -> Vec<u8> {
    let text = catalog::BUILTIN.iter().find(|(n, _)| *n == "LatencySample").unwrap().1;
    let text = text
        .replace(r#""symbols": ["OK", "ERROR", "TIMEOUT"]"#, outcome_symbols)
        .replace(r#"{"name": "source", "type": "string""#, &format!(r#"{{"name": "source", "type": "{source_type}""#));
    let symbols: Vec<String> = serde_json::from_str(outcome_symbols.split_once(':').unwrap().1).unwrap();
    let idx = symbols.iter().position(|s| s == outcome).unwrap() as u32;
    forged(
        &text,
        Value::Record(vec![
            ("event_id".into(), Value::Uuid(id(20))),
            ("occurred_at".into(), Value::TimestampMillis(T0)),
            ("source".into(), source),
            ("component".into(), Value::String("c".into())),
            ("endpoint".into(), Value::String("e".into())),
            ("latency_ms".into(), Value::Double(1.0)),
            ("outcome".into(), Value::Enum(idx, outcome.into())),
            ("status_code".into(), Value::Union(0, Box::new(Value::Null))),
        ]),
    )
}

#[test]
fn rejects_unknown_enum_values_in_avro_and_json() {
    let bytes =
        forged_latency(r#""symbols": ["OK", "ERROR", "TIMEOUT", "SLOW"]"#, "string", "SLOW", Value::String("s".into()));
    let err = codec(OutputFormat::Avro).decode(&topic(&["LatencySample"]), &bytes).unwrap_err();
    assert_eq!(err.class, DecodeClass::UnknownEnum, "{err}");
    assert_eq!(err.field.as_deref(), Some("outcome"), "{err}");

    let json = br#"{"event_id":"6f1c64e4-7d55-4b8a-9a57-0d2f7b1f3c11","occurred_at":1767225600000,
        "source":"kcat","component":"checkout","endpoint":"GET /x","latency_ms":12.5,"outcome":"SLOW"}"#;
    let err = codec(OutputFormat::Avro).decode(&topic(&["LatencySample"]), json).unwrap_err();
    assert_eq!(err.class, DecodeClass::UnknownEnum, "{err}");
    assert_eq!(err.field.as_deref(), Some("outcome"), "{err}");
}

#[test]
fn rejects_invalid_utf8_in_avro_and_json() {
    let bytes = forged_latency(
        r#""symbols": ["OK", "ERROR", "TIMEOUT"]"#,
        "bytes",
        "OK",
        Value::Bytes(vec![b'o', 0xff, 0xfe, b'k']),
    );
    let err = codec(OutputFormat::Avro).decode(&topic(&["LatencySample"]), &bytes).unwrap_err();
    assert_eq!(err.class, DecodeClass::InvalidUtf8, "{err}");
    assert_eq!(err.field.as_deref(), Some("source"), "{err}");

    let mut json = br#"{"source":""#.to_vec();
    json.extend([0xc3, 0x28]);
    json.extend(br#""}"#);
    let err = codec(OutputFormat::Avro).decode(&topic(&["LatencySample"]), &json).unwrap_err();
    assert_eq!(err.class, DecodeClass::InvalidUtf8, "{err}");
}

#[test]
fn rejects_oversized_records() {
    let c = codec(OutputFormat::Avro);
    let big = chunk(vec![0.0; DIM]);
    let Event::ContextChunk(mut cc) = big else { unreachable!() };
    cc.content = "x".repeat(70 * 1024);
    let allowed = topic(&["ContextChunk"]);
    let bytes = c.encode("t", &allowed, &Event::ContextChunk(cc)).unwrap();
    let err = c.decode(&allowed, &bytes).unwrap_err();
    assert_eq!(err.class, DecodeClass::Oversized, "{err}");
    assert!(err.message.contains("UDO_MAX_RECORD_BYTES"), "{err}");
}

#[test]
fn rejects_framing_schema_and_structure_errors_with_a_class() {
    let c = codec(OutputFormat::Avro);
    let lat = topic(&["LatencySample"]);
    let good = c.encode("t", &lat, &Event::LatencySample(latency())).unwrap();
    let cases: Vec<(Vec<u8>, DecodeClass, &str)> = vec![
        (vec![], DecodeClass::Empty, "empty"),
        (b"garbage".to_vec(), DecodeClass::UnknownFraming, "0x67"),
        ([&[0xC3, 0x01], &[9u8; 8][..], &[1, 2, 3]].concat(), DecodeClass::UnknownSchema, "fingerprint"),
        ([&[0u8, 0, 0, 0, 7][..], &good[10..]].concat(), DecodeClass::UnknownSchema, "SCHEMA_REGISTRY_URL"),
        (good[..good.len() - 3].to_vec(), DecodeClass::Malformed, "truncated"),
        ([&good[..], &[0u8, 1]].concat(), DecodeClass::Malformed, "2 trailing bytes"),
        (b"{not json".to_vec(), DecodeClass::Malformed, "invalid JSON"),
        (br#"{"event_id":"nope"}"#.to_vec(), DecodeClass::Malformed, "not a UUID"),
    ];
    for (bytes, class, needle) in cases {
        let err = c.decode(&lat, &bytes).unwrap_err();
        assert_eq!(err.class, class, "{err}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    }
    // A valid record on the wrong topic.
    let err = c.decode(&topic(&["FeedbackRating"]), &good).unwrap_err();
    assert_eq!(err.class, DecodeClass::WrongSchema, "{err}");
}

#[test]
fn a_length_that_claims_more_than_the_record_holds_is_refused_before_allocating() {
    // A ContextChunk whose embedding claims 536,870,912 floats in 60 bytes:
    // apache-avro would reserve ~30 GB for it.
    let c = codec(OutputFormat::Avro);
    let mut bytes = SINGLE_OBJECT_MAGIC.to_vec();
    bytes.extend(c.catalog().get("ContextChunk").unwrap().fingerprint);
    let uuid = id(7).to_string();
    bytes.push((uuid.len() * 2) as u8);
    bytes.extend(uuid.as_bytes());
    bytes.extend([0x80, 0xb0, 0x9b, 0xc3, 0xd7, 0x66]); // occurred_at
    bytes.extend([2, b's', 2, b'p', 2, b'f', 0, 0, 0]); // source, project, file, index, op, content
    bytes.push(2); // embedding: the array branch
    bytes.extend([0x80, 0x80, 0x80, 0x80, 0x04]); // 536,870,912 items
    bytes.extend([0u8; 4]);
    let err = c.decode(&topic(&["ContextChunk"]), &bytes).unwrap_err();
    assert_eq!(err.class, DecodeClass::Malformed, "{err}");
    assert_eq!(err.field.as_deref(), Some("embedding"), "{err}");
    assert!(err.message.contains("536870912 items"), "{err}");
}

#[test]
fn avro_level_rejections_name_the_field() {
    // A non-UUID where the schema's uuid string is.
    let c = codec(OutputFormat::Avro);
    let mut bytes = SINGLE_OBJECT_MAGIC.to_vec();
    bytes.extend(c.catalog().get("LatencySample").unwrap().fingerprint);
    let datum = apache_avro::to_avro_datum(
        &Schema::parse_str(
            catalog::BUILTIN
                .iter()
                .find(|(n, _)| *n == "LatencySample")
                .unwrap()
                .1
                .replace(r#"{"type": "string", "logicalType": "uuid"}"#, r#""string""#)
                .as_str(),
        )
        .unwrap(),
        Value::Record(vec![
            ("event_id".into(), Value::String("not-a-uuid".into())),
            ("occurred_at".into(), Value::TimestampMillis(T0)),
            ("source".into(), Value::String("s".into())),
            ("component".into(), Value::String("c".into())),
            ("endpoint".into(), Value::String("e".into())),
            ("latency_ms".into(), Value::Double(1.0)),
            ("outcome".into(), Value::Enum(0, "OK".into())),
            ("status_code".into(), Value::Union(0, Box::new(Value::Null))),
        ]),
    )
    .unwrap();
    bytes.extend(datum);
    let err = c.decode(&topic(&["LatencySample"]), &bytes).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("event_id"), "{err}");
    assert!(err.message.contains("not a UUID"), "{err}");

    // A JSON number beyond f64.
    let json = br#"{"event_id":"6f1c64e4-7d55-4b8a-9a57-0d2f7b1f3c11","occurred_at":1767225600000,
        "source":"kcat","component":"checkout","endpoint":"GET /x","latency_ms":1e400,"outcome":"OK"}"#;
    let err = c.decode(&topic(&["LatencySample"]), json).unwrap_err();
    assert_eq!(err.class, DecodeClass::Malformed, "{err}");
    assert_eq!(err.field.as_deref(), Some("latency_ms"), "{err}");
}

#[test]
fn json_errors_name_the_missing_field() {
    let c = codec(OutputFormat::Avro);
    let json = br#"{"event_id":"6f1c64e4-7d55-4b8a-9a57-0d2f7b1f3c11","occurred_at":1767225600000,
        "source":"kcat","component":"checkout","endpoint":"GET /x","outcome":"OK"}"#;
    let err = c.decode(&topic(&["LatencySample"]), json).unwrap_err();
    assert!(err.to_string().contains("latency_ms"), "{err}");
    // On a multi-record topic the error names the closest record type.
    let json = br#"{"event_id":"6f1c64e4-7d55-4b8a-9a57-0d2f7b1f3c11","occurred_at":1767225600000,
        "source":"x","project_id":"p","component":"c","decision":"d"}"#;
    let err = c.decode(&topic(&["ContextChunk", "DecisionLog"]), json).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("uncertainty_score"), "{err}");
    assert!(err.message.contains("DecisionLog"), "{err}");
}

#[test]
fn builtin_catalog_matches_schemas_dir_and_fingerprints_are_distinct() {
    let c = Catalog::builtin();
    let mut on_disk: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "avsc"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut built: Vec<&str> = c.names().collect();
    built.sort();
    assert_eq!(on_disk, built, "add new schemas/*.avsc to codec::catalog::BUILTIN");
    assert_eq!(built, {
        let mut r = RECORD_NAMES.to_vec();
        r.sort();
        r
    });
    let fps: std::collections::HashSet<_> =
        built.iter().flat_map(|n| [c.get(n).unwrap().fingerprint, c.get(n).unwrap().legacy_fingerprint]).collect();
    assert_eq!(fps.len(), 2 * built.len(), "every fingerprint, current and legacy, names one schema");
}

/// `schemas/fingerprints.tsv`: what Java Avro and fastavro compute for each
/// schema (regenerated by `scripts/interop fingerprints --write`, checked
/// against the live libraries by tests/it/interop.rs).
#[test]
fn fingerprints_equal_the_java_and_fastavro_golden_vectors() {
    let golden = include_str!("../../../schemas/fingerprints.tsv");
    let c = Catalog::builtin();
    let mut seen = Vec::new();
    for line in golden.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [name, java, fastavro, form] = cols[..] else { panic!("4 columns: {line}") };
        let entry = c.get(name).unwrap_or_else(|| panic!("{name} is in the golden file but not in the catalog"));
        let ours: String = entry.fingerprint.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(ours, java, "{name}: Java's fingerprint");
        assert_eq!(ours, fastavro, "{name}: fastavro's fingerprint");
        assert_eq!(crate::canonical::parsing_form(&entry.text).unwrap(), form, "{name}: Java's parsing form");
        seen.push(name);
    }
    seen.sort();
    let mut all: Vec<&str> = c.names().collect();
    all.sort();
    assert_eq!(seen, all, "regenerate schemas/fingerprints.tsv: scripts/interop fingerprints --write");
}

#[test]
fn a_registry_schema_is_read_directly_only_when_identical_to_ours() {
    let registry = Arc::new(MemoryRegistry::default());
    let c = Codec::new(Arc::new(Catalog::builtin()), limits(), Some(registry.clone()), OutputFormat::Avro);
    let ours = c.catalog().get("LatencySample").unwrap();
    let same = registry.register("t-value", &ours.text).unwrap();
    assert_eq!(
        c.identical_entry(same, &registry.schema_by_id(same).unwrap()).map(|e| e.name.as_str()),
        Some("LatencySample")
    );
    // A newer writer (one more field) is resolved, not read directly, and
    // still decodes to our event.
    let mut v: serde_json::Value = serde_json::from_str(&ours.text).unwrap();
    v["fields"].as_array_mut().unwrap().push(serde_json::json!({"name": "region", "type": "string", "default": "eu"}));
    let newer = registry.register("t-value", &v.to_string()).unwrap();
    let writer = registry.schema_by_id(newer).unwrap();
    assert!(c.identical_entry(newer, &writer).is_none());
    let sample = latency();
    let mut record = apache_avro::to_value(&sample).unwrap();
    if let Value::Record(fields) = &mut record {
        fields.push(("region".into(), Value::String("us".into())));
    }
    let datum = apache_avro::to_avro_datum(&writer, record).unwrap();
    let framed = [&[CONFLUENT_MAGIC][..], &newer.to_be_bytes(), &datum].concat();
    assert_eq!(c.decode(&topic(&["LatencySample"]), &framed).unwrap(), Event::LatencySample(sample));
}

#[test]
fn every_record_type_reads_directly() {
    let c = codec(OutputFormat::Avro);
    for event in samples() {
        let allowed = topic(&[event.record_name()]);
        let bytes = c.encode("t", &allowed, &event).unwrap();
        let entry = c.catalog().get(event.record_name()).unwrap();
        assert_eq!(direct_event(entry, &bytes[10..]).as_ref(), Some(&event), "{}", event.record_name());
        let trailing = [&bytes[10..], &[0u8][..]].concat();
        assert_eq!(direct_event(entry, &trailing), None, "trailing bytes are refused");
    }
}

#[test]
fn records_framed_with_the_legacy_fingerprint_still_decode() {
    let c = codec(OutputFormat::Avro);
    for event in samples() {
        let allowed = topic(&[event.record_name()]);
        let mut bytes = c.encode("t", &allowed, &event).unwrap();
        let entry = c.catalog().get(event.record_name()).unwrap();
        assert_ne!(entry.fingerprint, entry.legacy_fingerprint, "{}", event.record_name());
        bytes[2..10].copy_from_slice(&entry.legacy_fingerprint);
        assert_eq!(c.decode(&allowed, &bytes).unwrap(), event);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// A JSON producer's float is read as exactly the double it printed
    /// (the shortest form, as JavaScript or Python print it, or with an
    /// exponent): stores and windows see the producer's number, not a
    /// neighbour one ulp away.
    #[test]
    fn json_floats_parse_to_the_exact_double(v in 0.001f64..1.0e7) {
        let c = codec(OutputFormat::Avro);
        for text in [format!("{v}"), format!("{v:e}")] {
            let json = format!(
                r#"{{"event_id":"6f1c64e4-7d55-4b8a-9a57-0d2f7b1f3c11","occurred_at":1767225600000,
                "source":"t","component":"checkout","endpoint":"GET /x","latency_ms":{text},"outcome":"OK"}}"#
            );
            let e = c.decode(&topic(&["LatencySample"]), json.as_bytes()).unwrap();
            let Event::LatencySample(s) = e else { panic!("{e:?}") };
            prop_assert_eq!(s.latency_ms.to_bits(), v.to_bits(), "{} read as {}", text, s.latency_ms);
        }
    }

    /// Arbitrary bytes, including ones that start with each magic, never panic.
    #[test]
    fn random_bytes_never_panic(prefix in 0usize..4, body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let c = codec(OutputFormat::Avro);
        let fp = c.catalog().get("ContextChunk").unwrap().fingerprint;
        let head: Vec<u8> = match prefix {
            0 => vec![],
            1 => [&SINGLE_OBJECT_MAGIC[..], &fp[..]].concat(),
            2 => vec![0, 0, 0, 0, 1],
            _ => b"{".to_vec(),
        };
        let bytes = [head, body].concat();
        let _ = c.decode(&topic(&["ContextChunk", "DecisionLog"]), &bytes);
        let _ = confluent().decode(&topic(&["LatencySample"]), &bytes);
    }

    /// The direct reader takes every valid record (it is the hot path, not
    /// a fallback that never runs) and reads what apache-avro reads; on a
    /// mutated record it either refuses or agrees with apache-avro.
    #[test]
    fn the_direct_reader_agrees_with_apache_avro(
        kind in 0usize..4,
        seed in any::<u64>(),
        mutate in any::<bool>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let c = codec(OutputFormat::Avro);
        let kinds = [udo_synth::Kind::Latency, udo_synth::Kind::Feedback, udo_synth::Kind::Writes, udo_synth::Kind::All];
        let event = udo_synth::Generator::new(udo_synth::SynthConfig::new(DIM), seed, T0).next(kinds[kind], T0 + 5);
        let entry = c.catalog().get(event.record_name()).unwrap();
        let allowed = topic(&[event.record_name()]);
        let mut bytes = c.encode("t", &allowed, &event).unwrap();
        if mutate {
            for (pos, b) in flips {
                let n = bytes.len();
                bytes[10 + pos % (n - 10)] ^= b | 1;
            }
        }
        let payload = &bytes[10..];
        let direct = direct_event(entry, payload);
        let reference = reference_event(entry, payload);
        if !mutate {
            prop_assert_eq!(direct.as_ref(), Some(&event));
        }
        if let Some(d) = direct {
            // Compared as printed: a flipped float can read as NaN, which
            // both readers return but `==` never equals.
            prop_assert_eq!(format!("{:?}", Some(d)), format!("{:?}", reference.ok()));
        }
    }

    /// Valid encodings with bytes flipped never panic, and anything that
    /// still decodes is a valid event.
    #[test]
    fn mutated_records_never_panic(which in 0usize..8, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let c = codec(OutputFormat::Avro);
        let event = &samples()[which];
        let allowed = topic(&[event.record_name()]);
        let mut bytes = c.encode("t", &allowed, event).unwrap();
        for (pos, b) in flips {
            let n = bytes.len();
            bytes[10 + pos % (n - 10)] ^= b | 1;
        }
        if let Ok(e) = c.decode(&allowed, &bytes) {
            prop_assert!(e.validate(&limits()).is_ok());
        }
    }
}

#[test]
fn a_backward_incompatible_change_names_the_field() {
    let old = catalog::BUILTIN.iter().find(|(n, _)| *n == "LatencySample").unwrap().1;
    let mut v: serde_json::Value = serde_json::from_str(old).unwrap();
    v["fields"].as_array_mut().unwrap().push(serde_json::json!({"name": "region", "type": "string"}));
    let why = catalog::backward_incompatibility(old, &v.to_string()).expect("incompatible");
    assert!(why.contains("region"), "{why}");
    assert_eq!(catalog::backward_incompatibility(old, old), None);
    v["fields"].as_array_mut().unwrap().last_mut().unwrap()["default"] = "eu".into();
    assert_eq!(catalog::backward_incompatibility(old, &v.to_string()), None, "a default makes it compatible");
}
