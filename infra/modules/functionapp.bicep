// The Function App: Linux, Flex Consumption, custom handler (the tunelake binary), with a
// system-assigned managed identity, its outbound traffic through the private network. Storage
// is reached through that identity only: the host's state and package in their own account,
// the lake (Delta tables and queues) in another.
param name string
param location string
param tags object
param hostAccountName string
param lakeAccountName string
param appSubnetId string
param appInsightsConnectionString string
param sqlServerFqdn string
param sqlDatabaseName string
param alertTo string
param alertFrom string
param ingestSchedule string
@description('NCRONTAB schedule of the maintain function (compaction, vacuum, log cleanup).')
param maintainSchedule string = '0 30 3 * * *'
@description('NCRONTAB schedule of the catchup function, which loads bronze files no event brought: a lost event delays a file by at most this period.')
param catchupSchedule string = '0 */30 * * * *'

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostAccountName
}

resource lake 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: lakeAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'asp-${name}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-${name}-${uniqueString(resourceGroup().id)}'
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    virtualNetworkSubnetId: appSubnetId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}deployments'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: 40
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      appSettings: [
        { name: 'AzureWebJobsStorage__accountName', value: hostStorage.name }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'LAKE_CONNECTION__queueServiceUri', value: lake.properties.primaryEndpoints.queue }
        { name: 'LAKE_CONNECTION__credential', value: 'managedidentity' }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsightsConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'Authorization=AAD' }
        { name: 'TUNELAKE_LAKE', value: 'abfss://{area}@${lake.name}.dfs.${environment().suffixes.storage}/' }
        {
          name: 'TUNELAKE_SOURCE'
          value: 'Server=tcp:${sqlServerFqdn},1433;Database=${sqlDatabaseName};Authentication=Active Directory Managed Identity;Encrypt=true'
        }
        { name: 'TUNELAKE_ALERT_TO', value: alertTo }
        { name: 'TUNELAKE_ALERT_FROM', value: alertFrom }
        { name: 'INGEST_SCHEDULE', value: ingestSchedule }
        { name: 'MAINTAIN_SCHEDULE', value: maintainSchedule }
        { name: 'CATCHUP_SCHEDULE', value: catchupSchedule }
      ]
    }
  }
}

output name string = site.name
output principalId string = site.identity.principalId
