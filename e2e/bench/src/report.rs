//! What every benchmark's report shares: sizes and rates as people read
//! them, JSON reports read back, and generated sections spliced into
//! `e2e/bench/RESULTS.md` between their markers.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// `1.25 GiB` or `300.0 MiB`.
pub fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.2} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// `23.4 MiB/s`.
pub fn mib_s(bytes_per_s: f64) -> String {
    format!("{:.1} MiB/s", bytes_per_s / MIB as f64)
}

/// `2.5 s`, or `-` when there is no figure.
pub fn secs(s: Option<f64>) -> String {
    s.map_or("-".to_owned(), |s| format!("{s:.1} s"))
}

/// `1GiB`, `64MiB`, `4KiB` or plain bytes (what
/// [`swarmseed_harness::size::parse_size`] reads).
pub fn format_size(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b.is_multiple_of(GIB) => format!("{}GiB", b / GIB),
        b if b.is_multiple_of(MIB) => format!("{}MiB", b / MIB),
        b if b.is_multiple_of(1024) => format!("{}KiB", b / 1024),
        b => b.to_string(),
    }
}

/// The hidden `render` helper of a benchmark: its JSON reports into a
/// results file.
#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// JSON reports, one per line (other lines are ignored).
    #[arg(long)]
    pub input: PathBuf,
    /// The markdown file to update between the benchmark's markers
    /// (appended when it has none).
    #[arg(long)]
    pub results: PathBuf,
    /// The date of the run, shown in the heading.
    #[arg(long, default_value = "")]
    pub date: String,
    /// A paragraph shown above the table (e.g. what kind of run this was).
    #[arg(long, default_value = "")]
    pub note: String,
}

/// Where a benchmark's generated section lives in the results file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Markers {
    pub begin: &'static str,
    pub end: &'static str,
}

impl Markers {
    /// Replaces the text from `begin` to `end` (inclusive, with the newline
    /// after `end`) with `section`, or appends `section` when either marker
    /// is missing.
    pub fn splice(&self, existing: &str, section: &str) -> String {
        let (begin, end) = (self.begin, self.end);
        if let (Some(b), Some(e)) = (existing.find(begin), existing.find(end))
            && b < e
        {
            let mut stop = e + end.len();
            if existing[stop..].starts_with('\n') {
                stop += 1;
            }
            return format!("{}{section}{}", &existing[..b], &existing[stop..]);
        }
        let mut out = existing.to_owned();
        if !out.is_empty() {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push('\n');
        }
        out.push_str(section);
        out
    }
}

/// The JSON reports of `input`, one per line; other lines are ignored.
pub fn read_reports<R: DeserializeOwned>(input: &Path) -> anyhow::Result<Vec<R>> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let reports: Vec<R> = text
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parsing the reports")?;
    if reports.is_empty() {
        bail!("no reports in {}", input.display());
    }
    Ok(reports)
}

/// `render`: reads the reports, makes their section and splices it into
/// the results file between `markers`, keeping the rest of the file.
pub fn render<R: DeserializeOwned>(
    args: &RenderArgs,
    markers: Markers,
    section: impl FnOnce(&[R], &str, &str) -> String,
) -> anyhow::Result<()> {
    let reports = read_reports::<R>(&args.input)?;
    let existing = std::fs::read_to_string(&args.results).unwrap_or_default();
    let section = section(&reports, &args.date, &args.note);
    write_file(&args.results, &markers.splice(&existing, &section))
}

pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Markers = Markers {
        begin: "<!-- BEGIN x -->",
        end: "<!-- END x -->",
    };

    #[test]
    fn sizes_read_back() {
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(3 << 10), "3KiB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(
            swarmseed_harness::size::parse_size(&format_size(96 << 20)),
            Ok(96 << 20)
        );
        assert_eq!(human(3 << 29), "1.50 GiB");
        assert_eq!(human(3 << 19), "1.5 MiB");
        assert_eq!(secs(None), "-");
    }

    #[test]
    fn a_section_replaces_only_its_own_markers() {
        let section = format!("{}\nrows\n{}\n", M.begin, M.end);
        let original = "# Results\n\nkept text";
        let once = M.splice(original, &section);
        assert_eq!(once, format!("{original}\n\n{section}"));
        assert_eq!(M.splice(&once, &section), once);
        let tail = format!("{once}\n## later\n");
        assert!(M.splice(&tail, &section).ends_with("\n## later\n"));
        assert_eq!(M.splice("", &section), section);
    }
}
