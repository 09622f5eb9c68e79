//! The conformance guest in Rust. It answers the same handlers as the Go
//! and C conformance guests (see package conformance).

use hotswap_guest::{kv_add, kv_delete, kv_get, kv_set, log, Level, Module};
use std::ptr;

// SPINS is a sink that keeps the compiler from discarding work or turning
// recursion into a loop.
static mut SPINS: u64 = 0;

fn touch() {
    unsafe { ptr::write_volatile(ptr::addr_of_mut!(SPINS), ptr::read_volatile(ptr::addr_of!(SPINS)) + 1) }
}

// spin recurses twice per level and never loops: it runs about forever
// with a stack only depth deep.
#[inline(never)]
fn spin(depth: u32) -> u64 {
    if depth == 0 {
        return 1;
    }
    let (a, b) = (spin(depth - 1), spin(depth - 1));
    touch();
    a.wrapping_mul(31) ^ b
}

// recurse recurses n deep and answers n.
#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let depth = recurse(n - 1) + 1;
    touch();
    depth
}

fn init(m: &mut Module) {
    // echo is a hot path (bench/modcall measures it): it appends to the
    // SDK's reused output buffer instead of allocating.
    m.handle_into("echo", |input, out| {
        out.extend_from_slice(input);
        Ok(())
    });
    m.handle("fail", |input| Err(format!("refused: {}", String::from_utf8_lossy(input))));
    m.handle("trap", |input| panic!("trapped: {}", String::from_utf8_lossy(input)));
    m.handle("loop", |_| loop {
        touch();
    });
    m.handle("spin", |_| Ok(spin(64).to_string().into_bytes()));
    m.handle("recurse", |input| {
        let text = String::from_utf8_lossy(input);
        let n: u64 = text.parse().map_err(|_| format!("not a number: {}", text))?;
        Ok(recurse(n).to_string().into_bytes())
    });
    m.handle("grow", |_| {
        let mut held: Vec<Vec<u8>> = Vec::new();
        loop {
            // Reserved, not zeroed: the point is the allocation.
            let mut block = Vec::with_capacity(1 << 20);
            block.push(1u8);
            held.push(block);
        }
    });
    m.handle("count", |_| Ok(kv_add("count", 1).to_string().into_bytes()));
    m.handle("put", |input| {
        let text = String::from_utf8_lossy(input);
        match text.split_once('=') {
            Some((k, v)) => {
                kv_set(k, v.as_bytes());
                Ok(Vec::new())
            }
            None => Err(format!("want key=value: {}", text)),
        }
    });
    m.handle("get", |input| {
        let key = String::from_utf8_lossy(input);
        kv_get(&key).ok_or_else(|| format!("missing: {}", key))
    });
    m.handle("del", |input| {
        kv_delete(&String::from_utf8_lossy(input));
        Ok(Vec::new())
    });
    m.handle("log", |input| {
        log(Level::Info, &String::from_utf8_lossy(input));
        Ok(Vec::new())
    });
    // The self-test fails while the host-kept key "selftest" holds "fail".
    m.self_test(|| {
        if kv_get("selftest").as_deref() == Some(&b"fail"[..]) {
            return Err("self-test: answers are wrong".to_string());
        }
        Ok(())
    });
    // migrate records the version it replaces under "migrated".
    m.migrate(|from| {
        kv_set("migrated", from.as_bytes());
        Ok(())
    });
}

hotswap_guest::export!(init);
