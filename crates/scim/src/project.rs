//! `attributes` and `excludedAttributes` (RFC 7644 §3.4.2.5).

use crate::{AttrPath, Ctx, key_ci};
use serde_json::{Map, Value};

/// What of `resource` to return: only `attributes` (plus `always`), or all
/// but `excluded`. `always` names top-level attributes that are returned
/// whatever is asked (`id`, `schemas`, `meta`).
pub fn project(
    resource: &Value,
    attributes: &[AttrPath],
    excluded: &[AttrPath],
    always: &[&str],
    ctx: &Ctx<'_>,
) -> Value {
    let Some(obj) = resource.as_object() else {
        return resource.clone();
    };
    let is_always = |k: &str| always.iter().any(|a| a.eq_ignore_ascii_case(k));
    if !attributes.is_empty() {
        let mut out = Map::new();
        for (k, v) in obj {
            if is_always(k) {
                out.insert(k.clone(), v.clone());
            }
        }
        for p in attributes {
            copy_path(obj, &mut out, p, ctx);
        }
        return Value::Object(out);
    }
    let mut out = obj.clone();
    for p in excluded {
        if p.uri
            .as_deref()
            .is_none_or(|u| u.eq_ignore_ascii_case(ctx.core))
            && is_always(&p.name)
        {
            continue;
        }
        remove_path(&mut out, p, ctx);
    }
    Value::Object(out)
}

fn is_core(p: &AttrPath, ctx: &Ctx<'_>) -> bool {
    p.uri
        .as_deref()
        .is_none_or(|u| u.eq_ignore_ascii_case(ctx.core))
}

fn copy_path(from: &Map<String, Value>, to: &mut Map<String, Value>, p: &AttrPath, ctx: &Ctx<'_>) {
    if let Some(ext) = ctx.whole_extension(p) {
        if let Some(k) = key_ci(from, ext)
            && let Some(v) = from.get(&k)
        {
            to.insert(k, v.clone());
        }
        return;
    }
    let (src, dst) = if is_core(p, ctx) {
        (Some(from), to)
    } else {
        let Some(uri) = p.uri.as_deref() else { return };
        let Some(k) = key_ci(from, uri) else { return };
        let dst = to
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(dst) = dst else { return };
        (from.get(&k).and_then(Value::as_object), dst)
    };
    let Some(src) = src else { return };
    let Some(k) = key_ci(src, &p.name) else {
        return;
    };
    let Some(v) = src.get(&k) else { return };
    match &p.sub {
        None => {
            dst.insert(k, v.clone());
        }
        Some(s) => {
            let pick = |e: &Value| -> Option<Value> {
                let o = e.as_object()?;
                let sk = key_ci(o, s)?;
                let mut m = Map::new();
                m.insert(sk.clone(), o.get(&sk)?.clone());
                Some(Value::Object(m))
            };
            let picked = match v {
                Value::Array(a) => {
                    let items: Vec<Value> = a.iter().filter_map(pick).collect();
                    (!items.is_empty()).then_some(Value::Array(items))
                }
                other => pick(other),
            };
            if let Some(val) = picked {
                match (dst.get_mut(&k), val) {
                    (Some(Value::Object(have)), Value::Object(add)) => have.extend(add),
                    (_, val) => {
                        dst.insert(k, val);
                    }
                }
            }
        }
    }
}

fn remove_path(obj: &mut Map<String, Value>, p: &AttrPath, ctx: &Ctx<'_>) {
    if let Some(ext) = ctx.whole_extension(p) {
        if let Some(k) = key_ci(obj, ext) {
            obj.remove(&k);
        }
        return;
    }
    let target = if is_core(p, ctx) {
        Some(obj)
    } else {
        p.uri
            .as_deref()
            .and_then(|u| key_ci(obj, u))
            .and_then(|k| obj.get_mut(&k))
            .and_then(Value::as_object_mut)
    };
    let Some(t) = target else { return };
    let Some(k) = key_ci(t, &p.name) else { return };
    match &p.sub {
        None => {
            t.remove(&k);
        }
        Some(s) => match t.get_mut(&k) {
            Some(Value::Object(o)) => {
                if let Some(sk) = key_ci(o, s) {
                    o.remove(&sk);
                }
            }
            Some(Value::Array(a)) => {
                for e in a.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(sk) = key_ci(e, s) {
                        e.remove(&sk);
                    }
                }
            }
            _ => {}
        },
    }
}
