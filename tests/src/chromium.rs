//! Headless Chromium, for checking what an auditor sees in an exported HTML page: the DOM after
//! the page's own script ran, as text, and a screenshot.
//!
//! Runs Debian's `chromium` as a child in its own process group, with a throwaway profile and
//! home under the caller's directory, its background networking off, and a time limit after
//! which the whole group is killed. It never loads anything but the one file it is given.
use std::{
    fs,
    io::Read,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How long one Chromium run may take before it is killed.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A page as Chromium rendered it.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The visible text of the DOM after scripts ran: tags stripped, entities decoded, one line
    /// per block, `<head>`, `<script>` and `<style>` left out.
    pub dom_text: String,
    /// The serialized DOM itself (`--dump-dom`).
    pub dom_html: String,
    /// A PNG of the top 1280×2000 pixels.
    pub screenshot: PathBuf,
}

/// Chromium is not installed (and `CI` is not `true`): the caller may skip.
#[derive(Debug)]
pub struct ChromiumMissing;

impl std::fmt::Display for ChromiumMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chromium is not installed (looked for $GHGATE_CHROMIUM, chromium and chromium-browser on PATH); \
             `cargo xtask setup` installs it (set CI=true to make this a failure)"
        )
    }
}

impl std::error::Error for ChromiumMissing {}

/// True when `render` failed only because Chromium is missing outside CI: skip, don't fail.
pub fn is_missing(err: &anyhow::Error) -> bool {
    err.downcast_ref::<ChromiumMissing>().is_some()
}

/// Renders the page at `html` (a local file) in headless Chromium: its DOM text and a screenshot
/// in `out_dir`, which also holds Chromium's throwaway profile. Under `CI=true` a missing
/// Chromium is an ordinary error; otherwise it is a `ChromiumMissing` (see `is_missing`).
pub fn render(html: &Path, out_dir: &Path) -> anyhow::Result<Rendered> {
    let chromium = match find_chromium() {
        Some(path) => path,
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            bail!("CI=true but chromium is not installed: run `cargo xtask setup`, which installs it")
        }
        None => return Err(ChromiumMissing.into()),
    };
    let page = fs::canonicalize(html).with_context(|| format!("page to render {}", html.display()))?;
    fs::create_dir_all(out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let url = file_url(&page);
    let screenshot = out_dir.join("screenshot.png");
    let _ = fs::remove_file(&screenshot);

    let shot = run(
        &chromium,
        out_dir,
        &[format!("--screenshot={}", screenshot.display()), url.clone()],
    )?;
    let png = fs::read(&screenshot).with_context(|| {
        format!(
            "chromium wrote no screenshot {}; its stderr:\n{}",
            screenshot.display(),
            shot.stderr
        )
    })?;
    if png.len() <= 8 || !png.starts_with(b"\x89PNG\r\n\x1a\n") {
        bail!("{} is not a PNG ({} bytes)", screenshot.display(), png.len());
    }

    let dump = run(&chromium, out_dir, &["--dump-dom".to_owned(), url])?;
    if dump.stdout.trim().is_empty() {
        bail!(
            "chromium --dump-dom printed nothing; its stderr:\n{}",
            dump.stderr
        );
    }
    Ok(Rendered {
        dom_text: dom_text(&dump.stdout),
        dom_html: dump.stdout,
        screenshot,
    })
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GHGATE_CHROMIUM") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

struct Ran {
    stdout: String,
    stderr: String,
}

/// One headless Chromium run, killed (with everything it started) after `TIMEOUT`.
fn run(chromium: &Path, out_dir: &Path, args: &[String]) -> anyhow::Result<Ran> {
    let home = out_dir.join("chromium-home");
    fs::create_dir_all(&home).with_context(|| format!("create {}", home.display()))?;
    let mut child = Command::new(chromium)
        .args([
            "--headless=new",
            // Tests run as root, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--metrics-recording-only",
            "--hide-scrollbars",
            "--mute-audio",
            "--window-size=1280,2000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            out_dir.join("chromium-profile").display()
        ))
        .args(args)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {}", chromium.display()))?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for chromium")? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    // Its helpers (zygote, renderer) are in the group this run created; none may outlive it.
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let ran = Ran {
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    match status {
        None => bail!(
            "chromium did not finish within {} s and was killed; its stderr:\n{}",
            TIMEOUT.as_secs(),
            ran.stderr
        ),
        Some(s) if !s.success() => bail!("chromium failed ({s}); its stderr:\n{}", ran.stderr),
        Some(_) => Ok(ran),
    }
}

/// The text a reader sees in serialized HTML: roughly `innerText` of the body.
pub fn dom_text(html: &str) -> String {
    const BLOCKS: &[&str] = &[
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "details",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "tbody",
        "thead",
        "tfoot",
        "tr",
        "ul",
    ];
    let mut text = String::with_capacity(html.len() / 2);
    let mut rest = html;
    // What is inside these is never shown as text.
    let mut skip_until: Option<&str> = None;
    while let Some(lt) = rest.find('<') {
        if skip_until.is_none() {
            text.push_str(&rest[..lt]);
        }
        rest = &rest[lt..];
        let Some(gt) = rest.find('>') else {
            rest = "";
            break;
        };
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if let Some(end) = skip_until {
            if closing && name == end {
                skip_until = None;
            }
            continue;
        }
        match name.as_str() {
            "script" | "style" | "head" | "title" | "template" if !closing => {
                skip_until = Some(match name.as_str() {
                    "script" => "script",
                    "style" => "style",
                    "head" => "head",
                    "title" => "title",
                    _ => "template",
                });
            }
            "td" | "th" => text.push(' '),
            n if BLOCKS.contains(&n) => text.push('\n'),
            _ => {}
        }
    }
    if skip_until.is_none() {
        text.push_str(rest);
    }
    decode_entities(&text)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest.find(';').filter(|&i| i <= 10);
        let decoded = end.and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                e if e.starts_with("#x") || e.starts_with("#X") => {
                    u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32)
                }
                e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dom_text_is_what_a_reader_sees() {
        let html = "<!DOCTYPE html><html><head><title>T</title><style>p{}</style></head><body>\
                    <h1>A &amp; B</h1><p>one<span>two</span></p><script>var x = '<p>no</p>';</script>\
                    <table><tr><td>c1</td><td>c2</td></tr></table><pre>&lt;/script&gt;&#39;&#x41;</pre></body></html>";
        assert_eq!(dom_text(html), "A & B\nonetwo\nc1 c2\n</script>'A");
    }

    /// Renders a small page for real; skipped (with a note) where Chromium is not installed,
    /// unless CI=true.
    #[test]
    fn chromium_renders_a_page_and_runs_its_script() {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("page with space.html");
        fs::write(
            &page,
            "<!doctype html><html><head><meta charset=\"utf-8\"></head><body><h1>ghgate &lt;check&gt;</h1>\
             <details><summary>more</summary><pre>collapsed text</pre></details>\
             <script>document.body.insertAdjacentHTML('beforeend', '<p>script ran</p>');</script></body></html>",
        )
        .unwrap();
        let rendered = match render(&page, &dir.path().join("out")) {
            Err(e) if is_missing(&e) => {
                eprintln!("skipping: {e}");
                return;
            }
            r => r.unwrap(),
        };
        assert!(
            rendered.dom_text.contains("ghgate <check>"),
            "{}",
            rendered.dom_text
        );
        assert!(
            rendered.dom_text.contains("collapsed text"),
            "{}",
            rendered.dom_text
        );
        assert!(rendered.dom_text.contains("script ran"), "{}", rendered.dom_text);
        assert!(fs::metadata(&rendered.screenshot).unwrap().len() > 1000);
    }
}
