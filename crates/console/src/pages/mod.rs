//! One module per console page.

pub mod compute;
pub mod identities;
pub mod network;
pub mod overview;
pub mod task;
pub mod transformation;

use std::collections::HashMap;

use alchemiscale_model::ScopedKey;
use maud::{html, Markup};

use crate::error::{ConsoleError, ConsoleResult};
use crate::session::Session;

/// A ScopedKey from the path, of the expected class, that the session may reach.
pub fn path_key(session: &Session, raw: &str, qualnames: &[&str], what: &str) -> ConsoleResult<ScopedKey> {
    let key: ScopedKey = raw.parse().map_err(|_| ConsoleError::NotFound(format!("'{raw}' is not a {what} key.")))?;
    if !qualnames.contains(&key.qualname()) {
        return Err(ConsoleError::NotFound(format!("'{raw}' is not a {what} key.")));
    }
    session.require(key.scope())?;
    Ok(key)
}

/// The notice shown after an action redirected back (`?notice=…&n=…`), if any.
pub fn notice(query: &HashMap<String, String>) -> Markup {
    match notice_text(query.get("notice").map(String::as_str), query.get("n").map(String::as_str)) {
        Some(text) => html! { p.notice.ok role="status" { (text) } },
        None => html! {},
    }
}

/// A notice's text: fixed texts only, so a link cannot put words in the console's mouth.
fn notice_text(code: Option<&str>, n: Option<&str>) -> Option<String> {
    let n: i64 = n.and_then(|n| n.parse().ok()).unwrap_or(0);
    Some(match code? {
        "created" => format!("Created {n} task(s)."),
        "created-actioned" => format!("Created and actioned {n} task(s)."),
        "actioned" => format!("Actioned {n} task(s) on this network."),
        "cancelled" => format!("Cancelled {n} task(s) on this network."),
        "state" => "Network state set.".to_string(),
        "weight" => "Network weight set.".to_string(),
        "woken" => "Strategy woken; the strategist runs it at its next turn.".to_string(),
        _ => return None,
    })
}
