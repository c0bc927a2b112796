//! The application layer inside `xtmp server start`: opens `xtmp_services::Services` from
//! the `[xtmp_services]` section and registers its handlers on the router.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use xtmp::XTMPMessageRouter;
use xtmp_services::{Address, PublicKey, Services};

use crate::config::XtmpConfig;
use crate::wallet_file;

/// Where the mint authority came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MintAuthority {
    /// None: value enters through `genesis` only.
    None,
    /// The `mint_authority` key.
    Configured(Address),
    /// `mint_authority_file`, or the automatic wallet (`created`: made on this start).
    File {
        /// Its address.
        address: Address,
        /// The file.
        file: PathBuf,
        /// Whether the file was created now.
        created: bool,
    },
}

/// The opened application layer.
pub struct OpenedServices {
    /// The services (shared with the router's handlers).
    pub services: Arc<Services>,
    /// The mint authority in effect.
    pub mint_authority: MintAuthority,
    /// The store file.
    pub store_file: PathBuf,
    /// The signing key's public key file.
    pub signing_public_key_file: PathBuf,
}

impl std::fmt::Debug for OpenedServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedServices")
            .field("mint_authority", &self.mint_authority)
            .field("store_file", &self.store_file)
            .finish_non_exhaustive()
    }
}

impl OpenedServices {
    /// Lines for the start banner.
    pub fn banner(&self) -> String {
        let authority = match &self.mint_authority {
            MintAuthority::None => "none (value enters through genesis only)".to_string(),
            MintAuthority::Configured(a) => format!("{a} (xtmp_services.mint_authority)"),
            MintAuthority::File {
                address,
                file,
                created,
            } => format!(
                "{address} (wallet {}{})",
                file.display(),
                if *created { ", created now" } else { "" }
            ),
        };
        format!(
            "services:        wallets, bundles, registry, streams, QLOCK, TLSLS\n\
             services store:  {}\n\
             signing key:     {} (key id {})\n\
             mint authority:  {authority}\n",
            self.store_file.display(),
            self.signing_public_key_file.display(),
            hex::encode(self.services.server_key_id()),
        )
    }
}

/// Opens the application layer if `[xtmp_services]` enables it (the default): resolves
/// the mint authority (creating the automatic authority wallet on first start), opens
/// the store (applying the genesis allocations on an empty store) and the signing key.
///
/// # Errors
/// An unreadable mint authority file, a store that cannot be opened (e.g. held by
/// another process), or a genesis that differs from the one already applied.
pub async fn open(cfg: &XtmpConfig) -> Result<Option<OpenedServices>> {
    let sv = &cfg.xtmp_services;
    if !sv.enabled {
        return Ok(None);
    }
    let (key, authority) = if let Some(bytes) = sv.mint_authority_bytes() {
        let pk = PublicKey::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("xtmp_services.mint_authority: {e}"))?;
        let a = Address::of(&pk);
        (Some(bytes), MintAuthority::Configured(a))
    } else if let Some(f) = &sv.mint_authority_file {
        let pk = wallet_file::read_public_key(f).context("xtmp_services.mint_authority_file")?;
        (
            Some(pk.as_bytes().to_vec()),
            MintAuthority::File {
                address: Address::of(&pk),
                file: f.clone(),
                created: false,
            },
        )
    } else if sv.auto_mint_authority {
        let file = sv.auto_mint_authority_file();
        let (k, created) = wallet_file::load_or_create_wallet(&file)
            .context("the automatic mint authority wallet (xtmp_services.auto_mint_authority)")?;
        (
            Some(k.public_key().as_bytes().to_vec()),
            MintAuthority::File {
                address: k.address(),
                file,
                created,
            },
        )
    } else {
        (None, MintAuthority::None)
    };
    let config = sv.to_services_config(key);
    let store_file = config
        .data_dir()
        .join(xtmp_services::store::RedbStore::FILE_NAME);
    let signing_public_key_file = xtmp_services::public_key_path(&config.signing_key_file());
    let dir = config.data_dir().to_path_buf();
    let services = tokio::task::spawn_blocking(move || Services::open(config))
        .await
        .context("the store opener panicked")?
        .map_err(|e| match e {
            // The detail of a storage failure is not in its Display (it is never sent to
            // clients); here, locally, it is what the operator needs.
            xtmp_services::AppError::Storage(detail)
            | xtmp_services::AppError::Internal(detail) => {
                anyhow::anyhow!("{detail}")
            }
            other => anyhow::anyhow!("{other}"),
        })
        .with_context(|| {
            format!(
                "cannot open the application services in {} ([xtmp_services])",
                dir.display()
            )
        })?;
    Ok(Some(OpenedServices {
        services: Arc::new(services),
        mint_authority: authority,
        store_file,
        signing_public_key_file,
    }))
}

/// The router `xtmp server start` serves: the runtime's built-in demo routes, with every
/// application message type (requests and the three streams) replaced by the services'
/// handlers when they are on.
pub fn router(services: Option<&OpenedServices>) -> XTMPMessageRouter {
    let mut r = xtmp::builtin_router();
    if let Some(s) = services {
        xtmp_services::register_all(&mut r, s.services.clone());
    }
    r
}
