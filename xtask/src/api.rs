//! `cargo xtask api [--bless]`: each library crate's public API as one line per item, read
//! from rustdoc's JSON output and compared with the snapshot committed under `api/`.
//!
//! rustdoc's JSON output is unstable; `RUSTC_BOOTSTRAP=1` lets the stable toolchain emit it,
//! and the lines below read only the parts of the format that have been stable for years
//! (modules, items, types, generics). A change to the public surface is then a visible diff in
//! review: the check prints the lines removed and added and fails until the snapshot is
//! blessed (`cargo xtask api --bless`).
//!
//! Each crate is documented with all its features (`BearerAuth` is behind `middleware`).
//! The format is checked (`format_version`) so a toolchain that changes it fails with a
//! clear message rather than a wrong snapshot.
//!
//! What a line holds: every public item at each path a user can name it by (a name re-exported
//! twice appears twice, and fails the check: each item has one home), its signature, the public fields and variants, inherent methods, and
//! the traits each type implements (auto traits included, blanket impls left out).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::{Value, json};

use crate::{Result, cargo, libraries, root, run, step};

/// rustdoc JSON formats whose output this lister was checked against.
const KNOWN_FORMATS: &[u64] = &[57];

pub(crate) fn api(args: &[String]) -> Result {
    let bless = match args {
        [] => false,
        [flag] if flag == "--bless" => true,
        _ => return Err("usage: cargo xtask api [--bless]".into()),
    };
    step(if bless { "public API: writing the snapshots" } else { "public API: compared with the snapshots" });
    let mut changed = Vec::new();
    let mut aliased_anywhere = Vec::new();
    for krate in libraries() {
        // A target directory of its own: cargo fingerprints RUSTC_BOOTSTRAP, so sharing the
        // main one would rebuild every dependency for the next ordinary build.
        run(cargo()
            .args(["doc", "--no-deps", "--all-features", "-p", krate])
            .env("CARGO_TARGET_DIR", root().join("target/api"))
            .env("RUSTC_BOOTSTRAP", "1")
            .env("RUSTDOCFLAGS", "-Z unstable-options --output-format json"))?;
        let file = root().join("target/api/doc").join(format!("{}.json", krate.replace('-', "_")));
        let json =
            std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let doc: Value = serde_json::from_str(&json).map_err(|e| format!("{}: {e}", file.display()))?;
        let format = doc["format_version"].as_u64().unwrap_or(0);
        if !KNOWN_FORMATS.contains(&format) {
            return Err(format!(
                "rustdoc JSON format {format} is not one this lister was checked against ({KNOWN_FORMATS:?}); \
                 check the snapshot it prints and add the format to KNOWN_FORMATS in xtask/src/api.rs"
            ));
        }
        let (lines, aliased) = public_api(&doc)?;
        let crate_name = krate.replace('-', "_");
        let summary = format!(
            "{} lines, {} names at the root, {} items reachable by more than one path",
            lines.len(),
            root_names(&lines, &crate_name),
            aliased.len()
        );
        for (item, paths) in &aliased {
            println!("  {krate}: {item} is reachable as {}", paths.join(" and "));
            aliased_anywhere.push(item.clone());
        }
        let snapshot = root().join("api").join(format!("{krate}.txt"));
        let rendered: String = lines.iter().map(|l| format!("{l}\n")).collect();
        if bless {
            std::fs::create_dir_all(root().join("api")).map_err(|e| e.to_string())?;
            std::fs::write(&snapshot, rendered)
                .map_err(|e| format!("cannot write {}: {e}", snapshot.display()))?;
            println!("{krate}: {summary}");
            continue;
        }
        let committed = std::fs::read_to_string(&snapshot).unwrap_or_default();
        if committed != rendered {
            print_diff(krate, &committed, &lines);
            changed.push(krate);
        } else {
            println!("{krate}: unchanged; {summary}");
        }
    }
    if !aliased_anywhere.is_empty() {
        return Err(format!(
            "{} public items are reachable by more than one path (listed above); give each one home",
            aliased_anywhere.len()
        ));
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the public API of {} changed (lines above: - removed, + added); if that is intended, run \
             `cargo xtask api --bless` and commit api/",
            changed.join(", ")
        ))
    }
}

fn print_diff(krate: &str, committed: &str, now: &BTreeSet<String>) {
    let before: BTreeSet<&str> = committed.lines().collect();
    println!("--- api/{krate}.txt (committed)\n+++ {krate} (this build)");
    for line in before.iter().filter(|l| !now.contains(**l)) {
        println!("-{line}");
    }
    for line in now.iter().filter(|l| !before.contains(l.as_str())) {
        println!("+{line}");
    }
}

/// Each item reachable by more than one path: its first path, and the others.
type Aliased = BTreeMap<String, Vec<String>>;

/// The lines of one crate's public API, and the items a user can name by more than one path.
fn public_api(doc: &Value) -> Result<(BTreeSet<String>, Aliased)> {
    DOC.with(|d| {
        *d.borrow_mut() = Some(json!({"paths": doc["paths"], "external_crates": doc["external_crates"]}))
    });
    let root_id = doc["root"].to_string();
    let krate = item(doc, &root_id).ok_or("rustdoc JSON without its root module")?;
    let name = krate["name"].as_str().ok_or("a root module without a name")?.to_owned();
    let mut walk = Walk { doc, lines: BTreeSet::new(), visiting: HashSet::new(), paths: BTreeMap::new() };
    walk.module(&root_id, &name);
    let aliased = walk
        .paths
        .into_values()
        .filter(|paths| paths.len() > 1)
        .map(|mut paths| {
            paths.sort();
            (paths.remove(0), paths)
        })
        .collect();
    Ok((walk.lines, aliased))
}

fn item<'a>(doc: &'a Value, id: &str) -> Option<&'a Value> {
    doc["index"].get(id)
}

fn id_of(v: &Value) -> String {
    v.to_string()
}

struct Walk<'a> {
    doc: &'a Value,
    lines: BTreeSet<String>,
    /// Modules on the current path (a glob re-export cycle ends here).
    visiting: HashSet<String>,
    /// Every path each item (not module) was reached by.
    paths: BTreeMap<String, Vec<String>>,
}

impl Walk<'_> {
    fn module(&mut self, id: &str, path: &str) {
        if !self.visiting.insert(id.to_owned()) {
            return;
        }
        let Some(module) = item(self.doc, id) else { return };
        for child in module["inner"]["module"]["items"].as_array().into_iter().flatten() {
            let child_id = id_of(child);
            let Some(child) = item(self.doc, &child_id) else { continue };
            if child["visibility"] != "public" {
                continue;
            }
            self.item(&child_id, child, path);
        }
        self.visiting.remove(id);
    }

    fn item(&mut self, id: &str, it: &Value, path: &str) {
        let inner = &it["inner"];
        if let Some(import) = inner.get("use") {
            let target = id_of(&import["id"]);
            let name = import["name"].as_str().unwrap_or("_");
            match item(self.doc, &target) {
                Some(target_item) if import["is_glob"] == true => {
                    if target_item["inner"].get("module").is_some() {
                        self.module(&target, path);
                    }
                }
                Some(target_item) => {
                    let renamed = self.with_name(target_item, name);
                    self.item(&target, &renamed, path);
                }
                None => {
                    let source = import["source"].as_str().unwrap_or("?");
                    self.lines.insert(format!("pub use {path}::{name} = {source}"));
                }
            }
            return;
        }
        let Some(name) = it["name"].as_str() else { return };
        let full = format!("{path}::{name}");
        let (kind, body) = match inner.as_object().and_then(|o| o.iter().next()) {
            Some((k, v)) => (k.as_str(), v),
            None => return,
        };
        if kind != "module" {
            let paths = self.paths.entry(id.to_owned()).or_default();
            if !paths.contains(&full) {
                paths.push(full.clone());
            }
        }
        match kind {
            "module" => {
                self.lines.insert(format!("pub mod {full}"));
                self.module(id, &full);
            }
            "function" => {
                let line = function(&full, body);
                self.lines.insert(line);
            }
            "constant" => {
                self.lines.insert(format!("pub const {full}: {}", ty(&body["type"])));
            }
            "static" => {
                self.lines.insert(format!("pub static {full}: {}", ty(&body["type"])));
            }
            "type_alias" => {
                self.lines.insert(format!(
                    "pub type {full}{} = {}",
                    generics(&body["generics"]),
                    ty(&body["type"])
                ));
            }
            "macro" | "proc_macro" => {
                self.lines.insert(format!("pub macro {full}!"));
            }
            "struct" => {
                self.lines.insert(format!("pub struct {full}{}", generics(&body["generics"])));
                let kind = &body["kind"];
                if let Some(fields) = kind.get("plain").map(|p| &p["fields"]) {
                    for f in fields.as_array().into_iter().flatten() {
                        if let Some(field) = item(self.doc, &id_of(f)).filter(|f| f["visibility"] == "public")
                        {
                            let fname = field["name"].as_str().unwrap_or("_");
                            self.lines.insert(format!(
                                "pub {full}::{fname}: {}",
                                ty(&field["inner"]["struct_field"])
                            ));
                        }
                    }
                } else if let Some(fields) = kind.get("tuple") {
                    for (i, f) in fields.as_array().into_iter().flatten().enumerate() {
                        if let Some(field) = item(self.doc, &id_of(f)).filter(|f| f["visibility"] == "public")
                        {
                            self.lines
                                .insert(format!("pub {full}::{i}: {}", ty(&field["inner"]["struct_field"])));
                        }
                    }
                }
                self.impls(id, &full, &body["impls"]);
            }
            "enum" => {
                self.lines.insert(format!("pub enum {full}{}", generics(&body["generics"])));
                for v in body["variants"].as_array().into_iter().flatten() {
                    if let Some(variant) = item(self.doc, &id_of(v)) {
                        let vname = variant["name"].as_str().unwrap_or("_");
                        let fields = self.variant_fields(&variant["inner"]["variant"]["kind"]);
                        self.lines.insert(format!("pub {full}::{vname}{fields}"));
                    }
                }
                self.impls(id, &full, &body["impls"]);
            }
            "trait" => {
                let bounds = bounds(&body["bounds"]);
                let colon = if bounds.is_empty() { String::new() } else { format!(": {bounds}") };
                self.lines.insert(format!("pub trait {full}{}{colon}", generics(&body["generics"])));
                for member in body["items"].as_array().into_iter().flatten() {
                    if let Some(member) = item(self.doc, &id_of(member)) {
                        self.member(&full, member);
                    }
                }
            }
            _ => {}
        }
    }

    fn with_name(&self, it: &Value, name: &str) -> Value {
        let mut renamed = it.clone();
        renamed["name"] = Value::String(name.to_owned());
        renamed
    }

    fn variant_fields(&self, kind: &Value) -> String {
        let field_types = |ids: &Value| -> Vec<String> {
            ids.as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| item(self.doc, &id_of(f)))
                .map(|f| (f["name"].as_str().unwrap_or("_").to_owned(), ty(&f["inner"]["struct_field"])))
                .map(|(n, t)| format!("{n}: {t}"))
                .collect()
        };
        if let Some(tuple) = kind.get("tuple") {
            let types: Vec<String> = tuple
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    item(self.doc, &id_of(f)).map_or("_".to_owned(), |f| ty(&f["inner"]["struct_field"]))
                })
                .collect();
            format!("({})", types.join(", "))
        } else if let Some(plain) = kind.get("struct") {
            format!(" {{ {} }}", field_types(&plain["fields"]).join(", "))
        } else {
            String::new()
        }
    }

    /// A trait's or an inherent impl's member.
    fn member(&mut self, owner: &str, member: &Value) {
        let name = member["name"].as_str().unwrap_or("_");
        let full = format!("{owner}::{name}");
        let inner = &member["inner"];
        let line = if let Some(f) = inner.get("function") {
            function(&full, f)
        } else if let Some(c) = inner.get("assoc_const") {
            format!("pub const {full}: {}", ty(&c["type"]))
        } else if let Some(t) = inner.get("assoc_type") {
            let b = bounds(&t["bounds"]);
            let mut line = format!("pub type {full}{}", generics(&t["generics"]));
            if !b.is_empty() {
                line.push_str(&format!(": {b}"));
            }
            if !t["type"].is_null() {
                line.push_str(&format!(" = {}", ty(&t["type"])));
            }
            line
        } else {
            return;
        };
        self.lines.insert(line);
    }

    fn impls(&mut self, owner_id: &str, owner: &str, impls: &Value) {
        for id in impls.as_array().into_iter().flatten() {
            let Some(imp) = item(self.doc, &id_of(id)) else { continue };
            let body = &imp["inner"]["impl"];
            if !body["blanket_impl"].is_null() {
                continue;
            }
            if body["trait"].is_null() {
                for member in body["items"].as_array().into_iter().flatten() {
                    if let Some(member) =
                        item(self.doc, &id_of(member)).filter(|m| m["visibility"] == "public")
                    {
                        self.member(owner, member);
                    }
                }
            } else {
                let negative = if body["is_negative"] == true { "!" } else { "" };
                let trait_ = path(&body["trait"]);
                if ["Freeze", "UnsafeUnpin", "StructuralPartialEq"].contains(&trait_.as_str()) {
                    continue; // unstable or compiler-internal traits no user can name
                }
                // The type by the path the walk reached it at, with the impl's arguments. An
                // impl rustdoc lists here whose `for` is another type (`From<Timestamp> for
                // SystemTime` under `Timestamp`) is that type's, not this one's.
                let for_ = match body["for"].get("resolved_path") {
                    Some(p) if id_of(&p["id"]) == owner_id => format!("{owner}{}", args(&p["args"])),
                    _ => ty(&body["for"]),
                };
                self.lines.insert(format!(
                    "impl{} {negative}{trait_} for {for_}{}",
                    generics(&body["generics"]),
                    where_clause(&body["generics"]),
                ));
            }
        }
    }
}

fn function(full: &str, f: &Value) -> String {
    let header = &f["header"];
    let mut qualifiers = String::new();
    for (flag, word) in [("is_const", "const "), ("is_async", "async "), ("is_unsafe", "unsafe ")] {
        if header[flag] == true {
            qualifiers.push_str(word);
        }
    }
    let inputs: Vec<String> = f["sig"]["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pair| {
            let name = pair[0].as_str().unwrap_or("_");
            let t = ty(&pair[1]);
            match (name, t.as_str()) {
                ("self", "Self") => "self".to_owned(),
                ("self", "&Self") => "&self".to_owned(),
                ("self", "&mut Self") => "&mut self".to_owned(),
                _ => format!("{name}: {t}"),
            }
        })
        .collect();
    let output =
        if f["sig"]["output"].is_null() { String::new() } else { format!(" -> {}", ty(&f["sig"]["output"])) };
    let g = &f["generics"];
    format!("pub {qualifiers}fn {full}{}({}){output}{}", generics(g), inputs.join(", "), where_clause(g))
}

/// `<'a, T: Bound>` (synthetic `impl Trait` parameters left out), without the where clause.
fn generics(g: &Value) -> String {
    let params: Vec<String> = g["params"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p["name"].as_str().unwrap_or("_");
            let kind = &p["kind"];
            if let Some(l) = kind.get("lifetime") {
                let outlives: Vec<&str> =
                    l["outlives"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                Some(if outlives.is_empty() {
                    name.to_owned()
                } else {
                    format!("{name}: {}", outlives.join(" + "))
                })
            } else if let Some(t) = kind.get("type") {
                if t["is_synthetic"] == true {
                    return None;
                }
                let b = bounds(&t["bounds"]);
                let mut s = if b.is_empty() { name.to_owned() } else { format!("{name}: {b}") };
                if !t["default"].is_null() {
                    s.push_str(&format!(" = {}", ty(&t["default"])));
                }
                Some(s)
            } else {
                kind.get("const").map(|c| format!("const {name}: {}", ty(&c["type"])))
            }
        })
        .collect();
    if params.is_empty() { String::new() } else { format!("<{}>", params.join(", ")) }
}

fn where_clause(g: &Value) -> String {
    let preds: Vec<String> = g["where_predicates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            if let Some(b) = p.get("bound_predicate") {
                Some(format!("{}: {}", ty(&b["type"]), bounds(&b["bounds"])))
            } else if let Some(l) = p.get("lifetime_predicate") {
                let outlives: Vec<&str> =
                    l["outlives"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                Some(format!("{}: {}", l["lifetime"].as_str().unwrap_or("'_"), outlives.join(" + ")))
            } else {
                p.get("eq_predicate").map(|e| format!("{} = {}", ty(&e["lhs"]), term(&e["rhs"])))
            }
        })
        .collect();
    if preds.is_empty() { String::new() } else { format!(" where {}", preds.join(", ")) }
}

fn bounds(b: &Value) -> String {
    let parts: Vec<String> = b
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            if let Some(t) = b.get("trait_bound") {
                let modifier = match t["modifier"].as_str() {
                    Some("maybe") => "?",
                    Some("maybe_const") => "~const ",
                    _ => "",
                };
                format!("{}{modifier}{}", higher_ranked(&t["generic_params"]), path(&t["trait"]))
            } else if let Some(l) = b.get("outlives") {
                l.as_str().unwrap_or("'_").to_owned()
            } else {
                "use<..>".to_owned()
            }
        })
        .collect();
    parts.join(" + ")
}

fn higher_ranked(params: &Value) -> String {
    let names: Vec<&str> =
        params.as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
    if names.is_empty() { String::new() } else { format!("for<{}> ", names.join(", ")) }
}

fn term(t: &Value) -> String {
    if let Some(ty_) = t.get("type") {
        ty(ty_)
    } else {
        t["constant"]["expr"].as_str().unwrap_or("_").to_owned()
    }
}

/// A path with its generic arguments. How the source spelled it (`Result`, `crate::Result`,
/// a macro's `$crate::Result`) is not the API, so items of this workspace and of the standard
/// library show their name, as rustdoc does, and other crates' items their crate and name
/// (`ureq::Agent`), so a change of the type behind a name is a visible diff.
fn path(p: &Value) -> String {
    let name = p["path"].as_str().unwrap_or("_");
    let last = name.rsplit("::").next().unwrap_or(name);
    let krate = DOC.with(|doc| {
        let doc = doc.borrow();
        let summary = doc.as_ref()?.get("paths")?.get(id_of(&p["id"]))?;
        let crate_id = summary["crate_id"].as_u64()?;
        if crate_id == 0 {
            return None;
        }
        let krate = doc.as_ref()?["external_crates"].get(crate_id.to_string())?["name"].as_str()?.to_owned();
        let ours = krate.starts_with("byova") || ["std", "core", "alloc"].contains(&krate.as_str());
        (!ours).then_some(krate)
    });
    match krate {
        Some(krate) => format!("{krate}::{last}{}", args(&p["args"])),
        None => format!("{last}{}", args(&p["args"])),
    }
}

thread_local! {
    /// The rustdoc JSON being read, for [`path`] to look up which crate an item comes from.
    static DOC: std::cell::RefCell<Option<Value>> = const { std::cell::RefCell::new(None) };
}

fn args(a: &Value) -> String {
    if let Some(angle) = a.get("angle_bracketed") {
        let mut parts: Vec<String> = angle["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|arg| {
                if let Some(t) = arg.get("type") {
                    ty(t)
                } else if let Some(l) = arg.get("lifetime") {
                    l.as_str().unwrap_or("'_").to_owned()
                } else if let Some(c) = arg.get("const") {
                    c["expr"].as_str().unwrap_or("_").to_owned()
                } else {
                    "_".to_owned()
                }
            })
            .collect();
        for c in angle["constraints"].as_array().into_iter().flatten() {
            let name = format!("{}{}", c["name"].as_str().unwrap_or("_"), args(&c["args"]));
            let binding = &c["binding"];
            if let Some(eq) = binding.get("equality") {
                parts.push(format!("{name} = {}", term(eq)));
            } else if let Some(b) = binding.get("constraint") {
                parts.push(format!("{name}: {}", bounds(b)));
            }
        }
        if parts.is_empty() { String::new() } else { format!("<{}>", parts.join(", ")) }
    } else if let Some(paren) = a.get("parenthesized") {
        let inputs: Vec<String> = paren["inputs"].as_array().into_iter().flatten().map(ty).collect();
        let output =
            if paren["output"].is_null() { String::new() } else { format!(" -> {}", ty(&paren["output"])) };
        format!("({}){output}", inputs.join(", "))
    } else {
        String::new()
    }
}

fn ty(t: &Value) -> String {
    let Some((kind, v)) = t.as_object().and_then(|o| o.iter().next()) else {
        return t
            .as_str()
            .map_or("_".to_owned(), |s| if s == "infer" { "_".to_owned() } else { s.to_owned() });
    };
    match kind.as_str() {
        "resolved_path" => path(v),
        "generic" | "primitive" => v.as_str().unwrap_or("_").to_owned(),
        "tuple" => {
            let parts: Vec<String> = v.as_array().into_iter().flatten().map(ty).collect();
            if parts.len() == 1 { format!("({},)", parts[0]) } else { format!("({})", parts.join(", ")) }
        }
        "slice" => format!("[{}]", ty(v)),
        "array" => format!("[{}; {}]", ty(&v["type"]), v["len"].as_str().unwrap_or("_")),
        "borrowed_ref" => {
            let lifetime = v["lifetime"].as_str().map(|l| format!("{l} ")).unwrap_or_default();
            let mutable = if v["is_mutable"] == true { "mut " } else { "" };
            format!("&{lifetime}{mutable}{}", ty(&v["type"]))
        }
        "raw_pointer" => {
            format!("*{} {}", if v["is_mutable"] == true { "mut" } else { "const" }, ty(&v["type"]))
        }
        "impl_trait" => format!("impl {}", bounds(v)),
        "dyn_trait" => {
            let mut parts: Vec<String> = v["traits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| format!("{}{}", higher_ranked(&t["generic_params"]), path(&t["trait"])))
                .collect();
            if let Some(l) = v["lifetime"].as_str() {
                parts.push(l.to_owned());
            }
            format!("dyn {}", parts.join(" + "))
        }
        "qualified_path" => {
            let self_type = ty(&v["self_type"]);
            let name = v["name"].as_str().unwrap_or("_");
            if v["trait"].is_null() {
                format!("{self_type}::{name}")
            } else {
                format!("<{self_type} as {}>::{name}{}", path(&v["trait"]), args(&v["args"]))
            }
        }
        "function_pointer" => {
            let inputs: Vec<String> =
                v["sig"]["inputs"].as_array().into_iter().flatten().map(|p| ty(&p[1])).collect();
            let output = if v["sig"]["output"].is_null() {
                String::new()
            } else {
                format!(" -> {}", ty(&v["sig"]["output"]))
            };
            format!("{}fn({}){output}", higher_ranked(&v["generic_params"]), inputs.join(", "))
        }
        "pat" => ty(&v["type"]),
        _ => "_".to_owned(),
    }
}

/// The number of distinct names at a crate's root.
fn root_names(lines: &BTreeSet<String>, krate: &str) -> usize {
    let prefix = format!("{krate}::");
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.split_once(&prefix)?.1;
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            (!name.is_empty() && !rest[name.len()..].starts_with("::")).then_some(name)
        })
        .collect::<BTreeSet<_>>()
        .len()
}
