//! Recursive-descent parser for RFC 7644 §3.4.2.2 filters and §3.5.2 paths.
//!
//! ```text
//! filter   = and *("or" and)
//! and      = unary *("and" unary)
//! unary    = "not" "(" filter ")" / "(" filter ")" / attrExp / valuePath
//! valuePath= attrPath "[" filter "]"
//! attrExp  = attrPath "pr" / attrPath compareOp compValue
//! ```
//!
//! Keywords and operators ignore case; `not` binds tighter than `and`,
//! which binds tighter than `or`.

use crate::{
    AttrPath, CompareOp, Filter, MAX_DEPTH, MAX_FILTER_LEN, PatchPath, ScimError, ScimType,
};
use serde_json::Value;

/// Parse a `filter` query parameter.
pub fn parse_filter(s: &str) -> Result<Filter, ScimError> {
    let mut p = Parser::new(s, ScimType::InvalidFilter)?;
    let f = p.filter(0)?;
    p.ws();
    if !p.done() {
        return Err(p.err("unexpected text after the end of the filter"));
    }
    Ok(f)
}

/// Parse a PATCH operation's `path`.
pub fn parse_path(s: &str) -> Result<PatchPath, ScimError> {
    let mut p = Parser::new(s, ScimType::InvalidPath)?;
    p.ws();
    let attr = p.attr_path()?;
    let mut filter = None;
    let mut sub = None;
    if p.eat(b'[') {
        if attr.sub.is_some() {
            return Err(p.err("a value filter cannot follow a sub-attribute"));
        }
        filter = Some(p.filter(1)?);
        p.ws();
        if !p.eat(b']') {
            return Err(p.err("expected ']'"));
        }
        if p.eat(b'.') {
            let w = p.word();
            if !valid_name(w) {
                return Err(p.err("expected a sub-attribute name after '.'"));
            }
            sub = Some(w.to_owned());
        }
    }
    p.ws();
    if !p.done() {
        return Err(p.err("unexpected text after the end of the path"));
    }
    Ok(PatchPath { attr, filter, sub })
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
    kind: ScimType,
}

fn valid_name(w: &str) -> bool {
    let mut c = w.chars();
    match c.next() {
        Some(f) if f.is_ascii_alphabetic() || f == '$' => {}
        _ => return false,
    }
    c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-' | b'$' | b'+')
}

impl<'a> Parser<'a> {
    fn new(s: &'a str, kind: ScimType) -> Result<Parser<'a>, ScimError> {
        if s.len() > MAX_FILTER_LEN {
            return Err(ScimError::new(
                kind,
                format!("longer than {MAX_FILTER_LEN} bytes"),
            ));
        }
        Ok(Parser { s, pos: 0, kind })
    }

    fn err(&self, what: &str) -> ScimError {
        ScimError::new(self.kind, format!("{what} (at byte {})", self.pos))
    }

    fn done(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|b| b == b' ' || b == b'\t') {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(is_word) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    /// The next word without consuming it.
    fn peek_word(&mut self) -> &'a str {
        let save = self.pos;
        self.ws();
        let w = self.word();
        self.pos = save;
        w
    }

    fn keyword(&mut self, k: &str) -> bool {
        let save = self.pos;
        self.ws();
        let w = self.word();
        if w.eq_ignore_ascii_case(k) {
            true
        } else {
            self.pos = save;
            false
        }
    }

    fn filter(&mut self, depth: usize) -> Result<Filter, ScimError> {
        if depth > MAX_DEPTH {
            return Err(self.err("filter nested too deeply"));
        }
        let mut left = self.and(depth)?;
        while self.keyword("or") {
            let right = self.and(depth)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Filter, ScimError> {
        let mut left = self.unary(depth)?;
        while self.keyword("and") {
            let right = self.unary(depth)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Filter, ScimError> {
        self.ws();
        if self.peek_word().eq_ignore_ascii_case("not") {
            let save = self.pos;
            self.keyword("not");
            self.ws();
            if self.eat(b'(') {
                let inner = self.filter(depth + 1)?;
                self.ws();
                if !self.eat(b')') {
                    return Err(self.err("expected ')'"));
                }
                return Ok(Filter::Not(Box::new(inner)));
            }
            // an attribute called "not"
            self.pos = save;
        }
        if self.eat(b'(') {
            let inner = self.filter(depth + 1)?;
            self.ws();
            if !self.eat(b')') {
                return Err(self.err("expected ')'"));
            }
            return Ok(inner);
        }
        let path = self.attr_path()?;
        if self.eat(b'[') {
            if path.sub.is_some() {
                return Err(self.err("a value filter cannot follow a sub-attribute"));
            }
            let inner = self.filter(depth + 1)?;
            self.ws();
            if !self.eat(b']') {
                return Err(self.err("expected ']'"));
            }
            return Ok(Filter::ValuePath(path, Box::new(inner)));
        }
        self.ws();
        let op = self.word();
        let op = match op.to_ascii_lowercase().as_str() {
            "pr" => return Ok(Filter::Present(path)),
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            "" => return Err(self.err("expected an operator")),
            _ => return Err(self.err(&format!("unknown operator {op:?}"))),
        };
        self.ws();
        let value = self.value()?;
        Ok(Filter::Compare(path, op, value))
    }

    fn attr_path(&mut self) -> Result<AttrPath, ScimError> {
        self.ws();
        let w = self.word();
        if w.is_empty() {
            return Err(self.err("expected an attribute name"));
        }
        let (uri, rest) = match w.rfind(':') {
            Some(i) => (Some(&w[..i]), &w[i + 1..]),
            None => (None, w),
        };
        let (name, sub) = match rest.split_once('.') {
            Some((n, s)) => (n, Some(s)),
            None => (rest, None),
        };
        if !valid_name(name) || sub.is_some_and(|s| !valid_name(s)) {
            return Err(self.err(&format!("{w:?} is not an attribute path")));
        }
        if uri.is_some_and(|u| u.is_empty() || !u.contains(':')) {
            return Err(self.err(&format!("{w:?} has a malformed schema URI")));
        }
        Ok(AttrPath {
            uri: uri.map(str::to_owned),
            name: name.to_owned(),
            sub: sub.map(str::to_owned),
        })
    }

    fn value(&mut self) -> Result<Value, ScimError> {
        if self.peek() == Some(b'"') {
            let start = self.pos;
            self.pos += 1;
            loop {
                match self.peek() {
                    None => return Err(self.err("unterminated string")),
                    Some(b'\\') => self.pos += 2,
                    Some(b'"') => {
                        self.pos += 1;
                        break;
                    }
                    Some(_) => self.pos += 1,
                }
            }
            let lit = self
                .s
                .get(start..self.pos)
                .ok_or_else(|| self.err("unterminated string"))?;
            return serde_json::from_str::<String>(lit)
                .map(Value::String)
                .map_err(|_| self.err("malformed string"));
        }
        let w = self.word();
        match w.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            "null" => Ok(Value::Null),
            "" => Err(self.err("expected a value")),
            _ => serde_json::from_str::<serde_json::Number>(w)
                .map(Value::Number)
                .map_err(|_| self.err(&format!("{w:?} is not a value (strings are quoted)"))),
        }
    }
}
