//! `GET /ui/identities` (admins): list, add, remove, grant and revoke scopes, with the
//! same rules and messages as `alchemiscale identity …`.

use std::collections::HashMap;

use alchemiscale_model::Scope;
use alchemiscale_store::identities::{hash_key, replaced_identity_warning, IdentityKind};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use crate::error::{ConsoleError, ConsoleResult};
use crate::form::Form;
use crate::layout::{csrf, shell};
use crate::session::Session;
use crate::ConsoleState;

const KINDS: [IdentityKind; 3] = [IdentityKind::User, IdentityKind::Admin, IdentityKind::Compute];

async fn render(state: &ConsoleState, session: &Session, message: Option<(bool, String)>) -> ConsoleResult<Markup> {
    session.require_admin()?;
    let mut lists = Vec::new();
    for kind in KINDS {
        let mut rows = Vec::new();
        for identifier in state.store().list_identities(kind).await? {
            if let Some((identity, _)) = state.store().get_identity(kind, &identifier).await? {
                rows.push(identity);
            }
        }
        lists.push((kind, rows));
    }
    let kind_select = html! {
        label { "Type"
            select name="kind" { @for k in KINDS { option value=(k.as_str()) { (k.as_str()) } } }
        }
    };
    let body = html! {
        h1 { "Identities" }
        @if let Some((ok, m)) = &message {
            p class={ "notice " @if *ok { "ok" } @else { "error" } } role="status" { (m) }
        }
        section.noprint aria-label="Add an identity" {
            h2 { "Add an identity" }
            p.hint { "Adding an identifier that exists replaces its key (and removes its scopes unless kept)." }
            form.inline method="post" action="/ui/identities/add" data-confirm="Add this identity?" {
                (csrf(session))
                (kind_select)
                label { "Identifier" input type="text" name="identifier" required; }
                label { "Key" input type="password" name="key" autocomplete="new-password" required; }
                label { "Keep scopes of an existing identity" input type="checkbox" name="keep_scopes"; }
                button type="submit" { "Add identity" }
            }
            h2 { "Grant a scope" }
            form.inline method="post" action="/ui/identities/scopes/add" {
                (csrf(session))
                (kind_select)
                label { "Identifier" input type="text" name="identifier" required; }
                label { "Scope (org-campaign-project, * allowed from the right)" input type="text" name="scope" required placeholder="org-campaign-project"; }
                button type="submit" { "Grant scope" }
            }
        }
        @for (kind, rows) in &lists {
            h2 { (kind.as_str()) " identities" }
            @if rows.is_empty() { p { "None." } } @else {
                table {
                    thead { tr { th scope="col" { "Identifier" } th scope="col" { "State" } th scope="col" { "Scopes" } th scope="col" { span.noprint { "Remove" } } } }
                    tbody {
                        @for i in rows {
                            tr {
                                td { code { (i.identifier) } }
                                td { @if i.disabled { "disabled" } @else { "enabled" } }
                                td {
                                    @if i.scopes.is_empty() { "none" }
                                    @for s in &i.scopes {
                                        form.inline method="post" action="/ui/identities/scopes/remove" data-confirm={ "Revoke " (s) " from " (i.identifier) "?" } {
                                            (csrf(session))
                                            input type="hidden" name="kind" value=(kind.as_str());
                                            input type="hidden" name="identifier" value=(i.identifier);
                                            input type="hidden" name="scope" value=(s);
                                            code { (s) } " "
                                            button.danger type="submit" aria-label={ "Revoke scope " (s) " from " (i.identifier) } { "Revoke" }
                                        }
                                    }
                                }
                                td {
                                    form.inline method="post" action="/ui/identities/remove" data-confirm={ "Remove " (kind.as_str()) " identity " (i.identifier) "?" } {
                                        (csrf(session))
                                        input type="hidden" name="kind" value=(kind.as_str());
                                        input type="hidden" name="identifier" value=(i.identifier);
                                        button.danger type="submit" aria-label={ "Remove " (i.identifier) } { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(shell(session, "Identities", body))
}

pub async fn page(
    State(state): State<ConsoleState>,
    session: Session,
    Query(query): Query<HashMap<String, String>>,
) -> ConsoleResult<Markup> {
    let message = match query.get("done").map(String::as_str) {
        Some("added") => Some((true, "Identity added.".to_string())),
        Some("removed") => Some((true, "Identity removed.".to_string())),
        Some("granted") => Some((true, "Scope granted.".to_string())),
        Some("revoked") => Some((true, "Scope revoked.".to_string())),
        _ => None,
    };
    render(&state, &session, message).await
}

fn kind_and_identifier(form: &Form) -> ConsoleResult<(IdentityKind, String)> {
    let kind = form.required("kind", "Identity type")?.parse::<IdentityKind>().map_err(|e| ConsoleError::BadRequest(e.to_string()))?;
    Ok((kind, form.required("identifier", "Identifier")?.to_string()))
}

/// A refusal shown on the identities page itself, with a 400.
async fn refused(state: &ConsoleState, session: &Session, message: String) -> ConsoleResult<Response> {
    Ok((axum::http::StatusCode::BAD_REQUEST, render(state, session, Some((false, message))).await?).into_response())
}

pub async fn add(State(state): State<ConsoleState>, session: Session, form: Form) -> ConsoleResult<Response> {
    form.check_csrf(&session)?;
    session.require_admin()?;
    let (kind, identifier) = kind_and_identifier(&form)?;
    let key = form.get("key").unwrap_or("");
    let keep = form.checked("keep_scopes");
    let hashed = match hash_key(key) {
        Ok(h) => h,
        Err(e) => return refused(&state, &session, e.to_string()).await,
    };
    match state.store().add_identity(kind, &identifier, &hashed, keep).await {
        Ok(true) => {
            let warning = format!("warning: {}", replaced_identity_warning(kind, &identifier, keep));
            Ok(render(&state, &session, Some((true, warning))).await?.into_response())
        }
        Ok(false) => {
            tracing::info!(admin = session.identifier, %kind, identifier, "console: identity added");
            Ok(Redirect::to("/ui/identities?done=added").into_response())
        }
        Err(e @ alchemiscale_store::StoreError::Invalid(_)) => refused(&state, &session, e.to_string()).await,
        Err(e) => Err(e.into()),
    }
}

pub async fn remove(State(state): State<ConsoleState>, session: Session, form: Form) -> ConsoleResult<Response> {
    form.check_csrf(&session)?;
    session.require_admin()?;
    let (kind, identifier) = kind_and_identifier(&form)?;
    state.store().remove_identity(kind, &identifier).await?;
    tracing::info!(admin = session.identifier, %kind, identifier, "console: identity removed");
    Ok(Redirect::to("/ui/identities?done=removed").into_response())
}

async fn change_scope(state: ConsoleState, session: Session, form: Form, grant: bool) -> ConsoleResult<Response> {
    form.check_csrf(&session)?;
    session.require_admin()?;
    let (kind, identifier) = kind_and_identifier(&form)?;
    let scope: Scope = match form.required("scope", "Scope")?.parse() {
        Ok(s) => s,
        Err(e) => return refused(&state, &session, format!("invalid value for '--scope': {e}")).await,
    };
    let result = match grant {
        true => state.store().add_scopes(kind, &identifier, &[scope]).await,
        false => state.store().remove_scopes(kind, &identifier, &[scope]).await,
    };
    match result {
        Ok(()) => Ok(Redirect::to(if grant { "/ui/identities?done=granted" } else { "/ui/identities?done=revoked" }).into_response()),
        Err(e @ (alchemiscale_store::StoreError::Invalid(_) | alchemiscale_store::StoreError::NotFound)) => {
            let what = if grant { "cannot add scopes" } else { "cannot remove scopes" };
            refused(&state, &session, format!("{what}: {e}")).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn add_scope(State(state): State<ConsoleState>, session: Session, form: Form) -> ConsoleResult<Response> {
    change_scope(state, session, form, true).await
}

pub async fn remove_scope(State(state): State<ConsoleState>, session: Session, form: Form) -> ConsoleResult<Response> {
    change_scope(state, session, form, false).await
}
