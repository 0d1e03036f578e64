//! The infrastructure templates and workflows, checked as an Azure engineer would read them:
//! every Bicep file parses (tree-sitter-bicep), and the properties that make the environment
//! safe hold: hierarchical namespace on the lake, public and shared-key access off, networks
//! denied but for private endpoints, Entra-only SQL and telemetry, host storage apart from the
//! lake, identities with exactly the roles they need at the narrowest scope, Event Grid
//! delivering to a queue with its own identity. A flipped property fails the check.

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
    if files.len() < 11 {
        problems.push(format!(
            "expected main.bicep and 10 modules, found {} files",
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
    // `kind`'s resources (in files whose path ends with `file`, when given) must have `want`
    // at `path`.
    let mut check_in = |file: Option<&str>, kind: &str, path: &str, want: &str| {
        let found: Vec<_> = resources
            .iter()
            .filter(|(f, r)| {
                r.kind == kind && !r.existing && file.is_none_or(|name| f.file.ends_with(name))
            })
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
    check_in(
        Some("/storage.bicep"),
        storage,
        "properties.isHnsEnabled",
        "true",
    );
    check_in(
        Some("/hoststorage.bicep"),
        storage,
        "properties.isHnsEnabled",
        "false",
    );
    let mut check = |kind: &str, path: &str, want: &str| check_in(None, kind, path, want);
    check(storage, "properties.allowBlobPublicAccess", "false");
    check(storage, "properties.allowSharedKeyAccess", "false");
    check(storage, "properties.minimumTlsVersion", "'TLS1_2'");
    check(storage, "properties.supportsHttpsTrafficOnly", "true");
    check(
        storage,
        "properties.networkAcls.defaultAction",
        "allowPublicNetwork ? 'Allow' : 'Deny'",
    );
    check(storage, "properties.networkAcls.bypass", "'AzureServices'");
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
    check(
        sql,
        "properties.publicNetworkAccess",
        "allowPublicNetwork ? 'Enabled' : 'Disabled'",
    );
    let site = "Microsoft.Web/sites";
    check(site, "identity.type", "'SystemAssigned'");
    check(site, "kind", "'functionapp,linux'");
    check(site, "properties.httpsOnly", "true");
    check(site, "properties.virtualNetworkSubnetId", "appSubnetId");
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
        "Microsoft.Insights/components",
        "properties.DisableLocalAuth",
        "true",
    );
    let topic = "Microsoft.EventGrid/systemTopics";
    check(topic, "identity.type", "'SystemAssigned'");
    let subscription = "Microsoft.EventGrid/systemTopics/eventSubscriptions";
    check(
        subscription,
        "properties.filter.subjectBeginsWith",
        "'/blobServices/default/containers/bronze/blobs/'",
    );
    check(
        subscription,
        "properties.deliveryWithResourceIdentity.destination.endpointType",
        "'StorageQueue'",
    );
    check(
        subscription,
        "properties.deliveryWithResourceIdentity.destination.properties.queueName",
        "'bronze-events'",
    );
    check(
        subscription,
        "properties.deliveryWithResourceIdentity.identity.type",
        "'SystemAssigned'",
    );
    check(
        subscription,
        "properties.deadLetterWithResourceIdentity.deadLetterDestination.endpointType",
        "'StorageBlob'",
    );
    let all_text: String = files.iter().map(|f| f.text.as_str()).collect();
    for forbidden in [
        "administratorLoginPassword",
        "listKeys(",
        "AccountKey=",
        "AllowAllWindowsAzureIps",
        "firewallRules",
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
        "CATCHUP_SCHEDULE",
        "MAINTAIN_SCHEDULE",
        "LAKE_CONNECTION__queueServiceUri",
    ] {
        if !all_text.contains(&format!("name: '{setting}'")) {
            problems.push(format!("app setting {setting} is missing"));
        }
    }
    if !all_text.contains("Microsoft.Storage.BlobCreated") {
        problems.push("no blob-created subscription to the bronze-events queue".to_string());
    }
    if !all_text.contains("name: 'AzureWebJobsStorage__accountName', value: hostStorage.name") {
        problems.push("the host's storage is not its own account".to_string());
    }
    for group in ["'blob'", "'dfs'", "'queue'", "'sqlServer'"] {
        if !all_text.contains(&format!("group: {group}")) {
            problems.push(format!("no private endpoint for {group}"));
        }
    }
    if !all_text.contains("serviceName: 'Microsoft.App/environments'") {
        problems.push("the app subnet is not delegated to Flex Consumption".to_string());
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
    let assignments: Vec<(String, String, String)> = resources
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
            let scope = file.value(r.body, "scope").unwrap_or_default();
            (
                vars.get(&role_var).cloned().unwrap_or(role_var),
                principal,
                scope,
            )
        })
        .collect();
    for (role, principal, scope, what) in [
        (
            "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
            "functionPrincipalId",
            "lake",
            "Storage Blob Data Contributor on the lake for the Function App",
        ),
        (
            "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
            "functionPrincipalId",
            "lake",
            "Storage Queue Data Contributor on the lake for the Function App",
        ),
        (
            "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
            "functionPrincipalId",
            "hostStorage",
            "Storage Blob Data Owner on its host storage for the Function App",
        ),
        (
            "3913510d-42f4-4e42-8a64-420c390055eb",
            "functionPrincipalId",
            "insights",
            "Monitoring Metrics Publisher for the Function App",
        ),
        (
            "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
            "databricksPrincipalId",
            "areaContainers[i]",
            "Storage Blob Data Reader on silver and gold for Databricks",
        ),
        (
            "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a",
            "topic.identity.principalId",
            "bronzeEvents",
            "Storage Queue Data Message Sender on bronze-events for Event Grid",
        ),
        (
            "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
            "topic.identity.principalId",
            "deadLetters",
            "Storage Blob Data Contributor on the dead-letter container for Event Grid",
        ),
    ] {
        if !assignments
            .iter()
            .any(|(r, p, s)| r == role && p == principal && s == scope)
        {
            problems.push(format!("role assignment missing: {what} ({role})"));
        }
    }
    if assignments.len() != 7 {
        problems.push(format!(
            "expected exactly 7 role assignments, found {}",
            assignments.len()
        ));
    }

    let main = std::fs::read_to_string(root.join("infra/main.bicep")).unwrap_or_default();
    if !main.contains("param allowPublicNetwork bool = false") {
        problems.push("public network access is not off by default".to_string());
    }
    for output in [
        "output lakeUrl",
        "output functionAppName",
        "output sqlServerName",
        "output databricksAccessConnectorId",
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
        // Deploy only what CI passed, one deployment at a time, for the hosts' old glibc.
        "workflows: [ci]",
        "github.event.workflow_run.conclusion == 'success'",
        "head_sha",
        "cancel-in-progress: false",
        "restore-keys:",
        "--max-glibc 2.28",
        "x86_64-unknown-linux-gnu.2.28",
        "az deployment sub what-if",
        "gh release create",
    ] {
        if !deploy.contains(needed) {
            problems.push(format!("the deploy workflows lack `{needed}`"));
        }
    }
    for forbidden in [
        "client-secret",
        "creds:",
        "password",
        "deployEventGrid",
        "push:",
    ] {
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
            "scope: hostStorage\n  name: guid(hostStorage.id, functionPrincipalId, storageBlobDataOwner)",
            "scope: lake\n  name: guid(hostStorage.id, functionPrincipalId, storageBlobDataOwner)",
            "Storage Blob Data Owner on its host storage",
        ),
        (
            "infra/modules/roles.bicep",
            "storageBlobDataReader)\n    properties: {\n      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)",
            "storageBlobDataReader)\n    properties: {\n      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)",
            "Storage Blob Data Reader on silver and gold",
        ),
        (
            "infra/modules/storage.bicep",
            "defaultAction: allowPublicNetwork ? 'Allow' : 'Deny'",
            "defaultAction: 'Allow'",
            "networkAcls.defaultAction",
        ),
        (
            "infra/modules/sql.bicep",
            "publicNetworkAccess: allowPublicNetwork ? 'Enabled' : 'Disabled'",
            "publicNetworkAccess: 'Enabled'",
            "publicNetworkAccess",
        ),
        (
            "infra/main.bicep",
            "param allowPublicNetwork bool = false",
            "param allowPublicNetwork bool = true",
            "public network access",
        ),
        (
            "infra/modules/monitoring.bicep",
            "DisableLocalAuth: true",
            "DisableLocalAuth: false",
            "DisableLocalAuth",
        ),
        (
            "infra/modules/eventgrid.bicep",
            "endpointType: 'StorageQueue'",
            "endpointType: 'WebHook'",
            "StorageQueue",
        ),
        (
            "infra/modules/functionapp.bicep",
            "value: hostStorage.name }",
            "value: lake.name }",
            "host's storage",
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
