//! Keeps `docs/wire-protocol.md` in step with `protos/socketforward.proto`: the
//! doc's method table and its per-message field tables must list exactly what
//! the `.proto` declares (names, numbers, types), and exactly nerdbox's fields
//! and methods may be marked `core`. A field added to one file and not the
//! other fails here, so the contract a peer reads is the one the code speaks.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

/// One message field or enum value: number, name, type (empty for enum values).
type Entry = (u32, String, String);

/// What both files declare: messages and enums by name (nested ones dotted:
/// `PortEvent.Kind`), and methods as (name, request, response).
#[derive(Debug, Default, PartialEq, Eq)]
struct Schema {
    package: String,
    service: String,
    messages: BTreeMap<String, Vec<Entry>>,
    enums: BTreeMap<String, Vec<Entry>>,
    methods: Vec<(String, String, String)>,
}

/// The nerdbox contract: the only rows the doc may mark `core`.
const CORE_FIELDS: &[(&str, u32)] = &[
    ("BindRequest", 1),
    ("Socket", 1),
    ("Socket", 2),
    ("ConnectRequest", 1),
    ("ConnectRequest", 2),
    ("ConnectResult", 1),
    ("ConnectResult", 2),
];
const CORE_METHODS: &[&str] = &["Bind", "Accept"];

fn read(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} is needed by this test (it checks the doc against the .proto): {e}",
            path.display()
        )
    })
}

// ---- the .proto ----

fn tokens(proto: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in proto.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut word = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '"' {
                let mut s = String::from('"');
                for c in chars.by_ref() {
                    s.push(c);
                    if c == '"' {
                        break;
                    }
                }
                out.push(s);
            } else if "{}();=".contains(c) || c.is_whitespace() {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                if !c.is_whitespace() {
                    out.push(c.to_string());
                }
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
    }
    out
}

struct Parser {
    toks: Vec<String>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> String {
        let t = self
            .toks
            .get(self.at)
            .cloned()
            .unwrap_or_else(|| panic!("the .proto ends early"));
        self.at += 1;
        t
    }

    fn expect(&mut self, want: &str) {
        let got = self.next();
        assert_eq!(got, want, "the .proto: expected {want:?}, found {got:?}");
    }

    fn peek(&self) -> Option<&str> {
        self.toks.get(self.at).map(String::as_str)
    }

    fn number(&mut self) -> u32 {
        let t = self.next();
        t.parse()
            .unwrap_or_else(|_| panic!("the .proto: {t:?} is not a field number"))
    }

    fn message(&mut self, name: &str, schema: &mut Schema) {
        self.expect("{");
        let mut fields = Vec::new();
        loop {
            match self.next().as_str() {
                "}" => break,
                "message" => {
                    let inner = format!("{name}.{}", self.next());
                    self.message(&inner, schema);
                }
                "enum" => {
                    let inner = format!("{name}.{}", self.next());
                    self.enumeration(&inner, schema);
                }
                label @ ("repeated" | "optional") => {
                    let ty = format!("{label} {}", self.next());
                    fields.push(self.field(ty));
                }
                ty => {
                    let ty = ty.to_owned();
                    fields.push(self.field(ty));
                }
            }
        }
        fields.sort();
        schema.messages.insert(name.to_owned(), fields);
    }

    fn field(&mut self, ty: String) -> Entry {
        let name = self.next();
        self.expect("=");
        let number = self.number();
        self.expect(";");
        (number, name, ty)
    }

    fn enumeration(&mut self, name: &str, schema: &mut Schema) {
        self.expect("{");
        let mut values = Vec::new();
        while self.peek() != Some("}") {
            let value = self.next();
            self.expect("=");
            values.push((self.number(), value, String::new()));
            self.expect(";");
        }
        self.expect("}");
        values.sort();
        schema.enums.insert(name.to_owned(), values);
    }

    /// `stream T` or `T`, up to the closing parenthesis.
    fn rpc_type(&mut self) -> String {
        self.expect("(");
        let mut t = self.next();
        if t == "stream" {
            t = format!("stream {}", self.next());
        }
        self.expect(")");
        t
    }

    fn service(&mut self, schema: &mut Schema) {
        schema.service = self.next();
        self.expect("{");
        while self.peek() != Some("}") {
            self.expect("rpc");
            let name = self.next();
            let request = self.rpc_type();
            self.expect("returns");
            let response = self.rpc_type();
            self.expect(";");
            schema.methods.push((name, request, response));
        }
        self.expect("}");
    }
}

fn parse_proto(proto: &str) -> Schema {
    let mut p = Parser {
        toks: tokens(proto),
        at: 0,
    };
    let mut schema = Schema::default();
    while let Some(t) = p.peek().map(str::to_owned) {
        p.at += 1;
        match t.as_str() {
            "syntax" | "import" => while p.next() != ";" {},
            "package" => {
                schema.package = p.next();
                p.expect(";");
            }
            "service" => p.service(&mut schema),
            "message" => {
                let name = p.next();
                p.message(&name, &mut schema);
            }
            "enum" => {
                let name = p.next();
                p.enumeration(&name, &mut schema);
            }
            other => panic!("the .proto: unexpected {other:?} at the top level"),
        }
    }
    schema.methods.sort();
    schema
}

// ---- the doc ----

/// The text of the first `code span` in `s`.
fn code_span(s: &str) -> Option<&str> {
    let start = s.find('`')? + 1;
    let len = s[start..].find('`')?;
    Some(&s[start..start + len])
}

fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    inner
        .split('|')
        .map(|c| c.trim().replace('`', ""))
        .collect()
}

/// The doc's schema, and the `part` column of each message field and method
/// (`Message.number` or `Method` -> part).
fn parse_doc(doc: &str) -> (Schema, BTreeMap<String, String>) {
    enum Table {
        None,
        Methods,
        Message(String),
        Enum(String),
    }
    let mut schema = Schema::default();
    let mut parts = BTreeMap::new();
    let mut table = Table::None;
    for line in doc.lines() {
        if line.starts_with('#') {
            let title = line.trim_start_matches('#').trim();
            table = match (line.starts_with("#### "), code_span(title)) {
                (true, Some(name)) if title.contains("(enum)") => {
                    schema.enums.insert(name.to_owned(), Vec::new());
                    Table::Enum(name.to_owned())
                }
                (true, Some(name)) => {
                    schema.messages.insert(name.to_owned(), Vec::new());
                    Table::Message(name.to_owned())
                }
                _ if title == "Methods" => Table::Methods,
                _ => Table::None,
            };
            continue;
        }
        if !line.starts_with('|') {
            continue;
        }
        let c = cells(line);
        match &table {
            Table::None => {}
            Table::Methods => {
                if c.len() >= 4 && c[0] != "method" && !c[0].starts_with('-') {
                    schema
                        .methods
                        .push((c[0].clone(), c[1].clone(), c[2].clone()));
                    parts.insert(c[0].clone(), c[3].clone());
                }
            }
            Table::Message(name) => {
                if let (Ok(n), true) = (c[0].parse::<u32>(), c.len() >= 4) {
                    let fields = schema.messages.entry(name.clone()).or_default();
                    fields.push((n, c[1].clone(), c[2].clone()));
                    parts.insert(format!("{name}.{n}"), c[3].clone());
                }
            }
            Table::Enum(name) => {
                if let (Ok(n), true) = (c[0].parse::<u32>(), c.len() >= 2) {
                    let values = schema.enums.entry(name.clone()).or_default();
                    values.push((n, c[1].clone(), String::new()));
                }
            }
        }
    }
    for f in schema
        .messages
        .values_mut()
        .chain(schema.enums.values_mut())
    {
        f.sort();
    }
    schema.methods.sort();
    (schema, parts)
}

/// Every difference between the two, as readable lines.
fn differences(proto: &Schema, doc: &Schema) -> Vec<String> {
    fn compare<T: PartialEq + std::fmt::Debug>(
        what: &str,
        proto: &BTreeMap<String, T>,
        doc: &BTreeMap<String, T>,
        out: &mut Vec<String>,
    ) {
        for (name, p) in proto {
            match doc.get(name) {
                None => out.push(format!("{what} {name} is in the .proto, not in the doc")),
                Some(d) if d != p => out.push(format!(
                    "{what} {name}: the .proto has {p:?}, the doc {d:?}"
                )),
                Some(_) => {}
            }
        }
        for name in doc.keys().filter(|n| !proto.contains_key(*n)) {
            out.push(format!("{what} {name} is in the doc, not in the .proto"));
        }
    }
    let mut out = Vec::new();
    compare("message", &proto.messages, &doc.messages, &mut out);
    compare("enum", &proto.enums, &doc.enums, &mut out);
    if proto.methods != doc.methods {
        out.push(format!(
            "methods: the .proto has {:?}, the doc {:?}",
            proto.methods, doc.methods
        ));
    }
    out
}

fn wrong_parts(parts: &BTreeMap<String, String>) -> Vec<String> {
    let core: Vec<String> = CORE_FIELDS
        .iter()
        .map(|(m, n)| format!("{m}.{n}"))
        .chain(CORE_METHODS.iter().map(|m| (*m).to_owned()))
        .collect();
    let mut out = Vec::new();
    for (key, part) in parts {
        let is_core = core.contains(key);
        let ok = if is_core {
            part == "core"
        } else {
            part.starts_with("extension")
        };
        if !ok {
            let want = if is_core { "core" } else { "extension..." };
            out.push(format!("{key}: part {part:?}, expected {want}"));
        }
    }
    for key in core.iter().filter(|k| !parts.contains_key(*k)) {
        out.push(format!("{key}: nerdbox's, missing from the doc"));
    }
    out
}

#[test]
fn the_doc_lists_exactly_what_the_proto_declares() {
    let proto = parse_proto(&read("protos/socketforward.proto"));
    let doc_text = read("../docs/wire-protocol.md");
    let (doc, parts) = parse_doc(&doc_text);
    // The parsers found the contract, not an empty page.
    assert!(proto.messages.contains_key("ConnectRequest"), "{proto:?}");
    assert!(proto.enums.contains_key("PortEvent.Kind"), "{proto:?}");
    let diff = differences(&proto, &doc);
    assert!(
        diff.is_empty(),
        "docs/wire-protocol.md has drifted:\n{}",
        diff.join("\n")
    );
    let wrong = wrong_parts(&parts);
    assert!(
        wrong.is_empty(),
        "the doc's part column:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_doc_names_the_service_as_nerdbox_does() {
    let proto = parse_proto(&read("protos/socketforward.proto"));
    assert_eq!(proto.package, "nerdbox.services.socketforward.v1");
    assert_eq!(proto.service, "SocketForward");
    let full = format!("{}.{}", proto.package, proto.service);
    assert_eq!(full, sockfwd_proto::rpc::SERVICE_NAME);
    let doc = read("../docs/wire-protocol.md");
    assert!(doc.contains(&format!("`{full}`")), "the doc names {full}");
}

#[test]
fn a_drifted_doc_is_caught() {
    let proto = parse_proto(&read("protos/socketforward.proto"));
    let doc = read("../docs/wire-protocol.md");
    let row = "| 4 | `features` | `uint32` |";
    assert!(doc.contains(row), "the doc has the features row");

    let missing = doc.replace(row, "| x | `features` | `uint32` |");
    let diff = differences(&proto, &parse_doc(&missing).0);
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(diff[0].starts_with("message ConnectRequest:"), "{diff:?}");

    let renumbered = doc.replace(row, "| 5 | `features` | `uint32` |");
    assert_eq!(differences(&proto, &parse_doc(&renumbered).0).len(), 1);

    let retyped = doc.replace(row, "| 4 | `features` | `uint64` |");
    assert_eq!(differences(&proto, &parse_doc(&retyped).0).len(), 1);

    let promoted = doc.replace(
        "| 4 | `features` | `uint32` | extension: features |",
        "| 4 | `features` | `uint32` | core |",
    );
    assert_ne!(promoted, doc);
    let wrong = wrong_parts(&parse_doc(&promoted).1);
    assert_eq!(
        wrong,
        ["ConnectRequest.4: part \"core\", expected extension..."]
    );

    let no_method = doc.replace("| `Unbind` |", "| `Unbinds` |");
    assert_eq!(differences(&proto, &parse_doc(&no_method).0).len(), 1);
}
