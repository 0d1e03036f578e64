//! Alerts through a loopback stand-in for Microsoft Graph and the Entra ID token endpoints,
//! checking the exact requests, the retries, and the outbox when Graph will not take it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tunelake::alert::{Alert, Delivered, Failure, Graph};
use tunelake::http::{Handler, Request, Response};
use tunelake::lake::Lake;

/// A loopback server that records every request and answers sendMail with the next status
/// of `mail_statuses` (202 once they run out).
struct FakeGraph {
    url: String,
    seen: Arc<Mutex<Vec<Request>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn fake_graph(mail_statuses: Vec<u16>) -> FakeGraph {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(mail_statuses));
    let log = seen.clone();
    let handler: Handler = Arc::new(move |r: Request| {
        let log = log.clone();
        let statuses = statuses.clone();
        Box::pin(async move {
            log.lock().unwrap().push(r.clone());
            if r.path.ends_with("/oauth2/v2.0/token") || r.path == "/msi/token" {
                return Response::json(
                    200,
                    &serde_json::json!({ "token_type": "Bearer", "expires_in": 3599, "access_token": "fake-token" }),
                );
            }
            let mut s = statuses.lock().unwrap();
            let status = if s.is_empty() { 202 } else { s.remove(0) };
            Response::text(status, "")
        })
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tunelake::http::serve(
        listener,
        handler,
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));
    FakeGraph {
        url,
        seen,
        _stop: stop,
    }
}

fn alert() -> Alert {
    Alert {
        run_id: "20261127T100000Z-abc".into(),
        stage: "gold".into(),
        failures: vec![Failure {
            table: "dim_user".into(),
            error: "merge conflict".into(),
        }],
        counts: Default::default(),
    }
}

fn graph(fake: &FakeGraph, managed_identity: bool) -> Graph {
    let url = fake.url.clone();
    Graph::from_lookup(move |name| {
        Some(match name {
            "TUNELAKE_ALERT_TO" => "oncall@contoso.example, data@contoso.example".into(),
            "TUNELAKE_ALERT_FROM" => "alerts@contoso.example".into(),
            "TUNELAKE_GRAPH_URL" => format!("{url}/v1.0"),
            "TUNELAKE_LOGIN_URL" => url.clone(),
            "TUNELAKE_GRAPH_TENANT_ID" if !managed_identity => "tenant-1".into(),
            "TUNELAKE_GRAPH_CLIENT_ID" if !managed_identity => "client-1".into(),
            "AZURE_CLIENT_ID" if managed_identity => "client-1".into(),
            "TUNELAKE_GRAPH_CLIENT_SECRET" if !managed_identity => "very-secret".into(),
            "IDENTITY_ENDPOINT" if managed_identity => format!("{url}/msi/token"),
            "IDENTITY_HEADER" if managed_identity => "identity-header".into(),
            _ => return None,
        })
    })
    .unwrap()
    .unwrap()
    .with_backoff(Duration::from_millis(10))
}

fn lake() -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().join("lake").to_str().unwrap()).unwrap();
    (dir, lake)
}

#[tokio::test]
async fn a_client_credentials_token_then_one_send_mail_with_the_alert() {
    let fake = fake_graph(vec![]).await;
    let (_dir, lake) = lake();
    let delivered = tunelake::alert::send(&lake, Some(&graph(&fake, false)), &alert())
        .await
        .unwrap();
    assert_eq!(delivered, Delivered::Mail);
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let token = &seen[0];
    assert_eq!(
        (token.method.as_str(), token.path.as_str()),
        ("POST", "/tenant-1/oauth2/v2.0/token")
    );
    assert_eq!(
        token.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form: Vec<(String, String)> = form_urlencoded::parse(&token.body).into_owned().collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(field("grant_type"), Some("client_credentials"));
    assert_eq!(field("client_id"), Some("client-1"));
    assert_eq!(field("client_secret"), Some("very-secret"));
    assert_eq!(field("scope"), Some("https://graph.microsoft.com/.default"));

    let mail = &seen[1];
    assert_eq!(
        (mail.method.as_str(), mail.path.as_str()),
        ("POST", "/v1.0/users/alerts@contoso.example/sendMail")
    );
    assert_eq!(mail.header("authorization"), Some("Bearer fake-token"));
    assert_eq!(mail.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&mail.body).unwrap();
    assert_eq!(
        body["message"]["subject"],
        "tunelake gold failed for dim_user (run 20261127T100000Z-abc)"
    );
    assert_eq!(
        body["message"]["toRecipients"][0]["emailAddress"]["address"],
        "oncall@contoso.example"
    );
    assert_eq!(
        body["message"]["toRecipients"][1]["emailAddress"]["address"],
        "data@contoso.example"
    );
    assert!(
        body["message"]["body"]["content"]
            .as_str()
            .unwrap()
            .contains("merge conflict")
    );
    assert_eq!(body["saveToSentItems"], false);
    assert!(lake.list("_system/outbox").await.unwrap().is_empty());
}

#[tokio::test]
async fn throttling_is_retried_and_a_managed_identity_token_is_used() {
    let fake = fake_graph(vec![429, 503]).await;
    let (_dir, lake) = lake();
    let delivered = tunelake::alert::send(&lake, Some(&graph(&fake, true)), &alert())
        .await
        .unwrap();
    assert_eq!(delivered, Delivered::Mail);
    let seen = fake.seen.lock().unwrap().clone();
    let tokens: Vec<&Request> = seen.iter().filter(|r| r.path == "/msi/token").collect();
    let mails = seen
        .iter()
        .filter(|r| r.path.ends_with("/sendMail"))
        .count();
    assert_eq!(mails, 3, "429, 503, then 202");
    assert_eq!(tokens[0].method, "GET");
    assert_eq!(
        tokens[0].header("x-identity-header"),
        Some("identity-header")
    );
    assert_eq!(
        tokens[0].param("resource"),
        Some("https://graph.microsoft.com")
    );
    assert_eq!(tokens[0].param("api-version"), Some("2019-08-01"));
    assert_eq!(tokens[0].param("client_id"), Some("client-1"));
}

#[tokio::test]
async fn when_graph_keeps_failing_the_alert_lands_in_the_outbox_without_secrets() {
    let fake = fake_graph(vec![500; 10]).await;
    let (_dir, lake) = lake();
    let delivered = tunelake::alert::send(&lake, Some(&graph(&fake, false)), &alert())
        .await
        .unwrap();
    let Delivered::Outbox(path, Some(reason)) = delivered else {
        panic!("{delivered:?}")
    };
    assert!(reason.contains("500"), "{reason}");
    let text = String::from_utf8(lake.get_opt(&path).await.unwrap().unwrap().to_vec()).unwrap();
    let saved: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(saved["stage"], "gold");
    assert_eq!(saved["failures"][0]["table"], "dim_user");
    assert!(!text.contains("very-secret") && !reason.contains("very-secret"));
    assert_eq!(
        fake.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.ends_with("/sendMail"))
            .count(),
        4
    );
}
