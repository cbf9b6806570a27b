//! containerd's filter language, as `List` (containerd's `Walk`) receives it.
//!
//! A filter string is a comma-separated list of selectors that must all match; several
//! filter strings match when any of them does. A selector is a field path (fields joined
//! by `.`, each a `[A-Za-z0-9_]+` word or a `"quoted"` string) optionally followed by an
//! operator and a value: `==` (equal), `!=` (not equal; an absent field counts as ""),
//! `~=` (regular expression, searched anywhere in the value). Without operator, the
//! selector tests that the field is present. Values are bare words (anything up to a
//! comma or white space) or quoted with `"`; `~=` values may also be quoted with `/` or `|`.
//! Quoted strings take Go's escapes (`\n`, `\"`, `\x41`, `\u00e9`, ...).
//!
//! Example, what containerd sends after a remote snapshotter answered AlreadyExists:
//! `labels."containerd.io/snapshot.ref"==sha256:…,parent==sha256:…`.

use std::fmt;

use regex::Regex;

use crate::clip::{clip, clip_around};

/// A filter string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// The whole filter string.
    pub input: String,
    /// Byte offset of the problem.
    pub pos: usize,
    /// What is wrong there.
    pub msg: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid filter {:?} at byte {}: {}",
            clip_around(&self.input, self.pos),
            self.pos,
            clip(&self.msg)
        )
    }
}

impl std::error::Error for FilterError {}

/// Something a filter can look at: the value of a field path, if present.
pub trait Fields {
    /// The value at `path` (e.g. `["labels", "a.b"]`), or None when absent.
    fn field(&self, path: &[String]) -> Option<&str>;
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

/// One `fieldpath[op value]` test.
#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, fields: &dyn Fields) -> bool {
        let value = fields.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value == Some(v.as_str()),
            Op::NotEqual(v) => value.unwrap_or("") != v,
            Op::Matches(re) => re.is_match(value.unwrap_or("")),
        }
    }
}

/// A parsed set of filter strings: any of them (each: all of its selectors).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

impl Filter {
    /// Parses filter strings the way containerd's `filters.ParseAll` does: no strings, or
    /// an empty string among them, match everything.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter, FilterError> {
        let mut any = Vec::with_capacity(filters.len());
        for f in filters {
            any.push(Parser::new(f.as_ref()).selectors()?);
        }
        Ok(Filter { any })
    }

    /// Whether `fields` passes the filter.
    pub fn matches(&self, fields: &dyn Fields) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|s| s.matches(fields)))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token<'a> {
    Eof,
    Field(&'a str),
    Value(&'a str),
    Quoted(&'a str),
    Sep(char),
    Op(&'a str),
}

#[derive(Clone)]
struct Scanner<'a> {
    input: &'a str,
    pos: usize,
    after_op: bool,
}

fn is_field_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

impl<'a> Scanner<'a> {
    fn err(&self, pos: usize, msg: impl Into<String>) -> FilterError {
        FilterError {
            input: self.input.to_string(),
            pos,
            msg: msg.into(),
        }
    }

    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        let len = self
            .rest()
            .char_indices()
            .find(|&(_, c)| !f(c))
            .map_or(self.rest().len(), |(i, _)| i);
        self.pos += len;
        &self.input[start..self.pos]
    }

    /// Returns the next token and its byte offset.
    fn scan(&mut self) -> Result<(usize, Token<'a>), FilterError> {
        self.take_while(char::is_whitespace);
        let start = self.pos;
        let Some(c) = self.rest().chars().next() else {
            return Ok((start, Token::Eof));
        };
        match c {
            '"' | '/' | '|' => {
                self.pos += c.len_utf8();
                let mut escaped = false;
                loop {
                    let Some(n) = self.rest().chars().next() else {
                        return Err(self.err(start, "quoted literal not terminated"));
                    };
                    self.pos += n.len_utf8();
                    match n {
                        '\n' => return Err(self.err(start, "quoted literal not terminated")),
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        _ if n == c => break,
                        _ => {}
                    }
                }
                self.after_op = false;
                Ok((start, Token::Quoted(&self.input[start..self.pos])))
            }
            ',' | '.' => {
                self.pos += 1;
                self.after_op = false;
                Ok((start, Token::Sep(c)))
            }
            '=' | '!' | '~' => {
                let op = self.take_while(|c| matches!(c, '=' | '!' | '~'));
                self.after_op = true;
                Ok((start, Token::Op(op)))
            }
            _ if self.after_op => {
                self.after_op = false;
                Ok((start, Token::Value(self.take_while(is_value_char))))
            }
            _ if is_field_char(c) => Ok((start, Token::Field(self.take_while(is_field_char)))),
            _ => Err(self.err(start, format!("unexpected character {c:?}"))),
        }
    }

    fn peek(&self) -> Result<Token<'a>, FilterError> {
        self.clone().scan().map(|(_, t)| t)
    }
}

struct Parser<'a> {
    scanner: Scanner<'a>,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            scanner: Scanner {
                input,
                pos: 0,
                after_op: false,
            },
        }
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, FilterError> {
        if self.scanner.input.is_empty() {
            return Ok(Vec::new());
        }
        let mut all = vec![self.selector()?];
        loop {
            let (pos, tok) = self.scanner.scan()?;
            match tok {
                Token::Sep(',') => all.push(self.selector()?),
                Token::Eof => return Ok(all),
                _ => return Err(self.scanner.err(pos, "expected `,` or end of filter")),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let path = self.fieldpath()?;
        if matches!(self.scanner.peek()?, Token::Sep(',') | Token::Eof) {
            return Ok(Selector {
                path,
                op: Op::Present,
            });
        }
        let (pos, tok) = self.scanner.scan()?;
        let op = match tok {
            Token::Op(op @ ("==" | "!=" | "~=")) => op,
            Token::Op(op) => {
                return Err(self
                    .scanner
                    .err(pos, format!("unsupported operator {op:?}")))
            }
            _ => return Err(self.scanner.err(pos, "expected an operator (==, != or ~=)")),
        };
        let (pos, tok) = self.scanner.scan()?;
        let value = match tok {
            Token::Value(v) | Token::Field(v) => v.to_string(),
            Token::Quoted(q) => self.unquote(pos, q, op == "~=")?,
            Token::Eof => return Err(self.scanner.err(pos, "expected a value, found the end")),
            _ => return Err(self.scanner.err(pos, "expected a value or quoted string")),
        };
        let op = match op {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => Op::Matches(Regex::new(&value).map_err(|e| {
                self.scanner
                    .err(pos, format!("bad regular expression: {e}"))
            })?),
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, FilterError> {
        let mut path = vec![self.field()?];
        while self.scanner.peek()? == Token::Sep('.') {
            self.scanner.scan()?;
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, FilterError> {
        let (pos, tok) = self.scanner.scan()?;
        match tok {
            Token::Field(f) => Ok(f.to_string()),
            Token::Quoted(q) => self.unquote(pos, q, false),
            _ => Err(self
                .scanner
                .err(pos, "expected a field name or quoted string")),
        }
    }

    fn unquote(&self, pos: usize, quoted: &str, alt_quotes: bool) -> Result<String, FilterError> {
        let quote = quoted.chars().next().unwrap_or('"');
        if quote != '"' && !alt_quotes {
            return Err(self.scanner.err(
                pos,
                format!("{quote:?} quotes are only allowed for ~= values"),
            ));
        }
        unquote(quoted, quote).map_err(|msg| self.scanner.err(pos, msg))
    }
}

/// Decodes a quoted string (quotes included) with Go's escape sequences: `\xHH` and
/// octal `\ooo` give bytes, `\uHHHH` and `\UHHHHHHHH` characters; the result must be UTF-8.
fn unquote(quoted: &str, quote: char) -> Result<String, String> {
    let inner = &quoted[quote.len_utf8()..quoted.len() - quote.len_utf8()];
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    let push =
        |out: &mut Vec<u8>, c: char| out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    while let Some(c) = chars.next() {
        if c != '\\' {
            push(&mut out, c);
            continue;
        }
        let e = chars.next().ok_or("dangling backslash")?;
        let simple = match e {
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'f' => Some('\x0c'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\x0b'),
            '\\' => Some('\\'),
            _ if e == quote => Some(e),
            _ => None,
        };
        if let Some(s) = simple {
            push(&mut out, s);
            continue;
        }
        let (radix, digits) = match e {
            'x' => (16, 2),
            'u' => (16, 4),
            'U' => (16, 8),
            '0'..='7' => (8, 2),
            _ => return Err(format!("illegal escape sequence \\{e}")),
        };
        let mut text = String::new();
        if radix == 8 {
            text.push(e);
        }
        for _ in 0..digits {
            text.push(chars.next().ok_or("short numeric escape")?);
        }
        let v = u32::from_str_radix(&text, radix)
            .map_err(|_| format!("bad numeric escape {text:?}"))?;
        match e {
            'u' | 'U' => push(
                &mut out,
                char::from_u32(v).ok_or_else(|| format!("escape {text:?} is not a character"))?,
            ),
            _ => out.push(u8::try_from(v).map_err(|_| format!("escape {text:?} is above 255"))?),
        }
    }
    String::from_utf8(out).map_err(|_| "quoted string is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Obj {
        name: &'static str,
        kind: &'static str,
        parent: &'static str,
        labels: BTreeMap<String, String>,
    }

    impl Fields for Obj {
        fn field(&self, path: &[String]) -> Option<&str> {
            match path.first()?.as_str() {
                "name" => Some(self.name),
                "kind" => Some(self.kind),
                "parent" => Some(self.parent),
                "labels" if !self.labels.is_empty() => {
                    self.labels.get(&path[1..].join(".")).map(String::as_str)
                }
                _ => None,
            }
        }
    }

    fn obj(name: &'static str, parent: &'static str, labels: &[(&str, &str)]) -> Obj {
        Obj {
            name,
            kind: "committed",
            parent,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn m(filters: &[&str], o: &Obj) -> bool {
        Filter::parse_all(filters).unwrap().matches(o)
    }

    #[test]
    fn remote_snapshot_handshake_filter() {
        let f = r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent==ns/1/sha256:p"#;
        let hit = obj(
            "x",
            "ns/1/sha256:p",
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        let wrong_parent = obj(
            "x",
            "other",
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        let wrong_ref = obj(
            "x",
            "ns/1/sha256:p",
            &[("containerd.io/snapshot.ref", "sha256:abd")],
        );
        assert!(m(&[f], &hit));
        assert!(!m(&[f], &wrong_parent));
        assert!(!m(&[f], &wrong_ref));
    }

    #[test]
    fn dotted_label_key_without_quotes() {
        let o = obj("x", "", &[("a.b.c", "1")]);
        assert!(m(&["labels.a.b.c==1"], &o));
        assert!(!m(&["labels.a.b==1"], &o));
    }

    #[test]
    fn and_or_presence_and_not_equal() {
        let o = obj("p", "", &[("l", "2")]);
        assert!(m(&["name==p,labels.l"], &o));
        assert!(!m(&["name==p,labels.missing"], &o));
        assert!(
            m(&["name==zz", "labels.l==2"], &o),
            "several strings are OR"
        );
        assert!(!m(&["name==zz", "labels.l==3"], &o));
        assert!(m(&["parent!=x"], &o));
        assert!(!m(&[r#"parent!="""#], &o), "empty parent equals \"\"");
        assert!(m(&["labels.nope!=v"], &o), "absent counts as empty for !=");
        assert!(m(&["kind==committed"], &o));
    }

    #[test]
    fn empty_filters_match_all() {
        let o = obj("p", "", &[]);
        assert!(m(&[], &o));
        assert!(m(&[""], &o));
        assert!(!m(&["labels.l"], &o), "no labels: not present");
    }

    #[test]
    fn regex_operator_with_alternative_quotes() {
        let o = obj("ns/1/sha256:abc", "", &[("v", "a/b|c")]);
        assert!(m(&["name~=^ns/1/"], &o));
        assert!(m(&["name~=/abc$/"], &o));
        assert!(m(&[r"labels.v~=|a/b\|c|"], &o));
        assert!(!m(&["name~=^x"], &o));
    }

    #[test]
    fn quoted_escapes_and_spaces() {
        let o = obj("a b\"c", "", &[("k y", "é")]);
        assert!(m(&[r#"name=="a b\"c""#], &o));
        assert!(m(&[r#" labels."k y" == "\u00e9" "#], &o));
        assert!(
            m(&[r#"labels."k\x20y"=="\303\251""#], &o),
            "byte escapes build UTF-8"
        );
    }

    #[test]
    fn value_may_contain_operators_and_dots() {
        let o = obj("a=b.c", "", &[]);
        assert!(m(&["name==a=b.c"], &o));
    }

    #[test]
    fn errors_name_the_position() {
        for (bad, pos) in [
            ("name==", 6),
            ("name=x", 4),
            ("name===x", 4),
            ("name==x y", 8),
            ("labels.", 7),
            (r#"name=="abc"#, 6),
            ("name==/x/", 6),
            (r#"/name/==x"#, 0),
            (r#"name~="(""#, 6),
            ("name==x,", 8),
            (r#"name=="\q""#, 6),
            ("na$me", 2),
        ] {
            let err = Filter::parse_all(&[bad]).expect_err(bad);
            assert_eq!(err.pos, pos, "{bad}: {err}");
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains(&format!("at byte {pos}")), "{err}");
        }
    }
}
