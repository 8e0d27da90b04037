//! SCIM 2.0 (RFC 7643/7644), the parts that are pure: the filter and
//! PATCH-path grammar, filter evaluation over JSON resources, PATCH
//! operations and attribute projection. The KM's `/scim/v2` endpoint keeps
//! the resources, their ids and versions; this crate never does I/O.
//!
//! ```text
//!  "userName sw \"a\" and not (title pr)" ──parse──▶ Filter ──matches(resource)──▶ bool
//!  PatchOp JSON ──parse_patch──▶ [Operation] ──apply(resource)──▶ resource'
//!  resource + attributes / excludedAttributes ──project──▶ what is returned
//! ```
//!
//! Attribute names are matched case-insensitively (RFC 7643 §2.1); string
//! values too, unless the caller names the attribute case-exact (`id`,
//! `externalId`, `members.value`, …). A filter is at most
//! [`MAX_FILTER_LEN`] bytes and [`MAX_DEPTH`] levels deep.
#![forbid(unsafe_code)]

mod eval;
mod parse;
mod patch;
mod project;

pub use eval::Ctx;
pub use parse::{parse_filter, parse_path};
pub use patch::{OpKind, Operation, apply_patch, parse_patch};
pub use project::project;

use serde_json::Value;

/// Longest filter or path accepted.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest nesting of parentheses, `not` and value paths.
pub const MAX_DEPTH: usize = 32;

pub const SCHEMA_USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const SCHEMA_GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const SCHEMA_ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const SCHEMA_LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const SCHEMA_ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const SCHEMA_PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// `[uri:]name[.sub]`, as written (matching ignores case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    pub uri: Option<String>,
    pub name: String,
    pub sub: Option<String>,
}

/// Comparison operators of RFC 7644 §3.4.2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Present(AttrPath),
    Compare(AttrPath, CompareOp, Value),
    /// `emails[type eq "work" and value co "@x"]`: some element matches.
    ValuePath(AttrPath, Box<Filter>),
}

/// A PATCH `path`: `attr`, `attr.sub`, `attr[filter]` or `attr[filter].sub`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    pub sub: Option<String>,
}

/// The `scimType` of an error (RFC 7644 §3.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScimType {
    InvalidFilter,
    TooMany,
    Uniqueness,
    Mutability,
    InvalidSyntax,
    InvalidPath,
    NoTarget,
    InvalidValue,
}

impl ScimType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScimType::InvalidFilter => "invalidFilter",
            ScimType::TooMany => "tooMany",
            ScimType::Uniqueness => "uniqueness",
            ScimType::Mutability => "mutability",
            ScimType::InvalidSyntax => "invalidSyntax",
            ScimType::InvalidPath => "invalidPath",
            ScimType::NoTarget => "noTarget",
            ScimType::InvalidValue => "invalidValue",
        }
    }
}

/// A refused filter, path or operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ScimError {
    pub kind: ScimType,
    pub detail: String,
}

impl ScimError {
    pub fn new(kind: ScimType, detail: impl Into<String>) -> ScimError {
        ScimError {
            kind,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for AttrPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(u) = &self.uri {
            write!(f, "{u}:")?;
        }
        f.write_str(&self.name)?;
        if let Some(s) = &self.sub {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

/// Prints a filter that parses back to the same tree (fully parenthesised).
impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Filter::And(a, b) => write!(f, "({a} and {b})"),
            Filter::Or(a, b) => write!(f, "({a} or {b})"),
            Filter::Not(a) => write!(f, "not ({a})"),
            Filter::Present(p) => write!(f, "{p} pr"),
            Filter::Compare(p, op, v) => write!(f, "{p} {} {v}", op.as_str()),
            Filter::ValuePath(p, inner) => write!(f, "{p}[{inner}]"),
        }
    }
}

/// Find `name` among an object's keys, ignoring case.
pub fn get_ci<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The key under which `name` is stored (ignoring case), if any.
pub fn key_ci(obj: &serde_json::Map<String, Value>, name: &str) -> Option<String> {
    if obj.contains_key(name) {
        return Some(name.to_owned());
    }
    obj.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

#[cfg(test)]
mod tests;
