//! ADO.NET connection strings for SQL Server and Azure SQL: split into keywords (values may be
//! quoted or braced and hold `;`), the `Authentication` keyword turned into how to log in, and
//! passwords redacted for messages and logs.

use crate::error::{Error, Result};

/// How the connection authenticates, from the `Authentication` keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// SQL login: `User ID` and `Password` in the string (tiberius reads them).
    SqlLogin,
    /// `Active Directory Managed Identity` (`MSI`); `User Id` names a user-assigned identity.
    ManagedIdentity { client_id: Option<String> },
    /// `Active Directory Workload Identity`: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity,
    /// `Active Directory Azure CLI`: the developer's `az login`.
    AzureCli,
    /// `Active Directory Default`: managed identity inside Azure, workload identity when its
    /// token file is set, otherwise the developer tools (Azure CLI, azd).
    Default,
}

/// A parsed connection string: the authentication and the remaining keywords for tiberius.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub auth: Auth,
    /// The string without the `Authentication` keyword (tiberius does not know it).
    pub for_tiberius: String,
}

/// True when the text is an ADO-style connection string rather than a URL.
pub fn looks_like_ado(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains(';') && (lower.contains("server=") || lower.contains("data source="))
}

/// The connection string with password values replaced by `***`, for messages and logs.
pub fn redact(text: &str) -> String {
    segments(text)
        .into_iter()
        .map(|part| match part.split_once('=') {
            Some((k, _)) if matches!(normalize(k).as_str(), "password" | "pwd") => {
                format!("{k}=***")
            }
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The `keyword=value` parts of a connection string, split at the `;` that end them: a value
/// quoted with `'` or `"` (a doubled quote inside stands for one) or braced with `{}` (`}}`
/// inside) may hold `;` itself, as ADO.NET and ODBC allow.
fn segments(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    let mut in_value = false;
    while i < bytes.len() {
        match bytes[i] {
            b';' => {
                parts.push(&text[start..i]);
                start = i + 1;
                in_value = false;
            }
            b'=' if !in_value => {
                in_value = true;
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] == b' ' {
                    j += 1;
                }
                if let Some(&open) = bytes.get(j)
                    && matches!(open, b'\'' | b'"' | b'{')
                {
                    let close = if open == b'{' { b'}' } else { open };
                    j += 1;
                    while j < bytes.len() {
                        if bytes[j] == close {
                            if bytes.get(j + 1) == Some(&close) {
                                j += 2;
                                continue;
                            }
                            break;
                        }
                        j += 1;
                    }
                    i = j;
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&text[start..]);
    parts
}

fn normalize(keyword: &str) -> String {
    keyword
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != '_')
        .collect::<String>()
        .to_ascii_lowercase()
}

impl ConnectionString {
    /// Splits off the `Authentication` keyword and decides the authentication method.
    pub fn parse(text: &str) -> Result<Self> {
        let mut auth_value = None;
        let mut user = None;
        let mut rest = Vec::new();
        for part in segments(text).into_iter().filter(|p| !p.trim().is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            match normalize(key).as_str() {
                "authentication" => auth_value = Some(value.trim().to_string()),
                "userid" | "uid" | "user" | "username" => {
                    user = Some(value.trim().to_string());
                    rest.push(part);
                }
                _ => rest.push(part),
            }
        }
        let auth = match auth_value.as_deref().map(normalize).as_deref() {
            None | Some("sqlpassword") => Auth::SqlLogin,
            Some("activedirectorymanagedidentity" | "activedirectorymsi") => {
                Auth::ManagedIdentity {
                    client_id: user.clone(),
                }
            }
            Some("activedirectoryworkloadidentity") => Auth::WorkloadIdentity,
            Some("activedirectoryazurecli" | "activedirectoryazcli") => Auth::AzureCli,
            Some("activedirectorydefault") => Auth::Default,
            Some(_) => {
                return Err(Error::BadArgument {
                    what: "source Authentication".to_string(),
                    message: format!(
                        "{:?} is not supported: use SqlPassword, Active Directory Managed Identity, Active Directory Workload Identity, Active Directory Azure CLI or Active Directory Default",
                        auth_value.unwrap_or_default()
                    ),
                });
            }
        };
        // A user id that names a managed identity is not a SQL login: keep it from tiberius.
        let for_tiberius = rest
            .into_iter()
            .filter(|part| {
                !(matches!(auth, Auth::ManagedIdentity { .. })
                    && matches!(
                        normalize(part.split_once('=').map_or(*part, |(k, _)| k)).as_str(),
                        "userid" | "uid" | "user" | "username"
                    ))
            })
            .collect::<Vec<_>>()
            .join(";");
        Ok(ConnectionString { auth, for_tiberius })
    }
}
