//! `[catalog]`: where `tunelake catalog publish` registers the lake's tables (Unity Catalog,
//! on an Azure Databricks workspace or an open-source server) and who may read them.

use serde::Deserialize;

/// The Unity Catalog the silver and gold tables are published to.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogSpec {
    /// The workspace (`https://adb-<id>.<n>.azuredatabricks.net`) or an open-source Unity
    /// Catalog server's base URL; `${VAR}` from the environment.
    pub url: String,
    /// The catalog, created when missing; its schemas are `silver` and `gold`.
    pub name: String,
    /// Grants on the catalog: `[{ principal = "analysts", privileges = ["USE_CATALOG",
    /// "USE_SCHEMA", "SELECT"] }]`, added when missing (never revoked).
    #[serde(default)]
    pub grants: Vec<GrantSpec>,
    /// The Databricks access connector (its resource id, the Bicep output
    /// `databricksAccessConnectorId`): a storage credential and read-only external locations
    /// for the silver and gold containers are created with it. `${VAR}` from the environment.
    pub access_connector_id: Option<String>,
}

/// One principal's privileges on the catalog.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    /// A user, group or service principal.
    pub principal: String,
    /// Unity Catalog privileges (`USE_CATALOG`, `USE_SCHEMA`, `SELECT`, ...).
    pub privileges: Vec<String>,
}

/// `[catalog]`, with its variables expanded; each problem with its key.
pub(super) fn parse_catalog(
    raw: Option<&toml::Value>,
    var: &dyn Fn(&str) -> Option<String>,
    problem: &mut impl FnMut(String, String),
) -> Option<CatalogSpec> {
    let mut spec: CatalogSpec = match raw?.clone().try_into() {
        Ok(spec) => spec,
        Err(e) => {
            problem("catalog".into(), e.message().to_string());
            return None;
        }
    };
    match super::sources::expand(&spec.url, var) {
        Ok(url) if url.starts_with("http://") || url.starts_with("https://") => spec.url = url,
        Ok(url) => problem(
            "catalog.url".into(),
            format!("{url:?} is not an http(s) URL"),
        ),
        Err(p) => problem("catalog.url".into(), p),
    }
    if let Some(id) = &spec.access_connector_id {
        match super::sources::expand(id, var) {
            Ok(id) => spec.access_connector_id = Some(id),
            Err(p) => problem("catalog.access_connector_id".into(), p),
        }
    }
    if let Some(p) = super::ident::problem(&spec.name) {
        problem("catalog.name".into(), p);
    }
    for (i, g) in spec.grants.iter().enumerate() {
        for (j, privilege) in g.privileges.iter().enumerate() {
            let known = privilege
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_');
            if !known || privilege.is_empty() {
                problem(
                    format!("catalog.grants[{i}].privileges[{j}]"),
                    format!(
                        "{privilege:?} is not a privilege name (USE_CATALOG, USE_SCHEMA, SELECT, ...)"
                    ),
                );
            }
        }
    }
    Some(spec)
}
