//! PATCH (RFC 7644 §3.5.2): `add`, `replace` and `remove`, with or without
//! a path, on a JSON resource. All or nothing: the caller applies the
//! operations to a copy and keeps it only if every one succeeded.

use crate::{
    AttrPath, Ctx, Filter, PatchPath, SCHEMA_PATCH, ScimError, ScimType, key_ci, parse_path,
};
use serde_json::{Map, Value};

/// Most operations in one PATCH request.
pub const MAX_OPERATIONS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Replace,
    Remove,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub op: OpKind,
    pub path: Option<PatchPath>,
    pub value: Option<Value>,
}

fn bad(kind: ScimType, d: impl Into<String>) -> ScimError {
    ScimError::new(kind, d)
}

/// Parse a PatchOp request body.
pub fn parse_patch(body: &Value) -> Result<Vec<Operation>, ScimError> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad(ScimType::InvalidSyntax, "a PatchOp must be a JSON object"))?;
    let schemas_ok = crate::get_ci(obj, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(SCHEMA_PATCH)));
    if !schemas_ok {
        return Err(bad(
            ScimType::InvalidSyntax,
            format!("schemas must contain {SCHEMA_PATCH}"),
        ));
    }
    let ops = crate::get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(ScimType::InvalidSyntax, "Operations must be an array"))?;
    if ops.is_empty() {
        return Err(bad(ScimType::InvalidSyntax, "Operations is empty"));
    }
    if ops.len() > MAX_OPERATIONS {
        return Err(bad(
            ScimType::TooMany,
            format!("at most {MAX_OPERATIONS} operations per request"),
        ));
    }
    ops.iter()
        .enumerate()
        .map(|(i, o)| parse_op(i, o))
        .collect()
}

fn parse_op(i: usize, o: &Value) -> Result<Operation, ScimError> {
    let o = o.as_object().ok_or_else(|| {
        bad(
            ScimType::InvalidSyntax,
            format!("operation {i} is not an object"),
        )
    })?;
    let op = match crate::get_ci(o, "op")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("add") => OpKind::Add,
        Some("replace") => OpKind::Replace,
        Some("remove") => OpKind::Remove,
        _ => {
            return Err(bad(
                ScimType::InvalidSyntax,
                format!("operation {i}: op must be add, replace or remove"),
            ));
        }
    };
    let path = match crate::get_ci(o, "path") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_path(s)?),
        Some(_) => {
            return Err(bad(
                ScimType::InvalidPath,
                format!("operation {i}: path must be a string"),
            ));
        }
    };
    let value = crate::get_ci(o, "value").cloned();
    match (op, &path, &value) {
        (OpKind::Remove, None, _) => Err(bad(
            ScimType::NoTarget,
            format!("operation {i}: remove needs a path"),
        )),
        (OpKind::Add | OpKind::Replace, _, None) => Err(bad(
            ScimType::InvalidValue,
            format!("operation {i}: {op:?} needs a value"),
        )),
        (OpKind::Add | OpKind::Replace, None, Some(v)) if !v.is_object() => Err(bad(
            ScimType::InvalidValue,
            format!("operation {i}: without a path the value must be an object"),
        )),
        _ => Ok(Operation { op, path, value }),
    }
}

/// Apply operations in order to `resource` (an object).
pub fn apply_patch(
    resource: &mut Value,
    ops: &[Operation],
    ctx: &Ctx<'_>,
) -> Result<(), ScimError> {
    for o in ops {
        match (&o.path, &o.value) {
            (Some(p), v) => apply_at(resource, o.op, p, v.as_ref(), ctx)?,
            (None, Some(Value::Object(m))) => {
                for (k, v) in m {
                    for (p, v) in unfold(k, v)? {
                        apply_at(resource, o.op, &p, Some(&v), ctx)?;
                    }
                }
            }
            (None, _) => return Err(bad(ScimType::NoTarget, "operation without path or value")),
        }
    }
    Ok(())
}

/// A path-less value's key: an attribute, an extension (`urn:…:User` with
/// an object of its attributes), or an attribute with its schema URI.
fn unfold(k: &str, v: &Value) -> Result<Vec<(PatchPath, Value)>, ScimError> {
    if k.contains(':')
        && let Value::Object(ext) = v
        && k.starts_with("urn:")
        && !ext.is_empty()
    {
        let mut out = Vec::new();
        for (name, sub) in ext {
            let attr = AttrPath {
                uri: Some(k.to_owned()),
                name: name.clone(),
                sub: None,
            };
            out.push((
                PatchPath {
                    attr,
                    filter: None,
                    sub: None,
                },
                sub.clone(),
            ));
        }
        return Ok(out);
    }
    Ok(vec![(parse_path(k)?, v.clone())])
}

fn base_mut<'v>(
    res: &'v mut Value,
    p: &AttrPath,
    ctx: &Ctx<'_>,
    create: bool,
) -> Result<Option<&'v mut Map<String, Value>>, ScimError> {
    let obj = res
        .as_object_mut()
        .ok_or_else(|| bad(ScimType::InvalidValue, "resource is not an object"))?;
    match &p.uri {
        Some(u) if !u.eq_ignore_ascii_case(ctx.core) => {
            let key = match key_ci(obj, u) {
                Some(k) => k,
                None if create => {
                    obj.insert(u.clone(), Value::Object(Map::new()));
                    u.clone()
                }
                None => return Ok(None),
            };
            match obj.get_mut(&key) {
                Some(Value::Object(m)) => Ok(Some(m)),
                _ => Err(bad(
                    ScimType::InvalidPath,
                    format!("{u} is not an extension object"),
                )),
            }
        }
        _ => Ok(Some(obj)),
    }
}

fn apply_at(
    res: &mut Value,
    op: OpKind,
    p: &PatchPath,
    value: Option<&Value>,
    ctx: &Ctx<'_>,
) -> Result<(), ScimError> {
    let create = op != OpKind::Remove;
    if p.filter.is_none()
        && let Some(ext) = ctx.whole_extension(&p.attr)
    {
        let obj = res
            .as_object_mut()
            .ok_or_else(|| bad(ScimType::InvalidValue, "resource is not an object"))?;
        let key = key_ci(obj, ext).unwrap_or_else(|| ext.to_owned());
        return at_attr(obj, &key, op, value);
    }
    let Some(obj) = base_mut(res, &p.attr, ctx, create)? else {
        return Ok(());
    };
    let key = key_ci(obj, &p.attr.name).unwrap_or_else(|| p.attr.name.clone());
    match &p.filter {
        Some(f) => with_filter(obj, &key, op, f, p.sub.as_deref(), value, ctx),
        None => match &p.attr.sub {
            Some(sub) => at_sub(obj, &key, op, sub, value),
            None => at_attr(obj, &key, op, value),
        },
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            match (crate::get_ci(x, "value"), crate::get_ci(y, "value")) {
                (Some(vx), Some(vy)) => vx == vy,
                _ => a == b,
            }
        }
        _ => a == b,
    }
}

fn merge(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        let key = key_ci(into, k).unwrap_or_else(|| k.clone());
        into.insert(key, v.clone());
    }
}

fn at_attr(
    obj: &mut Map<String, Value>,
    key: &str,
    op: OpKind,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    match op {
        OpKind::Remove => {
            match (obj.get_mut(key), value) {
                // remove the listed values of a multi-valued attribute
                (Some(Value::Array(items)), Some(v)) => {
                    let gone: Vec<Value> = match v {
                        Value::Array(a) => a.clone(),
                        other => vec![other.clone()],
                    };
                    items.retain(|e| !gone.iter().any(|g| same_value(e, g)));
                    if items.is_empty() {
                        obj.remove(key);
                    }
                }
                _ => {
                    obj.remove(key);
                }
            }
            Ok(())
        }
        OpKind::Add | OpKind::Replace => {
            let v = value.ok_or_else(|| bad(ScimType::InvalidValue, "missing value"))?;
            match (obj.get_mut(key), v) {
                (Some(Value::Array(items)), new) if op == OpKind::Add => {
                    let news: Vec<Value> = match new {
                        Value::Array(a) => a.clone(),
                        other => vec![other.clone()],
                    };
                    for n in news {
                        if let Some(i) = items.iter().position(|e| same_value(e, &n)) {
                            items[i] = n;
                        } else {
                            items.push(n);
                        }
                    }
                }
                (Some(Value::Object(m)), Value::Object(n)) => merge(m, n),
                _ if v.is_null() => {
                    obj.remove(key);
                }
                _ => {
                    obj.insert(key.to_owned(), v.clone());
                }
            }
            Ok(())
        }
    }
}

fn at_sub(
    obj: &mut Map<String, Value>,
    key: &str,
    op: OpKind,
    sub: &str,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    if op == OpKind::Remove {
        match obj.get_mut(key) {
            Some(Value::Object(m)) => {
                if let Some(k) = key_ci(m, sub) {
                    m.remove(&k);
                }
            }
            Some(Value::Array(items)) => {
                for e in items.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(k) = key_ci(e, sub) {
                        e.remove(&k);
                    }
                }
            }
            _ => {}
        }
        return Ok(());
    }
    let v = value.ok_or_else(|| bad(ScimType::InvalidValue, "missing value"))?;
    let entry = obj
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    match entry {
        Value::Object(m) => {
            let k = key_ci(m, sub).unwrap_or_else(|| sub.to_owned());
            m.insert(k, v.clone());
            Ok(())
        }
        _ => Err(bad(
            ScimType::InvalidPath,
            format!("{key}.{sub}: {key} is not a single complex attribute"),
        )),
    }
}

fn with_filter(
    obj: &mut Map<String, Value>,
    key: &str,
    op: OpKind,
    f: &Filter,
    sub: Option<&str>,
    value: Option<&Value>,
    ctx: &Ctx<'_>,
) -> Result<(), ScimError> {
    let Some(Value::Array(items)) = obj.get_mut(key) else {
        return match op {
            OpKind::Remove => Ok(()),
            _ => Err(bad(
                ScimType::NoTarget,
                format!("{key} has no values for the filter to select"),
            )),
        };
    };
    let inner = Ctx { core: "", ..*ctx };
    let name = key.to_ascii_lowercase();
    let mut hits = Vec::new();
    for (i, e) in items.iter().enumerate() {
        if e.is_object() && f.matches_within(e, &inner, &name)? {
            hits.push(i);
        }
    }
    if hits.is_empty() {
        return match op {
            OpKind::Remove => Ok(()),
            _ => Err(bad(
                ScimType::NoTarget,
                format!("no value of {key} matches the filter"),
            )),
        };
    }
    match (op, sub) {
        (OpKind::Remove, None) => {
            let mut i = 0;
            items.retain(|_| {
                let keep = !hits.contains(&i);
                i += 1;
                keep
            });
            if items.is_empty() {
                obj.remove(key);
            }
        }
        (OpKind::Remove, Some(s)) => {
            for &i in &hits {
                if let Some(e) = items[i].as_object_mut()
                    && let Some(k) = key_ci(e, s)
                {
                    e.remove(&k);
                }
            }
        }
        (_, Some(s)) => {
            let v = value.ok_or_else(|| bad(ScimType::InvalidValue, "missing value"))?;
            for &i in &hits {
                if let Some(e) = items[i].as_object_mut() {
                    let k = key_ci(e, s).unwrap_or_else(|| s.to_owned());
                    e.insert(k, v.clone());
                }
            }
        }
        (_, None) => {
            let v = value.ok_or_else(|| bad(ScimType::InvalidValue, "missing value"))?;
            for &i in &hits {
                match (&mut items[i], v) {
                    (Value::Object(e), Value::Object(n)) if op == OpKind::Add => merge(e, n),
                    (slot, new) => *slot = new.clone(),
                }
            }
        }
    }
    Ok(())
}
