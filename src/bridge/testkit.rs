//! Test identities for the bridge: two orgs (north.test, south.test) with real signets, their
//! users, bridge and exit identities, made once from a fixed seed.

use std::sync::OnceLock;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::padding::Buckets;
use super::wrap::{self, WrapInput};
use super::{BridgeError, Identity};
use crate::dime::message::{Parties, Party, SizePolicy};
use crate::dime::{KeyKind, PrivateKey, Signet};

pub(crate) struct Org {
    pub(crate) domain: &'static str,
    pub(crate) key: PrivateKey,
    pub(crate) signet: Signet,
}

pub(crate) struct User {
    pub(crate) address: &'static str,
    pub(crate) key: PrivateKey,
    pub(crate) signet: Signet,
}

impl Org {
    pub(crate) fn identity(&self) -> Identity<'_> {
        Identity {
            signet: &self.signet,
            key: &self.key,
        }
    }
}

impl User {
    pub(crate) fn identity(&self) -> Identity<'_> {
        Identity {
            signet: &self.signet,
            key: &self.key,
        }
    }
}

pub(crate) struct World {
    pub(crate) north: Org,
    pub(crate) south: Org,
    /// A trustful user of north.test.
    pub(crate) alice: User,
    /// A trustful user of south.test.
    pub(crate) bob: User,
    /// A user of south.test whose key only the test holds (cautious).
    pub(crate) carol: User,
    /// north.test's bridge identity (author for legacy senders).
    pub(crate) north_bridge: User,
    /// south.test's bridge identity.
    pub(crate) south_bridge: User,
    /// north.test's exit identity (recipient keyslot of mail for legacy mailboxes).
    pub(crate) north_exit: User,
    /// A user of south.test sending through north.test's exit: not ours.
    pub(crate) mallory: User,
}

fn org(domain: &'static str, rng: &mut StdRng) -> Org {
    let key = PrivateKey::generate(KeyKind::Org, rng);
    let signet = Signet::create_org(&key, domain, &[], &[]).expect("org signet");
    Org {
        domain,
        key,
        signet,
    }
}

fn user(address: &'static str, org: &Org, rng: &mut StdRng) -> User {
    let key = PrivateKey::generate(KeyKind::User, rng);
    let ssr = Signet::create_ssr(&key, None).expect("ssr");
    let signet = Signet::sign_ssr_with_org_key(&ssr, &org.key, address, &[]).expect("signet");
    User {
        address,
        key,
        signet,
    }
}

pub(crate) fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let mut rng = StdRng::seed_from_u64(0xd1_3e);
        let north = org("north.test", &mut rng);
        let south = org("south.test", &mut rng);
        World {
            alice: user("alice@north.test", &north, &mut rng),
            bob: user("bob@south.test", &south, &mut rng),
            carol: user("carol@south.test", &south, &mut rng),
            north_bridge: user("bridge@north.test", &north, &mut rng),
            south_bridge: user("bridge@south.test", &south, &mut rng),
            north_exit: user("exit@north.test", &north, &mut rng),
            mallory: user("mallory@south.test", &south, &mut rng),
            north,
            south,
        }
    })
}

/// Headers of a test mail, ending with the blank line.
pub(crate) fn mail_headers(from: &str, to: &str) -> String {
    format!(
        "Received: from client.north.test by mx.north.test; Tue, 1 Dec 2026 10:00:00 +0000\r\n\
         Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
         From: Sender <{from}>\r\n\
         To: Receiver <{to}>\r\n\
         Subject: Lunch plans for Thursday\r\n\
         Message-ID: <lunch-1@north.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n"
    )
}

/// A whole test mail.
pub(crate) fn mail(from: &str, to: &str) -> String {
    mail_headers(from, to) + "Hello,\r\nlunch at noon at the usual place?\r\n"
}

fn party(signet: &Signet, name: &str) -> Party {
    wrap::named(signet, name)
}

impl World {
    /// alice@north.test -> bob@south.test, through [`super::wrap()`].
    pub(crate) fn wrap(
        &self,
        msg: &[u8],
        authentication_results: Option<&str>,
        padding: Buckets,
        rng: &mut StdRng,
    ) -> Result<Vec<u8>, BridgeError> {
        super::wrap(
            &WrapInput {
                message: msg,
                mail_from: self.alice.address,
                recipient: self.bob.address,
                author: self.alice.identity(),
                author_address: self.alice.address,
                origin: self.north.identity(),
                origin_domain: self.north.domain,
                destination: &self.south.signet,
                destination_domain: self.south.domain,
                recipient_signet: &self.bob.signet,
                authentication_results,
                padding,
            },
            rng,
        )
    }

    /// The same parties as [`World::wrap`], sealed with any size policy.
    pub(crate) fn seal_with(
        &self,
        msg: &[u8],
        size: &dyn SizePolicy,
        rng: &mut StdRng,
    ) -> Result<Vec<u8>, BridgeError> {
        let p = self.parties_north_to_south();
        let parties = Parties {
            author: &p[0],
            origin: &p[1],
            destination: &p[2],
            recipient: &p[3],
        };
        wrap::seal(
            msg,
            &parties,
            self.alice.identity(),
            self.north.identity(),
            size,
            rng,
        )
    }

    /// alice, north.test, south.test, bob: the signets `open` needs.
    pub(crate) fn parties_north_to_south(&self) -> Vec<Party> {
        vec![
            party(&self.alice.signet, self.alice.address),
            party(&self.north.signet, self.north.domain),
            party(&self.south.signet, self.south.domain),
            party(&self.bob.signet, self.bob.address),
        ]
    }
}
