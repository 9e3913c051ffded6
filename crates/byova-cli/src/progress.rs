//! Progress of long work (import, export, refresh-all): a bar on a terminal, one plain line per
//! item otherwise (logs, pipes, CI), nothing with `--json`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Reports progress over `total` items.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    done: u64,
    total: u64,
}

impl Progress {
    /// `what` names the work (`importing`, `refreshing orgs`).
    pub(crate) fn new(what: &'static str, total: usize, as_json: bool) -> Self {
        let total = u64::try_from(total).unwrap_or(u64::MAX);
        let terminal = std::io::stderr().is_terminal();
        let bar = (terminal && !as_json).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what);
            bar
        });
        Self { plain: !terminal && !as_json, bar, done: 0, total }
    }

    /// One item finished: `line` is what a log reader sees (`refreshed org-1`).
    pub(crate) fn step(&mut self, line: impl FnOnce() -> String) {
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
        } else if self.plain {
            println!("{} ({}/{})", line(), self.done, self.total);
        }
    }

    /// The work ended.
    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
