//! Filter evaluation over a JSON resource.
//!
//! A multi-valued attribute matches if any of its values does; a complex
//! multi-valued attribute named without a sub-attribute is compared through
//! its `value` (`emails co "@x"` reads `emails.value`). `ne` is the negation
//! of `eq`, so it also holds for an absent attribute.

use crate::{AttrPath, CompareOp, Filter, ScimError, ScimType, get_ci};
use serde_json::{Map, Value};

/// What evaluation needs to know of the resource type.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The core schema's URI: its attributes are at the top level.
    pub core: &'a str,
    /// Case-exact attributes, lowercase `name` or `name.sub` (`id`,
    /// `externalid`, `members.value`); other strings ignore case.
    pub case_exact: &'a [&'a str],
    /// The schema extensions' URIs: a path that is exactly one of them
    /// names the whole extension object.
    pub extensions: &'a [&'a str],
}

impl Ctx<'_> {
    /// The extension a path names as a whole (`urn:…:enterprise:2.0:User`
    /// parses as attribute `User` of schema `urn:…:2.0`), if it does.
    pub fn whole_extension(&self, p: &crate::AttrPath) -> Option<&str> {
        let uri = p.uri.as_deref()?;
        if p.sub.is_some() {
            return None;
        }
        self.extensions.iter().copied().find(|e| {
            e.len() == uri.len() + 1 + p.name.len()
                && e[..uri.len()].eq_ignore_ascii_case(uri)
                && e[uri.len() + 1..].eq_ignore_ascii_case(&p.name)
        })
    }
}

impl Filter {
    /// Does `resource` match this filter?
    pub fn matches(&self, resource: &Value, ctx: &Ctx<'_>) -> Result<bool, ScimError> {
        eval(self, resource, ctx, None)
    }
}

fn eval(f: &Filter, res: &Value, ctx: &Ctx<'_>, parent: Option<&str>) -> Result<bool, ScimError> {
    match f {
        Filter::And(a, b) => Ok(eval(a, res, ctx, parent)? && eval(b, res, ctx, parent)?),
        Filter::Or(a, b) => Ok(eval(a, res, ctx, parent)? || eval(b, res, ctx, parent)?),
        Filter::Not(a) => Ok(!eval(a, res, ctx, parent)?),
        Filter::Present(p) => Ok(any_leaf(res, p, ctx, &mut |v| present(v))),
        Filter::Compare(p, op, v) => {
            check_operand(*op, v)?;
            let exact = is_exact(p, ctx, parent);
            match op {
                CompareOp::Ne => Ok(!any_leaf(res, p, ctx, &mut |l| {
                    compare(l, CompareOp::Eq, v, exact)
                })),
                CompareOp::Eq if v.is_null() => Ok(!any_leaf(res, p, ctx, &mut |l| present(l))),
                _ => Ok(any_leaf(res, p, ctx, &mut |l| compare(l, *op, v, exact))),
            }
        }
        Filter::ValuePath(p, inner) => {
            let name = p.name.to_ascii_lowercase();
            let Some(v) = attr(res, p, ctx, parent) else {
                return Ok(false);
            };
            let elems: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for e in elems {
                if e.is_object() && eval(inner, e, &Ctx { core: "", ..*ctx }, Some(&name))? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

fn check_operand(op: CompareOp, v: &Value) -> Result<(), ScimError> {
    let ok = match op {
        CompareOp::Eq | CompareOp::Ne => true,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => v.is_string(),
        CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le => {
            v.is_string() || v.is_number()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(ScimError::new(
            ScimType::InvalidFilter,
            format!("operator {} cannot compare with {v}", op.as_str()),
        ))
    }
}

fn is_exact(p: &AttrPath, ctx: &Ctx<'_>, parent: Option<&str>) -> bool {
    // "parent.name.sub" without building it: match each dotted part
    ctx.case_exact.iter().any(|c| {
        let mut parts = c.split('.');
        parent.is_none_or(|par| parts.next().is_some_and(|x| x.eq_ignore_ascii_case(par)))
            && parts
                .next()
                .is_some_and(|x| x.eq_ignore_ascii_case(&p.name))
            && match &p.sub {
                Some(sub) => parts.next().is_some_and(|x| x.eq_ignore_ascii_case(sub)),
                None => true,
            }
            && parts.next().is_none()
    })
}

fn present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// The object holding the path's attribute (the resource, or an extension).
fn base<'v>(res: &'v Value, p: &AttrPath, ctx: &Ctx<'_>) -> Option<&'v Map<String, Value>> {
    let obj = res.as_object()?;
    match &p.uri {
        Some(u) if !u.eq_ignore_ascii_case(ctx.core) => get_ci(obj, u)?.as_object(),
        _ => Some(obj),
    }
}

fn attr<'v>(
    res: &'v Value,
    p: &AttrPath,
    ctx: &Ctx<'_>,
    _parent: Option<&str>,
) -> Option<&'v Value> {
    get_ci(base(res, p, ctx)?, &p.name)
}

/// Does `f` hold for any simple value the path names (multi-valued
/// attributes flattened; a complex one compared through its `value`)?
fn any_leaf(res: &Value, p: &AttrPath, ctx: &Ctx<'_>, f: &mut dyn FnMut(&Value) -> bool) -> bool {
    let Some(v) = attr(res, p, ctx, None) else {
        return false;
    };
    let sub = p.sub.as_deref();
    let mut one = |e: &Value| match (e, sub) {
        (Value::Object(o), Some(s)) => get_ci(o, s).is_some_and(&mut *f),
        (Value::Object(o), None) => get_ci(o, "value").is_some_and(&mut *f),
        (other, None) => f(other),
        (_, Some(_)) => false,
    };
    match v {
        Value::Array(a) => a.iter().any(&mut one),
        other => one(other),
    }
}

fn compare(leaf: &Value, op: CompareOp, v: &Value, exact: bool) -> bool {
    use std::cmp::Ordering;
    let ord = match (leaf, v) {
        (Value::String(a), Value::String(b)) if !exact && a.is_ascii() && b.is_ascii() => {
            let (a, b) = (a.as_bytes(), b.as_bytes());
            match op {
                CompareOp::Co => {
                    return b.is_empty() || a.windows(b.len()).any(|w| w.eq_ignore_ascii_case(b));
                }
                CompareOp::Sw => return a.len() >= b.len() && a[..b.len()].eq_ignore_ascii_case(b),
                CompareOp::Ew => {
                    return a.len() >= b.len() && a[a.len() - b.len()..].eq_ignore_ascii_case(b);
                }
                _ => a
                    .iter()
                    .map(u8::to_ascii_lowercase)
                    .cmp(b.iter().map(u8::to_ascii_lowercase)),
            }
        }
        (Value::String(a), Value::String(b)) => {
            let (a, b) = if exact {
                (a.clone(), b.clone())
            } else {
                (a.to_lowercase(), b.to_lowercase())
            };
            match op {
                CompareOp::Co => return a.contains(&b),
                CompareOp::Sw => return a.starts_with(&b),
                CompareOp::Ew => return a.ends_with(&b),
                _ => a.cmp(&b),
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            match a
                .as_f64()
                .zip(b.as_f64())
                .and_then(|(x, y)| x.partial_cmp(&y))
            {
                Some(o) => o,
                None => return false,
            }
        }
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Null, Value::Null) => Ordering::Equal,
        _ => return false,
    };
    match op {
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Ne => ord != Ordering::Equal,
        CompareOp::Gt => ord == Ordering::Greater,
        CompareOp::Ge => ord != Ordering::Less,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Le => ord != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

impl Filter {
    /// Evaluate a value filter against one element of the multi-valued
    /// attribute `parent` (lowercase), as in `members[value eq "x"]`.
    pub(crate) fn matches_within(
        &self,
        element: &Value,
        ctx: &Ctx<'_>,
        parent: &str,
    ) -> Result<bool, ScimError> {
        eval(self, element, ctx, Some(parent))
    }
}
