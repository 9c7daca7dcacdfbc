//! `alchemiscale identity …`.

use alchemiscale_model::Scope;
use alchemiscale_store::identities::{hash_key, replaced_identity_warning, IdentityKind};
use anyhow::Context;
use clap::{Args, Subcommand};

use crate::pyrepr::repr_list;
use crate::store_args::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Create an identity, or replace the key of an existing one.
    ///
    /// Replacing an existing identity's key removes its scopes (as upstream does) unless
    /// --keep-scopes is given; either way a warning says the identity existed.
    Add {
        #[command(flatten)]
        who: Who,
        /// The identity's secret key (at most 4096 characters, no NUL).
        #[arg(short = 'k', long)]
        key: String,
        /// Keep the scopes of an existing identity whose key is replaced.
        #[arg(long)]
        keep_scopes: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the identifiers of one identity type, as a Python list (e.g. ['bill', 'ted']).
    List {
        #[command(flatten)]
        kind: Kind,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete an identity (silent if it does not exist).
    Remove {
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Grant scopes to an identity. Every scope is validated before any is applied;
    /// an identity that does not exist is an error.
    AddScope {
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        scopes: Scopes,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List an identity's scopes in the order granted, as a Python list.
    ListScope {
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke scopes from an identity (scopes it does not hold are ignored); an identity
    /// that does not exist is an error.
    RemoveScope {
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        scopes: Scopes,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Args)]
pub struct Kind {
    /// Identity type: user (user API), compute (compute services and managers) or admin
    /// (user API, may also read other identities' scopes).
    #[arg(short = 't', long = "identity-type", default_value = "user", value_parser = parse_kind)]
    pub kind: IdentityKind,
}

#[derive(Debug, Args)]
pub struct Who {
    #[command(flatten)]
    pub kind: Kind,
    /// The identity's identifier.
    #[arg(short = 'i', long)]
    pub identifier: String,
}

#[derive(Debug, Args)]
pub struct Scopes {
    /// A scope org-campaign-project (`*` wildcards allowed from the right: org-*-*);
    /// repeat for several.
    #[arg(short = 's', long = "scope", required = true, value_parser = parse_scope)]
    pub scopes: Vec<Scope>,
}

fn parse_kind(s: &str) -> Result<IdentityKind, String> {
    s.parse::<IdentityKind>().map_err(|e| e.to_string())
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse::<Scope>().map_err(|e| e.to_string())
}

pub async fn run(cmd: IdentityCommand, data_dir: &std::path::Path) -> anyhow::Result<()> {
    match cmd {
        IdentityCommand::Add { who, key, keep_scopes, store } => {
            let hashed = hash_key(&key)?;
            let store = store.connect_ready(data_dir).await?;
            let existed = store.add_identity(who.kind.kind, &who.identifier, &hashed, keep_scopes).await?;
            if existed {
                eprintln!("warning: {}", replaced_identity_warning(who.kind.kind, &who.identifier, keep_scopes));
            }
        }
        IdentityCommand::List { kind, store } => {
            let store = store.connect_ready(data_dir).await?;
            println!("{}", repr_list(&store.list_identities(kind.kind).await?));
        }
        IdentityCommand::Remove { who, store } => {
            let store = store.connect_ready(data_dir).await?;
            store.remove_identity(who.kind.kind, &who.identifier).await?;
        }
        IdentityCommand::AddScope { who, scopes, store } => {
            let store = store.connect_ready(data_dir).await?;
            store.add_scopes(who.kind.kind, &who.identifier, &scopes.scopes).await.context("cannot add scopes")?;
        }
        IdentityCommand::ListScope { who, store } => {
            let store = store.connect_ready(data_dir).await?;
            let scopes = store.list_scopes(who.kind.kind, &who.identifier).await?.unwrap_or_default();
            println!("{}", repr_list(&scopes));
        }
        IdentityCommand::RemoveScope { who, scopes, store } => {
            let store = store.connect_ready(data_dir).await?;
            store.remove_scopes(who.kind.kind, &who.identifier, &scopes.scopes).await.context("cannot remove scopes")?;
        }
    }
    Ok(())
}
