//! Version 3 of the pricing module, in Rust: v2's prices (10% off from 10
//! items on) behind the same `quote` contract as the Go guests, so the demo
//! swaps Go v1 → Rust v3 → Go v2 without a caller noticing anything but the
//! version. Its migrate hook records the schema version in the host's
//! state. Built with Debian's rustc (see the README):
//!
//! ```text
//! rustc --edition=2021 --target=wasm32-unknown-unknown -C opt-level=2 -C panic=abort -C strip=debuginfo \
//!     --crate-type=rlib --crate-name=hotswap_guest -o libhotswap_guest.rlib guest/rust/src/lib.rs
//! rustc --edition=2021 --target=wasm32-unknown-unknown -C opt-level=2 -C panic=abort -C strip=debuginfo \
//!     --crate-type=cdylib --extern hotswap_guest=libhotswap_guest.rlib -o pricing-v3.wasm examples/pricing/guests/rust/lib.rs
//! ```

use hotswap_guest::json::{self, Object, Value};
use hotswap_guest::{kv_add, kv_set, log, Level, Module};

/// A request for a price.
struct Quote {
    item: String,
    qty: i64,
}

/// The answer to a Quote, with the fields of the Go guests' v2.
struct Price {
    item: String,
    qty: i64,
    unit_cents: i64,
    discount_cents: i64,
    total_cents: i64,
}

fn init(m: &mut Module) {
    m.handle("quote", |input| {
        let q = decode(input).map_err(|e| format!("decode quote request: {}", e))?;
        let p = price(&q)?;
        // Quotes counts every quote served by any version: it lives in the
        // host's state, so it survives swaps.
        let quotes = kv_add("quotes", 1);
        Ok(Object::new()
            .str("item", &p.item)
            .int("qty", p.qty)
            .int("unit_cents", p.unit_cents)
            .int("discount_cents", p.discount_cents)
            .int("total_cents", p.total_cents)
            .str("version", "v3")
            .int("quotes", quotes)
            .finish()
            .into_bytes())
    });
    m.self_test(|| {
        let p = price(&Quote { item: "apple".to_string(), qty: 10 })?;
        if p.discount_cents != p.unit_cents || p.total_cents != 9 * p.unit_cents {
            return Err("volume discount for 10 apples is wrong".to_string());
        }
        Ok(())
    });
    m.migrate(|from| {
        kv_set("schema", b"3");
        log(Level::Info, &format!("pricing v3 (Rust) active, migrated from {}", from));
        Ok(())
    });
}

/// decode reads a Quote as Go's encoding/json does into the same struct:
/// member names match ignoring case, the last one wins, missing or null
/// members are zero, others must have the right type.
fn decode(input: &[u8]) -> Result<Quote, String> {
    let doc = json::parse(input)?;
    if !matches!(doc, Value::Object(_)) {
        return Err("a quote is a JSON object".to_string());
    }
    let item = match doc.get_ignore_case("item") {
        None | Some(Value::Null) => String::new(),
        Some(v) => v.as_str().ok_or("item must be a string")?.to_string(),
    };
    let qty = match doc.get_ignore_case("qty") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_i64().ok_or("qty must be an integer")?,
    };
    Ok(Quote { item, qty })
}

fn price(q: &Quote) -> Result<Price, String> {
    if q.item.is_empty() {
        return Err("item is required".to_string());
    }
    if q.qty <= 0 {
        return Err("qty must be positive".to_string());
    }
    let unit = unit_cents(&q.item);
    let mut p = Price {
        item: q.item.clone(),
        qty: q.qty,
        unit_cents: unit,
        discount_cents: 0,
        total_cents: unit.wrapping_mul(q.qty),
    };
    if q.qty >= 10 {
        p.discount_cents = p.total_cents / 10;
        p.total_cents -= p.discount_cents;
    }
    Ok(p)
}

/// unit_cents derives a stable list price from the item name, exactly as
/// the Go guests do (64-bit arithmetic that wraps, over Unicode code
/// points).
fn unit_cents(item: &str) -> i64 {
    let mut h: i64 = 0;
    for c in item.chars() {
        h = h.wrapping_mul(31).wrapping_add(c as i64);
    }
    if h < 0 {
        h = h.wrapping_neg();
    }
    100 + h % 900
}

hotswap_guest::export!(init);
