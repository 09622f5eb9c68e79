//! A small JSON reader and writer, enough for handlers that take and give
//! JSON documents without a dependency.
//!
//! [`parse`] reads untrusted input: it bounds nesting at [`MAX_DEPTH`],
//! rejects trailing data, and replaces invalid UTF-8 in strings and lone
//! surrogates with U+FFFD, as Go's encoding/json does. Numbers keep their
//! text; [`Value::as_i64`] accepts only integers that fit.

use std::fmt::Write;

/// The deepest nesting of arrays and objects [`parse`] accepts.
pub const MAX_DEPTH: usize = 128;

/// A JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// null
    Null,
    /// true or false
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object's members in document order, duplicates included.
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The member `key` of an object (the last one if repeated), or None.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The last member of an object whose name equals `key` ignoring ASCII
    /// case, as Go's encoding/json matches members to struct fields.
    pub fn get_ignore_case(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is an integer (no fraction, no exponent) that
    /// fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) if !n.contains(|c| c == '.' || c == 'e' || c == 'E') => n.parse().ok(),
            _ => None,
        }
    }

    /// The number as an f64, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// Parses one JSON document.
pub fn parse(input: &[u8]) -> Result<Value, String> {
    let mut p = Parser { b: input, i: 0 };
    let v = p.value(0)?;
    p.space();
    if p.i != p.b.len() {
        return Err(p.err("data after the document"));
    }
    Ok(v)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, what: &str) -> String {
        format!("json: {} at offset {}", what, self.i)
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn literal(&mut self, word: &str, v: Value) -> Result<Value, String> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.space();
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.space();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.space();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.err("expected , or ]")),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.space();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Value::Object(members));
                }
                loop {
                    self.space();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a member name"));
                    }
                    let key = self.string()?;
                    self.space();
                    if self.peek() != Some(b':') {
                        return Err(self.err("expected :"));
                    }
                    self.i += 1;
                    members.push((key, self.value(depth + 1)?));
                    self.space();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Value::Object(members));
                        }
                        _ => return Err(self.err("expected , or }")),
                    }
                }
            }
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        // The bytes are ASCII digits and signs: valid UTF-8.
        Ok(Value::Number(String::from_utf8_lossy(&self.b[start..self.i]).into_owned()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let mut v = 0;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape")),
            };
            v = v << 4 | d as u32;
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1; // the opening quote
        let mut out = String::new();
        let mut run = self.i; // start of the bytes not yet copied
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    out.push_str(&String::from_utf8_lossy(&self.b[run..self.i]));
                    self.i += 1;
                    return Ok(out);
                }
                Some(c) if c < 0x20 => return Err(self.err("control character in string")),
                Some(b'\\') => {
                    out.push_str(&String::from_utf8_lossy(&self.b[run..self.i]));
                    self.i += 1;
                    let c = self.peek().ok_or_else(|| self.err("unterminated string"))?;
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xd800..0xdc00).contains(&hi) && self.b[self.i..].starts_with(b"\\u") {
                                let save = self.i;
                                self.i += 2;
                                let lo = self.hex4()?;
                                if (0xdc00..0xe000).contains(&lo) {
                                    char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))
                                } else {
                                    self.i = save; // not a pair: the second escape stands alone
                                    None
                                }
                            } else {
                                char::from_u32(hi)
                            };
                            out.push(c.unwrap_or('\u{fffd}'));
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                    run = self.i;
                }
                Some(_) => self.i += 1,
            }
        }
    }
}

/// Appends `s` to `out` as a JSON string literal, escaped exactly as Go's
/// encoding/json escapes it.
pub fn quote_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // <, > and & are escaped as Go's encoding/json does, so output
            // is safe to embed in HTML.
            c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes one JSON object, member by member, in order.
///
/// ```ignore
/// let doc = json::Object::new().str("item", "apple").int("qty", 3).finish();
/// ```
pub struct Object {
    buf: String,
}

impl Object {
    /// An empty object.
    pub fn new() -> Object {
        Object { buf: String::from("{") }
    }

    fn key(mut self, key: &str) -> Object {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        quote_into(&mut self.buf, key);
        self.buf.push(':');
        self
    }

    /// Adds a string member.
    pub fn str(self, key: &str, value: &str) -> Object {
        let mut o = self.key(key);
        quote_into(&mut o.buf, value);
        o
    }

    /// Adds an integer member.
    pub fn int(self, key: &str, value: i64) -> Object {
        let mut o = self.key(key);
        let _ = write!(o.buf, "{}", value);
        o
    }

    /// Adds a boolean member.
    pub fn bool(self, key: &str, value: bool) -> Object {
        let mut o = self.key(key);
        o.buf.push_str(if value { "true" } else { "false" });
        o
    }

    /// Adds a member whose value is already JSON text.
    pub fn raw(self, key: &str, json: &str) -> Object {
        let mut o = self.key(key);
        o.buf.push_str(json);
        o
    }

    /// The document.
    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

impl Default for Object {
    fn default() -> Self {
        Object::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documents() {
        let v = parse(br#" {"item":"ap\u00e9ple\n","qty":12,"x":[1.5e3,true,null,{}],"qty":-7} "#).unwrap();
        assert_eq!(v.get("item").and_then(Value::as_str), Some("ap\u{e9}ple\n"));
        assert_eq!(v.get("qty").and_then(Value::as_i64), Some(-7));
        assert_eq!(parse(br#"{"Qty":1,"qty":2,"QTY":3}"#).unwrap().get_ignore_case("qty").and_then(Value::as_i64), Some(3));
        assert_eq!(parse(br#"{"Qty":1}"#).unwrap().get("qty"), None);
        assert_eq!(v.get("x"), Some(&Value::Array(vec![
            Value::Number("1.5e3".into()), Value::Bool(true), Value::Null, Value::Object(vec![])])));
        assert_eq!(parse(br#""\ud83d\ude00 \ud800x""#).unwrap(), Value::String("\u{1f600} \u{fffd}x".into()));
        assert_eq!(parse(b"\"a\xffb\"").unwrap(), Value::String("a\u{fffd}b".into()));
    }

    #[test]
    fn refuses_malformed_input() {
        for bad in [&b""[..], b"{", b"[1,]", b"01", b"1.", b"-", b"1e", b"tru", b"\"\x01\"", b"{\"a\" 1}",
            b"{1:2}", b"[1] 2", b"\"\\x\"", b"\"\\u12\"", b"\"abc"] {
            assert!(parse(bad).is_err(), "parse({:?}) succeeded", String::from_utf8_lossy(bad));
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn integers() {
        assert_eq!(parse(b"9223372036854775807").unwrap().as_i64(), Some(i64::MAX));
        assert_eq!(parse(b"9223372036854775808").unwrap().as_i64(), None);
        assert_eq!(parse(b"12.0").unwrap().as_i64(), None);
        assert_eq!(parse(b"1e2").unwrap().as_i64(), None);
    }

    #[test]
    fn writes_objects() {
        let doc = Object::new().str("item", "a\"<\u{1}\u{8}\u{2028}").int("qty", -3).bool("ok", true).raw("x", "[]").finish();
        assert_eq!(doc, r#"{"item":"a\"\u003c\u0001\b\u2028","qty":-3,"ok":true,"x":[]}"#);
        assert_eq!(parse(doc.as_bytes()).unwrap().get("item").and_then(Value::as_str), Some("a\"<\u{1}\u{8}\u{2028}"));
    }
}
