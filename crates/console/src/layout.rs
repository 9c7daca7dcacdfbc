//! The page shell (header, navigation, sign-out), the embedded stylesheet and script, the
//! status colours, and small formatting helpers shared by the pages.

use std::sync::LazyLock;

use alchemiscale_model::ScopedKey;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::session::Session;

/// Task statuses and their colours. Every colour reaches a contrast of at least 4.5:1
/// against white (WCAG AA for text), and the status is always written out as well.
pub const STATUS_COLOURS: &[(&str, &str)] = &[
    ("waiting", "#8a5300"),
    ("running", "#0b57a4"),
    ("complete", "#1a7030"),
    ("error", "#b3261e"),
    ("invalid", "#6a1b9a"),
    ("deleted", "#5f6368"),
];

/// Colour of transformations without tasks.
pub const NO_TASKS_COLOUR: &str = "#767676";

pub fn status_colour(status: &str) -> &'static str {
    STATUS_COLOURS.iter().find(|(s, _)| *s == status).map(|(_, c)| *c).unwrap_or(NO_TASKS_COLOUR)
}

const BASE_CSS: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

static CSS: LazyLock<String> = LazyLock::new(|| {
    let mut css = BASE_CSS.to_string();
    for (status, colour) in STATUS_COLOURS {
        css.push_str(&format!(".s-{status} {{ color: {colour}; border-color: {colour}; }}\n"));
        css.push_str(&format!(".swatch-{status} {{ background: {colour}; }}\n"));
    }
    css.push_str(&format!(".swatch-none {{ background: {NO_TASKS_COLOUR}; }}\n"));
    css
});

pub async fn stylesheet() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], CSS.as_str())
}

pub async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], SCRIPT)
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · alchemiscale" }
            link rel="stylesheet" href="/ui/assets/console.css";
            script src="/ui/assets/console.js" defer {}
        }
    }
}

/// A page for a signed-in session.
pub fn shell(session: &Session, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/ui" { "alchemiscale" }
                    nav aria-label="Main" {
                        a href="/ui" { "Overview" }
                        a href="/ui/compute" { "Compute" }
                        @if session.is_admin() { a href="/ui/identities" { "Identities" } }
                    }
                    form.signout method="post" action="/ui/logout" {
                        span.who { (session.kind) " " strong { (session.identifier) } }
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page without a session (sign-in, errors).
pub fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top { a.brand href="/ui" { "alchemiscale" } }
                main { (body) }
            }
        }
    }
}

pub fn error_page(status: StatusCode, message: &str) -> Markup {
    bare_page(
        status.canonical_reason().unwrap_or("Error"),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
            p.notice.error role="alert" { (message) }
            p { a href="/ui" { "Back to the overview" } }
        },
    )
}

/// The hidden CSRF field of a session's forms.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A status written out in its colour.
pub fn status_badge(status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } { (status) } }
}

/// Status counts as badges with numbers, in the order of [`STATUS_COLOURS`].
pub fn status_counts(counts: &std::collections::BTreeMap<String, i64>) -> Markup {
    html! {
        span.counts {
            @for (status, _) in STATUS_COLOURS {
                @if let Some(n) = counts.get(*status) {
                    span class={ "badge s-" (status) } { (status) ": " (n) }
                }
            }
        }
    }
}

/// A bar of status proportions (a row of coloured segments with widths in percent),
/// drawn as SVG so the page needs no inline style.
pub fn status_bar(counts: &std::collections::BTreeMap<String, i64>) -> Markup {
    let total: i64 = counts.values().sum();
    let mut segments = Vec::new();
    let mut x = 0.0;
    for (status, colour) in STATUS_COLOURS {
        if let Some(n) = counts.get(*status) {
            let w = *n as f64 * 100.0 / total as f64;
            segments.push((format!("{x:.3}"), format!("{w:.3}"), *colour));
            x += w;
        }
    }
    html! {
        svg.statusbar viewBox="0 0 100 4" preserveAspectRatio="none" role="img" aria-label="task status proportions" {
            @if total == 0 {
                rect x="0" y="0" width="100" height="4" fill="#e8e8e8" {}
            }
            @for (x, w, colour) in &segments {
                rect x=(x) y="0" width=(w) height="4" fill=(colour) {}
            }
        }
    }
}

/// A link to a network, transformation or task page.
pub fn key_link(key: &ScopedKey, label: Option<&str>) -> Markup {
    let path = match key.qualname() {
        "AlchemicalNetwork" => "networks",
        "Task" => "tasks",
        _ => "transformations",
    };
    html! { a href={ "/ui/" (path) "/" (key) } { (label.unwrap_or(key.gufe_key().as_str())) } }
}

/// µs since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default()
}

/// A duration in seconds, briefly (`42 s`, `3 min`, `5 h`, `2 d`).
pub fn age(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// Inline SVG produced by our own drawing code (never user text unescaped).
pub fn svg(text: String) -> Markup {
    PreEscaped(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luminance(hex: &str) -> f64 {
        let channel = |i: usize| {
            let c = u8::from_str_radix(&hex[i..i + 2], 16).unwrap() as f64 / 255.0;
            if c <= 0.03928 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5)
    }

    #[test]
    fn status_colours_are_readable_on_white() {
        for (status, colour) in STATUS_COLOURS.iter().chain([("none", NO_TASKS_COLOUR)].iter()) {
            let ratio = (1.0 + 0.05) / (luminance(colour) + 0.05);
            assert!(ratio >= 4.5, "{status} colour {colour} has contrast {ratio:.2} against white");
        }
    }

    #[test]
    fn ages_are_brief() {
        assert_eq!(age(5), "5 s");
        assert_eq!(age(600), "10 min");
        assert_eq!(age(3 * 3600), "3 h");
        assert_eq!(age(-3), "0 s");
    }
}
