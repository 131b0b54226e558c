//! `index.html`: the scenario's summary and its plots on one page, and the side-by-side page of a
//! comparison. Self-contained (the plots are files beside it), no script.

use std::fmt::Write as _;

use super::plots::PLOTS;
use super::run::Run;
use super::summary::Summary;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1300px}\
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:13px}\
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}\
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}";

fn section(prefix: &str) -> String {
    let mut o = String::new();
    for name in PLOTS {
        let _ = writeln!(
            o,
            "<figure><a href=\"{prefix}{name}.svg\"><img src=\"{prefix}{name}.png\" alt=\"{name}\"></a></figure>"
        );
    }
    o
}

/// The page of one run.
pub fn page(run: &Run, summary_text: &str, _summary: &Summary) -> String {
    let sc = &run.scenario;
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n<p>{desc}</p>\n\
         <h2>Summary</h2>\n<pre>{summary}</pre>\n<p>Data: <a href=\"requests.csv\">requests.csv</a>, \
         <a href=\"timeseries.csv\">timeseries.csv</a>, <a href=\"priorities.csv\">priorities.csv</a>, \
         <a href=\"labs.csv\">labs.csv</a>. Dashed grey lines on the time plots mark the scenario's events.</p>\n\
         <h2>Plots</h2>\n{plots}</body></html>\n",
        title = escape(&sc.name),
        desc = escape(&sc.description),
        summary = escape(summary_text),
        plots = section(""),
    )
}

/// The page comparing two runs, each in its folder `a/` and `b/`.
pub fn comparison(a: &Run, b: &Run, table: &str) -> String {
    let mut plots = String::new();
    for name in PLOTS {
        let _ = writeln!(
            plots,
            "<h3>{name}</h3><div class=\"pair\"><a href=\"a/{name}.svg\"><img src=\"a/{name}.png\" alt=\"A {name}\"></a>\
             <a href=\"b/{name}.svg\"><img src=\"b/{name}.png\" alt=\"B {name}\"></a></div>"
        );
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Comparison</title>\
         <style>{STYLE}</style></head><body>\n<h1>{a} vs {b}</h1>\n<pre>{table}</pre>\n\
         <p>Each run's own page: <a href=\"a/index.html\">A</a>, <a href=\"b/index.html\">B</a>.</p>\n{plots}</body></html>\n",
        a = escape(&a.scenario.name),
        b = escape(&b.scenario.name),
        table = escape(table),
    )
}
