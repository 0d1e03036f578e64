//! Entra ID tokens for the services tunelake calls itself (Microsoft Graph for alerts, Azure
//! Databricks for Unity Catalog): client credentials of their own, or the managed identity
//! the Functions host exposes (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`). The lake's storage
//! clients authenticate through object_store and delta-rs, not here.

use serde::Deserialize;

/// Microsoft Graph.
pub const GRAPH: &str = "https://graph.microsoft.com";
/// Azure Databricks (its well-known application id).
pub const DATABRICKS: &str = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d";

/// Where a token comes from.
#[derive(Clone)]
pub enum Credential {
    /// Client credentials (an app registration's secret).
    ClientSecret {
        /// The tenant.
        tenant: String,
        /// The app's client id.
        client_id: String,
        /// Its secret.
        secret: String,
    },
    /// The managed identity of the Functions host.
    ManagedIdentity {
        /// `IDENTITY_ENDPOINT`.
        endpoint: String,
        /// `IDENTITY_HEADER`.
        header: String,
        /// A user-assigned identity's client id.
        client_id: Option<String>,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret or the identity header.
        match self {
            Credential::ClientSecret {
                tenant, client_id, ..
            } => write!(f, "ClientSecret({tenant}, {client_id})"),
            Credential::ManagedIdentity { endpoint, .. } => {
                write!(f, "ManagedIdentity({endpoint})")
            }
        }
    }
}

impl Credential {
    /// A token for `resource` (an application id URI or id), from the token endpoint under
    /// `login_url` (client credentials) or the identity endpoint.
    pub async fn token(
        &self,
        client: &reqwest::Client,
        login_url: &str,
        resource: &str,
    ) -> std::result::Result<String, String> {
        let response = match self {
            Credential::ClientSecret {
                tenant,
                client_id,
                secret,
            } => {
                let scope = format!("{resource}/.default");
                let form = form_urlencoded::Serializer::new(String::new())
                    .append_pair("client_id", client_id)
                    .append_pair("client_secret", secret)
                    .append_pair("scope", &scope)
                    .append_pair("grant_type", "client_credentials")
                    .finish();
                client
                    .post(format!("{login_url}/{tenant}/oauth2/v2.0/token"))
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form)
                    .send()
                    .await
            }
            Credential::ManagedIdentity {
                endpoint,
                header,
                client_id,
            } => {
                let mut query = vec![("resource", resource), ("api-version", "2019-08-01")];
                if let Some(id) = client_id {
                    query.push(("client_id", id));
                }
                client
                    .get(endpoint)
                    .query(&query)
                    .header("X-IDENTITY-HEADER", header)
                    .send()
                    .await
            }
        }
        .map_err(|e| format!("token request failed: {}", e.without_url()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("token response unreadable: {}", e.without_url()))?;
        if !status.is_success() {
            return Err(format!("token endpoint answered {status}"));
        }
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
        }
        serde_json::from_slice::<Token>(&body)
            .map(|t| t.access_token)
            .map_err(|e| format!("token response is not a token: {e}"))
    }
}
