//! The infrastructure templates and workflows, checked as an Azure engineer would read them:
//! every Bicep file parses (tree-sitter-bicep), and the properties that make the environment
//! safe hold: hierarchical namespace on, public and shared-key access off, Entra-only SQL, a
//! managed identity with exactly the roles it needs. A flipped property fails the check.

use std::collections::BTreeMap;
use std::path::Path;

use tree_sitter::{Node, Parser};

/// One parsed Bicep file.
struct Bicep {
    file: String,
    text: String,
    tree: tree_sitter::Tree,
}

/// A resource declaration: its type, API version and body.
struct Resource<'a> {
    symbol: String,
    kind: String,
    api: String,
    body: Node<'a>,
    /// An `existing` reference: no properties of its own to check.
    existing: bool,
}

fn parse(file: &Path) -> Bicep {
    let text = std::fs::read_to_string(file).unwrap();
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_bicep::LANGUAGE.into())
        .unwrap();
    let tree = parser.parse(&text, None).unwrap();
    Bicep {
        file: file.display().to_string(),
        text,
        tree,
    }
}

impl Bicep {
    fn node_text(&self, node: Node) -> &str {
        &self.text[node.byte_range()]
    }

    fn resources(&self) -> Vec<Resource<'_>> {
        let mut out = Vec::new();
        let mut stack = vec![self.tree.root_node()];
        while let Some(node) = stack.pop() {
            if node.kind() == "resource_declaration" {
                let mut cursor = node.walk();
                let children: Vec<Node> = node.named_children(&mut cursor).collect();
                let symbol = children
                    .iter()
                    .find(|c| c.kind() == "identifier")
                    .map(|c| self.node_text(*c).to_string())
                    .unwrap_or_default();
                let kind = children
                    .iter()
                    .find(|c| c.kind() == "string")
                    .map(|c| self.node_text(*c).trim_matches('\'').to_string())
                    .unwrap_or_default();
                // The body is the object, directly or inside a `for` / `if`.
                let body = children.iter().rev().find_map(|c| {
                    if c.kind() == "object" {
                        Some(*c)
                    } else {
                        let mut cur = c.walk();
                        c.named_children(&mut cur).find(|g| g.kind() == "object")
                    }
                });
                let existing = {
                    let mut cursor = node.walk();
                    node.children(&mut cursor).any(|c| c.kind() == "existing")
                };
                if let (Some((kind, api)), Some(body)) = (kind.split_once('@'), body) {
                    out.push(Resource {
                        symbol,
                        kind: kind.to_string(),
                        api: api.to_string(),
                        body,
                        existing,
                    });
                }
            }
            let mut cursor = node.walk();
            stack.extend(node.named_children(&mut cursor));
        }
        out
    }

    /// The value node of `path` (dot-separated keys) inside an object.
    fn get<'a>(&self, object: Node<'a>, path: &str) -> Option<Node<'a>> {
        let mut current = object;
        for key in path.split('.') {
            let mut cursor = current.walk();
            let found = current.named_children(&mut cursor).find(|p| {
                p.kind() == "object_property"
                    && p.named_child(0)
                        .is_some_and(|k| self.node_text(k).trim_matches('\'') == key)
            })?;
            let value = found.named_child(found.named_child_count() - 1)?;
            current = value;
        }
        Some(current)
    }

    fn value(&self, object: Node, path: &str) -> Option<String> {
        self.get(object, path)
            .map(|n| self.node_text(n).to_string())
    }
}

/// Every problem with the templates and workflows under `root`.
fn problems(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut dirs = vec![root.join("infra")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "bicep") {
                files.push(parse(&path));
            }
        }
    }
    if files.len() < 7 {
        problems.push(format!(
            "expected main.bicep and 6 modules, found {} files",
            files.len()
        ));
    }
    let mut resources: Vec<(&Bicep, Resource)> = Vec::new();
    for file in &files {
        if file.tree.root_node().has_error() {
            problems.push(format!("{} does not parse", file.file));
        }
        for r in file.resources() {
            resources.push((file, r));
        }
    }
    for (file, r) in &resources {
        if r.api.contains("preview") {
            problems.push(format!(
                "{} {}: preview API version {}",
                file.file, r.kind, r.api
            ));
        }
    }
    let mut check = |kind: &str, path: &str, want: &str| {
        let found: Vec<_> = resources
            .iter()
            .filter(|(_, r)| r.kind == kind && !r.existing)
            .collect();
        if found.is_empty() {
            problems.push(format!("no {kind} resource"));
        }
        for (file, r) in found {
            let got = file.value(r.body, path);
            if got.as_deref() != Some(want) {
                problems.push(format!(
                    "{kind} {}: {path} is {got:?}, must be {want}",
                    r.symbol
                ));
            }
        }
    };
    let storage = "Microsoft.Storage/storageAccounts";
    check(storage, "properties.isHnsEnabled", "true");
    check(storage, "properties.allowBlobPublicAccess", "false");
    check(storage, "properties.allowSharedKeyAccess", "false");
    check(storage, "properties.minimumTlsVersion", "'TLS1_2'");
    check(storage, "properties.supportsHttpsTrafficOnly", "true");
    let containers = "Microsoft.Storage/storageAccounts/blobServices/containers";
    check(containers, "properties.publicAccess", "'None'");
    let sql = "Microsoft.Sql/servers";
    check(
        sql,
        "properties.administrators.azureADOnlyAuthentication",
        "true",
    );
    check(
        sql,
        "properties.administrators.administratorType",
        "'ActiveDirectory'",
    );
    let site = "Microsoft.Web/sites";
    check(site, "identity.type", "'SystemAssigned'");
    check(site, "kind", "'functionapp,linux'");
    check(site, "properties.httpsOnly", "true");
    check(
        site,
        "properties.functionAppConfig.runtime.name",
        "'custom'",
    );
    check(
        site,
        "properties.functionAppConfig.deployment.storage.authentication.type",
        "'SystemAssignedIdentity'",
    );
    check("Microsoft.Web/serverfarms", "sku.name", "'FC1'");
    check("Microsoft.Web/serverfarms", "properties.reserved", "true");
    check(
        "Microsoft.Databricks/accessConnectors",
        "identity.type",
        "'SystemAssigned'",
    );
    check(
        "Microsoft.EventGrid/systemTopics/eventSubscriptions",
        "properties.filter.subjectBeginsWith",
        "'/blobServices/default/containers/bronze/blobs/'",
    );

    let all_text: String = files.iter().map(|f| f.text.as_str()).collect();
    for forbidden in [
        "administratorLoginPassword",
        "listKeys(storage",
        "AccountKey=",
    ] {
        if all_text.contains(forbidden) {
            problems.push(format!("a key or password is used somewhere: {forbidden}"));
        }
    }
    for container in ["'bronze'", "'silver'", "'gold'"] {
        if !all_text.contains("var areas = [") || !all_text.contains(container) {
            problems.push(format!("container {container} is not created"));
        }
    }
    for setting in [
        "TUNELAKE_SOURCE",
        "TUNELAKE_LAKE",
        "TUNELAKE_ALERT_TO",
        "TUNELAKE_ALERT_FROM",
    ] {
        if !all_text.contains(&format!("name: '{setting}'")) {
            problems.push(format!("app setting {setting} is missing"));
        }
    }
    if !all_text.contains("Microsoft.Storage.BlobCreated")
        || !all_text.contains("Host.Functions.silver")
    {
        problems.push("no blob-created subscription to the silver function".to_string());
    }
    if !all_text.contains("WorkspaceResourceId: workspace.id") {
        problems.push("Application Insights is not on the Log Analytics workspace".to_string());
    }

    // Role assignments: role definition id (through its variable) and principal.
    let vars: BTreeMap<String, String> = all_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("var "))
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.trim().trim_matches('\'').to_string(),
            )
        })
        .collect();
    let assignments: Vec<(String, String)> = resources
        .iter()
        .filter(|(_, r)| r.kind == "Microsoft.Authorization/roleAssignments")
        .map(|(file, r)| {
            let role = file
                .value(r.body, "properties.roleDefinitionId")
                .unwrap_or_default();
            let role_var = role
                .rsplit(", ")
                .next()
                .unwrap_or("")
                .trim_end_matches(')')
                .to_string();
            let principal = file
                .value(r.body, "properties.principalId")
                .unwrap_or_default();
            (vars.get(&role_var).cloned().unwrap_or(role_var), principal)
        })
        .collect();
    for (role, principal, what) in [
        (
            "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
            "functionPrincipalId",
            "Storage Blob Data Owner for the Function App",
        ),
        (
            "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
            "functionPrincipalId",
            "Storage Queue Data Contributor for the Function App",
        ),
        (
            "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
            "databricksPrincipalId",
            "Storage Blob Data Contributor for Databricks",
        ),
    ] {
        if !assignments.iter().any(|(r, p)| r == role && p == principal) {
            problems.push(format!("role assignment missing: {what} ({role})"));
        }
    }
    if assignments.len() != 3 {
        problems.push(format!(
            "expected exactly 3 role assignments, found {}",
            assignments.len()
        ));
    }

    let main = std::fs::read_to_string(root.join("infra/main.bicep")).unwrap_or_default();
    for output in [
        "output lakeUrl",
        "output functionAppName",
        "output sqlServerName",
    ] {
        if !main.contains(output) {
            problems.push(format!("main.bicep has no {output}"));
        }
    }
    for env in ["dev", "prod"] {
        let params = std::fs::read_to_string(root.join(format!("infra/main.{env}.bicepparam")))
            .unwrap_or_default();
        if !params.contains("using './main.bicep'")
            || !params.contains(&format!("param environment = '{env}'"))
        {
            problems.push(format!("infra/main.{env}.bicepparam does not set up {env}"));
        }
    }

    let ci = std::fs::read_to_string(root.join(".github/workflows/ci.yml")).unwrap_or_default();
    for step in [
        "cargo fmt --check",
        "cargo clippy --all-targets -- -D warnings",
        "run: .ci/run",
    ] {
        if !ci.contains(step) {
            problems.push(format!("ci.yml does not run `{step}`"));
        }
    }
    let deploy: String = ["deploy.yml", "deploy-environment.yml"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(root.join(".github/workflows").join(f)).unwrap_or_default()
        })
        .collect();
    for needed in [
        "id-token: write",
        "azure/login@v2",
        "client-id: ${{ vars.AZURE_CLIENT_ID }}",
        "tunelake package --out dist",
        "config-zip",
        "environment: prod",
        "environment: ${{ inputs.environment }}",
        "/api/query",
    ] {
        if !deploy.contains(needed) {
            problems.push(format!("the deploy workflows lack `{needed}`"));
        }
    }
    for forbidden in ["client-secret", "creds:", "password"] {
        if deploy.contains(forbidden) {
            problems.push(format!("the deploy workflows use a secret: `{forbidden}`"));
        }
    }
    problems
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_templates_and_workflows_hold_every_required_property() {
    let found = problems(root());
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn each_flipped_property_is_caught() {
    for (file, from, to, expect) in [
        (
            "infra/modules/storage.bicep",
            "isHnsEnabled: true",
            "isHnsEnabled: false",
            "isHnsEnabled",
        ),
        (
            "infra/modules/storage.bicep",
            "isHnsEnabled: true",
            "isHnsEnable: true",
            "isHnsEnabled",
        ),
        (
            "infra/modules/storage.bicep",
            "allowBlobPublicAccess: false",
            "allowBlobPublicAccess: true",
            "allowBlobPublicAccess",
        ),
        (
            "infra/modules/storage.bicep",
            "allowSharedKeyAccess: false",
            "allowSharedKeyAccess: true",
            "allowSharedKeyAccess",
        ),
        (
            "infra/modules/sql.bicep",
            "azureADOnlyAuthentication: true",
            "azureADOnlyAuthentication: false",
            "azureADOnlyAuthentication",
        ),
        (
            "infra/modules/functionapp.bicep",
            "type: 'SystemAssigned'\n",
            "type: 'None'\n",
            "identity.type",
        ),
        (
            "infra/modules/roles.bicep",
            "principalId: functionPrincipalId\n    principalType: 'ServicePrincipal'\n  }\n}\n\nresource functionQueueContributor",
            "principalId: databricksPrincipalId\n    principalType: 'ServicePrincipal'\n  }\n}\n\nresource functionQueueContributor",
            "Storage Blob Data Owner",
        ),
        (
            "infra/modules/storage.bicep",
            "@2023-05-01' = {\n  name: accountName",
            "@2025-01-01-preview' = {\n  name: accountName",
            "preview",
        ),
        (
            "infra/modules/storage.bicep",
            "  properties: {\n    isHnsEnabled",
            "  properties: {{\n    isHnsEnabled",
            "does not parse",
        ),
        (
            ".github/workflows/deploy-environment.yml",
            "client-id: ${{ vars.AZURE_CLIENT_ID }}",
            "creds: ${{ secrets.AZURE_CREDENTIALS }}",
            "creds:",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["infra", ".github"] {
            crate::cli::copy_dir(&root().join(sub), &dir.path().join(sub));
        }
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} no longer contains {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let found = problems(dir.path());
        assert!(
            found.iter().any(|p| p.contains(expect)),
            "flipping {from:?} to {to:?} in {file} went unnoticed: {found:#?}"
        );
    }
}
