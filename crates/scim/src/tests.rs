use super::*;
use proptest::prelude::*;
use serde_json::json;

const CTX: Ctx<'static> = Ctx {
    core: SCHEMA_USER,
    case_exact: &["id", "externalid", "members.value"],
    extensions: &[SCHEMA_ENTERPRISE],
};

fn user() -> Value {
    json!({
        "schemas": [SCHEMA_USER, SCHEMA_ENTERPRISE],
        "id": "A1b2",
        "userName": "Alice.Trader",
        "title": "Trader",
        "active": true,
        "age": 41,
        "name": {"givenName": "Alice", "familyName": "Lee"},
        "emails": [
            {"value": "alice@bank.example", "type": "work", "primary": true},
            {"value": "al@home.example", "type": "home"}
        ],
        SCHEMA_ENTERPRISE: {"department": "Rates Trading"}
    })
}

fn m(f: &str) -> bool {
    match parse_filter(f) {
        Ok(p) => match p.matches(&user(), &CTX) {
            Ok(b) => b,
            Err(e) => panic!("{f}: {e}"),
        },
        Err(e) => panic!("{f}: {e}"),
    }
}

#[test]
fn operators_and_case() {
    assert!(m(r#"userName eq "alice.trader""#));
    assert!(m(r#"USERNAME Eq "ALICE.TRADER""#));
    assert!(!m(r#"id eq "a1b2""#), "id is case-exact");
    assert!(m(r#"id eq "A1b2""#));
    assert!(m(r#"userName ne "bob""#));
    assert!(
        m(r#"nickName ne "bob""#),
        "ne holds for an absent attribute"
    );
    assert!(m(r#"userName co "trad""#));
    assert!(m(r#"userName sw "ali""#));
    assert!(m(r#"userName ew "DER""#));
    assert!(m("title pr"));
    assert!(!m("nickName pr"));
    assert!(m("age gt 40 and age le 41 and age lt 42 and age ge 41"));
    assert!(!m("age gt 41"));
    assert!(m(r#"userName gt "a""#));
    assert!(m("active eq true"));
    assert!(m("nickName eq null"));
    assert!(m(r#"name.givenName eq "alice""#));
}

#[test]
fn logic_and_grouping() {
    assert!(m(r#"title eq "x" or userName sw "a""#));
    assert!(!m(r#"title eq "x" and userName sw "a""#));
    assert!(m(r#"not (title eq "x")"#));
    assert!(m(r#"not(title eq "x")"#));
    // and binds tighter than or
    assert!(m(r#"title eq "Trader" or title eq "x" and age eq 1"#));
    assert!(!m(r#"(title eq "Trader" or title eq "x") and age eq 1"#));
    assert!(m(r#"not (not (title pr))"#));
}

#[test]
fn multi_valued_value_paths_and_extensions() {
    assert!(m(r#"emails co "home.example""#));
    assert!(m(r#"emails.type eq "home""#));
    assert!(m(r#"emails[type eq "work" and value ew "bank.example"]"#));
    assert!(!m(r#"emails[type eq "home" and primary eq true]"#));
    assert!(m(&format!(r#"{SCHEMA_ENTERPRISE}:department sw "rates""#)));
    assert!(m(&format!(r#"{SCHEMA_USER}:userName pr"#)));
    assert!(!m(&format!(r#"{SCHEMA_ENTERPRISE}:manager pr"#)));
}

#[test]
fn bad_filters_are_refused_with_invalid_filter() {
    for f in [
        "",
        "userName",
        "userName eq",
        r#"userName xx "a""#,
        r#"userName eq "a" and"#,
        r#"(userName eq "a""#,
        r#"emails[type eq "work""#,
        r#"userName eq a"#,
        r#"userName eq "unterminated"#,
        r#"userName eq "a")"#,
        "1abc pr",
        r#"name.givenName[value eq "x"] pr"#,
    ] {
        let e = parse_filter(f)
            .err()
            .unwrap_or_else(|| panic!("accepted {f:?}"));
        assert_eq!(e.kind, ScimType::InvalidFilter, "{f}");
    }
    let deep = format!("{}title pr{}", "(".repeat(100), ")".repeat(100));
    assert!(parse_filter(&deep).is_err());
    assert!(parse_filter(&"a".repeat(MAX_FILTER_LEN + 1)).is_err());
    // operand type errors are found at evaluation
    let f = parse_filter("age co 4").unwrap_or_else(|e| panic!("{e}"));
    assert!(f.matches(&user(), &CTX).is_err());
    let f = parse_filter("active gt true").unwrap_or_else(|e| panic!("{e}"));
    assert!(f.matches(&user(), &CTX).is_err());
}

fn patch(res: &mut Value, ops: Value) -> Result<(), ScimError> {
    let ops = parse_patch(&json!({"schemas": [SCHEMA_PATCH], "Operations": ops}))?;
    apply_patch(res, &ops, &CTX)
}

#[test]
fn patch_operations() {
    let mut g = json!({"displayName": "research", "members": [{"value": "u1"}, {"value": "u2"}]});
    let gctx = Ctx {
        core: SCHEMA_GROUP,
        ..CTX
    };
    let ops = |o: Value| parse_patch(&json!({"schemas": [SCHEMA_PATCH], "Operations": o}));
    let run =
        |g: &mut Value, o: Value| -> Result<(), ScimError> { apply_patch(g, &ops(o)?, &gctx) };
    run(
        &mut g,
        json!([{"op": "add", "path": "members", "value": [{"value": "u3"}, {"value": "u1"}]}]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g["members"].as_array().map(Vec::len), Some(3));
    run(
        &mut g,
        json!([{"op": "remove", "path": "members[value eq \"u2\"]"}]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g["members"], json!([{"value": "u1"}, {"value": "u3"}]));
    // Entra ID style: remove listed values
    run(
        &mut g,
        json!([{"op": "Remove", "path": "members", "value": [{"value": "u1"}]}]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g["members"], json!([{"value": "u3"}]));
    run(
        &mut g,
        json!([{"op": "replace", "value": {"displayName": "research-eu"}}]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g["displayName"], "research-eu");
    run(&mut g, json!([{"op": "remove", "path": "members"}])).unwrap_or_else(|e| panic!("{e}"));
    assert!(g.get("members").is_none());

    let mut u = user();
    patch(
        &mut u,
        json!([{"op": "replace", "path": "active", "value": false}]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u["active"], false);
    patch(&mut u, json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "a@new.example"}]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u["emails"][0]["value"], "a@new.example");
    patch(
        &mut u,
        json!([{"op": "add", "path": "name.middleName", "value": "Q"}]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u["name"]["middleName"], "Q");
    patch(
        &mut u,
        json!([{"op": "replace", "value": {SCHEMA_ENTERPRISE: {"department": "Research"}}}]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u[SCHEMA_ENTERPRISE]["department"], "Research");
    patch(&mut u, json!([{"op": "replace", "path": format!("{SCHEMA_ENTERPRISE}:department"), "value": "Sales"}]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u[SCHEMA_ENTERPRISE]["department"], "Sales");
    patch(&mut u, json!([{"op": "remove", "path": "title"}])).unwrap_or_else(|e| panic!("{e}"));
    assert!(u.get("title").is_none());
    // a whole extension by its URI, and removing what is already gone
    patch(
        &mut u,
        json!([{"op": "add", "path": SCHEMA_ENTERPRISE, "value": {"division": "FICC"}}]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u[SCHEMA_ENTERPRISE]["division"], "FICC");
    patch(&mut u, json!([{"op": "remove", "path": SCHEMA_ENTERPRISE}]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(u.get(SCHEMA_ENTERPRISE).is_none());
    patch(
        &mut u,
        json!([{"op": "remove", "path": format!("{SCHEMA_ENTERPRISE}:department")}]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bad_patches_are_refused_with_their_scim_type() {
    let mut u = user();
    let cases = [
        (json!({"Operations": []}), ScimType::InvalidSyntax),
        (
            json!({"schemas": [SCHEMA_PATCH], "Operations": []}),
            ScimType::InvalidSyntax,
        ),
        (
            json!({"schemas": [SCHEMA_PATCH], "Operations": [{"op": "move"}]}),
            ScimType::InvalidSyntax,
        ),
        (
            json!({"schemas": [SCHEMA_PATCH], "Operations": [{"op": "remove"}]}),
            ScimType::NoTarget,
        ),
        (
            json!({"schemas": [SCHEMA_PATCH], "Operations": [{"op": "add", "path": "title"}]}),
            ScimType::InvalidValue,
        ),
        (
            json!({"schemas": [SCHEMA_PATCH], "Operations": [{"op": "add", "value": 3}]}),
            ScimType::InvalidValue,
        ),
        (
            json!({"schemas": [SCHEMA_PATCH], "Operations": [{"op": "add", "path": "emails[", "value": 3}]}),
            ScimType::InvalidPath,
        ),
    ];
    for (body, kind) in cases {
        let e = parse_patch(&body)
            .err()
            .unwrap_or_else(|| panic!("accepted {body}"));
        assert_eq!(e.kind, kind, "{body}: {e}");
    }
    let e = patch(
        &mut u,
        json!([{"op": "replace", "path": "emails[type eq \"fax\"].value", "value": "x"}]),
    )
    .err()
    .unwrap_or_else(|| panic!("replaced nothing"));
    assert_eq!(e.kind, ScimType::NoTarget);
}

#[test]
fn projection() {
    let core = |n: &str| AttrPath {
        uri: None,
        name: n.into(),
        sub: None,
    };
    let p = project(
        &user(),
        &[
            core("userName"),
            AttrPath {
                uri: None,
                name: "name".into(),
                sub: Some("givenName".into()),
            },
        ],
        &[],
        &["id", "schemas"],
        &CTX,
    );
    assert_eq!(
        p,
        json!({"schemas": [SCHEMA_USER, SCHEMA_ENTERPRISE], "id": "A1b2", "userName": "Alice.Trader", "name": {"givenName": "Alice"}})
    );
    let p = project(
        &user(),
        &[],
        &[core("emails"), core("id")],
        &["id", "schemas"],
        &CTX,
    );
    assert!(p.get("emails").is_none());
    assert_eq!(p["id"], "A1b2", "id is always returned");
    let ent = AttrPath {
        uri: Some(SCHEMA_ENTERPRISE.into()),
        name: "department".into(),
        sub: None,
    };
    let p = project(&user(), &[ent], &[], &["id"], &CTX);
    assert_eq!(p[SCHEMA_ENTERPRISE]["department"], "Rates Trading");
}

// ---- property tests ----

fn arb_name() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9_-]{0,6}".prop_filter("keywords", |s| {
        !matches!(
            s.to_ascii_lowercase().as_str(),
            "not"
                | "and"
                | "or"
                | "pr"
                | "eq"
                | "ne"
                | "co"
                | "sw"
                | "ew"
                | "gt"
                | "ge"
                | "lt"
                | "le"
        )
    })
}

fn arb_path() -> impl Strategy<Value = AttrPath> {
    (
        prop::option::of(Just(SCHEMA_ENTERPRISE.to_owned())),
        arb_name(),
        prop::option::of(arb_name()),
    )
        .prop_map(|(uri, name, sub)| AttrPath { uri, name, sub })
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        any::<i32>().prop_map(|i| json!(i)),
        ".{0,8}".prop_map(Value::String),
    ]
}

fn arb_op() -> impl Strategy<Value = CompareOp> {
    prop::sample::select(vec![
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Co,
        CompareOp::Sw,
        CompareOp::Ew,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::Lt,
        CompareOp::Le,
    ])
}

fn arb_filter() -> impl Strategy<Value = Filter> {
    let leaf = prop_oneof![
        arb_path().prop_map(Filter::Present),
        (arb_path(), arb_op(), arb_value()).prop_map(|(p, o, v)| Filter::Compare(p, o, v)),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Filter::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Filter::Or(Box::new(a), Box::new(b))),
            inner.clone().prop_map(|a| Filter::Not(Box::new(a))),
            (arb_name(), inner).prop_map(|(n, f)| Filter::ValuePath(
                AttrPath {
                    uri: None,
                    name: n,
                    sub: None
                },
                Box::new(f)
            )),
        ]
    })
}

/// A filter with its simple leaves' inner paths made sub-attribute free
/// (inside a value path, paths are relative and may not carry a URI).
fn normalise(f: Filter, inside: bool) -> Filter {
    let fix = |mut p: AttrPath| {
        if inside {
            p.uri = None;
        }
        p
    };
    match f {
        Filter::And(a, b) => Filter::And(
            Box::new(normalise(*a, inside)),
            Box::new(normalise(*b, inside)),
        ),
        Filter::Or(a, b) => Filter::Or(
            Box::new(normalise(*a, inside)),
            Box::new(normalise(*b, inside)),
        ),
        Filter::Not(a) => Filter::Not(Box::new(normalise(*a, inside))),
        Filter::Present(p) => Filter::Present(fix(p)),
        Filter::Compare(p, o, v) => Filter::Compare(fix(p), o, v),
        Filter::ValuePath(p, i) => Filter::ValuePath(fix(p), Box::new(normalise(*i, true))),
    }
}

/// A reference reading of `and`/`or`/`not` on the evaluated leaves.
fn reference(f: &Filter, r: &Value) -> Option<bool> {
    Some(match f {
        Filter::And(a, b) => reference(a, r)? && reference(b, r)?,
        Filter::Or(a, b) => reference(a, r)? || reference(b, r)?,
        Filter::Not(a) => !reference(a, r)?,
        leaf => leaf.matches(r, &CTX).ok()?,
    })
}

fn arb_resource() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(arb_name(), arb_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printed_filters_parse_back(f in arb_filter()) {
        let f = normalise(f, false);
        let text = f.to_string();
        let back = parse_filter(&text);
        prop_assert_eq!(back.as_ref().ok(), Some(&f), "{}", text);
    }

    #[test]
    fn logic_agrees_with_reference(f in arb_filter(), r in arb_resource()) {
        let f = normalise(f, false);
        if let (Ok(got), Some(want)) = (f.matches(&r, &CTX), reference(&f, &r)) {
            prop_assert_eq!(got, want);
        }
        let neg = Filter::Not(Box::new(f.clone()));
        if let (Ok(a), Ok(b)) = (f.matches(&r, &CTX), neg.matches(&r, &CTX)) {
            prop_assert_ne!(a, b);
        }
    }

    #[test]
    fn keyword_case_and_spacing_do_not_matter(f in arb_filter()) {
        let f = normalise(f, false);
        let text = f.to_string()
            .replace(" and ", "  AND ")
            .replace(" or ", " Or  ")
            .replace("not (", "NOT(")
            .replace(" pr)", " PR)")
            .replace(" pr]", " PR]");
        let text = match text.strip_suffix(" pr") {
            Some(t) => format!("{t} Pr"),
            None => text,
        };
        let back = parse_filter(&text);
        prop_assert_eq!(back.as_ref().ok(), Some(&f), "{}", text);
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,200}") {
        let _ = parse_filter(&s);
        let _ = parse_path(&s);
    }

    #[test]
    fn arbitrary_patches_never_panic(path in "[a-zA-Z\\[\\]\" .:=]{0,30}", v in arb_value(), r in arb_resource()) {
        let body = json!({"schemas": [SCHEMA_PATCH], "Operations": [
            {"op": "add", "path": path, "value": v},
            {"op": "remove", "path": path},
        ]});
        if let Ok(ops) = parse_patch(&body) {
            let mut r = r;
            let _ = apply_patch(&mut r, &ops, &CTX);
        }
    }
}
