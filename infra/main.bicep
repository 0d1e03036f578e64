// tunelake: one Azure environment (DESIGN.md §7). Deploy at subscription scope:
//   az deployment sub create -l <region> -f infra/main.bicep -p infra/main.dev.bicepparam
// It creates the resource group and, in it, in one pass: the ADLS Gen2 lake, the Function App's
// own host storage, Azure SQL (Entra-only), a private network with private endpoints for all
// three, the Function App on Flex Consumption with its managed identity and least-privilege
// roles, Application Insights on Log Analytics (Entra-only ingestion), the Event Grid
// subscription that queues new bronze blobs for `silver` (managed-identity delivery, dead
// letters kept), and a Databricks access connector that reads the silver and gold tables.
targetScope = 'subscription'

@description('Environment name, part of every resource name.')
@allowed(['dev', 'prod'])
param environment string

@description('Azure region.')
param location string

@description('Short name prefix (lowercase letters and digits).')
@minLength(3)
@maxLength(11)
param prefix string = 'tunelake'

@description('Entra ID group (or user) that administers the SQL server: display name and object id.')
param sqlAdminLogin string
param sqlAdminObjectId string

@description('Alert recipients (comma-separated) and the sending mailbox; empty: alerts go to the lake outbox.')
param alertTo string = ''
param alertFrom string = ''

@description('Ingest timer, NCRONTAB with seconds (UTC).')
param ingestSchedule string = '0 */15 * * * *'

@description('Open the lake, the host storage and SQL to public networks (a dev convenience); private by default.')
param allowPublicNetwork bool = false

param tags object = {
  app: 'tunelake'
  environment: environment
}

var name = '${prefix}-${environment}'

resource group 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${name}'
  location: location
  tags: tags
}

module monitoring 'modules/monitoring.bicep' = {
  scope: group
  name: 'monitoring'
  params: {
    name: name
    location: location
    tags: tags
  }
}

module network 'modules/network.bicep' = {
  scope: group
  name: 'network'
  params: {
    name: name
    location: location
    tags: tags
  }
}

module lake 'modules/storage.bicep' = {
  scope: group
  name: 'lake'
  params: {
    accountName: take(replace('st${prefix}${environment}${uniqueString(subscription().id, name)}', '-', ''), 24)
    location: location
    tags: tags
    databricksConnectorId: databricks.outputs.id
    allowPublicNetwork: allowPublicNetwork
  }
}

module hostStorage 'modules/hoststorage.bicep' = {
  scope: group
  name: 'hoststorage'
  params: {
    accountName: take(replace('sth${prefix}${environment}${uniqueString(subscription().id, name)}', '-', ''), 24)
    location: location
    tags: tags
    allowPublicNetwork: allowPublicNetwork
  }
}

module sql 'modules/sql.bicep' = {
  scope: group
  name: 'sql'
  params: {
    name: name
    location: location
    tags: tags
    adminLogin: sqlAdminLogin
    adminObjectId: sqlAdminObjectId
    allowPublicNetwork: allowPublicNetwork
  }
}

// What the app reaches privately: the lake's blob, dfs and queue endpoints, the host storage's
// blob, queue and table endpoints, and SQL.
var endpoints = [
  { name: 'lake-blob', target: lake.outputs.id, group: 'blob', zone: network.outputs.blobZoneId }
  { name: 'lake-dfs', target: lake.outputs.id, group: 'dfs', zone: network.outputs.dfsZoneId }
  { name: 'lake-queue', target: lake.outputs.id, group: 'queue', zone: network.outputs.queueZoneId }
  { name: 'host-blob', target: hostStorage.outputs.id, group: 'blob', zone: network.outputs.blobZoneId }
  { name: 'host-queue', target: hostStorage.outputs.id, group: 'queue', zone: network.outputs.queueZoneId }
  { name: 'host-table', target: hostStorage.outputs.id, group: 'table', zone: network.outputs.tableZoneId }
  { name: 'sql', target: sql.outputs.id, group: 'sqlServer', zone: network.outputs.sqlZoneId }
]

module privateEndpoints 'modules/endpoint.bicep' = [
  for e in endpoints: {
    scope: group
    name: 'pe-${e.name}'
    params: {
      name: 'pe-${name}-${e.name}'
      location: location
      tags: tags
      subnetId: network.outputs.endpointSubnetId
      targetId: e.target
      groupId: e.group
      zoneId: e.zone
    }
  }
]

module app 'modules/functionapp.bicep' = {
  scope: group
  name: 'functionapp'
  params: {
    name: name
    location: location
    tags: tags
    hostAccountName: hostStorage.outputs.accountName
    lakeAccountName: lake.outputs.accountName
    appSubnetId: network.outputs.appSubnetId
    appInsightsConnectionString: monitoring.outputs.connectionString
    sqlServerFqdn: sql.outputs.serverFqdn
    sqlDatabaseName: sql.outputs.databaseName
    alertTo: alertTo
    alertFrom: alertFrom
    ingestSchedule: ingestSchedule
  }
}

module roles 'modules/roles.bicep' = {
  scope: group
  name: 'roles'
  params: {
    lakeAccountName: lake.outputs.accountName
    hostAccountName: hostStorage.outputs.accountName
    appInsightsName: monitoring.outputs.name
    functionPrincipalId: app.outputs.principalId
    databricksPrincipalId: databricks.outputs.principalId
  }
}

module databricks 'modules/databricks.bicep' = {
  scope: group
  name: 'databricks'
  params: {
    name: name
    location: location
    tags: tags
  }
}

module events 'modules/eventgrid.bicep' = {
  scope: group
  name: 'eventgrid'
  params: {
    name: name
    location: location
    tags: tags
    lakeAccountName: lake.outputs.accountName
    hostAccountName: hostStorage.outputs.accountName
  }
}

@description('The lake URL tunelake uses (TUNELAKE_LAKE): one container per area.')
output lakeUrl string = lake.outputs.lakeUrl
output functionAppName string = app.outputs.name
output sqlServerName string = sql.outputs.serverName
output resourceGroupName string = group.name
@description('For a Unity Catalog storage credential (tunelake catalog publish): the access connector.')
output databricksAccessConnectorId string = databricks.outputs.id
