//! Relayed introductions on the rendezvous endpoint, over real QUIC on loopback: relay
//! credentials go only to a source with a session, minted for that source, and the asker gets
//! the relayed address the source answered with.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use quaver_directory::relay::RelayOffer;
use quaver_directory::rendezvous::{RelayBroker, Rendezvous};
use quaver_shared::directory::v1::{Introduction, IntroductionAnswer, RendezvousAnswer, RendezvousRequest};
use quaver_shared::tls::{self, ClientAuth};
use quaver_shared::{NodeKey, PeerId};

/// A node's rendezvous connection, proving `key`.
async fn channel(rendezvous: &Rendezvous, key: &NodeKey) -> quinn::Connection {
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let me = ClientAuth::new(key).unwrap();
    let config = tls::rendezvous_client_config(rendezvous.id(), &me).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], rendezvous.ports()[0]));
    endpoint.connect_with(config, addr, tls::SERVER_NAME).unwrap().await.unwrap()
}

async fn ask(channel: &quinn::Connection, request: RendezvousRequest) -> RendezvousAnswer {
    let (mut send, mut recv) = channel.open_bi().await.unwrap();
    send.write_all(&request.encode_length_delimited_to_vec()).await.unwrap();
    send.finish().unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1024)).await.unwrap().unwrap();
    RendezvousAnswer::decode_length_delimited(bytes.as_slice()).unwrap()
}

#[tokio::test]
async fn relay_credentials_go_only_to_a_source_with_a_session_and_the_asker_gets_its_relayed_address() {
    let data = tempfile::tempdir().unwrap();
    let sessions: Arc<Mutex<HashSet<PeerId>>> = Arc::default();
    let known = sessions.clone();
    let broker = RelayBroker {
        offer: RelayOffer::new(
            "198.18.0.1:3478".into(),
            "relay-secret-for-the-test",
            Duration::from_secs(600),
        ),
        has_session: Box::new(move |peer| known.lock().unwrap().contains(peer)),
    };
    let loopback = "127.0.0.1".parse().unwrap();
    let rendezvous = Arc::new(Rendezvous::bind(loopback, [0, 0], data.path(), Some(broker)).unwrap());
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(rendezvous.clone().serve(stopping));

    let (asker_key, source_key) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
    let source = source_key.peer_id();
    let asker = channel(&rendezvous, &asker_key).await;
    let source_channel = channel(&rendezvous, &source_key).await;
    for _ in 0..100 {
        if rendezvous.channels() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rendezvous.channels(), 2);
    assert_eq!(rendezvous.relay_address(), Some("198.18.0.1:3478"));

    // The source answers every introduction it gets with a relayed address, and keeps what
    // it was sent.
    let received: Arc<Mutex<Vec<Introduction>>> = Arc::default();
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = source_channel.accept_bi().await {
            let bytes = recv.read_to_end(1024).await.unwrap();
            seen.lock().unwrap().push(Introduction::decode_length_delimited(bytes.as_slice()).unwrap());
            let answer =
                IntroductionAnswer { relayed_address: "198.18.0.1:49200".into(), error: String::new() };
            send.write_all(&answer.encode_length_delimited_to_vec()).await.unwrap();
            send.finish().unwrap();
        }
    });
    let request = RendezvousRequest { introduce: source.to_vec(), relay: true };

    // No session: no credentials, and the source hears nothing.
    let refused = ask(&asker, request.clone()).await;
    assert!(refused.error.contains("no session"), "{refused:?}");
    assert!(refused.peer_address.is_empty());
    assert!(received.lock().unwrap().is_empty(), "the source was sent nothing");

    sessions.lock().unwrap().insert(source);
    let made = ask(&asker, request).await;
    assert_eq!((made.error.as_str(), made.peer_address.as_str()), ("", "198.18.0.1:49200"), "{made:?}");
    let intro = received.lock().unwrap().pop().expect("the source got the introduction");
    assert_eq!(intro.peer_id, asker_key.peer_id().to_vec(), "it names the asker");
    let creds = intro.relay.expect("with relay credentials");
    assert!(creds.username.ends_with(&format!(":{source}")), "minted for the source: {creds:?}");
    assert_eq!(creds.server, "198.18.0.1:3478");

    let counts = rendezvous.introductions();
    assert_eq!((counts.relay_refused, counts.relay_made, counts.relay_failed), (1, 1, 0), "{counts:?}");

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving).await.unwrap().unwrap();
}
