//! SDK for writing hotswap modules in Rust, with the standard library only.
//!
//! A module is a `cdylib` for `wasm32-unknown-unknown` that registers its
//! handlers in a function it names to [`export!`]:
//!
//! ```ignore
//! use hotswap_guest::Module;
//!
//! fn init(m: &mut Module) {
//!     m.handle("upper", |input| Ok(input.to_ascii_uppercase()));
//!     m.handle_into("echo", |input, out| Ok(out.extend_from_slice(input)));
//!     m.self_test(|| Ok(()));
//!     m.migrate(|from| { hotswap_guest::kv_set("schema", b"3"); Ok(()) });
//! }
//!
//! hotswap_guest::export!(init);
//! ```
//!
//! Build it with `panic=abort` and bulk memory (one `memory.copy` instead
//! of a byte loop per copy; see guest/rust/Cargo.toml), or with rustc alone
//! (`internal/guestbuild.RustFlags`): `rustc --edition=2021
//! --target=wasm32-unknown-unknown -C opt-level=2 -C panic=abort -C
//! strip=debuginfo -C target-feature=+bulk-memory --crate-type=cdylib
//! --extern hotswap_guest=libhotswap_guest.rlib lib.rs`, the SDK built the
//! same way with `--crate-type=rlib --crate-name=hotswap_guest`.
//!
//! The ABI this implements is specified in docs/abi.md. In short: the host
//! copies a call's input into an exchange buffer this SDK owns and makes one
//! call into the module; the handler's output (or error text) stays in
//! guest memory until the next call, and the host copies it out.
//!
//! A handler that returns `Err` fails that call only. A panic traps the
//! instance: the host discards it, fails the call with a trap error whose
//! detail is the panic message (written to stderr, which the host keeps for
//! diagnostics), and serves the next call from another instance. Memory
//! exhaustion traps the same way and is reported as the memory limit.
//!
//! Guest memory is scratch. State that must survive an instance or a version
//! lives in the host's key/value store ([`kv_get`], [`kv_set`], [`kv_add`],
//! [`kv_delete`]), which needs the "kv" capability: a module that calls them
//! is refused at load unless the host granted it. [`log`] is always granted.
//!
//! WebAssembly instances are single-threaded and run one call at a time;
//! nothing here is meant to be shared between threads.

#![warn(missing_docs)]

pub mod json;

use std::cell::RefCell;
use std::fmt::Display;

/// The guest ABI this SDK speaks, as `major << 16 | minor`. A host refuses
/// a module whose major differs from its own.
pub const ABI_VERSION: u32 = 1 << 16;

/// What a handler answers: its output, or an error text for the caller.
pub type Result<T> = std::result::Result<T, String>;

enum Handler {
    Owned(Box<dyn Fn(&[u8]) -> Result<Vec<u8>>>),
    Into(Box<dyn Fn(&[u8], &mut Vec<u8>) -> Result<()>>),
}

/// The registrations of a module, handed to its init function.
pub struct Module {
    names: Vec<String>,
    handlers: Vec<Handler>,
    self_test: Option<Box<dyn Fn() -> Result<()>>>,
    migrate: Option<Box<dyn Fn(&str) -> Result<()>>>,
}

impl Module {
    /// Registers `handler` under `name`. A name must be unique, non-empty
    /// and without a newline; else the module traps at initialization and
    /// is refused at load.
    pub fn handle<F>(&mut self, name: &str, handler: F)
    where
        F: Fn(&[u8]) -> Result<Vec<u8>> + 'static,
    {
        self.register(name, Handler::Owned(Box::new(handler)));
    }

    /// Registers `handler` under `name`, like [`Module::handle`], for hot
    /// paths: the handler appends its output to a buffer the SDK keeps
    /// between calls (empty at each call), so a call allocates nothing once
    /// the buffer has grown to the outputs' size.
    pub fn handle_into<F>(&mut self, name: &str, handler: F)
    where
        F: Fn(&[u8], &mut Vec<u8>) -> Result<()> + 'static,
    {
        self.register(name, Handler::Into(Box::new(handler)));
    }

    fn register(&mut self, name: &str, handler: Handler) {
        if name.is_empty() || name.contains('\n') {
            panic!("hotswap_guest: invalid handler name {:?}", name);
        }
        if self.names.iter().any(|n| n == name) {
            panic!("hotswap_guest: handler {:?} registered twice", name);
        }
        self.names.push(name.to_string());
        self.handlers.push(handler);
    }

    /// Registers a check the host runs once on a fresh instance before the
    /// version may serve. An error rejects the version.
    pub fn self_test<F>(&mut self, f: F)
    where
        F: Fn() -> Result<()> + 'static,
    {
        self.self_test = Some(Box::new(f));
    }

    /// Registers a hook the host runs once when this version activates,
    /// with the version it replaces ("" for the first). An error rejects
    /// the version and the previous one keeps serving.
    pub fn migrate<F>(&mut self, f: F)
    where
        F: Fn(&str) -> Result<()> + 'static,
    {
        self.migrate = Some(Box::new(f));
    }
}

/// Log levels; the values are Go's log/slog levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    /// Debug.
    Debug = -4,
    /// Info.
    Info = 0,
    /// Warn.
    Warn = 4,
    /// Error.
    Error = 8,
}

#[link(wasm_import_module = "hotswap")]
extern "C" {
    #[link_name = "log"]
    fn host_log(level: i32, msg: *const u8, n: u32);
    #[link_name = "kv_get"]
    fn host_kv_get(key: *const u8, key_len: u32, val: *mut u8, cap: u32) -> i64;
    #[link_name = "kv_set"]
    fn host_kv_set(key: *const u8, key_len: u32, val: *const u8, val_len: u32);
    #[link_name = "kv_delete"]
    fn host_kv_delete(key: *const u8, key_len: u32);
    #[link_name = "kv_add"]
    fn host_kv_add(key: *const u8, key_len: u32, delta: i64) -> i64;
}

#[repr(C)]
struct IoVec {
    buf: *const u8,
    len: u32,
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn fd_write(fd: i32, iovs: *const IoVec, n: i32, written: *mut u32) -> i32;
}

/// Writes `msg` to the host's logger, tagged with the module and version.
pub fn log(level: Level, msg: &str) {
    unsafe { host_log(level as i32, msg.as_ptr(), msg.len() as u32) }
}

/// Returns the value stored under `key` in the module's host-kept store.
/// Needs the "kv" capability.
pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = unsafe { host_kv_get(key.as_ptr(), key.len() as u32, buf.as_mut_ptr(), buf.len() as u32) };
        if n < 0 {
            return None;
        }
        let n = n as usize;
        if n <= buf.len() {
            buf.truncate(n);
            return Some(buf);
        }
        // The value outgrew the buffer: retry with its size (it may
        // change again in between; another instance may have set it).
        buf = vec![0u8; n];
    }
}

/// Stores `value` under `key`. Needs the "kv" capability.
pub fn kv_set(key: &str, value: &[u8]) {
    unsafe { host_kv_set(key.as_ptr(), key.len() as u32, value.as_ptr(), value.len() as u32) }
}

/// Removes `key`. Needs the "kv" capability.
pub fn kv_delete(key: &str) {
    unsafe { host_kv_delete(key.as_ptr(), key.len() as u32) }
}

/// Atomically adds `delta` to the decimal integer stored under `key` (a
/// missing key or one that is not a number counts as 0) and returns the
/// sum. Needs the "kv" capability.
pub fn kv_add(key: &str, delta: i64) -> i64 {
    unsafe { host_kv_add(key.as_ptr(), key.len() as u32, delta) }
}

/// Turns any displayable error into a handler error text, for `?`:
/// `input.parse::<u32>().map_err(error)?`.
pub fn error<E: Display>(e: E) -> String {
    e.to_string()
}

// The module's state. An instance runs one call at a time on one thread.
struct State {
    module: Option<Module>,
    exchange: Vec<u8>,
    // out holds the bytes last described to the host until the next call.
    out: Vec<u8>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State { module: None, exchange: Vec::new(), out: Vec::new() });
}

// Packed results: address in bits 32..63, status in bits 30..31, length
// in bits 0..29.
const STATUS_OK: u64 = 0;
const STATUS_ERROR: u64 = 1;
const MAX_LENGTH: usize = (1 << 30) - 1;

fn pack(st: &mut State, out: Vec<u8>, status: u64) -> u64 {
    if out.len() > MAX_LENGTH {
        let msg = format!("output of {} bytes exceeds the ABI limit", out.len());
        return pack(st, msg.into_bytes(), STATUS_ERROR);
    }
    st.out = out;
    (st.out.as_ptr() as u64) << 32 | status << 30 | st.out.len() as u64
}

fn answer(st: &mut State, r: Result<Vec<u8>>) -> u64 {
    match r {
        Ok(out) => pack(st, out, STATUS_OK),
        Err(e) => pack(st, e.into_bytes(), STATUS_ERROR),
    }
}

/// The implementation of the ABI's exports, called by the functions
/// [`export!`] defines. Not for direct use.
#[doc(hidden)]
pub mod abi {
    use super::*;

    pub fn initialize(init: fn(&mut Module)) {
        std::panic::set_hook(Box::new(|info| {
            let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                s.to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "(no message)".to_string()
            };
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            stderr(&format!("panic: {}{}\n", msg, at));
        }));
        let mut m = Module { names: Vec::new(), handlers: Vec::new(), self_test: None, migrate: None };
        init(&mut m);
        STATE.with(|s| s.borrow_mut().module = Some(m));
    }

    pub fn abi_version() -> u32 {
        ABI_VERSION
    }

    pub fn handlers() -> u64 {
        STATE.with(|s| {
            let st = &mut *s.borrow_mut();
            let list = st.module.as_ref().map(|m| m.names.join("\n")).unwrap_or_default();
            pack(st, list.into_bytes(), STATUS_OK)
        })
    }

    pub fn exchange(size: u32) -> u32 {
        STATE.with(|s| {
            let st = &mut *s.borrow_mut();
            let size = size.max(1) as usize;
            if st.exchange.len() < size {
                st.exchange = vec![0; size];
            }
            st.exchange.as_ptr() as u32
        })
    }

    pub fn call(id: u32, n: u32) -> u64 {
        STATE.with(|s| {
            // The state stays borrowed during the handler: handlers reach
            // only the host functions, never the state.
            let st = &mut *s.borrow_mut();
            let mut out = std::mem::take(&mut st.out);
            out.clear();
            let r = match (st.module.as_ref(), st.exchange.get(..n as usize)) {
                (None, _) => Err("module not initialized".to_string()),
                (_, None) => Err("input length exceeds the exchange buffer".to_string()),
                (Some(m), Some(input)) => match m.handlers.get(id as usize) {
                    None => Err(format!("unknown handler id {}", id)),
                    Some(Handler::Owned(h)) => h(input),
                    Some(Handler::Into(h)) => h(input, &mut out).map(|()| out),
                },
            };
            answer(st, r)
        })
    }

    pub fn self_test() -> u64 {
        STATE.with(|s| {
            let st = &mut *s.borrow_mut();
            let r = match st.module.as_ref().and_then(|m| m.self_test.as_ref()) {
                Some(f) => f().map(|()| Vec::new()),
                None => Ok(Vec::new()),
            };
            answer(st, r)
        })
    }

    pub fn migrate(n: u32) -> u64 {
        STATE.with(|s| {
            let st = &mut *s.borrow_mut();
            let from = st.exchange.get(..n as usize).map(|b| String::from_utf8_lossy(b).into_owned());
            let r = match (from, st.module.as_ref().and_then(|m| m.migrate.as_ref())) {
                (None, _) => Err("input length exceeds the exchange buffer".to_string()),
                (Some(from), Some(f)) => f(&from).map(|()| Vec::new()),
                (Some(_), None) => Ok(Vec::new()),
            };
            answer(st, r)
        })
    }

    /// Rust frees memory as it goes: there is no collector to run between
    /// calls, and no allocation to report.
    pub fn yield_(_full: u32) -> u64 {
        0
    }

    fn stderr(msg: &str) {
        let iov = IoVec { buf: msg.as_ptr(), len: msg.len() as u32 };
        let mut written = 0u32;
        unsafe { fd_write(2, &iov, 1, &mut written) };
    }
}

/// Defines the ABI's exports for the module whose handlers `init`
/// registers. Use it once, in the module's crate root.
#[macro_export]
macro_rules! export {
    ($init:path) => {
        #[no_mangle]
        pub extern "C" fn _initialize() {
            $crate::abi::initialize($init)
        }
        #[no_mangle]
        pub extern "C" fn hotswap_abi_version() -> u32 {
            $crate::abi::abi_version()
        }
        #[no_mangle]
        pub extern "C" fn hotswap_handlers() -> u64 {
            $crate::abi::handlers()
        }
        #[no_mangle]
        pub extern "C" fn hotswap_exchange(size: u32) -> u32 {
            $crate::abi::exchange(size)
        }
        #[no_mangle]
        pub extern "C" fn hotswap_call(id: u32, n: u32) -> u64 {
            $crate::abi::call(id, n)
        }
        #[no_mangle]
        pub extern "C" fn hotswap_selftest() -> u64 {
            $crate::abi::self_test()
        }
        #[no_mangle]
        pub extern "C" fn hotswap_migrate(n: u32) -> u64 {
            $crate::abi::migrate(n)
        }
        #[no_mangle]
        pub extern "C" fn hotswap_yield(full: u32) -> u64 {
            $crate::abi::yield_(full)
        }
    };
}
