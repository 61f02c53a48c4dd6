//! Fuzzing harness of the whole decoder: valid records of every type in
//! every framing (Avro single-object, Confluent with an identical and with a
//! union writer schema, JSON), mutated (bit flips, huge varint lengths,
//! truncation, insertion, splicing, random bytes behind a valid header),
//! then decoded. Every input must come back as an event or a classified
//! rejection: no panic, no abort, and no allocation beyond the input's size
//! times a small constant (a counting allocator measures each decode).
//!
//! A fixed budget runs in `scripts/test`; longer runs:
//!   UDO_FUZZ_SECONDS=600 cargo test --release -p udo-codec --test fuzz
//! `UDO_FUZZ_SEED` replays a run; a failing input is printed in hex.

#![allow(unsafe_code)] // the counting allocator below

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use udo_codec::{Catalog, Codec, MemoryRegistry, OutputFormat};
use udo_domain::{Event, Limits};

/// Bytes live and their peak on this thread, while `COUNTING` is set.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(n: usize) {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + n);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

fn shrank(n: usize) {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            LIVE.with(|l| l.set(l.get().saturating_sub(n)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        shrank(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most a decode may allocate: this many times the input, plus a
/// constant for the error message, caches and the event's own fields.
const PER_BYTE: usize = 64;
const CONSTANT: usize = 256 * 1024;

const DIM: usize = 8;
const T0: i64 = 1_767_225_600_000;

struct Seed {
    what: String,
    allowed: Vec<String>,
    bytes: Vec<u8>,
}

fn seeds(plain: &Codec, registry: &Codec, json: &Codec) -> Vec<Seed> {
    let mut out = Vec::new();
    let writes: Vec<String> = vec!["ContextChunk".into(), "DecisionLog".into()];
    for event in udo_synth::one_of_each(DIM, T0) {
        let own = vec![event.record_name().to_string()];
        let name = event.record_name();
        for (framing, codec) in [("single-object", plain), ("confluent", registry), ("json", json)] {
            let bytes = codec.encode("t", &own, &event).expect("encode a fixture");
            out.push(Seed { what: format!("{name} {framing}"), allowed: own.clone(), bytes });
        }
        if writes.iter().any(|w| w == name) {
            // A union writer schema: resolved by apache-avro, not read directly.
            let bytes = registry.encode("writes", &writes, &event).expect("encode a fixture");
            out.push(Seed { what: format!("{name} confluent-union"), allowed: writes.clone(), bytes });
        }
    }
    out
}

/// A zig-zag varint of `v`.
fn varint(v: i64) -> Vec<u8> {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn mutate(rng: &mut SmallRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    let rounds = rng.random_range(1..=3);
    for _ in 0..rounds {
        let at = if b.is_empty() { 0 } else { rng.random_range(0..b.len()) };
        match rng.random_range(0..7) {
            0 => {
                if !b.is_empty() {
                    b[at] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => {
                // A huge or negative length where a length may be.
                let v = match rng.random_range(0..4) {
                    0 => 536_870_912,
                    1 => i64::from(rng.random::<u32>()),
                    2 => -rng.random_range(1..1_000_000i64),
                    _ => rng.random(),
                };
                let len = rng.random_range(0..=3.min(b.len() - at.min(b.len())));
                b.splice(at..at + len, varint(v));
            }
            2 => b.truncate(at),
            3 => {
                let n = rng.random_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(at..at, bytes);
            }
            4 => {
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let to = rng.random_range(from..=other.len());
                    b.splice(at..at, other[from..to].iter().copied());
                }
            }
            5 => {
                // Keep a valid header, random bytes after it.
                let keep = 10.min(b.len());
                b.truncate(keep);
                let n = rng.random_range(0..200);
                b.extend((0..n).map(|_| rng.random::<u8>()));
            }
            _ => {
                if !b.is_empty() {
                    b[at] = [0x00, 0xff, 0x7f, 0x80, b'"', b'{', b'9'][rng.random_range(0..7)];
                }
            }
        }
    }
    b
}

/// Decodes `bytes`, returning the outcome (`Ok` record name or the
/// rejection class) and the peak bytes allocated meanwhile.
fn decode(codec: &Codec, allowed: &[String], bytes: &[u8]) -> (Result<Result<String, String>, String>, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    COUNTING.with(|c| c.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        codec
            .decode(allowed, bytes)
            .map(|e: Event| e.record_name().to_string())
            .map_err(|e| e.class.as_str().to_string())
    }));
    COUNTING.with(|c| c.set(false));
    let peak = PEAK.with(Cell::get);
    let outcome = outcome.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    });
    (outcome, peak)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    let budget = std::env::var("UDO_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20.0);
    let seed: u64 =
        std::env::var("UDO_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random());
    let limits = Limits { embedding_dim: DIM, max_record_bytes: 1 << 20 };
    let catalog = Arc::new(Catalog::builtin());
    let plain = Codec::new(catalog.clone(), limits, None, OutputFormat::Avro);
    let registry = Codec::new(catalog.clone(), limits, Some(Arc::new(MemoryRegistry::default())), OutputFormat::Avro);
    let json = Codec::new(catalog, limits, None, OutputFormat::Json);
    let seeds = seeds(&plain, &registry, &json);
    // Decodes go through the codec that holds the registry: it reads all three framings.
    let codec = &registry;
    let mut rng = SmallRng::seed_from_u64(seed);
    println!("fuzz: {} seeds, seed {seed}, budget {budget} s", seeds.len());

    // Every seed decodes as it is: the mutations start from valid records.
    for s in &seeds {
        let (outcome, _) = decode(codec, &s.allowed, &s.bytes);
        assert!(matches!(outcome, Ok(Ok(_))), "seed {} does not decode: {outcome:?}", s.what);
    }

    let started = Instant::now();
    let mut tried: u64 = 0;
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut worst: (f64, usize, usize) = (0.0, 0, 0);
    let mut failures = 0;
    while started.elapsed() < Duration::from_secs_f64(budget) {
        for _ in 0..256 {
            let s = &seeds[rng.random_range(0..seeds.len())];
            let other = &seeds[rng.random_range(0..seeds.len())].bytes;
            let input = mutate(&mut rng, &s.bytes, other);
            let (outcome, peak) = decode(codec, &s.allowed, &input);
            tried += 1;
            let bound = PER_BYTE * input.len() + CONSTANT;
            let ratio = peak as f64 / input.len().max(1) as f64;
            if input.len() >= 64 && ratio > worst.0 {
                worst = (ratio, peak, input.len());
            }
            let label = match &outcome {
                Ok(Ok(_)) => "decoded".to_string(),
                Ok(Err(class)) => class.clone(),
                Err(_) => "PANIC".to_string(),
            };
            *classes.entry(label).or_default() += 1;
            if outcome.is_err() || peak > bound {
                failures += 1;
                eprintln!(
                    "fuzz: FAILED on a mutated {} ({} bytes, peak allocation {peak} > bound {bound} or panic {:?}): {}",
                    s.what,
                    input.len(),
                    outcome.as_ref().err(),
                    hex(&input)
                );
                if failures >= 5 {
                    break;
                }
            }
        }
        if failures >= 5 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz: {tried} inputs in {secs:.1} s ({:.0}/s); outcomes {classes:?}; most allocated per input byte (inputs \
         of 64 bytes or more): {} bytes for {} ({:.1}x; bound {PER_BYTE}x + {CONSTANT})",
        tried as f64 / secs,
        worst.1,
        worst.2,
        worst.0
    );
    if failures > 0 {
        println!("fuzz: 0 passed, 1 failed");
        std::process::exit(1);
    }
    println!("fuzz: 1 passed, 0 failed");
}
