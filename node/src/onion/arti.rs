//! The arti side of the onion transport: the client configuration (public or private
//! network), an identity's onion-service key and nickname, and launching its service.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use arti_client::TorClient;
use arti_client::TorClientConfig;
use arti_client::config::TorClientConfigBuilder;
use arti_client::config::dir::FallbackDir;
use futures::StreamExt;
use onionpost_proto::onion::OnionAddress;
use tor_hscrypto::pk::{HsId, HsIdKey, HsIdKeypair};
use tor_hsservice::config::OnionServiceConfigBuilder;
use tor_hsservice::{HsNickname, RendRequest, RunningOnionService};
use tor_llcrypto::pk::ed25519::{Ed25519Identity, ExpandedKeypair, Keypair};
use tor_llcrypto::pk::rsa::RsaIdentity;
use tor_rtcompat::PreferredRuntime;

use super::OnionError;
use crate::config::PrivateNetwork;
use crate::identity::Identity;

/// The rendezvous requests of one onion service.
pub type Requests = Pin<Box<dyn futures::Stream<Item = RendRequest> + Send + 'static>>;

/// Builds arti's configuration: state and cache under `state_dir`, and the network.
pub fn arti_config(
    state_dir: &Path,
    private: Option<&PrivateNetwork>,
) -> Result<TorClientConfig, OnionError> {
    let mut b =
        TorClientConfigBuilder::from_directories(state_dir.join("state"), state_dir.join("cache"));
    if let Some(p) = private {
        let bad = |what: &str, v: &str| OnionError::Config(format!("invalid {what} {v:?}"));
        let net = b.tor_network();
        let mut fallbacks = Vec::new();
        for f in &p.fallbacks {
            let mut fb = FallbackDir::builder();
            fb.rsa_identity(
                RsaIdentity::from_hex(&f.rsa_identity)
                    .ok_or_else(|| bad("rsa_identity", &f.rsa_identity))?,
            )
            .ed_identity(
                Ed25519Identity::from_base64(&f.ed_identity)
                    .ok_or_else(|| bad("ed_identity", &f.ed_identity))?,
            );
            fb.orports().push(f.orport);
            fallbacks.push(fb);
        }
        // `set_`, not `push`: the list accessor starts from the public network's fallbacks.
        net.set_fallback_caches(fallbacks);
        let mut v3 = Vec::new();
        for a in &p.authorities {
            v3.push(RsaIdentity::from_hex(&a.v3ident).ok_or_else(|| bad("v3ident", &a.v3ident))?);
        }
        let dirs: Vec<Vec<_>> = p.authorities.iter().map(|a| vec![a.dir]).collect();
        let auth = net.authorities();
        auth.set_v3idents(v3);
        auth.set_uploads(dirs.clone());
        auth.set_downloads(dirs.clone());
        auth.set_votes(dirs);
        // Every relay of a loopback network shares 127.0.0.1: do not treat them as a family.
        b.path_rules()
            .ipv4_subnet_family_prefix(33)
            .ipv6_subnet_family_prefix(129);
    }
    b.build().map_err(|e| OnionError::Config(e.to_string()))
}

/// The onion-service nickname of an identity (keys and state are filed under it).
pub fn nickname(onion: &OnionAddress) -> HsNickname {
    let label = onion.label();
    format!("onionpost-{}", &label[..16])
        .parse()
        .expect("a-z2-7 and '-' make a valid nickname")
}

/// arti's identity key pair for an onion service, from the identity's ed25519 seed.
pub fn hsid_keypair(identity: &Identity) -> Result<HsIdKeypair, OnionError> {
    let seed = identity
        .signing_key()
        .map_err(|e| OnionError::Key {
            name: identity.name.clone(),
            why: e.to_string(),
        })?
        .to_bytes();
    let kp = Keypair::from(&seed);
    Ok(HsIdKeypair::from(ExpandedKeypair::from(&kp)))
}

/// Launches the identity's onion service with its own key. arti files the key in its
/// keystore on the first launch and refuses to overwrite it later ("Key already exists"):
/// then the service is launched by nickname, and its address checked against the identity.
pub fn launch(
    base: &Arc<TorClient<PreferredRuntime>>,
    identity: &Identity,
) -> Result<(Arc<RunningOnionService>, Requests), OnionError> {
    let address = identity.address();
    let fail = |why: String| OnionError::Launch {
        address: address.clone(),
        why,
    };
    let keypair = hsid_keypair(identity)?;
    let expected = HsId::from(HsIdKey::from(&keypair));
    let config = OnionServiceConfigBuilder::default()
        .nickname(nickname(&identity.onion))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let launched = match base.launch_onion_service_with_hsid(config.clone(), keypair) {
        Ok(l) => l.map(|(r, s)| (r, Box::pin(s) as Requests)),
        Err(first) => {
            tracing::debug!(%address, "launch with key: {first}; launching by nickname");
            base.launch_onion_service(config)
                .map_err(|e| fail(format!("{first}; then by nickname: {e}")))?
                .map(|(r, s)| (r, Box::pin(s) as Requests))
        }
    };
    let (running, requests) = launched.ok_or_else(|| fail("service disabled".into()))?;
    match running.onion_address() {
        Some(id) if id == expected => Ok((running, requests)),
        _ => Err(fail(format!(
            "arti's keystore holds a different key for nickname {}",
            nickname(&identity.onion)
        ))),
    }
}

/// Logs the bootstrap progress of `onion`'s client whenever its summary changes.
pub async fn log_bootstrap(client: Arc<TorClient<PreferredRuntime>>, onion: OnionAddress) {
    let mut events = client.bootstrap_events();
    let mut last = String::new();
    while let Some(s) = events.next().await {
        let now = s.to_string();
        if now != last {
            if s.ready_for_traffic() {
                tracing::info!(%onion, status = %now, "Tor bootstrap: ready");
            } else {
                tracing::info!(%onion, status = %now, "Tor bootstrap");
            }
            last = now;
        }
    }
}

/// Logs each change of an onion service's state (and its current problem, if any).
pub async fn log_service_state(onion: OnionAddress, running: Arc<RunningOnionService>) {
    let mut events = running.status_events();
    let mut last = String::new();
    while let Some(s) = events.next().await {
        let now = format!("{:?}", s.state());
        if now != last {
            match s.current_problem() {
                Some(p) => tracing::info!(%onion, state = %now, problem = ?p, "onion service"),
                None => tracing::info!(%onion, state = %now, "onion service"),
            }
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthorityEntry, FallbackEntry};
    use crate::identity::IdentityStore;

    #[test]
    fn onion_service_key_is_the_identity_key() {
        let home = tempfile::tempdir().unwrap();
        let (id, _) = IdentityStore::new(home.path()).create("alice").unwrap();
        let kp = hsid_keypair(&id).unwrap();
        let hsid = HsId::from(HsIdKey::from(&kp));
        let hsid: &[u8; 32] = hsid.as_ref();
        assert_eq!(*hsid, id.onion.public_key());
        assert!(nickname(&id.onion).to_string().starts_with("onionpost-"));
    }

    #[test]
    fn private_network_config_builds() {
        let dir = tempfile::tempdir().unwrap();
        let p = PrivateNetwork {
            authorities: vec![AuthorityEntry {
                v3ident: "CDAFFFF4310DF6EE7F21A287AC40DEE9085578C6".into(),
                dir: "127.0.0.1:7001".parse().unwrap(),
            }],
            fallbacks: vec![FallbackEntry {
                rsa_identity: "0A1DF4C9CC470087CFBF4F9CE4E214742E4C07C6".into(),
                ed_identity: "ufVxtsftVCifyc4QRi+YajaFxVGeDv4LGW9D9DfQ/6w".into(),
                orport: "127.0.0.1:7000".parse().unwrap(),
            }],
        };
        let cfg = arti_config(dir.path(), Some(&p)).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("198.12.71.224"),
            "public fallbacks leaked in: {dbg}"
        );
        assert!(dbg.contains("127.0.0.1:7000"), "{dbg}");
        arti_config(dir.path(), None).unwrap();
        let mut bad = p.clone();
        bad.fallbacks[0].rsa_identity = "nope".into();
        assert!(matches!(
            arti_config(dir.path(), Some(&bad)),
            Err(OnionError::Config(_))
        ));
    }
}
