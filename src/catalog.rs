//! `tunelake catalog publish`: every silver and gold table and view registered in Unity
//! Catalog as an external Delta table at its lake location, through the REST API
//! (`/api/2.1/unity-catalog/...`, the same on Azure Databricks and the open-source server):
//! the catalog and the schemas `silver` and `gold` when missing, each table when missing or
//! when its columns changed (dropped and registered again: an external table's data stays),
//! the grants of `[catalog]` when missing, and, with an access connector, the storage
//! credential and read-only external locations it needs. Every step looks before it writes,
//! so a publish that stopped half way redoes only what is missing, and a second publish
//! changes nothing.

use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::info;

use crate::config::Pipeline;
use crate::config::catalog::CatalogSpec;
use crate::entra::Credential;
use crate::error::{Error, Result};
use crate::lake::{Lake, layout};

/// What a publish did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Published {
    /// `catalog.schema.table` of the tables registered now (new or changed).
    pub registered: Vec<String>,
    /// Tables already registered as they are.
    pub unchanged: Vec<String>,
    /// Catalog, schemas, grants, credentials and locations created or added.
    pub created: Vec<String>,
}

/// Where the API token comes from: `TUNELAKE_CATALOG_TOKEN` (a personal access token, or an
/// open-source server's); else an Entra token for Azure Databricks from client credentials of
/// its own (`TUNELAKE_CATALOG_TENANT_ID`, `_CLIENT_ID`, `_CLIENT_SECRET`) or from the managed
/// identity. `TUNELAKE_LOGIN_URL` moves the Entra ID endpoint, as for alerts.
pub fn token_source() -> Result<TokenSource> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(token) = env("TUNELAKE_CATALOG_TOKEN") {
        return Ok(TokenSource::Fixed(token));
    }
    let login = env("TUNELAKE_LOGIN_URL")
        .unwrap_or_else(|| "https://login.microsoftonline.com".to_string())
        .trim_end_matches('/')
        .to_string();
    let credential = match (
        env("TUNELAKE_CATALOG_TENANT_ID"),
        env("TUNELAKE_CATALOG_CLIENT_ID"),
        env("TUNELAKE_CATALOG_CLIENT_SECRET"),
        env("IDENTITY_ENDPOINT"),
        env("IDENTITY_HEADER"),
    ) {
        (Some(tenant), Some(client_id), Some(secret), _, _) => Credential::ClientSecret {
            tenant,
            client_id,
            secret,
        },
        (None, None, None, Some(endpoint), Some(header)) => Credential::ManagedIdentity {
            endpoint,
            header,
            client_id: env("AZURE_CLIENT_ID"),
        },
        _ => {
            return Err(Error::BadArgument {
                what: "catalog publish".to_string(),
                message: "no token: set TUNELAKE_CATALOG_TOKEN, or all three of \
                          TUNELAKE_CATALOG_TENANT_ID, _CLIENT_ID and _CLIENT_SECRET, or run with a \
                          managed identity (IDENTITY_ENDPOINT, IDENTITY_HEADER) the workspace admits"
                    .to_string(),
            });
        }
    };
    Ok(TokenSource::Entra { credential, login })
}

/// A token, or how to get one.
#[derive(Debug)]
pub enum TokenSource {
    /// A token as given.
    Fixed(String),
    /// An Entra token for Azure Databricks.
    Entra {
        /// How to get it.
        credential: Credential,
        /// The Entra ID endpoint (client credentials).
        login: String,
    },
}

/// Publishes the pipeline's tables that exist in the lake.
pub async fn publish(lake: &Lake, pipeline: &Pipeline, tokens: &TokenSource) -> Result<Published> {
    let Some(spec) = &pipeline.catalog else {
        return Err(Error::BadArgument {
            what: "catalog publish".to_string(),
            message: "the pipeline file has no [catalog] section".to_string(),
        });
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| api_error("building the HTTP client", e.to_string()))?;
    let token = match tokens {
        TokenSource::Fixed(t) => t.clone(),
        TokenSource::Entra { credential, login } => credential
            .token(&http, login, crate::entra::DATABRICKS)
            .await
            .map_err(|e| api_error("getting a token", e))?,
    };
    let api = Api {
        http,
        base: format!("{}/api/2.1/unity-catalog", spec.url.trim_end_matches('/')),
        token,
    };
    let mut done = Published::default();
    ensure(
        &api,
        "catalogs",
        &spec.name,
        json!({ "name": spec.name, "comment": "tunelake" }),
        &mut done,
    )
    .await?;
    if let Some(connector) = &spec.access_connector_id {
        locations(&api, lake, spec, connector, &mut done).await?;
    }
    for schema in ["silver", "gold"] {
        let full = format!("{}.{schema}", spec.name);
        ensure(
            &api,
            "schemas",
            &full,
            json!({ "name": schema, "catalog_name": spec.name }),
            &mut done,
        )
        .await?;
    }
    for (schema, path) in tables(pipeline) {
        if !lake.has_table(&path).await? {
            continue;
        }
        let delta = lake.delta_table(&path).await?;
        let Ok(snapshot) = delta.snapshot() else {
            continue;
        };
        let columns = columns(&snapshot.snapshot().arrow_schema());
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        let location = lake
            .table_url(&path)?
            .to_string()
            .trim_end_matches('/')
            .to_string();
        table(&api, spec, schema, &name, &location, columns, &mut done).await?;
    }
    grants(&api, spec, &mut done).await?;
    Ok(done)
}

/// `(schema, lake path)` of every silver and gold table and view of the pipeline.
fn tables(pipeline: &Pipeline) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for t in &pipeline.tables {
        out.push(("silver", layout::silver_table(&t.silver_name())));
        if let Some(g) = &t.gold {
            out.push(("gold", layout::gold_table(&g.name)));
        }
    }
    for v in &pipeline.views {
        out.push(("gold", layout::gold_table(&v.name)));
    }
    out
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// One call: the answer's status and JSON body (`Null` when empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            // reqwest's `json` feature is not in the tree: the body is written here.
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let what = format!("{method} {path}");
        let response = request
            .send()
            .await
            .map_err(|e| api_error(&what, e.without_url().to_string()))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| api_error(&what, e.without_url().to_string()))?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok((status, value));
        }
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Err(api_error(&what, format!("{status} {message}")))
    }
}

fn api_error(what: &str, message: String) -> Error {
    Error::BadArgument {
        what: format!("Unity Catalog: {what}"),
        message,
    }
}

/// Creates `kind/full_name` (`catalogs/tunelake`) with `body` unless it exists.
async fn ensure(
    api: &Api,
    kind: &str,
    full_name: &str,
    body: Value,
    done: &mut Published,
) -> Result<()> {
    let (status, _) = api
        .call(Method::GET, &format!("{kind}/{full_name}"), None)
        .await?;
    if status == StatusCode::NOT_FOUND {
        api.call(Method::POST, kind, Some(&body)).await?;
        info!(kind, full_name, "Created in Unity Catalog.");
        done.created.push(format!("{kind}/{full_name}"));
    }
    Ok(())
}

/// Registers one table unless it is registered with the same columns and location.
async fn table(
    api: &Api,
    spec: &CatalogSpec,
    schema: &str,
    name: &str,
    location: &str,
    columns: Vec<Value>,
    done: &mut Published,
) -> Result<()> {
    let full = format!("{}.{schema}.{name}", spec.name);
    let (status, existing) = api
        .call(Method::GET, &format!("tables/{full}"), None)
        .await?;
    let shape = |columns: &Value| -> Vec<(String, String)> {
        (columns.as_array().into_iter().flatten())
            .map(|c| {
                let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                (text("name"), text("type_text"))
            })
            .collect()
    };
    let wanted = Value::Array(columns);
    if status.is_success() {
        let same_location = existing
            .get("storage_location")
            .and_then(Value::as_str)
            .map(|l| l.trim_end_matches('/'))
            == Some(location);
        if same_location && shape(&existing["columns"]) == shape(&wanted) {
            done.unchanged.push(full);
            return Ok(());
        }
        // External: dropping the registration leaves the Delta table where it is.
        api.call(Method::DELETE, &format!("tables/{full}"), None)
            .await?;
    }
    let body = json!({
        "name": name,
        "catalog_name": spec.name,
        "schema_name": schema,
        "table_type": "EXTERNAL",
        "data_source_format": "DELTA",
        "storage_location": location,
        "columns": wanted,
        "comment": "written by tunelake",
    });
    api.call(Method::POST, "tables", Some(&body)).await?;
    info!(table = %full, "Registered in Unity Catalog.");
    done.registered.push(full);
    Ok(())
}

/// The catalog's grants of `[catalog]` that it lacks, added in one update.
async fn grants(api: &Api, spec: &CatalogSpec, done: &mut Published) -> Result<()> {
    if spec.grants.is_empty() {
        return Ok(());
    }
    let path = format!("permissions/catalog/{}", spec.name);
    let (_, current) = api.call(Method::GET, &path, None).await?;
    let held = |principal: &str, privilege: &str| {
        (current["privilege_assignments"]
            .as_array()
            .into_iter()
            .flatten())
        .any(|a| {
            a["principal"].as_str() == Some(principal)
                && (a["privileges"].as_array().into_iter().flatten())
                    .any(|p| p.as_str() == Some(privilege))
        })
    };
    let changes: Vec<Value> = (spec.grants.iter())
        .filter_map(|g| {
            let add: Vec<&String> = g
                .privileges
                .iter()
                .filter(|p| !held(&g.principal, p))
                .collect();
            (!add.is_empty()).then(|| json!({ "principal": g.principal, "add": add }))
        })
        .collect();
    if !changes.is_empty() {
        api.call(Method::PATCH, &path, Some(&json!({ "changes": changes })))
            .await?;
        done.created.push(format!("grants on {}", spec.name));
    }
    Ok(())
}

/// The access connector's storage credential and a read-only external location per area
/// Databricks reads (silver, gold).
async fn locations(
    api: &Api,
    lake: &Lake,
    spec: &CatalogSpec,
    connector: &str,
    done: &mut Published,
) -> Result<()> {
    let credential = format!("{}_lake", spec.name);
    ensure(
        api,
        "storage-credentials",
        &credential,
        json!({ "name": credential, "azure_managed_identity": { "access_connector_id": connector },
                "read_only": true, "comment": "tunelake's lake, through the access connector" }),
        done,
    )
    .await?;
    for area in ["silver", "gold"] {
        let name = format!("{}_{area}", spec.name);
        let url = lake.table_url(area)?.to_string();
        ensure(
            api,
            "external-locations",
            &name,
            json!({ "name": name, "url": url, "credential_name": credential, "read_only": true }),
            done,
        )
        .await?;
    }
    Ok(())
}

/// A Delta table's columns as Unity Catalog takes them: Spark type names and JSON.
fn columns(schema: &SchemaRef) -> Vec<Value> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (name, text, json_type) = spark_type(f.data_type());
            let mut column = json!({
                "name": f.name(),
                "type_text": text,
                "type_name": name,
                "type_json": json!({ "name": f.name(), "type": json_type, "nullable": f.is_nullable(), "metadata": {} }).to_string(),
                "position": i,
                "nullable": f.is_nullable(),
            });
            if let DataType::Decimal128(p, s) = f.data_type() {
                column["type_precision"] = json!(p);
                column["type_scale"] = json!(s);
            }
            column
        })
        .collect()
}

/// `(type_name, type_text, Spark JSON type)` of an Arrow type as Delta stores it.
fn spark_type(data_type: &DataType) -> (&'static str, String, Value) {
    let simple = |name: &'static str, text: &str| (name, text.to_string(), Value::from(text));
    match data_type {
        DataType::Boolean => simple("BOOLEAN", "boolean"),
        DataType::Int8 => simple("BYTE", "byte"),
        DataType::Int16 => simple("SHORT", "short"),
        DataType::Int32 => simple("INT", "int"),
        DataType::Int64 => simple("LONG", "long"),
        DataType::Float32 => simple("FLOAT", "float"),
        DataType::Float64 => simple("DOUBLE", "double"),
        DataType::Date32 | DataType::Date64 => simple("DATE", "date"),
        DataType::Timestamp(TimeUnit::Microsecond, None) => {
            simple("TIMESTAMP_NTZ", "timestamp_ntz")
        }
        DataType::Timestamp(_, _) => simple("TIMESTAMP", "timestamp"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            simple("BINARY", "binary")
        }
        DataType::Decimal128(p, s) => {
            let text = format!("decimal({p},{s})");
            ("DECIMAL", text.clone(), Value::from(text))
        }
        _ => simple("STRING", "string"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_become_spark_type_names() {
        assert_eq!(spark_type(&DataType::Int64).1, "long");
        assert_eq!(spark_type(&DataType::Utf8View).0, "STRING");
        assert_eq!(spark_type(&DataType::Decimal128(10, 2)).1, "decimal(10,2)");
        assert_eq!(
            spark_type(&DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into())
            ))
            .0,
            "TIMESTAMP"
        );
    }
}
