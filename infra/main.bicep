// tunelake: one Azure environment (DESIGN.md §7). Deploy at subscription scope:
//   az deployment sub create -l <region> -f infra/main.bicep -p infra/main.dev.bicepparam
// It creates the resource group and, in it: the ADLS Gen2 lake, Azure SQL (Entra-only), the
// Function App on Flex Consumption with its managed identity and least-privilege roles,
// Application Insights on Log Analytics, the Event Grid subscription that fires `silver` for
// new bronze blobs, and a Databricks access connector that reads the same Delta tables.
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

@description('Create the Event Grid subscription. It needs the app code deployed first (the blob extension key exists only then), so the deploy workflow runs this template twice.')
param deployEventGrid bool = false

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

module lake 'modules/storage.bicep' = {
  scope: group
  name: 'lake'
  params: {
    accountName: take(replace('st${prefix}${environment}${uniqueString(subscription().id, name)}', '-', ''), 24)
    location: location
    tags: tags
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
  }
}

module app 'modules/functionapp.bicep' = {
  scope: group
  name: 'functionapp'
  params: {
    name: name
    location: location
    tags: tags
    storageAccountName: lake.outputs.accountName
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
    storageAccountName: lake.outputs.accountName
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

module events 'modules/eventgrid.bicep' = if (deployEventGrid) {
  scope: group
  name: 'eventgrid'
  params: {
    name: name
    location: location
    tags: tags
    storageAccountName: lake.outputs.accountName
    functionAppName: app.outputs.name
  }
}

@description('The lake URL tunelake uses (TUNELAKE_LAKE): one container per area.')
output lakeUrl string = lake.outputs.lakeUrl
output functionAppName string = app.outputs.name
output sqlServerName string = sql.outputs.serverName
output resourceGroupName string = group.name
