//! Power loss, simulated from a real write's system calls (the technique of ALICE, OSDI '14).
//!
//! A store write runs in a child process under `strace`; its file-system calls under the store's
//! directory become a list of operations (create, write, truncate, fsync, rename, unlink,
//! directory fsync). From that list, the states the disk may hold after the power goes at any
//! point are built, under this persistence model:
//!
//! - a file's data is durable up to its last `fsync`; of its later writes, any prefix
//!   survives (none included), and the last one kept may be torn (its first half only) or
//!   zeroed (the file grew but the data never reached the disk: ext4 in writeback mode, XFS);
//! - directory operations (create, rename, unlink) are durable up to the directory's last
//!   `fsync`; of the later ones any prefix survives (journaled file systems keep their order);
//! - data and directory operations are lost independently (a rename may survive while the
//!   renamed file's unsynced data does not: ext4's zero-length-file case).
//!
//! Not modelled: unsynced writes surviving out of order within one file, and torn writes cut
//! elsewhere than in the middle. Every traced call on a file of the directory must be one the
//! model knows (an unknown one fails the trace rather than being ignored).
//!
//! Each state is written to a fresh directory, where the test opens the store and reads.
//!
//! Why not a real power cut: this kernel has no device-mapper (`/dev/mapper/control` is
//! missing, and there is no `modprobe`), so `dm-flakey` and `dm-log-writes` are out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One file-system operation, by inode for data and by name for the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new name for a new, empty inode.
    #[allow(missing_docs)]
    Create { name: String, inode: usize },
    /// Bytes written at an offset.
    #[allow(missing_docs)]
    Write { inode: usize, offset: u64, data: Vec<u8> },
    /// The file cut (or extended) to a length.
    #[allow(missing_docs)]
    Truncate { inode: usize, len: u64 },
    /// The inode's data made durable.
    #[allow(missing_docs)]
    Fsync { inode: usize },
    /// A name moved (replacing any file at `to`).
    #[allow(missing_docs)]
    Rename { from: String, to: String },
    /// A name removed.
    #[allow(missing_docs)]
    Unlink { name: String },
    /// The directory's entries made durable.
    FsyncDir,
}

impl Op {
    fn is_dir_op(&self) -> bool {
        matches!(self, Op::Create { .. } | Op::Rename { .. } | Op::Unlink { .. })
    }

    fn data_inode(&self) -> Option<usize> {
        match self {
            Op::Write { inode, .. } | Op::Truncate { inode, .. } => Some(*inode),
            _ => None,
        }
    }
}

/// A directory's files (name → contents) before the traced write.
pub type Snapshot = BTreeMap<String, Vec<u8>>;

/// Reads every regular file directly in `dir`.
pub fn snapshot(dir: &Path) -> Snapshot {
    std::fs::read_dir(dir)
        .expect("a readable directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("a readable file"))
        })
        .collect()
}

/// Whether `strace` can trace here (installed, and ptrace allowed).
pub fn strace_works() -> bool {
    Command::new("strace").args(["-qq", "-e", "trace=none", "true"]).status().is_ok_and(|s| s.success())
}

/// Runs `command` under `strace` and returns the operations it made under `dir`, with the
/// initial inodes numbered in `before`'s order.
pub fn trace(command: Command, dir: &Path, before: &Snapshot) -> Vec<Op> {
    let log = std::env::temp_dir().join(format!(
        "byova-strace-{}-{:x}.log",
        std::process::id(),
        byova_core::engine::random_u64()
    ));
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    let mut traced = Command::new("strace");
    traced
        .args(["-f", "-qq", "-xx", "-s", "1048576", "-o"])
        .arg(&log)
        .args([
            "-e",
            "trace=open,openat,creat,write,pwrite64,writev,pwritev,pwritev2,lseek,fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,ftruncate,fallocate,close,dup,dup2,dup3,link,linkat,symlink,symlinkat,mkdir,mkdirat",
        ])
        .arg(program)
        .args(args);
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => traced.env(k, v),
            None => traced.env_remove(k),
        };
    }
    traced.stdout(std::process::Stdio::null());
    let status = traced.status().expect("strace runs");
    assert!(status.success(), "the traced write failed: {status}");
    let text = std::fs::read_to_string(&log).expect("the strace log");
    let _ = std::fs::remove_file(&log);
    parse(&text, dir, before)
}

fn decode(quoted: &str) -> Option<Vec<u8>> {
    let inner = quoted.trim().strip_prefix('"')?;
    assert!(!inner.ends_with("\"..."), "strace cut a string short: raise -s");
    let inner = inner.strip_suffix('"')?;
    let mut out = Vec::new();
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            out.push(u8::from_str_radix(inner.get(i + 2..i + 4)?, 16).ok()?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Splits a call's arguments at the commas outside quotes and braces.
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quoted = false;
    let mut current = String::new();
    let mut prev = ' ';
    for c in args.chars() {
        match c {
            '"' if prev != '\\' => quoted = !quoted,
            '{' | '[' if !quoted => depth += 1,
            '}' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(current.trim().to_owned());
                current.clear();
                prev = c;
                continue;
            }
            _ => {}
        }
        current.push(c);
        prev = c;
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

struct Parser<'a> {
    dir: &'a Path,
    names: BTreeMap<String, usize>,
    next_inode: usize,
    /// Open descriptors (shared by the process's threads): inode (`None`: the directory) and
    /// offset.
    fds: BTreeMap<i64, (Option<usize>, u64)>,
    ops: Vec<Op>,
}

impl Parser<'_> {
    /// The name of `path` inside the store's directory; `Some("")` for the directory itself.
    fn name_in_dir(&self, path: &[u8]) -> Option<String> {
        let path = PathBuf::from(String::from_utf8_lossy(path).into_owned());
        if path == self.dir {
            return Some(String::new());
        }
        (path.parent() == Some(self.dir))
            .then(|| path.file_name().map(|n| n.to_string_lossy().into_owned()))?
    }

    fn line(&mut self, line: &str) {
        let Some((pid, call)) = line.split_once(' ') else { return };
        if pid.parse::<u32>().is_err() {
            return;
        }
        let call = call.trim_start();
        assert!(!call.contains("<unfinished") && !call.starts_with("<..."), "a split system call: {line}");
        let Some((name, rest)) = call.split_once('(') else { return };
        // `name(args)<padding> = ret`: strace pads short calls before the `=`.
        let Some((args, ret)) = rest.rsplit_once(" = ") else { return };
        let Some(args) = args.trim_end().strip_suffix(')') else { return };
        let ret: i64 = ret.split_whitespace().next().and_then(|r| r.parse().ok()).unwrap_or(-1);
        if ret < 0 {
            return;
        }
        let args = split_args(args);
        let fd = |i: usize| args.get(i).and_then(|a| a.parse::<i64>().ok()).unwrap_or(-1);
        match name {
            "open" | "openat" | "creat" => {
                if name == "openat" {
                    self.at_cwd(&args, 0, line);
                }
                let (path, flags) = match name {
                    "openat" => (args.get(1), args.get(2).cloned().unwrap_or_default()),
                    "creat" => (args.first(), "O_CREAT|O_TRUNC".to_owned()),
                    _ => (args.first(), args.get(1).cloned().unwrap_or_default()),
                };
                let Some(file) = path.and_then(|p| decode(p)).and_then(|p| self.name_in_dir(&p)) else {
                    return;
                };
                if file.is_empty() {
                    self.fds.insert(ret, (None, 0));
                    return;
                }
                let inode = match self.names.get(&file) {
                    Some(inode) => *inode,
                    None if flags.contains("O_CREAT") => {
                        let inode = self.next_inode;
                        self.next_inode += 1;
                        self.names.insert(file.clone(), inode);
                        self.ops.push(Op::Create { name: file, inode });
                        inode
                    }
                    None => return,
                };
                if flags.contains("O_TRUNC") {
                    self.ops.push(Op::Truncate { inode, len: 0 });
                }
                self.fds.insert(ret, (Some(inode), 0));
            }
            "write" | "pwrite64" => {
                let Some(&(Some(inode), offset)) = self.fds.get(&fd(0)) else { return };
                let data = decode(&args[1]).expect("written bytes");
                let written = usize::try_from(ret).unwrap_or(0).min(data.len());
                let at = if name == "pwrite64" { fd(3).max(0).unsigned_abs() } else { offset };
                self.ops.push(Op::Write { inode, offset: at, data: data[..written].to_vec() });
                if name == "write" {
                    self.fds.insert(fd(0), (Some(inode), offset + written as u64));
                }
            }
            "ftruncate" => {
                let Some(&(Some(inode), _)) = self.fds.get(&fd(0)) else { return };
                self.ops.push(Op::Truncate { inode, len: fd(1).max(0).unsigned_abs() });
            }
            "fsync" | "fdatasync" => match self.fds.get(&fd(0)) {
                Some((None, _)) => self.ops.push(Op::FsyncDir),
                Some((Some(inode), _)) => self.ops.push(Op::Fsync { inode: *inode }),
                None => {}
            },
            "close" => {
                self.fds.remove(&fd(0));
            }
            "rename" | "renameat" | "renameat2" => {
                if name != "rename" {
                    self.at_cwd(&args, 0, line);
                    self.at_cwd(&args, 2, line);
                }
                let (from, to) =
                    if name == "rename" { (args.first(), args.get(1)) } else { (args.get(1), args.get(3)) };
                let from = from.and_then(|p| decode(p)).and_then(|p| self.name_in_dir(&p));
                let to = to.and_then(|p| decode(p)).and_then(|p| self.name_in_dir(&p));
                if let (Some(from), Some(to)) = (from, to) {
                    if let Some(inode) = self.names.remove(&from) {
                        self.names.insert(to.clone(), inode);
                    }
                    self.ops.push(Op::Rename { from, to });
                }
            }
            "unlink" | "unlinkat" => {
                if name == "unlinkat" {
                    self.at_cwd(&args, 0, line);
                }
                let path = if name == "unlink" { args.first() } else { args.get(1) };
                if let Some(file) = path.and_then(|p| decode(p)).and_then(|p| self.name_in_dir(&p)) {
                    self.names.remove(&file);
                    self.ops.push(Op::Unlink { name: file });
                }
            }
            // Calls the model does not know: refused when they touch the directory's files.
            _ => {
                let on_fd = self.fds.contains_key(&fd(0));
                let on_path = args.iter().filter_map(|a| decode(a)).any(|p| self.name_in_dir(&p).is_some());
                assert!(!on_fd && !on_path, "the power-loss model does not know this call: {line}");
            }
        }
    }

    /// Asserts a `*at` call's directory argument is the working directory (paths are then
    /// absolute here) or that its path is absolute.
    fn at_cwd(&self, args: &[String], i: usize, line: &str) {
        let absolute = args.get(i + 1).and_then(|p| decode(p)).is_some_and(|p| p.first() == Some(&b'/'));
        assert!(
            absolute || args.get(i).is_some_and(|d| d == "AT_FDCWD"),
            "a relative path under another directory: {line}"
        );
    }
}

fn parse(text: &str, dir: &Path, before: &Snapshot) -> Vec<Op> {
    let names: BTreeMap<String, usize> = before.keys().enumerate().map(|(i, n)| (n.clone(), i)).collect();
    let mut parser = Parser { dir, next_inode: names.len(), names, fds: BTreeMap::new(), ops: Vec::new() };
    text.lines().for_each(|l| parser.line(l));
    parser.ops
}

/// One state the disk may hold after a power cut.
#[derive(Debug)]
pub struct CrashState {
    /// Operations issued before the cut.
    pub cut: usize,
    /// What was kept of them, in words.
    pub kept: String,
    /// The directory's files.
    pub files: Snapshot,
}

/// One inode's data operations before a cut (their indices) and what of them may survive:
/// (how many, how the last of them).
type InodeChoices = (usize, Vec<usize>, Vec<(usize, Last)>);

/// How the last kept data operation of an inode survived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Last {
    Whole,
    Torn,
    Zeroed,
}

/// The states the model allows after a cut at any point of `ops`, starting from `before`.
pub fn crash_states(before: &Snapshot, ops: &[Op]) -> Vec<CrashState> {
    let mut states = Vec::new();
    for cut in 0..=ops.len() {
        let issued = &ops[..cut];
        let dir_ops: Vec<usize> = (0..cut).filter(|&i| issued[i].is_dir_op()).collect();
        let last_dir_sync = issued.iter().rposition(|o| *o == Op::FsyncDir);
        let durable_dir = dir_ops.iter().filter(|&&i| last_dir_sync.is_some_and(|s| i < s)).count();
        let inodes: Vec<usize> = {
            let mut v: Vec<usize> = issued.iter().filter_map(Op::data_inode).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        // Per inode: its data ops, how many are durable, and the choices (kept count, torn).
        let per_inode: Vec<InodeChoices> = inodes
            .iter()
            .map(|&inode| {
                let data: Vec<usize> = (0..cut).filter(|&i| issued[i].data_inode() == Some(inode)).collect();
                let synced = issued.iter().rposition(|o| *o == Op::Fsync { inode });
                let durable = data.iter().filter(|&&i| synced.is_some_and(|s| i < s)).count();
                let mut choices = Vec::new();
                for kept in durable..=data.len() {
                    choices.push((kept, Last::Whole));
                    if kept > durable
                        && matches!(issued[data[kept - 1]], Op::Write { ref data, .. } if !data.is_empty())
                    {
                        choices.push((kept, Last::Zeroed));
                        if matches!(issued[data[kept - 1]], Op::Write { ref data, .. } if data.len() > 1) {
                            choices.push((kept, Last::Torn));
                        }
                    }
                }
                (inode, data, choices)
            })
            .collect();
        let combos: usize = per_inode.iter().map(|(_, _, c)| c.len()).product();
        for dir_kept in durable_dir..=dir_ops.len() {
            for mut combo in 0..combos {
                let mut kept_ops: Vec<usize> = dir_ops[..dir_kept].to_vec();
                let mut partial = Vec::new();
                let mut words = format!("cut {cut}: {dir_kept}/{} dir ops", dir_ops.len());
                for (inode, data, choices) in &per_inode {
                    let (kept, last) = choices[combo % choices.len()];
                    combo /= choices.len();
                    kept_ops.extend_from_slice(&data[..kept]);
                    if last != Last::Whole {
                        partial.push((data[kept - 1], last));
                    }
                    let how = match last {
                        Last::Whole => "",
                        Last::Torn => " torn",
                        Last::Zeroed => " zeroed",
                    };
                    words.push_str(&format!(", inode {inode}: {kept}/{}{how}", data.len()));
                }
                kept_ops.sort_unstable();
                states.push(CrashState {
                    cut,
                    kept: words,
                    files: apply(before, issued, &kept_ops, &partial),
                });
            }
        }
    }
    states
}

fn apply(before: &Snapshot, ops: &[Op], kept: &[usize], partial: &[(usize, Last)]) -> Snapshot {
    let mut names: BTreeMap<String, usize> = before.keys().enumerate().map(|(i, n)| (n.clone(), i)).collect();
    let mut contents: BTreeMap<usize, Vec<u8>> = before.values().cloned().enumerate().collect();
    for &i in kept {
        match &ops[i] {
            Op::Create { name, inode } => {
                names.insert(name.clone(), *inode);
                contents.entry(*inode).or_default();
            }
            Op::Rename { from, to } => {
                if let Some(inode) = names.remove(from) {
                    names.insert(to.clone(), inode);
                }
            }
            Op::Unlink { name } => {
                names.remove(name);
            }
            Op::Write { inode, offset, data } => {
                let zeros = vec![0; data.len()];
                let data = match partial.iter().find(|(op, _)| *op == i).map(|(_, how)| *how) {
                    Some(Last::Torn) => &data[..data.len() / 2],
                    Some(Last::Zeroed) => &zeros[..],
                    _ => &data[..],
                };
                let file = contents.entry(*inode).or_default();
                let at = usize::try_from(*offset).unwrap_or(usize::MAX);
                if file.len() < at + data.len() {
                    file.resize(at + data.len(), 0);
                }
                file[at..at + data.len()].copy_from_slice(data);
            }
            Op::Truncate { inode, len } => {
                contents.entry(*inode).or_default().resize(usize::try_from(*len).unwrap_or(0), 0);
            }
            Op::Fsync { .. } | Op::FsyncDir => {}
        }
    }
    names.into_iter().map(|(name, inode)| (name, contents.get(&inode).cloned().unwrap_or_default())).collect()
}

/// Writes a state's files into `dir` (created, mode 0700; files 0600).
pub fn materialize(state: &CrashState, dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("a state directory");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("dir mode");
    }
    for (name, bytes) in &state.files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("a state file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("file mode");
        }
    }
}
