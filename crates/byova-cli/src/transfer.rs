//! `byova org export` / `byova org import`: every stored record as JSON lines, to move a fleet
//! between stores (or bring it in from the Python SDK's token dicts).
//!
//! One line per record:
//!
//! ```text
//! {"byova_export":1,"key":"integration","record":{"schema":1,"access_token":"…",…}}
//! {"byova_export":1,"key":"org:63b02f90-…","record":{…}}
//! ```
//!
//! `record` is the stored form of the tokens (`OAuthTokens::to_json`, schema 1: secrets in
//! clear, times in unix milliseconds). Import is idempotent: a record replaces the stored one
//! only when it was obtained later (newer records win), through a versioned write, so an
//! import never overwrites a refresh another replica made meanwhile.

use std::io::{BufRead, Write};
use std::sync::Arc;

use byova_core::{
    OAuthTokens, StorageErrorKind, TokenKey, TokenStorage,
    backend::{CoordinatedTokenStorage, Expect},
};
use serde_json::json;

use crate::progress::Progress;
use crate::{Failure, failure};

/// The export format's version.
const FORMAT: u64 = 1;

fn key_text(key: &TokenKey) -> String {
    key.label()
}

fn parse_key(text: &str) -> Option<TokenKey> {
    TokenKey::from_label(text)
}

/// Opens `path` for the export: stdout for `-`, else a file only its owner can read (0600),
/// created or truncated.
fn open_output(path: &str) -> Result<Box<dyn Write>, Failure> {
    if path == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path).map_err(|e| failure(3, format!("cannot write {path}: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // An existing file keeps its mode on open: make it private before any secret goes in.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| failure(3, format!("cannot make {path} private: {e}")))?;
    }
    Ok(Box::new(std::io::BufWriter::new(file)))
}

/// Writes every stored record (the Integration's and each org's) to `path`.
pub(crate) async fn export(
    storage: &Arc<dyn CoordinatedTokenStorage>,
    path: &str,
    as_json: bool,
) -> Result<(), Failure> {
    let mut keys = vec![TokenKey::Integration];
    keys.extend(storage.list_registered_orgs().await?.into_iter().map(TokenKey::Org));
    let mut out = open_output(path)?;
    let mut progress = Progress::new("exporting", keys.len(), as_json || path == "-");
    let mut written = 0usize;
    for key in keys {
        let Some(record) = storage.load(&key).await? else { continue };
        let record: serde_json::Value = serde_json::from_slice(&record.value.to_json())
            .map_err(|e| failure(4, format!("cannot encode the record of {key}: {e}")))?;
        let line = json!({"byova_export": FORMAT, "key": key_text(&key), "record": record});
        writeln!(out, "{line}").map_err(|e| failure(3, format!("cannot write {path}: {e}")))?;
        written += 1;
        progress.step(|| format!("exported {}", key_text(&key)));
    }
    out.flush().map_err(|e| failure(3, format!("cannot write {path}: {e}")))?;
    progress.finish();
    if path != "-" {
        crate::print_line(as_json, json!({"exported": written, "file": path}), || {
            format!("Exported {written} record(s) to {path} (it holds secrets: keep it private).")
        });
    }
    Ok(())
}

/// What importing one record did.
enum Imported {
    Stored,
    Unchanged,
}

async fn import_one(
    storage: &Arc<dyn CoordinatedTokenStorage>,
    key: &TokenKey,
    tokens: &OAuthTokens,
) -> Result<Imported, Failure> {
    // A versioned write that lost to another writer is judged again against what it wrote.
    for _ in 0..3 {
        let current = storage.load(key).await?;
        let expect = match &current {
            Some(c) if c.value.obtained_at >= tokens.obtained_at => return Ok(Imported::Unchanged),
            Some(c) => Expect::Version(c.version),
            None => Expect::Absent,
        };
        match storage.store(key, tokens, expect).await {
            Ok(_) => return Ok(Imported::Stored),
            Err(e) if e.kind() == StorageErrorKind::Conflict => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(failure(4, format!("{key} kept changing while it was imported; import again")))
}

/// Reads JSON lines from `path` (`-`: stdin) and stores each record unless the store holds a
/// newer one.
pub(crate) async fn import(
    storage: &Arc<dyn CoordinatedTokenStorage>,
    path: &str,
    as_json: bool,
) -> Result<(), Failure> {
    let reader: Box<dyn BufRead> = if path == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(path).map_err(|e| failure(3, format!("cannot read {path}: {e}")))?;
        Box::new(std::io::BufReader::new(file))
    };
    let lines: Vec<String> = reader
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| failure(3, format!("cannot read {path}: {e}")))?;
    let records: Vec<(usize, &String)> =
        lines.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect();
    let mut progress = Progress::new("importing", records.len(), as_json);
    let (mut stored, mut unchanged, mut failed) = (0usize, 0usize, Vec::new());
    for (number, line) in records {
        let parsed = parse_line(line);
        let outcome = match &parsed {
            Ok((key, tokens)) => import_one(storage, key, tokens).await.map_err(|f| f.message),
            Err(why) => Err(why.clone()),
        };
        let label = parsed.as_ref().map_or_else(|_| format!("line {number}"), |(k, _)| key_text(k));
        match outcome {
            Ok(Imported::Stored) => stored += 1,
            Ok(Imported::Unchanged) => unchanged += 1,
            Err(why) => failed.push(format!("line {number}: {why}")),
        }
        progress.step(|| format!("imported {label}"));
    }
    progress.finish();
    crate::print_line(
        as_json,
        json!({"stored": stored, "unchanged": unchanged, "failed": failed.len()}),
        || format!("Imported {stored} record(s); {unchanged} unchanged (the store's were as new or newer)."),
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failure(7, format!("{} line(s) could not be imported: {}", failed.len(), failed.join("; "))))
    }
}

/// One export line: its key and tokens. The error names what is wrong, never a secret.
fn parse_line(line: &str) -> Result<(TokenKey, OAuthTokens), String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({:?} error)", e.classify()))?;
    match value.get("byova_export").and_then(serde_json::Value::as_u64) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(format!("export format {other} is not one this byova reads (it reads {FORMAT})"));
        }
        None => return Err("not a byova export line (no \"byova_export\")".into()),
    }
    let key = value
        .get("key")
        .and_then(serde_json::Value::as_str)
        .and_then(parse_key)
        .ok_or("its \"key\" is neither \"integration\" nor \"org:<org id>\"")?;
    let record = value.get("record").ok_or("it has no \"record\"")?;
    let bytes = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    let tokens = OAuthTokens::from_json(&bytes)?;
    Ok((key, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_strictly_without_echoing_secrets() {
        let good = r#"{"byova_export":1,"key":"org:o-1","record":{"schema":1,"access_token":"SECRET-A","expires_in":60,"token_type":"Bearer","obtained_at_ms":5}}"#;
        let (key, tokens) = parse_line(good).unwrap();
        assert_eq!(key, TokenKey::org(&byova_core::OrgId::from_static("o-1")));
        assert!(tokens.access_token.ct_eq_str("SECRET-A"));
        for bad in [
            "not json SECRET-A",
            r#"{"key":"org:o","record":{}}"#,
            r#"{"byova_export":2,"key":"org:o","record":{}}"#,
            r#"{"byova_export":1,"key":"org:","record":{}}"#,
            r#"{"byova_export":1,"key":"org:o","record":{"schema":1,"access_token":"SECRET-A"}}"#,
        ] {
            let why = parse_line(bad).unwrap_err();
            assert!(!why.contains("SECRET"), "{why}");
        }
        assert_eq!(parse_key("integration"), Some(TokenKey::Integration));
        assert_eq!(key_text(&TokenKey::org(&byova_core::OrgId::from_static("x"))), "org:x");
    }
}
