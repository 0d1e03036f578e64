//! Alerts (the reference stack's Logic App): one message per failed run, naming the stage,
//! the failed tables, the run id, the errors and the counts. Sent as e-mail through Microsoft
//! Graph `sendMail` when a mail channel is configured, otherwise (and whenever Graph cannot be
//! reached after retries) written to the lake's `_system/outbox/`, so no alert is ever lost.
//!
//! Configuration comes from the environment (app settings in Azure):
//! `TUNELAKE_ALERT_TO` (comma-separated recipients) and `TUNELAKE_ALERT_FROM` (the sending
//! mailbox) turn the Graph channel on; the token comes from the app's managed identity
//! (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`, optional `AZURE_CLIENT_ID` for a user-assigned one)
//! or else from client credentials of their own (`TUNELAKE_GRAPH_TENANT_ID`,
//! `TUNELAKE_GRAPH_CLIENT_ID`, `TUNELAKE_GRAPH_CLIENT_SECRET`). Never from `AZURE_CLIENT_SECRET`:
//! the lake's storage client reads the `AZURE_*` variables too and prefers a secret over the
//! managed identity, so a mail-only credential there would become the lake's. `TUNELAKE_GRAPH_URL`
//! and `TUNELAKE_LOGIN_URL` move Graph and the Entra ID token endpoint (tests point them at a
//! loopback server).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::lake::Lake;

/// Graph attempts before the alert goes to the outbox.
const TRIES: u32 = 4;

/// One failed table of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The table that failed.
    pub table: String,
    /// Its error, as the run reported it.
    pub error: String,
}

/// What an alert says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The run that failed.
    pub run_id: String,
    /// The stage it failed in.
    pub stage: String,
    /// Every table that failed, with its error.
    pub failures: Vec<Failure>,
    /// Free-form counts, e.g. "rows_in": 1000.
    #[serde(default)]
    pub counts: serde_json::Map<String, serde_json::Value>,
}

impl Alert {
    /// The e-mail subject: stage, tables and run.
    pub fn subject(&self) -> String {
        let tables: Vec<&str> = self.failures.iter().map(|f| f.table.as_str()).collect();
        format!(
            "tunelake {} failed for {} (run {})",
            self.stage,
            if tables.is_empty() {
                "the run".to_string()
            } else {
                tables.join(", ")
            },
            self.run_id
        )
    }

    /// The e-mail body, plain text.
    pub fn body(&self) -> String {
        let mut text = format!("Stage: {}\nRun: {}\n\n", self.stage, self.run_id);
        for f in &self.failures {
            text.push_str(&format!("Table {}: {}\n", f.table, f.error));
        }
        if !self.counts.is_empty() {
            text.push_str("\nCounts:\n");
            for (k, v) in &self.counts {
                text.push_str(&format!("  {k}: {v}\n"));
            }
        }
        text
    }
}

/// A configured Graph channel.
#[derive(Debug, Clone)]
pub struct Graph {
    graph_url: String,
    login_url: String,
    sender: String,
    to: Vec<String>,
    credential: crate::entra::Credential,
    /// Delay before the first retry; doubles each time (tests make it short).
    backoff: Duration,
}

impl Graph {
    /// The channel from the environment, or `None` when no mail channel is configured.
    pub fn from_env() -> Result<Option<Graph>> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// The channel from any variable lookup (the environment, or a test's map).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Option<Graph>> {
        let (Some(to), Some(sender)) = (var("TUNELAKE_ALERT_TO"), var("TUNELAKE_ALERT_FROM"))
        else {
            return Ok(None);
        };
        if var("AZURE_CLIENT_SECRET").is_some() && var("TUNELAKE_GRAPH_CLIENT_SECRET").is_none() {
            warn!(
                "AZURE_CLIENT_SECRET is set: the lake's storage client authenticates with it \
                 instead of the managed identity, and alerts do not use it (their own client \
                 credentials are TUNELAKE_GRAPH_TENANT_ID, _CLIENT_ID, _CLIENT_SECRET)."
            );
        }
        let credential = match (
            var("TUNELAKE_GRAPH_TENANT_ID"),
            var("TUNELAKE_GRAPH_CLIENT_ID"),
            var("TUNELAKE_GRAPH_CLIENT_SECRET"),
            var("IDENTITY_ENDPOINT"),
            var("IDENTITY_HEADER"),
        ) {
            (Some(tenant), Some(client_id), Some(secret), _, _) => {
                crate::entra::Credential::ClientSecret {
                    tenant,
                    client_id,
                    secret,
                }
            }
            (None, None, None, Some(endpoint), Some(header)) => {
                crate::entra::Credential::ManagedIdentity {
                    endpoint,
                    header,
                    client_id: var("AZURE_CLIENT_ID"),
                }
            }
            _ => {
                return Err(Error::BadArgument {
                    what: "alert settings".to_string(),
                    message: "TUNELAKE_ALERT_TO and TUNELAKE_ALERT_FROM are set, but there is no \
                              credential: run with a managed identity (IDENTITY_ENDPOINT, \
                              IDENTITY_HEADER), or set all three of TUNELAKE_GRAPH_TENANT_ID, \
                              TUNELAKE_GRAPH_CLIENT_ID and TUNELAKE_GRAPH_CLIENT_SECRET"
                        .to_string(),
                });
            }
        };
        Ok(Some(Graph {
            graph_url: var("TUNELAKE_GRAPH_URL")
                .unwrap_or_else(|| "https://graph.microsoft.com/v1.0".to_string())
                .trim_end_matches('/')
                .to_string(),
            login_url: var("TUNELAKE_LOGIN_URL")
                .unwrap_or_else(|| "https://login.microsoftonline.com".to_string())
                .trim_end_matches('/')
                .to_string(),
            sender,
            to: to
                .split([',', ';'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            credential,
            backoff: Duration::from_millis(500),
        }))
    }

    /// Shortens the retry delays (tests).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    async fn token(&self, client: &reqwest::Client) -> std::result::Result<String, String> {
        self.credential
            .token(client, &self.login_url, crate::entra::GRAPH)
            .await
    }

    /// Sends the alert, retrying 429 and 5xx answers (honouring `Retry-After`).
    pub async fn send(&self, alert: &Alert) -> std::result::Result<(), String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let message = serde_json::json!({
            "message": {
                "subject": alert.subject(),
                "body": { "contentType": "Text", "content": alert.body() },
                "toRecipients": self.to.iter()
                    .map(|a| serde_json::json!({ "emailAddress": { "address": a } }))
                    .collect::<Vec<_>>(),
            },
            "saveToSentItems": false,
        });
        let url = format!(
            "{}/users/{}/sendMail",
            self.graph_url,
            utf8_percent(&self.sender)
        );
        let mut delay = self.backoff;
        let mut last = String::new();
        for attempt in 1..=TRIES {
            let token = match self.token(&client).await {
                Ok(t) => t,
                Err(e) => {
                    last = e;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    continue;
                }
            };
            let sent = client
                .post(&url)
                .bearer_auth(&token)
                .header("Content-Type", "application/json")
                .body(message.to_string())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    info!(attempt, to = ?self.to, "Sent the alert through Graph.");
                    return Ok(());
                }
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs)
                        .unwrap_or(delay)
                        .min(Duration::from_secs(60));
                    last = format!("Graph answered {}", r.status());
                    warn!(attempt, status = %r.status(), "Graph refused the alert for now; retrying.");
                    tokio::time::sleep(wait).await;
                    delay *= 2;
                }
                Ok(r) => return Err(format!("Graph answered {}", r.status())),
                Err(e) => {
                    last = format!("Graph unreachable: {}", e.without_url());
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        Err(last)
    }
}

fn utf8_percent(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace("%40", "@")
}

/// Where the alert ended up.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    /// Sent through Microsoft Graph.
    Mail,
    /// The outbox path, and why not by mail (when a mail channel was configured).
    Outbox(String, Option<String>),
}

/// Sends an alert by mail when configured, else (or when mail fails) to the outbox.
pub async fn send(lake: &Lake, graph: Option<&Graph>, alert: &Alert) -> Result<Delivered> {
    let mut reason = None;
    if let Some(graph) = graph {
        match graph.send(alert).await {
            Ok(()) => return Ok(Delivered::Mail),
            Err(e) => {
                warn!(error = %e, "The alert could not be mailed; it goes to the outbox.");
                reason = Some(e);
            }
        }
    }
    let path = crate::lake::layout::outbox(&alert.run_id, &alert.stage);
    let mut record = serde_json::to_value(alert).map_err(|e| Error::Task(e.to_string()))?;
    if let (Some(r), Some(map)) = (&reason, record.as_object_mut()) {
        map.insert("mail_error".to_string(), serde_json::Value::from(r.clone()));
    }
    map_subject(&mut record, alert);
    lake.put(&path, Bytes::from(record.to_string())).await?;
    info!(path, "Wrote the alert to the outbox.");
    Ok(Delivered::Outbox(path, reason))
}

fn map_subject(record: &mut serde_json::Value, alert: &Alert) {
    if let Some(map) = record.as_object_mut() {
        map.insert("subject".to_string(), alert.subject().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            run_id: "r1".into(),
            stage: "gold".into(),
            failures: vec![Failure {
                table: "dim_user".into(),
                error: "boom".into(),
            }],
            counts: Default::default(),
        }
    }

    #[test]
    fn subject_names_stage_tables_and_run() {
        assert_eq!(
            alert().subject(),
            "tunelake gold failed for dim_user (run r1)"
        );
        assert!(alert().body().contains("Table dim_user: boom"));
    }

    #[test]
    fn no_recipients_means_no_mail_channel_and_a_half_configuration_is_an_error() {
        assert!(Graph::from_lookup(|_| None).unwrap().is_none());
        let err = Graph::from_lookup(|n| match n {
            "TUNELAKE_ALERT_TO" | "TUNELAKE_ALERT_FROM" => Some("a@b.c".into()),
            _ => None,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("TUNELAKE_GRAPH_CLIENT_SECRET"), "{err}");
        let graph = Graph::from_lookup(|n| match n {
            "TUNELAKE_ALERT_TO" => Some("x@y.z; w@y.z".into()),
            "TUNELAKE_ALERT_FROM" => Some("alerts@y.z".into()),
            "TUNELAKE_GRAPH_TENANT_ID" | "TUNELAKE_GRAPH_CLIENT_ID" => Some("id".into()),
            "TUNELAKE_GRAPH_CLIENT_SECRET" => Some("s3cret".into()),
            _ => None,
        })
        .unwrap()
        .unwrap();
        assert_eq!(graph.to, ["x@y.z", "w@y.z"]);
        assert!(!format!("{graph:?}").contains("s3cret"));
        // The lake's AZURE_* credential is not the mail's: with a managed identity at hand,
        // alerts use it even when AZURE_CLIENT_SECRET is set.
        let graph = Graph::from_lookup(|n| match n {
            "TUNELAKE_ALERT_TO" | "TUNELAKE_ALERT_FROM" => Some("a@b.c".into()),
            "AZURE_TENANT_ID" | "AZURE_CLIENT_ID" => Some("id".into()),
            "AZURE_CLIENT_SECRET" => Some("lake-secret".into()),
            "IDENTITY_ENDPOINT" => Some("http://127.0.0.1:1/msi".into()),
            "IDENTITY_HEADER" => Some("h".into()),
            _ => None,
        })
        .unwrap()
        .unwrap();
        assert!(
            matches!(
                graph.credential,
                crate::entra::Credential::ManagedIdentity { .. }
            ),
            "{graph:?}"
        );
        // A half-set client credential is an error, not a silent fall-back.
        let err = Graph::from_lookup(|n| match n {
            "TUNELAKE_ALERT_TO" | "TUNELAKE_ALERT_FROM" => Some("a@b.c".into()),
            "TUNELAKE_GRAPH_CLIENT_ID" => Some("id".into()),
            "IDENTITY_ENDPOINT" | "IDENTITY_HEADER" => Some("x".into()),
            _ => None,
        });
        assert!(err.is_err());
    }
}
